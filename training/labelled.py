"""`tsguard evaluate labelled`: run detectors as a stream over labelled series and score them.

    tsguard evaluate labelled ../shared/data/kpi ../shared/data/smd --detector tsguard,poly
    tsguard evaluate labelled data/UCR --detector sub-pca --out ucr.json --plots plots/

A PATH is a file or folder in one of these layouts (see `load_path`): a NAB corpus (`data/` +
`labels/combined_windows.json`); a CSV(.gz) `timestamp,value[,value...],label` (a folder with
`train/` + `test/` holding the same file names: the train file is warm-up only); a TSB-AD CSV
(value columns + `Label`, the train length as `_tr_<N>_` in the name); a UCR anomaly archive
file (`NNN_UCR_Anomaly_NAME_TRAIN_BEGIN_END.txt`); a multivariate folder (`train.csv[.gz]`,
`test.csv[.gz]`, `test_label.csv[.gz]`, as SMD). A folder of such files or folders is a
collection. Metrics (training/metrics.py) use the test part only; per-collection values are
means over the files that have a labelled event in their test part, plus pooled counts.

Detectors: `tsguard` (the Detector that serves, streaming; `tsguard:A+B` keeps only signals A
and B, for an ablation), the streaming baselines of
training/baselines.py (`windowed-gaussian`, `isolation-forest`, `pca`, `null`) and TSB-AD's
offline `sub-pca`, `sub-iforest`, `poly`, `matrix-profile`, which see the whole series and whose
raw scores are min-max normalised per series. Multivariate series: univariate baselines score each dimension
and take the largest normalised score. Shipped threshold (alerts = onsets of runs above it):
tsguard: its episode starts; offline baselines: TSB-AD's rule,
score > mean + 3 std of the series' scores; windowed-gaussian, isolation-forest, pca: a fixed
score >= 0.999, 0.6, 0.9 respectively (a documented constant, not tuned on labels); null: none.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from detector.errors import UserError
from training import metrics

log = logging.getLogger("tsguard.evaluate")

GRID_SECONDS = 60.0  # timestamps of a file without any: a 1-minute grid from 0
UCR_NAME = re.compile(r"^\d+_UCR_Anomaly_.+_(\d+)_(\d+)_(\d+)\.txt$")
TSBAD_TRAIN = re.compile(r"_tr_(\d+)_")
STREAMING_THRESHOLDS = {"windowed-gaussian": 0.999, "isolation-forest": 0.6, "pca": 0.9}


@dataclass
class LabelledSeries:
    collection: str
    name: str
    values: np.ndarray  # float64 [n, D], NaN = missing
    timestamps: np.ndarray  # float64 [n], epoch seconds (a 60 s grid from 0 when the file has none)
    labels: np.ndarray  # int8 [n]
    test_start: int  # points before it are warm-up only
    dims: list[str]
    first_row: int = 0  # row of values[0] in the source (warm-up rows dropped by --max-warmup)
    ucr: tuple[int, int] | None = None  # UCR anomaly [begin, end], indices into values

    @property
    def n_test(self) -> int:
        return len(self.values) - self.test_start


@dataclass
class DetectorRun:
    scores: np.ndarray  # float64 [n] in 0..1, whole series
    alerts: np.ndarray  # bool [n], True where an episode starts at the shipped threshold


class LabelledDetector(Protocol):
    name: str
    streaming: bool  # True: the score of point t uses only points <= t

    def run(self, series: LabelledSeries) -> DetectorRun: ...


def onsets(mask: np.ndarray) -> np.ndarray:
    """True where a run of True starts."""
    m = np.asarray(mask, dtype=bool)
    return m & ~np.r_[False, m[:-1]]


# ----------------------------------------------------------------------------- loaders


def _read_table(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".txt"):
        name = name.removesuffix(suffix)
    return name


def _seconds(column) -> np.ndarray:
    """Epoch seconds from a numeric or date-time column."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    try:
        ts = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot parse timestamps: {exc}") from exc
    return (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _grid(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * GRID_SECONDS


def read_csv_series(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int]:
    """(values [n, D], timestamps, labels, dims, train length) of a labelled CSV: ours
    (`timestamp,value...,label`) or TSB-AD's (value columns + `Label`, `_tr_N_` in the name)."""
    df = _read_table(path)
    cols = list(df.columns)
    if "Label" in cols:  # TSB-AD
        label_col, time_col = "Label", None
        m = TSBAD_TRAIN.search(path.name)
        train = int(m.group(1)) if m else 0
    elif "label" in cols:
        label_col, train = "label", 0
        time_col = "timestamp" if "timestamp" in cols else None
    else:
        raise UserError(f"{path}: no label column (expected 'label' or TSB-AD's 'Label')")
    dims = [c for c in cols if c not in (label_col, time_col)]
    if not dims or len(df) == 0:
        raise UserError(f"{path}: no value column or no rows")
    try:
        values = df[dims].apply(lambda c: c.astype(np.float64)).to_numpy()
        labels = (df[label_col].to_numpy(dtype=np.float64) > 0).astype(np.int8)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: non-numeric values or labels: {exc}") from exc
    ts = _seconds(df[time_col]) if time_col else _grid(len(df))
    if train >= len(df):
        raise UserError(f"{path}: train length {train} leaves no test part ({len(df)} rows)")
    return values, ts, labels, [str(d) for d in dims], train


def read_ucr(path: Path) -> tuple[np.ndarray, int, int, int]:
    """(values, train length, begin, end) of a UCR anomaly archive file. The name's BEGIN and END
    are 1-based positions of the anomaly; returned 0-based (inclusive)."""
    m = UCR_NAME.match(path.name)
    if m is None:
        raise UserError(
            f"{path}: not a UCR anomaly archive name (NNN_UCR_Anomaly_NAME_TRAIN_BEGIN_END.txt)"
        )
    train, begin, end = (int(g) for g in m.groups())
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not 0 < train < len(values) or not train < begin <= end <= len(values):
        raise UserError(f"{path}: train/begin/end do not fit its {len(values)} values")
    return values, train, begin - 1, end - 1


def _table_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_multivariate_folder(folder: Path) -> bool:
    return all(_table_file(folder, s) for s in ("train", "test", "test_label"))


def read_multivariate(folder: Path, collection: str) -> LabelledSeries:
    """A folder with train.csv, test.csv (same value columns) and test_label.csv (one column)."""
    train = _read_table(_table_file(folder, "train"))
    test = _read_table(_table_file(folder, "test"))
    lab = _read_table(_table_file(folder, "test_label"))
    if list(train.columns) != list(test.columns) or len(lab) != len(test) or lab.shape[1] != 1:
        raise UserError(f"{folder}: train/test columns differ or test_label does not fit test")
    time_col = "timestamp" if "timestamp" in test.columns else None
    dims = [c for c in test.columns if c != time_col]
    values = np.r_[train[dims].to_numpy(np.float64), test[dims].to_numpy(np.float64)]
    if time_col:
        ts = np.r_[_seconds(train[time_col]), _seconds(test[time_col])]
    else:
        ts = _grid(len(values))
    labels = np.r_[np.zeros(len(train), np.int8), (lab.iloc[:, 0].to_numpy() > 0).astype(np.int8)]
    return LabelledSeries(collection, folder.name, values, ts, labels, len(train), dims)


def read_nab(root: Path, collection: str) -> list[LabelledSeries]:
    """A NAB corpus: test part = after the probationary period; windows -> labels 1 inside."""
    from training import nab

    out = []
    for s in nab.read_corpus(root).series:
        ts = s.timestamps.astype("datetime64[ns]").astype(np.int64) / 1e9
        name = s.name.removesuffix(".csv")
        out.append(
            LabelledSeries(
                collection,
                name,
                s.values.reshape(-1, 1).astype(np.float64),
                ts,
                s.labels.label_mask().astype(np.int8),
                s.labels.probation,
                ["value"],
            )
        )
    return out


def _is_series_file(path: Path) -> bool:
    name = path.name
    return name.endswith((".csv", ".csv.gz")) or bool(UCR_NAME.match(name))


def read_file(path: Path, collection: str) -> LabelledSeries:
    if UCR_NAME.match(path.name):
        values, train, begin, end = read_ucr(path)
        labels = np.zeros(len(values), np.int8)
        labels[begin : end + 1] = 1
        return LabelledSeries(
            collection,
            _stem(path),
            values.reshape(-1, 1),
            _grid(len(values)),
            labels,
            train,
            ["value"],
            ucr=(begin, end),
        )
    values, ts, labels, dims, train = read_csv_series(path)
    return LabelledSeries(collection, _stem(path), values, ts, labels, train, dims)


def read_train_test(folder: Path, collection: str) -> list[LabelledSeries]:
    """train/ + test/ folders with the same file names: concat(train, test), test_start = len(train)."""
    out = []
    tests = sorted(p for p in (folder / "test").iterdir() if _is_series_file(p))
    for test_path in tests:
        test = read_file(test_path, collection)
        train_path = folder / "train" / test_path.name
        if not train_path.is_file():
            out.append(test)
            continue
        train = read_file(train_path, collection)
        if train.dims != test.dims:
            raise UserError(f"{train_path}: columns differ from {test_path}")
        out.append(
            LabelledSeries(
                collection,
                test.name,
                np.r_[train.values, test.values],
                np.r_[train.timestamps, test.timestamps],
                np.r_[train.labels, test.labels],
                len(train.values),
                test.dims,
            )
        )
    return out


def load_path(path: Path, files: str = "*") -> list[LabelledSeries]:
    """Every labelled series under PATH (its collection: PATH's base name, without suffixes)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    collection = _stem(path.resolve())
    if path.is_file():
        return [read_file(path, collection)]
    if (path / "data").is_dir() and (path / "labels" / "combined_windows.json").is_file():
        series = read_nab(path, collection)
    elif (path / "train").is_dir() and (path / "test").is_dir():
        series = read_train_test(path, collection)
    elif is_multivariate_folder(path):
        series = [read_multivariate(path, collection)]
    else:
        series = []
        for child in sorted(path.iterdir()):
            if child.is_dir() and is_multivariate_folder(child):
                series.append(read_multivariate(child, collection))
            elif child.is_file() and _is_series_file(child):
                series.append(read_file(child, collection))
    if files != "*":
        globs = files.split(",")
        series = [s for s in series if any(fnmatch.fnmatch(s.name, g) for g in globs)]
    if not series:
        raise UserError(f"{path}: no labelled series found (see `tsguard evaluate labelled -h`)")
    return series


def trim_warmup(s: LabelledSeries, max_warmup: int) -> LabelledSeries:
    """Keep only the last `max_warmup` warm-up points."""
    drop = max(s.test_start - max_warmup, 0)
    if drop == 0:
        return s
    ucr = None if s.ucr is None else (s.ucr[0] - drop, s.ucr[1] - drop)
    return LabelledSeries(
        s.collection,
        s.name,
        s.values[drop:],
        s.timestamps[drop:],
        s.labels[drop:],
        s.test_start - drop,
        s.dims,
        s.first_row + drop,
        ucr,
    )


# ----------------------------------------------------------------------------- detectors


@dataclass
class TsguardLabelled:
    """tsguard's `Detector` (detector/detector.py), fed each series as `tsguard serve` feeds it
    (`Detector.run_series`); alerts are its episode starts. `signals` (None: the model's
    settings) keeps only some signals, for an ablation: `--detector tsguard:novelty+range`."""

    model: str | None = None
    device: str = "auto"
    stride: int = 1
    signals: tuple[str, ...] | None = None
    streaming: bool = True
    _det: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return "tsguard" if self.signals is None else "tsguard:" + "+".join(self.signals)

    def run(self, series: LabelledSeries) -> DetectorRun:
        from detector.detector import START
        from training.evaluate import TsguardDetector

        if self._det is None:
            self._det = TsguardDetector.from_model(self.model, self.device, self.stride,
                                                   self.signals)  # fmt: skip
        run = self._det.run(series.values, series.timestamps)
        return DetectorRun(run.scores, run.kinds == START)


def _per_dimension(series: LabelledSeries, score_one) -> np.ndarray:
    """Largest score over dimensions (each in 0..1)."""
    return np.max([score_one(series.values[:, d]) for d in range(series.values.shape[1])], axis=0)


@dataclass
class StreamingBaseline:
    """A training/baselines.py SeriesDetector (causal, 0..1); alerts: onsets of score >= threshold."""

    inner: object
    threshold: float
    streaming: bool = True

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, series: LabelledSeries) -> DetectorRun:
        scores = _per_dimension(series, lambda x: self.inner.score_series(x, series.timestamps))
        return DetectorRun(scores, onsets(scores >= self.threshold))


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return np.zeros(len(x)) if hi <= lo else (x - lo) / (hi - lo)


@dataclass
class OfflineBaseline:
    """An offline TSB-AD baseline (training/baselines.py OFFLINE_BASELINES): raw scores over the
    whole series, min-max normalised; alerts: onsets of score > mean + 3 std (TSB-AD's rule)."""

    inner: object
    streaming: bool = False

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, series: LabelledSeries) -> DetectorRun:
        scores = _per_dimension(series, lambda x: minmax(self.inner.raw_scores(x)))
        return DetectorRun(scores, onsets(scores > scores.mean() + 3.0 * scores.std()))


def detector_names() -> list[str]:
    from training.baselines import BASELINES, OFFLINE_BASELINES

    return ["tsguard", *BASELINES, *OFFLINE_BASELINES]


def make_detector(name: str, args: argparse.Namespace) -> LabelledDetector:
    from training.baselines import BASELINES, OFFLINE_BASELINES

    if name == "tsguard":
        return TsguardLabelled(args.model, args.device, args.stride)
    if name.startswith("tsguard:"):
        from detector.detector import SIGNALS

        signals = tuple(name.removeprefix("tsguard:").split("+"))
        if not signals or set(signals) - set(SIGNALS):
            raise UserError(f"{name!r}: signals must be '+'-joined names from {', '.join(SIGNALS)}")
        return TsguardLabelled(args.model, args.device, args.stride, signals)
    if name in OFFLINE_BASELINES:
        return OfflineBaseline(OFFLINE_BASELINES[name]())
    if name in BASELINES:
        return StreamingBaseline(BASELINES[name](), STREAMING_THRESHOLDS.get(name, 2.0))
    raise UserError(f"unknown detector {name!r} (choose from {', '.join(detector_names())})")


# ----------------------------------------------------------------------------- the harness


def file_metrics(series: LabelledSeries, run: DetectorRun) -> dict:
    """Metrics of one series' test part (see training/metrics.py)."""
    t0 = series.test_start
    y, s, a = series.labels[t0:], run.scores[t0:], run.alerts[t0:]
    window = metrics.period_length(series.values[:, 0])
    events, detected, n_alerts, true_alerts = metrics.alert_counts(y, a)
    f1, precision, recall = metrics.alert_f1(y, a)
    best = metrics.best_event_f1(y, s)
    out = {
        "points": int(len(y)),
        "events": events,
        "vus_pr": metrics.vus_pr(y, s, window),
        "auc_pr": metrics.auc_pr(y, s),
        "event_f1_best": best["f1"],
        "event_f1_best_threshold": best["threshold"],
        "event_f1_shipped": f1,
        "precision_shipped": precision,
        "recall_shipped": recall,
        "false_alerts_per_1k": metrics.false_alerts_per_1k(y, a),
        "detected": detected,
        "alerts": n_alerts,
        "false_alerts": n_alerts - true_alerts,
        "vus_window": window,
    }
    if series.ucr is not None:
        out["ucr_accuracy"] = metrics.ucr_accuracy(s, series.ucr[0] - t0, series.ucr[1] - t0)
    return out


MEAN_KEYS = (
    "vus_pr",
    "auc_pr",
    "event_f1_best",
    "event_f1_shipped",
    "false_alerts_per_1k",
    "ucr_accuracy",
)


def collection_summary(per_file: list[dict], seconds: float) -> dict:
    """Means over files (NaN, i.e. no labelled event in a file's test part, left out) + pooled."""
    out: dict = {"files": len(per_file), "averaging": "mean over files"}
    for key in MEAN_KEYS:
        vals = [f[key] for f in per_file if key in f and np.isfinite(f[key])]
        if vals or key != "ucr_accuracy":
            out[key] = round(float(np.mean(vals)), 4) if vals else None
    pooled = {
        k: int(sum(f[k] for f in per_file))
        for k in ("points", "events", "detected", "alerts", "false_alerts")
    }
    f1, _, _ = metrics.event_prf(
        pooled["events"],
        pooled["detected"],
        pooled["alerts"],
        pooled["alerts"] - pooled["false_alerts"],
    )
    pooled["event_f1_shipped"] = round(f1, 4) if np.isfinite(f1) else None
    pooled["false_alerts_per_1k"] = round(
        1000.0 * pooled["false_alerts"] / max(pooled["points"], 1), 4
    )
    out["pooled"] = pooled
    out["seconds"] = round(seconds, 2)
    return out


def write_results_csv(path: Path, series: LabelledSeries, run: DetectorRun) -> None:
    import pandas as pd

    t0 = series.test_start
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "index": np.arange(t0, len(series.values)) + series.first_row,
            "score": run.scores[t0:],
            "alert": run.alerts[t0:].astype(int),
            "label": series.labels[t0:].astype(int),
        }
    ).to_csv(path, index=False)


