"""The detector model and scorer: shapes, normalisation invariance, missing values, model dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.api import WindowScores
from detector.calibration import TailBank, TailConfig
from detector.detector import DetectorConfig
from detector.errors import ModelLoadError
from detector.model import (
    ModelConfig,
    PatchForecaster,
    impute,
    laplace_nll,
    nanquartiles,
    normalise,
    prepare,
    prepare_numpy,
)
from detector.scorer import DEFAULT_MODEL_DIR, Scorer, load_scorer, save_model_dir

# A tiny architecture keeps these tests fast; the default model is checked separately.
TINY = ModelConfig(window=40, horizon=8, patch=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)


def _random_model(seed: int = 0, cfg: ModelConfig = TINY) -> PatchForecaster:
    torch.manual_seed(seed)
    model = PatchForecaster(cfg)
    # Weights away from the (zero-head) init so the forecasts depend on the input.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    save_model_dir(
        out,
        _random_model(),
        version="test-1",
        calibration=DetectorConfig(),
        training={"data": "none"},
    )
    return out


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> Scorer:
    return load_scorer(model_dir, device="cpu")


def _windows(b: int, length: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None]
    return (
        np.sin(t / 5.0 + rng.uniform(0, 6, (b, 1, d))) + 0.3 * rng.normal(size=(b, length, d))
    ).astype(np.float32)


def test_config_round_trips_through_json() -> None:
    cfg = ModelConfig(window=64, horizon=4, patch=4)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_config_written_before_the_anchor_reads_as_median() -> None:
    old = {k: v for k, v in TINY.to_dict().items() if k != "anchor"}
    assert ModelConfig.from_dict(old).anchor == "median"
    assert ModelConfig().anchor == "last"  # what a newly trained model gets


@pytest.mark.parametrize("anchor,expected", [("last", "last value"), ("median", "median")])
def test_an_untrained_head_forecasts_its_anchor(anchor: str, expected: str) -> None:
    """The head starts at zero: the first forecast is the anchor itself, persistence for "last"
    (a smooth series then starts within one step) and the context's median for "median"."""
    model = PatchForecaster(ModelConfig(**{**TINY.to_dict(), "anchor": anchor})).eval()
    context = torch.cumsum(torch.rand(2, TINY.context) + 0.5, dim=1)  # a rising series
    values, mask, loc, scale = prepare(context)
    with torch.no_grad():
        forecast, _ = model(values, mask)
    in_units = forecast * scale + loc
    want = context[:, -1:] if expected == "last value" else context.quantile(0.5, 1, keepdim=True)
    torch.testing.assert_close(in_units, want.expand(-1, TINY.horizon), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "bad", [{"window": 40, "horizon": 40}, {"window": 41}, {"d_model": 31}, {"anchor": "mean"}]
)
def test_invalid_architecture_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY.to_dict(), **bad}).validate()


@pytest.mark.parametrize("b,d,n_new", [(1, 1, 1), (5, 3, 4), (7, 2, 8)])
def test_score_shapes_and_contributions(scorer: Scorer, b: int, d: int, n_new: int) -> None:
    out = scorer.score(_windows(b, scorer.window_length, d), n_new=n_new)
    assert isinstance(out, WindowScores)
    assert out.errors.shape == (b, n_new, d) and out.errors.dtype == np.float32
    assert out.contributions.shape == (b, n_new, d) and out.contributions.dtype == np.float32
    assert np.all(out.errors >= 0)
    np.testing.assert_allclose(out.contributions.sum(axis=2), 1.0, atol=1e-5)
    assert np.all(out.contributions >= 0)


def test_scorer_attributes(scorer: Scorer) -> None:
    assert scorer.window_length == TINY.window
    assert scorer.version == "test-1"
    assert scorer.device == "cpu"
    assert scorer.calibration == DetectorConfig()
    assert 0 < scorer.calibration.threshold <= 1


def test_bad_n_new_and_window_shape(scorer: Scorer) -> None:
    w = _windows(2, scorer.window_length, 1)
    with pytest.raises(ValueError):
        scorer.score(w, n_new=0)
    with pytest.raises(ValueError):
        scorer.score(w, n_new=TINY.horizon + 1)
    with pytest.raises(ValueError):
        scorer.score(w[:, 1:], n_new=1)


