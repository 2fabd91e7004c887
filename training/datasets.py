"""Training data for the detector: series from files or from the synthetic generator, cut into windows.

Files: CSV or Parquet with a timestamp column (optional) and one or more numeric value columns;
a folder is searched recursively for *.csv / *.parquet (so the NAB layout, a tree of
`timestamp,value` CSVs, works as is). The model is channel-independent, so every value column
becomes one univariate training series.

Windows are cut per series, and the last `val_fraction` of every series is held out for
validation (a split in time, so validation windows never overlap training windows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import UserError

TIMESTAMP_NAMES = {"timestamp", "time", "ts", "date", "datetime"}
SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Series:
    """One univariate training series (float32, NaN = missing)."""

    name: str
    values: np.ndarray


def find_files(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively) into data files, sorted for reproducibility."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
            if not found:
                raise UserError(f"{raw}: folder holds no .csv or .parquet files")
            files.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise UserError(f"{raw}: expected a .csv or .parquet file")
            files.append(p)
        else:
            raise UserError(f"{raw}: no such file or folder")
    return files


def read_series_file(path: Path) -> list[Series]:
    """Read one CSV/Parquet file into one Series per numeric value column."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
        else:
            try:
                df = pd.read_parquet(path)
            except ImportError:
                raise UserError(
                    f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
                ) from None
    except UserError:
        raise
    except Exception as exc:  # pandas raises many types for malformed files
        raise UserError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    value_cols = [
        c
        for c in df.columns
        if str(c).strip().lower() not in TIMESTAMP_NAMES and pd.api.types.is_numeric_dtype(df[c])
    ]
    if not value_cols:
        raise UserError(f"{path}: no numeric value column (columns: {list(map(str, df.columns))})")
    out = []
    for c in value_cols:
        v = df[c].to_numpy(dtype=np.float64, copy=True)
        v[~np.isfinite(v)] = np.nan
        out.append(Series(f"{path.name}:{c}", v.astype(np.float32)))
    return out


def load_series(paths: list[str], min_length: int) -> list[Series]:
    """All series from `paths`; each must have at least `min_length` points."""
    series: list[Series] = []
    for f in find_files(paths):
        for s in read_series_file(f):
            n_obs = int(np.isfinite(s.values).sum())
            if len(s.values) < min_length or n_obs < min_length // 2:
                raise UserError(
                    f"{s.name}: {len(s.values)} points ({n_obs} observed); "
                    f"training needs at least {min_length} per series"
                )
            series.append(s)
    return series


# Shapes real metrics have and pure sinusoids lack. Each synthetic series gets a random subset of
# these (applied to training/synthetic.py's output), so the forecaster also learns plateaus,
# steps, counts, random walks and routine spikes: what normal looks like on real dashboards.
AUGMENTATIONS = ("square", "random_walk", "spikes", "quantize", "counts", "floor")


def augment(
    values: np.ndarray, unit: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Randomly reshape a normal synthetic series; `unit` is its noise scale. Returns (values, names)."""
    v = values.astype(np.float64).copy()
    n = len(v)
    applied: list[str] = []
    if rng.random() < 0.2:
        # Square wave: the seasonal shape becomes two levels (batch jobs, on/off load).
        level = np.median(v)
        hi, lo = v.max() - level, level - v.min()
        v = np.where(v > level, level + 0.6 * hi, level - 0.6 * lo) + rng.normal(0, 0.3 * unit, n)
        applied.append("square")
    if rng.random() < 0.3:
        # Random walk: levels that wander (temperatures, queue lengths).
        v += np.cumsum(rng.normal(0, unit * rng.uniform(0.05, 0.5), n))
        applied.append("random_walk")
    if rng.random() < 0.3:
        # Routine spikes: frequent short bursts that are part of normal behaviour.
        hits = rng.random(n) < rng.uniform(0.002, 0.03)
        v += hits * rng.exponential(unit * rng.uniform(3, 15), n)
        applied.append("spikes")
    if rng.random() < 0.2:
        # Quantised readings (integer gauges, two-decimal CPU percentages).
        q = unit * rng.uniform(0.5, 4.0)
        v = np.round(v / q) * q
        applied.append("quantize")
    if rng.random() < 0.15:
        # Counts: Poisson noise around a positive rate (requests, tweets), low to high rates.
        rate = v - v.min()
        rate = rate / max(rate.mean(), 1e-9) * rng.uniform(0.5, 50.0)
        v = rng.poisson(rate).astype(np.float64)
        applied.append("counts")
    if rng.random() < 0.1:
        # A floor: utilisation that sits at its minimum part of the time.
        v = np.maximum(v, np.quantile(v, rng.uniform(0.1, 0.5)))
        applied.append("floor")
    return v, applied


def synthetic_series(count: int, length: int, seed: int, augmented: bool = True) -> list[Series]:
    """`count` normal series from training/synthetic.py (SeriesSpec.random), no injected anomalies.

    The detector learns what normal looks like; anomalies only ever appear at evaluation time.
    With `augmented`, each series also gets a random subset of AUGMENTATIONS.
    """
    from training.synthetic import SeriesSpec, generate

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        spec = SeriesSpec.random(rng, seed=int(rng.integers(0, 2**31 - 1)))
        # A random start point: series do not all begin at the same phase of their cycles.
        start = int(rng.integers(0, 10 * spec.period))
        values, _ = generate(spec, length, anomalies=None, start=start)
        name = f"synthetic-{i}"
        if augmented:
            values, applied = augment(values, spec.noise + 0.1 * spec.daily_amplitude, rng)
            name += "".join("+" + a for a in applied)
        out.append(Series(name, values.astype(np.float32)))
    return out


def kernelsynth_series(count: int, length: int, seed: int) -> list[Series]:
    """`count` normal series from training/kernelsynth.py (GP paths of random composite kernels)."""
    from threadpoolctl import threadpool_limits

    from training.kernelsynth import kernelsynth_path

    rng = np.random.default_rng(seed)
    out = []
    # One BLAS thread: on a busy machine more threads make the Choleskys many times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(count):
            values, how = kernelsynth_path(length, rng)
            out.append(Series(f"kernelsynth-{i}:{how}", values.astype(np.float32)))
    return out


def cut_windows(
    series: list[Series], window: int, stride: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(train [N, window], val [M, window]) float32 windows; validation = the tail of each series."""
    train, val = [], []
    for s in series:
        v = s.values
        n_val = int(round(len(v) * val_fraction))
        split = len(v) - n_val
        for part, sink in ((v[:split], train), (v[split:], val)):
            if len(part) < window:
                continue
            idx = np.arange(0, len(part) - window + 1, stride)
            sink.append(np.lib.stride_tricks.sliding_window_view(part, window)[idx])
    empty = np.zeros((0, window), np.float32)
    tr = np.concatenate(train).astype(np.float32) if train else empty
    va = np.concatenate(val).astype(np.float32) if val else empty
    # Windows with too little data teach nothing: keep those with >= half of the points observed.
    tr = tr[np.isfinite(tr).sum(axis=1) >= window // 2]
    va = va[np.isfinite(va).sum(axis=1) >= window // 2]
    return tr, va
