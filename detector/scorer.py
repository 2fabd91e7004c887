"""Load a model directory and score windows: the `WindowScorer` the stream uses.

A model directory holds `config.json` (architecture, window, features, normalisation, calibration,
version, training description) and `model.safetensors`. Loading never unpickles; every problem
with the directory raises `ModelLoadError` with one line saying what is wrong.

>>> import numpy as np
>>> scorer = load_scorer(device="cpu")
>>> windows = np.random.default_rng(0).normal(size=(4, scorer.window_length, 2)).astype("float32")
>>> scores = scorer.score(windows, n_new=1)
>>> scores.errors.shape, scores.contributions.shape
((4, 1, 2), (4, 1, 2))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from detector.api import WindowScores
from detector.errors import ModelLoadError, UserError
from detector.model import ModelConfig, PatchForecaster, prepare, prepare_numpy

if TYPE_CHECKING:
    from detector.detector import DetectorConfig

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "tsguard-model/1"
REQUIRED_KEYS = (
    "format",
    "version",
    "architecture",
    "window",
    "features",
    "normalisation",
    "calibration",
    "training",
)
# Rows (window x dimension) per forward pass: bounds memory for huge batches. A GPU needs far
# larger passes than a CPU before launch overhead stops dominating.
ROWS_PER_PASS = {"cpu": 16384, "cuda": 131072}
# Observed points a series needs before its windows are scored: until the window is full, its
# older slots are missing values (masked, like any gap). Scoring a new series after 32 points
# instead of 128 lets its calibrator warm up sooner (benchmarks/README.md, "Scorer design").
MIN_POINTS = 32


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'. Asking for cuda without one is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was requested but torch sees no CUDA device")
        return "cuda"
    if device == "cpu":
        return "cpu"
    raise UserError(f"unknown device {device!r}; expected auto, cpu or cuda")


class Scorer:
    """Scores [B, L, D] windows on their newest `n_new` points (1 <= n_new <= max_new).

    One forward pass per window and dimension: the `context` points just before the newest n_new
    points forecast them (steps 1..n_new of the model's `horizon`-step forecast, each a location
    and a Laplace scale b), and the forecasts are compared with what arrived. At stride 1 this is
    one-step-ahead forecasting. (Forecasting the newest points from the start of the window, i.e.
    `horizon` steps ahead, was tried and did worse on NAB and on synthetic anomalies.)

    The error of a point is |observed - forecast| / b^p (p = the model's `error_power`, 0 in the
    default model), so with p = 0 it is in the series' own units and the per-series
    `Calibrator` learns what is normal for that series. Dividing by a window-local scale (the
    predicted b with p = 1, or the context's IQR) makes the same deviation look huge in a calm
    window and small in a busy one, and both did far worse on NAB (benchmarks/README.md,
    "Scorer design").

    With several dimensions, each dimension's error is computed in units of its own window
    scale, the point's error is the root mean square over observed dimensions, converted back by
    the geometric mean of the dimensions' unit factors (so D = 1 gives exactly the formula above),
    and the contributions are the dimensions' shares of the squared (unit-free) errors.
    """

    def __init__(
        self,
        model: PatchForecaster,
        config: dict[str, Any],
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.cfg: ModelConfig = model.cfg
        self.config = config
        self.device = device
        self.window_length: int = self.cfg.window
        self.max_new: int = self.cfg.horizon
        self.min_points: int = min(MIN_POINTS, self.window_length)
        self.version: str = str(config["version"])
        self.calibration = detector_config(config["calibration"])
        self.rows_per_pass = ROWS_PER_PASS[device]
        self._staging: torch.Tensor | None = None  # pinned host buffer, reused (CUDA only)

    def score(self, windows: np.ndarray, n_new: int) -> WindowScores:
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim == 2:  # [B, L] univariate convenience
            w = w[:, :, None]
        if w.ndim != 3 or w.shape[1] != self.window_length:
            raise ValueError(f"windows must be [B, {self.window_length}, D], got {list(w.shape)}")
        if not 1 <= n_new <= self.max_new:
            raise ValueError(f"n_new must be in 1..{self.max_new}, got {n_new}")
        b, length, d = w.shape
        if b == 0 or d == 0:
            return WindowScores(
                np.zeros((b, n_new, d), np.float32), np.zeros((b, n_new, d), np.float32)
            )
        # Channel independence: [B, L, D] -> [B*D, L] rows, scored with shared weights.
        rows = np.ascontiguousarray(w.transpose(0, 2, 1).reshape(b * d, length))
        err = np.empty((b * d, n_new), np.float32)
        scale = np.empty((b * d, 1), np.float32)
        for start in range(0, rows.shape[0], self.rows_per_pass):
            chunk = rows[start : start + self.rows_per_pass]
            stop = start + len(chunk)
            err[start:stop], scale[start:stop] = self._row_errors(chunk, n_new)
        err = err.reshape(b, d, n_new).transpose(0, 2, 1)  # [B, n_new, D], NaN where missing
        scale = scale.reshape(b, 1, d)
        return _per_dimension(err, scale)

    def compile(self, mode: str | None = None) -> None:
        """Run the network through torch.compile: it pays on a GPU, not measurably on a small
        CPU (benchmarks/README.md, `--compile`). Compiles here, on a probe batch, so a machine
        whose compiler toolchain does not work fails at load time with one clear error, not in
        the middle of serving. Batch sizes vary, so shapes are dynamic. Raises ModelLoadError."""
        eager = self.model
        self.model = torch.compile(eager, dynamic=True, mode=mode)
        probe = np.cumsum(np.ones((3, self.window_length, 1), np.float32), axis=1)
        try:
            self.score(probe, 1)
        except Exception as exc:  # compiler and backend failures have no common base class
            self.model = eager
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            raise ModelLoadError(f"torch.compile failed: {type(exc).__name__}: {first}") from exc

    @torch.inference_mode()
    def _row_errors(self, rows: np.ndarray, n_new: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit-free errors [N, n_new] of the newest points and each row's unit factor [N, 1].

        error in series units = unit-free error * unit factor, where the unit-free error is
        |x - loc| / b^p with x, loc, b in normalised units and the unit factor is scale^(1 - p).
        """
        if self.device == "cpu":
            return self._row_errors_cpu(rows, n_new)
        c, p, length = self.cfg.context, self.cfg.error_power, self.window_length
        t = self._to_device(torch.from_numpy(rows))
        context = t[:, length - n_new - c : length - n_new]
        target = t[:, length - n_new :]
        # Normalisation stays in float32 (quantiles, division); only the network runs in bf16.
        values, mask, loc, scale = prepare(context)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            forecast, log_b = self.model(values, mask)
        forecast, log_b = forecast[:, :n_new].float(), log_b[:, :n_new].float()
        err = ((target - loc) / scale - forecast).abs() * torch.exp(-p * log_b)
        return err.cpu().numpy(), (scale ** (1.0 - p)).cpu().numpy()

    def _row_errors_cpu(self, rows: np.ndarray, n_new: int) -> tuple[np.ndarray, np.ndarray]:
        """_row_errors on the CPU (called from it, inside its inference mode): the same
        arithmetic with numpy around the network, whose small-array operations cost a few
        microseconds where torch's cost tens (a live stream scores a few dozen windows per
        call, so per-call costs weigh)."""
        c, p, length = self.cfg.context, self.cfg.error_power, self.window_length
        values, mask, loc, scale = prepare_numpy(rows[:, length - n_new - c : length - n_new])
        forecast, log_b = self.model(torch.from_numpy(values), torch.from_numpy(mask))
        forecast, log_b = forecast[:, :n_new].numpy(), log_b[:, :n_new].numpy()
        err = np.abs((rows[:, length - n_new :] - loc) / scale - forecast)
        if p:
            err *= np.exp(-p * log_b)
        return err, scale ** (1.0 - p)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host rows -> GPU through one reused pinned buffer: pinning a fresh tensor per call
        (cudaHostAlloc) costs more than the copy. Reuse is safe because every pass ends with a
        synchronising copy back to the host before the buffer is written again."""
        n, length = t.shape
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((self.rows_per_pass, length), pin_memory=True)
        staged = self._staging[:n]
        staged.copy_(t)
        return staged.to("cuda", non_blocking=True)


def _per_dimension(err: np.ndarray, scale: np.ndarray) -> WindowScores:
    """Unit-free per-dimension errors [B, n, D] (NaN = missing) and unit factors [B, 1, D] ->
    WindowScores: each dimension's error in series units (the Detector combines dimensions,
    detector/signals/forecast.py), contributions as shares of the unit-free squared errors."""
    errors = err * scale
    sq = np.square(err, dtype=np.float64)
    observed = ~np.isnan(sq)
    n_obs = observed.sum(axis=2)
    sq0 = np.where(observed, sq, 0.0)
    total = sq0.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = sq0 / total[..., None]
    # No error at all (perfect forecast) or every dimension missing: equal shares among the
    # observed dimensions (all of them if none is), so each row still sums to 1.
    flat = ~(total > 0)
    if flat.any():
        even = np.where(n_obs[..., None] > 0, observed, True).astype(np.float64)
        even /= even.sum(axis=2, keepdims=True)
        shares = np.where(flat[..., None], even, shares)
    return WindowScores(errors.astype(np.float32), shares.astype(np.float32))


# ----------------------------------------------------------------------------- model directory


def load_scorer(
    model_dir: str | Path | None = None, device: str = "auto", compile: bool = False
) -> Scorer:
    """Load a model directory (None -> the shipped default model); `compile`: torch.compile the
    network (Scorer.compile). Raises ModelLoadError."""
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    config, cfg = read_config(path)
    model = PatchForecaster(cfg)
    state = _read_weights(path / WEIGHTS_FILE, model)
    model.load_state_dict(state)
    scorer = Scorer(model, config, resolve_device(device))
    if compile:
        scorer.compile()
    return scorer


def read_config(path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """Read and validate `path/config.json`; returns (raw dict, architecture)."""
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelLoadError(f"model directory {str(path)!r} has no {CONFIG_FILE}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelLoadError(f"{cfg_path}: missing keys {missing}")
    if config["format"] != FORMAT:
        raise ModelLoadError(f"{cfg_path}: format {config['format']!r} is not {FORMAT!r}")
    try:
        if not isinstance(config["architecture"], dict):
            raise ValueError("architecture must be an object")
        cfg = ModelConfig.from_dict(config["architecture"])
        if not isinstance(config["calibration"], dict):
            raise ValueError("calibration must be an object")
        detector_config(config["calibration"])
        if config["window"] != cfg.window:
            raise ValueError(f"window {config['window']} != architecture.window {cfg.window}")
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_path}: {exc}") from None
    return config, cfg


# Settings of earlier versions that no longer exist (alert damping moved from the score to the
# episodes); a model directory that still has them loads, and they are ignored.
_RETIRED_KEYS = ("suppress", "suppress_factor")


def detector_config(d: dict) -> DetectorConfig:
    """The detection settings of a config.json's "calibration" object. Raises ValueError."""
    from detector.detector import DetectorConfig

    return DetectorConfig.from_dict({k: v for k, v in d.items() if k not in _RETIRED_KEYS})