@pytest.mark.parametrize("a,b", [(1000.0, 0.0), (1e-3, 0.01), (7.0, -1e4)])
def test_scaling_and_shifting_leave_calibrated_scores_unchanged(
    scorer: Scorer, a: float, b: float
) -> None:
    """Errors are in series units (to the power 1 - error_power): a shift leaves them alone, a
    scale multiplies them, and the calibrator is scale-free, so the scores are the same."""
    w = _windows(6, scorer.window_length, 2, seed=1)
    base = scorer.score(w, n_new=4)
    moved = scorer.score(a * w.astype(np.float64) + b, n_new=4)
    # Windows are float32: a shift by b rounds the values by ~eps * |b|, which is ~eps * |b| / a
    # in units of the original series.
    tol = max(2e-3, 20 * float(np.finfo(np.float32).eps) * abs(b) / a)
    unit = a ** (1.0 - scorer.cfg.error_power)
    np.testing.assert_allclose(moved.errors / unit, base.errors, rtol=tol, atol=tol)
    np.testing.assert_allclose(moved.contributions, base.contributions, atol=tol)

    series = _windows(1, 600, 1, seed=7)[0, :, 0]
    series[450] += 8.0
    cal_scores = []
    for x in (series, a * series.astype(np.float64) + b):
        view = np.lib.stride_tricks.sliding_window_view(x, scorer.window_length)
        errs = scorer.score(view[:, :, None].astype(np.float32), 1).errors[:, 0, 0]
        tail = TailBank(TailConfig(warmup=50), signals=1)
        tail.reset(0)
        cal_scores.append(tail.score(np.array([0]), errs.reshape(1, -1, 1))[0, :, 0])
    np.testing.assert_allclose(cal_scores[1], cal_scores[0], atol=0.02)


def test_a_negative_scale_gives_well_formed_scores(scorer: Scorer) -> None:
    # Mirroring the series may change the (non-symmetric) forecasts, never the output contract.
    out = scorer.score(-3.0 * _windows(4, scorer.window_length, 2, seed=1), n_new=2)
    assert np.isfinite(out.errors).all() and (out.errors >= 0).all()


def test_errors_depend_on_the_new_points(scorer: Scorer) -> None:
    w = _windows(4, scorer.window_length, 1, seed=2)
    spiked = w.copy()
    spiked[:, -1, 0] += 50 * np.abs(w[:, :-1, 0]).max()
    assert np.all(scorer.score(spiked, 1).errors > scorer.score(w, 1).errors + 10)


def test_each_dimension_s_error_is_in_its_own_units(scorer: Scorer) -> None:
    """Dimension 1 is dimension 0 times 1000: its errors are 1000 times dimension 0's."""
    w = _windows(3, scorer.window_length, 1, seed=5)
    both = np.concatenate([w, 1000.0 * w], axis=2).astype(np.float32)
    out = scorer.score(both, 2)
    np.testing.assert_allclose(out.errors[:, :, 1], 1000.0 * out.errors[:, :, 0], rtol=1e-3)
    np.testing.assert_allclose(out.errors[:, :, :1], scorer.score(w, 2).errors, rtol=1e-5)


def test_contributions_point_at_the_anomalous_dimension(scorer: Scorer) -> None:
    w = _windows(3, scorer.window_length, 3, seed=3)
    w[:, -1, 1] += 100.0
    out = scorer.score(w, 1)
    assert np.all(out.contributions[:, 0, 1] > 0.9)