def plot_series(path: Path, series: LabelledSeries, run: DetectorRun, title: str) -> None:
    """Values (first 3 dimensions), labelled ranges shaded, the score with alerts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.arange(len(series.values)) + series.first_row
    fig, (ax_v, ax_s) = plt.subplots(2, 1, figsize=(12, 5), sharex=True)
    starts, ends = metrics.runs(series.labels.astype(bool))
    for ax in (ax_v, ax_s):
        ax.axvspan(
            idx[0],
            idx[series.test_start - 1] if series.test_start else idx[0],
            color="0.9",
            label="warm-up",
        )
        for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
            ax.axvspan(
                idx[a], idx[b], color="tab:red", alpha=0.25, label="labelled" if k == 0 else None
            )
    for d in range(min(3, series.values.shape[1])):
        ax_v.plot(idx, series.values[:, d], lw=0.6, label=series.dims[d])
    ax_v.set_title(title)
    ax_v.legend(loc="upper left", fontsize=7)
    ax_s.plot(idx, run.scores, lw=0.6, color="tab:green", label="score")
    hit = np.flatnonzero(run.alerts)
    ax_s.scatter(idx[hit], run.scores[hit], s=10, color="k", zorder=3, label="alerts")
    ax_s.set_ylim(-0.02, 1.02)
    ax_s.set_xlabel("point")
    ax_s.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def check_run(det: LabelledDetector, series: LabelledSeries, run: DetectorRun) -> DetectorRun:
    scores = np.asarray(run.scores, dtype=np.float64)
    alerts = np.asarray(run.alerts, dtype=bool)
    n = len(series.values)
    if scores.shape != (n,) or alerts.shape != (n,):
        raise RuntimeError(f"{det.name} returned {scores.shape} scores for {n} points")
    if not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise RuntimeError(f"{det.name} returned scores outside 0..1 for {series.name}")
    return DetectorRun(scores, alerts)


def evaluate(
    detectors: list[LabelledDetector],
    series: list[LabelledSeries],
    results_dir: Path | None = None,
    plots: Path | None = None,
    n_plots: int = 6,
) -> dict:
    """Run every detector over every series; the full report (per detector, collection, file)."""
    from tqdm import tqdm

    report: dict = {"files": len(series), "detectors": {}}
    bar = tqdm(
        total=len(series) * len(detectors),
        file=sys.stderr,
        unit="file",
        disable=None,  # tqdm: shown when stderr is a terminal
    )
    for det in detectors:
        per_file: dict[str, dict] = {}
        seconds: dict[str, float] = {}
        worst: list[tuple[float, str, LabelledSeries, DetectorRun]] = []
        for s in series:
            bar.set_description(f"{det.name} {s.collection}/{s.name}")
            t0 = time.perf_counter()
            run = check_run(det, s, det.run(s))
            took = time.perf_counter() - t0
            seconds[s.collection] = seconds.get(s.collection, 0.0) + took
            m = file_metrics(s, run)
            m["seconds"] = round(took, 3)
            per_file.setdefault(s.collection, {})[s.name] = m
            if results_dir is not None:
                sub = results_dir / det.name if len(detectors) > 1 else results_dir
                write_results_csv(sub / s.collection / f"{s.name}.csv", s, run)
            if plots is not None and np.isfinite(m["vus_pr"]):
                worst.append((m["vus_pr"], f"{s.collection}/{s.name}", s, run))
                worst = sorted(worst, key=lambda w: w[0])[:n_plots]
            bar.update(1)
        for rank, (vus, key, s, run) in enumerate(worst, 1):
            safe = key.replace("/", "_")
            plot_series(
                plots / f"{det.name}_{rank:02d}_{safe}.png",
                s,
                run,
                f"{det.name}: {key} (VUS-PR {vus:.3f})",
            )
        report["detectors"][det.name] = {
            "streaming": det.streaming,
            "collections": {
                c: collection_summary(list(files.values()), seconds[c])
                for c, files in per_file.items()
            },
            "per_file": per_file,
        }
    bar.close()
    return report


def summary(report: dict) -> dict:
    """{detector: {collection: {metric: value}}} plus "files" (what the command prints)."""
    out: dict = {"files": report["files"]}
    for name, d in report["detectors"].items():
        out[name] = {
            c: {k: v for k, v in m.items() if k != "pooled"} for c, m in d["collections"].items()
        }
    return out


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def run_labelled(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.detector.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise UserError(f"--detector {args.detector!r}: give distinct names, comma-separated")
    if args.max_warmup < 0:
        raise UserError(f"--max-warmup must be >= 0, got {args.max_warmup}")
    detectors = [make_detector(n, args) for n in names]
    series = [trim_warmup(s, args.max_warmup) for p in args.paths for s in load_path(p, args.files)]
    report = evaluate(detectors, series, args.results_dir, args.plots, args.n_plots)
    report["paths"] = [str(p) for p in args.paths]
    report["max_warmup"] = args.max_warmup
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    json.dump(_json_safe(summary(report)), sys.stdout)
    sys.stdout.write("\n")
    return 0


def register_labelled(sub) -> None:
    """Add `labelled` to the `evaluate` subcommands."""
    p = sub.add_parser(
        "labelled",
        help="run detectors over labelled series and print VUS-PR, AUC-PR, event F1 as JSON",
        description="Run detectors as a stream over labelled series (NAB corpus, CSV with "
        "timestamp,value...,label, train/ + test/ folders, TSB-AD CSV, UCR anomaly archive, "
        "SMD-like train/test/test_label folders) and print per-collection metrics of the test "
        "parts as JSON: VUS-PR, AUC-PR, event F1 without point-adjust (best and shipped "
        "threshold), false alerts per 1,000 points at the shipped threshold.",
    )
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="labelled series or collections"
    )
    p.add_argument(
        "--detector",
        default="tsguard",
        help=f"comma-separated detectors (default tsguard): {', '.join(detector_names())}",
    )
    p.add_argument("--out", type=Path, help="write the full report (per file too) as JSON here")
    p.add_argument(
        "--results-dir",
        type=Path,
        help="write DIR/<collection>/<series>.csv (index,score,alert,label) per series; "
        "with several detectors DIR/<detector>/<collection>/<series>.csv",
    )
    p.add_argument(
        "--plots", type=Path, help="write PNG plots of the worst files (lowest VUS-PR) here"
    )
    p.add_argument("--n-plots", type=int, default=6, help="worst files to plot per detector")
    p.add_argument(
        "--max-warmup",
        type=int,
        default=20000,
        help="keep only the last N warm-up (train) points of a series (default 20000)",
    )
    p.add_argument(
        "--files", default="*", help="comma-separated globs over series names (a subset)"
    )
    p.add_argument(
        "--model",
        default=os.environ.get("TSGUARD_MODEL"),
        help="model directory for tsguard (default: the shipped model)",
    )
    p.add_argument(
        "--device",
        default=os.environ.get("TSGUARD_DEVICE", "auto"),
        choices=["auto", "cpu", "cuda"],
        help="where the tsguard model runs",
    )
    p.add_argument("--stride", type=int, default=1, help="tsguard: points scored per window")
    p.set_defaults(handler=run_labelled)