def _read_weights(path: Path, model: PatchForecaster) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"model directory {str(path.parent)!r} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: unreadable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"{path}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"the config needs {list(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ModelLoadError(f"{path}: tensor {name!r} holds NaN or inf")
    return {k: v.float() for k, v in state.items()}


def save_model_dir(
    path: str | Path,
    model: PatchForecaster,
    *,
    version: str,
    calibration: DetectorConfig,
    training: dict[str, Any],
) -> None:
    """Write `config.json` + `model.safetensors` (atomic per file: write to .tmp, then rename)."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    config = {
        "format": FORMAT,
        "version": version,
        "architecture": cfg.to_dict(),
        "window": cfg.window,
        "features": {
            "mode": "channel-independent",
            "dimensions": "any",
            "max_new": cfg.horizon,
            "scoring": "the `context` points before the newest n_new forecast them (Laplace "
            "location and scale b, 1..n_new steps ahead): error = |observed - forecast| / "
            "b^error_power in series units, per dimension (the Detector combines dimensions "
            "by running per-dimension units)",
        },
        "normalisation": {
            "method": "per-window robust: (x - median) / (IQR/1.349, or 1.2533*mean|x - median| when IQR is 0) of the context",
            "missing": "forward fill after normalisation (leading gaps -> 0) + observed mask input",
            "input_clip": 20.0,
        },
        "calibration": calibration.to_dict(),
        "training": training,
    }
    state = {k: v.detach().cpu().contiguous().float() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "version": version})
    tmp.chmod(0o644)  # safetensors creates the file owner-only; a model dir is meant to be shared
    tmp.replace(out / WEIGHTS_FILE)
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / CONFIG_FILE)