def test_nan_handling(scorer: Scorer) -> None:
    w = _windows(4, scorer.window_length, 2, seed=4)
    w[0, 3:10, 0] = np.nan  # gap in the context
    w[1, :, 1] = np.nan  # a dimension missing everywhere
    w[2, -1, :] = np.nan  # the new point missing in every dimension
    w[3, -1, 0] = np.nan  # the new point missing in one dimension
    out = scorer.score(w, 1)
    assert np.isfinite(out.errors[0]).all() and np.isfinite(out.errors[1, :, 0]).all()
    assert np.isnan(out.errors[1, :, 1]) and np.isnan(out.errors[2]).all()
    assert np.isnan(out.errors[3, 0, 0]) and np.isfinite(out.errors[3, 0, 1])
    assert np.isfinite(out.contributions).all()
    np.testing.assert_allclose(out.contributions.sum(axis=2), 1.0, atol=1e-5)
    assert out.contributions[1, 0, 1] == 0.0  # a missing dimension contributes nothing
    assert out.contributions[3, 0, 0] == 0.0


def test_all_missing_window_is_finite(scorer: Scorer) -> None:
    w = np.full((2, scorer.window_length, 1), np.nan, np.float32)
    w[:, -1, 0] = 1.0
    out = scorer.score(w, 1)
    assert np.isfinite(out.errors).all()


def test_normalise_is_robust_to_one_spike() -> None:
    x = torch.randn(1, 200, generator=torch.Generator().manual_seed(0))
    loc, scale = normalise(x)
    x[0, 10] = 1e6
    loc2, scale2 = normalise(x)
    assert abs(float(loc2 - loc)) < 0.05 and abs(float(scale2 / scale) - 1) < 0.05


def test_nanquartiles_equal_torch_nanquantile() -> None:
    """The numpy-sorted quartiles are torch.nanquantile's values, bit for bit: ties, missing
    points and all-missing rows (NaN) included."""
    rng = np.random.default_rng(3)
    quartiles = torch.tensor([0.25, 0.5, 0.75])
    for trial in range(40):
        n, c = int(rng.integers(1, 200)), int(rng.integers(1, 130))
        x = rng.normal(0.0, 100.0, (n, c)).astype(np.float32)
        if trial % 2:
            x = np.round(x / 50.0)  # ties
        x[rng.random((n, c)) < rng.uniform(0.0, 0.9)] = np.nan
        x[rng.random(n) < 0.1] = np.nan  # all-missing rows
        t = torch.from_numpy(x)
        want, got = torch.nanquantile(t, quartiles, dim=1), nanquartiles(t)
        assert torch.equal(want.isnan(), got.isnan())
        assert torch.equal(want.nan_to_num(), got.nan_to_num())


