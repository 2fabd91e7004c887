"""`tsguard train`: fit the detector's Transformer forecaster on series and write a model directory.

    tsguard train --data ../shared/data/some.csv more/ --out models/mine --epochs 10
    tsguard train --synthetic 200 --out detector/default_model --seed 7
    tsguard train --synthetic 160 --kernelsynth 160 --out models/mixed
    tsguard train --from-kafka --bootstrap kafka:9092 --since 7d --init default --out models/next

History (training/history.py): `--from-kafka` reads a time slice of the metrics topic, and
`--data` also takes long-form Parquet (`series,ts,value` rows, folders partitioned by date); the
last `--holdout` of every real series is held back for `tsguard promote`. `--init DIR` (or
`default`, the shipped model) fine-tunes an existing model: its architecture, weights and
detection settings, at a lower learning rate.

The objective is self-supervised next-steps forecasting: from the context of each window, predict
the location and Laplace scale of each of its last `horizon` points in units of the context's
robust scale (exactly the preprocessing the scorer uses), by the Laplace negative log-likelihood. AdamW, linear warm-up then cosine decay, early stopping on a validation split taken
from the tail of every series, seeded and reproducible on a given machine.

Outputs in --out: config.json + model.safetensors (the model directory), report.json (settings,
data description, loss curves) and loss.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detector.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: str
    data: list[str] = field(default_factory=list)
    synthetic: int = 0  # number of training/synthetic.py series to add
    kernelsynth: int = 0  # number of training/kernelsynth.py series to add
    synthetic_length: int = 4000  # points per generated series (both generators)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    window: int = 128
    horizon: int = 16
    patch: int = 16
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    error_power: float = 0.0  # how the scorer uses the predicted scale (see ModelConfig)
    anchor: str = "last"  # what the forecast is relative to (see ModelConfig)
    stride: int = 4  # step between training windows of one series
    missing_prob: float = 0.2  # share of training windows that get random missing points
    val_fraction: float = 0.1
    patience: int = 3  # epochs without validation improvement before stopping
    max_minutes: float = 0.0  # 0 = no time limit
    seed: int = 0
    device: str = "auto"
    version: str = ""
    threads: int = 0  # torch CPU threads; 0 = torch default
    source: dict | None = None  # a training/history.py Source: metrics topic or long Parquet
    holdout: float = 0.1  # last share of every real series held back for `promote`
    init: str = ""  # model directory to fine-tune ("default": the shipped model)
    progress: bool = True  # progress bars on stderr (when it is a terminal)


FINETUNE_LR = 5e-4  # --lr default with --init: adapt the shipped weights, do not overwrite them


def register_cli(subparsers: Any) -> None:
    from training.history import add_source_arguments

    d = TrainConfig(out="")
    p = subparsers.add_parser(
        "train",
        help="offline (re)training job; writes a model directory",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="CSV/Parquet files or folders (NAB layout works)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="add N synthetic series (training/synthetic.py)",
    )
    p.add_argument(
        "--kernelsynth",
        type=int,
        default=0,
        metavar="M",
        help="add M KernelSynth series: GP paths of random composite kernels "
        "(training/kernelsynth.py)",
    )
    p.add_argument(
        "--synthetic-length",
        type=int,
        default=d.synthetic_length,
        metavar="N",
        help="points per generated series (--synthetic and --kernelsynth)",
    )
    add_source_arguments(p)
    p.add_argument(
        "--holdout",
        type=float,
        default=d.holdout,
        metavar="F",
        help="hold back the last F of every real series for `tsguard promote` (default 0.1)",
    )
    p.add_argument(
        "--init",
        default="",
        metavar="DIR",
        help="fine-tune this model directory ('default': the shipped model); its architecture "
        "and detection settings are kept",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--lr", type=float, default=None, help=f"default {d.lr}, with --init {FINETUNE_LR}"
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--window", type=int, default=d.window, help="points per window (context + horizon)"
    )
    p.add_argument(
        "--horizon", type=int, default=d.horizon, help="points forecast per pass = max n_new"
    )
    p.add_argument("--patch", type=int, default=d.patch)
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--layers", type=int, default=d.n_layers)
    p.add_argument(
        "--error-power",
        type=float,
        default=d.error_power,
        help="scorer error = |x - forecast| / predicted_scale^P (0 = series units, 1 = z-score)",
    )
    p.add_argument("--anchor", default=d.anchor, choices=["last", "median"],
                   help="forecast relative to the last context value or to its median")  # fmt: skip
    p.add_argument("--stride", type=int, default=d.stride, help="step between training windows")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=d.max_minutes,
        help="safety cap: stop after M minutes (0 = no limit); a capped run depends on the "
        "machine's speed, so it is not reproducible",
    )
    p.add_argument(
        "--version", default="", help="model version string (default tsguard-custom-<date>)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.set_defaults(handler=_handle)


def history_source(args: argparse.Namespace) -> tuple[list[str], dict | None]:
    """(wide data files, history source) from the options: --from-kafka, or the long-form
    Parquet among --data; the time options apply to the history source."""
    from training.history import (
        Source,
        history_args_given,
        is_long_parquet,
        kafka_source,
        time_range,
    )

    long = [p for p in args.data if is_long_parquet(p)]
    wide = [p for p in args.data if p not in long]
    if args.from_kafka:
        if long:
            raise UserError("read history from --from-kafka or long-form Parquet, not both")
        return wide, kafka_source(args).to_dict()
    if long:
        span = time_range(args.since, args.from_ts, args.until)
        return wide, Source("parquet", paths=long, start=span.start, end=span.end).to_dict()
    if history_args_given(args):
        raise UserError(
            "--since/--from-ts/--until read history: add --from-kafka, or give long-form "
            "Parquet (series,ts,value) in --data"
        )
    return wide, None


def _handle(args: argparse.Namespace) -> int:
    data, source = history_source(args)
    cfg = TrainConfig(
        out=args.out,
        data=data,
        source=source,
        holdout=args.holdout,
        init=args.init,
        synthetic=args.synthetic,
        kernelsynth=args.kernelsynth,
        synthetic_length=args.synthetic_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (FINETUNE_LR if args.init else TrainConfig.lr),
        weight_decay=args.weight_decay,
        window=args.window,
        horizon=args.horizon,
        patch=args.patch,
        d_model=args.d_model,
        n_layers=args.layers,
        stride=args.stride,
        error_power=args.error_power,
        anchor=args.anchor,
        seed=args.seed,
        device=args.device,
        val_fraction=args.val_fraction,
        patience=args.patience,
        max_minutes=args.max_minutes,
        version=args.version,
        threads=args.threads,
    )
    report = train(cfg)
    print(
        json.dumps(
            {
                "out": cfg.out,
                "version": report["version"],
                "epochs_run": report["epochs_run"],
                "best_val_loss": report["best_val_loss"],
                "seconds": report["seconds"],
            }
        )
    )
    return 0


def _check(cfg: TrainConfig) -> None:
    if not cfg.data and not cfg.source and cfg.synthetic <= 0 and cfg.kernelsynth <= 0:
        raise UserError(
            "nothing to train on: give --data PATH... and/or --from-kafka and/or --synthetic N "
            "and/or --kernelsynth M"
        )
    checks = [
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.lr > 0, "--lr must be > 0"),
        (0.0 <= cfg.val_fraction < 0.9, "--val-fraction must be in [0, 0.9)"),
        (cfg.patience >= 1, "--patience must be >= 1"),
        (cfg.stride >= 1, "--stride must be >= 1"),
        (cfg.max_minutes >= 0, "--max-minutes must be >= 0"),
        (cfg.synthetic >= 0, "--synthetic must be >= 0"),
        (cfg.kernelsynth >= 0, "--kernelsynth must be >= 0"),
        (0.0 <= cfg.holdout < 0.9, "--holdout must be in [0, 0.9)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if (cfg.synthetic or cfg.kernelsynth) and cfg.synthetic_length < 2 * cfg.window:
        raise UserError(f"--synthetic-length must be >= 2 * window ({2 * cfg.window})")


def forecast_nll(model: Any, context: Any, target: Any) -> Any:
    """The training objective: mean Laplace NLL of the observed `target` points [N, H] given
    `context` [N, C] (raw series units, NaN = missing), both normalised by the context's robust
    location and scale exactly as the scorer does. Tensors in, a scalar tensor out."""
    import torch

    from detector.model import INPUT_CLIP, laplace_nll, prepare

    values, mask, loc, scale = prepare(context)
    forecast, log_b = model(values, mask)
    goal = ((target - loc) / scale).clamp(-INPUT_CLIP, INPUT_CLIP)
    observed = torch.isfinite(goal)
    return laplace_nll(forecast[observed], log_b[observed], goal[observed])


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to 10% of `base` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training job described by `cfg`; writes the model dir + report, returns the report."""
    _check(cfg)
    import numpy as np
    import torch

    from detector.detector import DetectorConfig
    from detector.model import PatchForecaster
    from detector.scorer import resolve_device, save_model_dir
    from training.datasets import cut_windows, kernelsynth_series, synthetic_series
    from training.history import Source, real_data

    init = _load_init(cfg.init) if cfg.init else None
    arch = init.cfg if init is not None else _architecture(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # ---- data
    min_len = max(arch.window + 1, int(math.ceil(arch.window / max(1e-9, 1 - cfg.val_fraction))))
    real = None
    series: list = []
    if cfg.data or cfg.source:
        source = Source.from_dict(cfg.source) if cfg.source else None
        real = real_data(cfg.data, source, cfg.holdout, min_len, progress=cfg.progress)
        series = real.training_part()
    n_file_series = len(series) if real is None else real.summary["file_series"]
    if cfg.synthetic:
        series += synthetic_series(cfg.synthetic, cfg.synthetic_length, seed=cfg.seed)
    if cfg.kernelsynth:
        series += kernelsynth_series(cfg.kernelsynth, cfg.synthetic_length, seed=cfg.seed)
    train_w, val_w = cut_windows(series, arch.window, cfg.stride, cfg.val_fraction)
    if len(train_w) == 0:
        raise UserError(
            f"no training windows: every series is shorter than the window ({arch.window})"
        )
    n_points = int(sum(len(s.values) for s in series))
    log.info(
        "training on %d windows (%d validation) from %d series, %d points",
        len(train_w),
        len(val_w),
        len(series),
        n_points,
    )

    # ---- model and optimiser
    model = (init.model if init is not None else PatchForecaster(arch)).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "pos"]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    steps_per_epoch = max(1, math.ceil(len(train_w) / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    c = arch.context

    def batch_loss(w: np.ndarray, train_mode: bool) -> torch.Tensor:
        x = torch.from_numpy(w).to(device)
        context, target = x[:, :c], x[:, c:]
        if train_mode and cfg.missing_prob > 0:
            # Teach the network the scorer's missing-value path: drop 0-30% of the context
            # points of some windows (the scorer forward-fills them and flags them in the mask).
            pick = torch.rand(len(x), 1, device=device) < cfg.missing_prob
            rate = torch.rand(len(x), 1, device=device) * 0.3
            drop = pick & (torch.rand(context.shape, device=device) < rate)
            context = torch.where(drop, torch.full_like(context, float("nan")), context)
        return forecast_nll(model, context, target)

    def evaluate() -> float:
        if len(val_w) == 0:
            return float("nan")
        model.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for i in range(0, len(val_w), 1024):
                b = val_w[i : i + 1024]
                total += float(batch_loss(b, False)) * len(b)
                n += len(b)
        model.train()
        return total / n

    from tqdm import tqdm

    started = time.monotonic()
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    history: list[dict[str, float]] = []
    best_val, best_state, best_epoch, bad_epochs, step = math.inf, None, 0, 0, 0
    stopped = "epochs"
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(train_w))
        run_loss, seen = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None
        )
        for i in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg.lr, warmup)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = batch_loss(train_w[idx], True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run_loss += loss.item() * len(idx)
            seen += len(idx)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{run_loss / seen:.4f}")
            if time.monotonic() > deadline:
                stopped = "max-minutes"
                break
        train_loss = run_loss / max(1, seen)
        val_loss = evaluate()
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "step": step}
        )
        log.info(
            "epoch %d: train %.4f val %.4f (%.0fs)",
            epoch,
            train_loss,
            val_loss,
            time.monotonic() - started,
        )
        score = val_loss if math.isfinite(val_loss) else train_loss
        if score < best_val:
            best_val, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if stopped == "max-minutes":
            break
        if bad_epochs >= cfg.patience:
            stopped = "early-stopping"
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    seconds = time.monotonic() - started
    version = cfg.version or "tsguard-custom-" + time.strftime("%Y.%m.%d", time.gmtime())
    report: dict[str, Any] = {
        "version": version,
        "settings": asdict(cfg),
        "data": {
            "files": list(cfg.data),
            "file_series": n_file_series,
            "real": real.summary if real is not None else None,
            "synthetic_series": cfg.synthetic,
            "kernelsynth_series": cfg.kernelsynth,
            "synthetic_length": cfg.synthetic_length if cfg.synthetic or cfg.kernelsynth else 0,
            "synthetic_source": "training/synthetic.py SeriesSpec.random + generate, normal parts only"
            if cfg.synthetic
            else None,
            "generators": _generators(cfg),
            "evaluation_data": "not checked: the files in data.files"
            if cfg.data
            else "held back: the last data.real.holdout of every history series (`tsguard "
            "promote` scores on it)"
            if real is not None
            else "none: generated series only",
            "series": len(series),
            "points": n_points,
            "train_windows": len(train_w),
            "val_windows": len(val_w),
        },
        "objective": f"forecast the last {arch.horizon} points from {arch.context}: "
        "Laplace negative log-likelihood of location and scale, robust-normalised",
        "seed": cfg.seed,
        "init": {"dir": cfg.init, "version": init.version} if init is not None else None,
        "device": device,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "stopped_by": stopped,
        "final_train_loss": history[-1]["train_loss"],
        "best_val_loss": best_val,
        "seconds": round(seconds, 1),
        "history": history,
    }
    training_desc = {
        k: report[k]
        for k in (
            "data",
            "objective",
            "seed",
            "epochs_run",
            "best_epoch",
            "stopped_by",
            "final_train_loss",
            "best_val_loss",
            "init",
        )
    }
    training_desc["parameters"] = sum(p.numel() for p in model.parameters())
    out = Path(cfg.out)
    calibration = init.calibration if init is not None else DetectorConfig()
    save_model_dir(
        out, model.cpu(), version=version, calibration=calibration, training=training_desc
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _plot(history, out / "loss.png")
    return report


def _architecture(cfg: TrainConfig) -> Any:
    from detector.model import ModelConfig

    try:
        arch = ModelConfig(
            window=cfg.window,
            horizon=cfg.horizon,
            patch=cfg.patch,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            d_ff=cfg.d_ff,
            dropout=cfg.dropout,
            error_power=cfg.error_power,
            anchor=cfg.anchor,
        )
        arch.validate()
    except ValueError as exc:
        raise UserError(f"invalid architecture: {exc}") from None
    return arch


def _load_init(path: str) -> Any:
    """The Scorer of the model directory to fine-tune ("default": the shipped model)."""
    from detector.errors import ModelLoadError
    from detector.scorer import load_scorer

    try:
        return load_scorer(None if path == "default" else path, device="cpu")
    except ModelLoadError as exc:
        raise UserError(f"--init: {exc}") from None


def _generators(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The model card's account of the generated series: which generator, how many, the seed."""
    out = []
    for name, count, source in (
        (
            "synthetic",
            cfg.synthetic,
            "training/synthetic.py SeriesSpec.random + generate (seasonal + AR noise), "
            "training/datasets.py augment; no injected anomalies",
        ),
        (
            "kernelsynth",
            cfg.kernelsynth,
            "training/kernelsynth.py: GP paths of random +/* compositions of up to "
            "5 bank kernels (KernelSynth, Ansari et al. 2024, Alg. 2) + metric transforms; "
            "no level shifts or spikes",
        ),
    ):
        if count:
            out.append(
                {
                    "name": name,
                    "source": source,
                    "series": count,
                    "length": cfg.synthetic_length,
                    "points": count * cfg.synthetic_length,
                    "seed": cfg.seed,
                }
            )
    return out


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Laplace NLL (robust-normalised)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
