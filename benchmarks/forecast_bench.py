"""Forecast quality of model directories on real metrics: the training objective on held-out windows.

For each model, the Laplace negative log-likelihood (the training loss: the context's robust
normalisation, targets clipped as in training; training/train.py `forecast_nll`) of the last
`horizon` points of windows cut from the TRAIN splits of the KPI and SMD sets (never their test
splits, which the detection evaluations use). No model here is trained on these series, so every
window is held out. Windows are drawn at random, seeded, the same windows for every model:

  - KPI (`--kpi`, 29 univariate `timestamp,value,label` CSVs): windows of consecutive grid steps
    (no missing row) with no labelled point, so they are normal behaviour, as trained;
  - SMD (`--smd`, `machine-*/train.csv.gz`, 38 metrics each): every metric is one series.

Windows whose context is flat (one value throughout) are never drawn: the normalisation has no scale
there. Reported per data set: mean NLL over windows, the median over series of each series' mean
NLL (so a few long or odd series do not decide), and the mean absolute error of the forecast in
normalised units. Lower is better for all three.

    python -m benchmarks.forecast_bench --models default=detector/default_model,new=models/new

Prints a table and writes JSON (--out). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import RESULTS, environment, print_table, write_json

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _draw(
    values: np.ndarray, usable: np.ndarray, window: int, context: int, count: int, rng
) -> np.ndarray | None:
    """Up to `count` random windows [n, window] of `values` among the starts where `usable` [n
    starts] holds and the context is not flat; None if there is none."""
    views = np.lib.stride_tricks.sliding_window_view(values, window)
    usable = usable & (np.ptp(views[:, :context], axis=1) > 0)
    starts = np.flatnonzero(usable)
    if len(starts) == 0:
        return None
    return views[np.sort(rng.choice(starts, size=min(count, len(starts)), replace=False))]


def kpi_windows(
    folder: Path, window: int, context: int, per_series: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per KPI: up to `per_series` windows of consecutive grid steps with no labelled point."""
    out = {}
    for f in sorted(folder.glob("*.csv*")):
        df = pd.read_csv(f)
        ts, v, lab = (df[c].to_numpy() for c in ("timestamp", "value", "label"))
        if len(v) < window:
            continue
        gaps = np.concatenate([[0], np.cumsum(np.diff(ts) != np.median(np.diff(ts)))])
        labelled = np.convolve(lab != 0, np.ones(window, dtype=int), "valid")
        usable = (labelled == 0) & (gaps[window - 1 :] == gaps[: len(v) - window + 1])
        drawn = _draw(v.astype(np.float64), usable, window, context, per_series, rng)
        if drawn is not None:
            out[f"kpi/{f.name.split('.')[0]}"] = drawn
    return out


def smd_windows(
    folder: Path, window: int, context: int, per_series: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per SMD machine and metric: up to `per_series` windows of its train split."""
    out = {}
    for f in sorted(folder.glob("machine-*/train.csv*")):
        df = pd.read_csv(f)
        for col in df.columns:
            v = df[col].to_numpy(dtype=np.float64)
            usable = np.ones(len(v) - window + 1, dtype=bool)
            drawn = _draw(v, usable, window, context, per_series, rng)
            if drawn is not None:
                out[f"smd/{f.parent.name}/{col}"] = drawn
    return out


def evaluate(model_dir: str, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per data set: mean NLL over windows, median of per-series mean NLL, MAE (normalised)."""
    import torch

    from detector.model import INPUT_CLIP, prepare
    from detector.scorer import load_scorer
    from training.train import forecast_nll

    scorer = load_scorer(model_dir, device="cpu")
    model, c = scorer.model, scorer.model.cfg.context
    out: dict[str, dict] = {}
    with torch.inference_mode():
        for name, per_series in sets.items():
            nll, mae, counts, series_nll = 0.0, 0.0, 0, []
            for windows in per_series.values():
                x = torch.from_numpy(windows.astype(np.float32))
                loss = float(forecast_nll(model, x[:, :c], x[:, c:]))
                values, mask, loc, scale = prepare(x[:, :c])
                forecast, _ = model(values, mask)
                goal = ((x[:, c:] - loc) / scale).clamp(-INPUT_CLIP, INPUT_CLIP)
                mae += float((goal - forecast).abs().mean()) * len(x)
                nll += loss * len(x)
                counts += len(x)
                series_nll.append(loss)
            out[name] = {
                "windows": counts,
                "series": len(series_nll),
                "nll_mean": nll / counts,
                "nll_series_median": float(np.median(series_nll)),
                "mae": mae / counts,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default="default=detector/default_model",
        help="comma list of NAME=DIR model directories (default: the shipped model)",
    )
    p.add_argument("--kpi", type=Path, default=DATA / "kpi" / "train", help="KPI train folder")
    p.add_argument("--smd", type=Path, default=DATA / "smd", help="SMD folder (machine-*/)")
    p.add_argument("--kpi-windows", type=int, default=400, help="windows per KPI series")
    p.add_argument("--smd-windows", type=int, default=40, help="windows per SMD metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=RESULTS / "forecast.json")
    args = p.parse_args(argv)

    import torch

    from detector.scorer import load_scorer

    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.models.split(",") if item)
    shapes = {
        (cfg.window, cfg.context)
        for cfg in (load_scorer(d, device="cpu").model.cfg for d in models.values())
    }
    if len(shapes) != 1:
        p.error(f"the models' (window, context) differ ({sorted(shapes)}); compare like with like")
    ((window, context),) = shapes
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()
    sets = {
        "kpi-train": kpi_windows(args.kpi, window, context, args.kpi_windows, rng),
        "smd-train": smd_windows(args.smd, window, context, args.smd_windows, rng),
    }
    print(f"windows drawn in {time.monotonic() - started:.0f}s")
    results = {name: evaluate(d, sets) for name, d in models.items()}
    rows = [
        {"model": m, "data": s, **r} for m, per_set in results.items() for s, r in per_set.items()
    ]
    print_table(
        rows,
        ["model", "data", "series", "windows", "nll_mean", "nll_series_median", "mae"],
        title="Forecast loss on held-out train-split windows (lower is better)",
    )
    write_json(
        args.out,
        {
            "models": models,
            "window": window,
            "seed": args.seed,
            "kpi": str(args.kpi),
            "smd": str(args.smd),
            "results": results,
            "environment": environment(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