def _awkward_contexts(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Rows at many scales and offsets, with gaps, all-missing rows, flat rows (IQR 0: the
    mean-absolute-deviation fallback), ties, a leading gap and outliers past the input clip."""
    x = rng.normal(size=(n, c)) * rng.uniform(1e-3, 1e3, (n, 1)) + rng.uniform(-1e4, 1e4, (n, 1))
    x = x.astype(np.float32)
    x[rng.random((n, c)) < 0.15] = np.nan
    x[0] = np.nan
    x[1] = 7.0
    x[2, : c - 5] = -3.5  # mostly flat
    x[3, : c // 2] = np.nan
    x[4, c // 3] = 1e7
    x[5] = np.round(x[5] / 50.0)
    x[6] = 0.0
    return x


def test_prepare_numpy_equals_prepare() -> None:
    """The scorer's CPU preprocessing is `prepare`'s: bit for bit, except an ulp where the scale
    falls back to the mean absolute deviation (float32 sums in another order)."""
    rng = np.random.default_rng(11)
    for n, c in ((1, TINY.context), (7, 112), (300, 112), (50, 33)):
        x = _awkward_contexts(rng, max(n, 10), c)[-n:]  # n = 1: a plain row
        want = [t.numpy() for t in prepare(torch.from_numpy(x))]
        got = prepare_numpy(x)
        for a, b in zip(want, got, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)
        iqr_rows = np.isclose(want[3][:, 0], _iqr_scale(x), rtol=0, atol=0)
        for a, b in zip(want, got, strict=True):
            assert np.array_equal(a[iqr_rows], b[iqr_rows])  # no sum involved: the same bits


@pytest.mark.parametrize("error_power", [0.0, 0.5])
def test_cpu_row_errors_equal_the_torch_arithmetic(model_dir: Path, error_power: float) -> None:
    """The CPU scorer (numpy around the network) gives what `prepare` + the network + the error
    formula give in torch, for every n_new, with gaps in the windows."""
    config = json.loads((model_dir / "config.json").read_text())
    cfg = ModelConfig(**{**TINY.to_dict(), "error_power": error_power})
    model = _random_model(cfg=cfg).eval()
    scorer = Scorer(model, config, "cpu")
    rng = np.random.default_rng(2)
    rows = np.concatenate([_windows(20, TINY.window, 1, seed=3)[:, :, 0],
                           _awkward_contexts(rng, 12, TINY.window)])  # fmt: skip
    rows[rng.random(rows.shape) < 0.1] = np.nan
    for n_new in (1, 3, TINY.horizon):
        err, unit = scorer._row_errors(rows, n_new)
        t = torch.from_numpy(rows)
        with torch.inference_mode():
            values, mask, loc, scale = prepare(t[:, TINY.window - n_new - TINY.context : -n_new])
            forecast, log_b = model(values, mask)
        want = ((t[:, -n_new:] - loc) / scale - forecast[:, :n_new]).abs()
        want = (want * torch.exp(-error_power * log_b[:, :n_new])).numpy()
        np.testing.assert_allclose(err, want, rtol=2e-6, atol=0)  # NaN where a point is missing
        np.testing.assert_allclose(unit, (scale ** (1.0 - error_power)).numpy(), rtol=2e-6)


def _iqr_scale(x: np.ndarray) -> np.ndarray:
    q25, _, q75 = nanquartiles(torch.from_numpy(x)).numpy()
    return (q75 - q25) / np.float32(1.349)


def test_impute_forward_fills_and_masks() -> None:
    x = torch.tensor([[float("nan"), 1.0, float("nan"), float("nan"), 3.0]])
    filled, mask = impute(x)
    assert filled.tolist() == [[0.0, 1.0, 1.0, 1.0, 3.0]]
    assert mask.tolist() == [[0.0, 1.0, 0.0, 0.0, 1.0]]


def test_laplace_nll_is_smallest_at_the_true_location_and_scale() -> None:
    target = (
        torch.distributions.Laplace(2.0, 0.5)
        .sample(
            (20000,),
        )
        .reshape(-1)
    )

    def nll(loc: float, scale: float) -> float:
        n = len(target)
        return float(
            laplace_nll(torch.full((n,), loc), torch.full((n,), float(np.log(scale))), target)
        )

    best = nll(2.0, 0.5)
    assert best < nll(2.5, 0.5) and best < nll(1.5, 0.5)
    assert best < nll(2.0, 1.0) and best < nll(2.0, 0.25)


def test_forward_returns_location_and_clamped_log_scale() -> None:
    model = _random_model()
    values, mask, _, _ = prepare(torch.randn(3, TINY.context))
    loc, log_b = model(values, mask)
    assert loc.shape == log_b.shape == (3, TINY.horizon)
    assert float(log_b.min()) >= -7.0 and float(log_b.max()) <= 5.0


def test_save_load_round_trip_scores_equal(model_dir: Path, tmp_path: Path) -> None:
    model = _random_model()
    direct = Scorer(model, json.loads((model_dir / "config.json").read_text()), "cpu")
    loaded = load_scorer(model_dir, device="cpu")
    w = _windows(5, TINY.window, 2, seed=5)
    np.testing.assert_array_equal(direct.score(w, 3).errors, loaded.score(w, 3).errors)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    config = json.loads((model_dir / "config.json").read_text())
    for key in (
        "architecture",
        "window",
        "features",
        "normalisation",
        "calibration",
        "version",
        "training",
    ):
        assert key in config


def test_default_model_loads_and_scores() -> None:
    scorer = load_scorer(None, device="cpu")
    assert 64 <= scorer.window_length <= 128
    assert scorer.version.startswith("tsguard-default-")
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    t = np.arange(scorer.window_length, dtype=np.float32)
    calm = (100 + 10 * np.sin(2 * np.pi * t / 48)).astype(np.float32)[None, :, None]
    spike = calm.copy()
    spike[0, -1, 0] += 80
    assert scorer.score(spike, 1).errors[0, 0, 0] > 5 * scorer.score(calm, 1).errors[0, 0, 0]
    assert scorer.max_new >= 8
    # The trained scale head knows a clean cycle is easier to forecast than white noise.
    rng = np.random.default_rng(0)
    c = scorer.cfg.context
    clean = torch.tensor(np.sin(2 * np.pi * np.arange(c) / 24)[None, :], dtype=torch.float32)
    noise = torch.tensor(rng.normal(size=(1, c)), dtype=torch.float32)
    with torch.inference_mode():
        b_clean = scorer.model(*prepare(clean)[:2])[1].exp().mean()
        b_noise = scorer.model(*prepare(noise)[:2])[1].exp().mean()
    assert b_clean < 0.5 * b_noise


# ----------------------------------------------------------------------------- ModelLoadError cases


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _drop_version(c: dict) -> None:
    del c["version"]


def _wrong_shape(c: dict) -> None:
    c["architecture"]["d_model"] = 32
    c["architecture"]["n_heads"] = 2


def _unknown_arch_key(c: dict) -> None:
    c["architecture"]["colour"] = "blue"


def _bad_window(c: dict) -> None:
    c["window"] = 99


def _bad_calibration(c: dict) -> None:
    c["calibration"]["threshold"] = 7.0


def _bad_format(c: dict) -> None:
    c["format"] = "something-else/9"


@pytest.mark.parametrize(
    "edit,needle",
    [
        (_drop_version, "missing keys"),
        (_wrong_shape, "shape"),
        (_unknown_arch_key, "unknown"),
        (_bad_window, "window"),
        (_bad_calibration, "threshold"),
        (_bad_format, "format"),
    ],
)
def test_bad_config_is_refused(model_dir: Path, tmp_path: Path, edit, needle: str) -> None:
    m = _copy(model_dir, tmp_path)
    _edit_config(m, edit)
    with pytest.raises(ModelLoadError, match=needle):
        load_scorer(m, device="cpu")


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_scorer(tmp_path / "nope", device="cpu")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(model_dir: Path, tmp_path: Path, name: str) -> None:
    m = _copy(model_dir, tmp_path)
    (m / name).unlink()
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        load_scorer(m, device="cpu")


def test_bad_json(model_dir: Path, tmp_path: Path) -> None:
    m = _copy(model_dir, tmp_path)
    (m / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        load_scorer(m, device="cpu")


def test_truncated_safetensors(model_dir: Path, tmp_path: Path) -> None:
    m = _copy(model_dir, tmp_path)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_scorer(m, device="cpu")


def test_safetensors_with_missing_tensor(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    m = _copy(model_dir, tmp_path)
    state = load_file(str(m / "model.safetensors"))
    state.pop("head.bias")
    save_file(state, str(m / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="head.bias"):
        load_scorer(m, device="cpu")


def test_load_error_message_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_scorer(tmp_path / "nope", device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_compiled_scorer_scores_like_the_eager_one() -> None:
    """`tsguard serve --compile`: the same errors as the eager network, at batch sizes other than
    the probe's (shapes are dynamic), and a failing compile is a ModelLoadError."""
    eager = load_scorer(device="cpu")
    compiled = load_scorer(device="cpu", compile=True)
    assert compiled.model is not eager.model
    rng = np.random.default_rng(4)
    for b in (5, 67):
        w = (rng.normal(size=(b, 128, 2)).cumsum(axis=1) * 10 + 100).astype(np.float32)
        w[0, :40] = np.nan  # a young series
        want, got = eager.score(w, 1), compiled.score(w, 1)
        np.testing.assert_allclose(got.errors, want.errors, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.contributions, want.contributions, atol=1e-4)


def test_a_compile_that_fails_is_a_model_load_error(monkeypatch) -> None:
    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong backend trace")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    scorer = load_scorer(device="cpu")
    eager = scorer.model
    with pytest.raises(ModelLoadError, match="torch.compile failed: RuntimeError: no C"):
        scorer.compile()
    assert scorer.model is eager  # the eager network keeps serving
