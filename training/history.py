"""Metric history for retraining: a bounded time slice of the metrics topic or of a Parquet
dataset, as time-ordered series, and the recent part of every series held back for `promote`.

    tsguard train --from-kafka --bootstrap kafka:9092 --since 7d --out models/next
    tsguard train --data history/ --from-ts 2026-11-29T00:00:00Z --until 2026-12-06T00:00:00Z ...

Two sources, one shape (`History`: per series, timestamps and values):
- the metrics topic (training/kafka_history.py), decoded by the codec `tsguard serve` uses;
- a Parquet dataset in the topic's long form, one row per point: `series`, `ts` (epoch seconds
  or a timestamp column) and `value` (or several numeric columns: one dimension each), usually
  in folders partitioned by date (`date=2026-12-01/part-0.parquet`, hive style).

The model is channel-independent, so a multivariate series gives one training series per
dimension (`series[dim]`). `Source` records where a history came from and its absolute time
range, so `tsguard promote` re-reads the same slice and scores on the same held-back tail.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import UserError
from training.datasets import Series

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
LONG_COLUMNS = ("series", "ts")  # a Parquet file with both is in the topic's long form


def parse_duration(text: str) -> float:
    """Seconds in '90', '30m', '12h', '7d', '2w'.

    >>> parse_duration("7d"), parse_duration("90")
    (604800.0, 90.0)
    """
    m = DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--since {text!r}: expected a positive duration such as 30m, 12h, 7d, 2w")
    return float(m.group(1)) * UNIT_SECONDS[m.group(2)]


def parse_time(text: str, flag: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 with a timezone (as a message's `ts`)."""
    from detector.messages import InvalidMessage, parse_ts

    try:
        return parse_ts(float(text)) if _is_number(text) else parse_ts(text)
    except InvalidMessage as exc:
        raise UserError(f"{flag} {text!r}: {exc.detail}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TimeRange:
    """[start, end) in epoch seconds; None = unbounded on that side."""

    start: float | None = None
    end: float | None = None

    def mask(self, ts: np.ndarray) -> np.ndarray:
        keep = np.ones(len(ts), dtype=bool)
        if self.start is not None:
            keep &= ts >= self.start
        if self.end is not None:
            keep &= ts < self.end
        return keep

    def describe(self) -> str:
        def iso(t: float | None) -> str:
            return "..." if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        return f"[{iso(self.start)}, {iso(self.end)})"


def time_range(since: str | None, from_ts: str | None, until: str | None) -> TimeRange:
    """The slice asked for: `--since D` (up to --until or now), or `--from-ts`/`--until`."""
    if since and from_ts:
        raise UserError("give --since or --from-ts, not both")
    end = parse_time(until, "--until") if until else None
    if since:
        end = end if end is not None else time.time()
        return TimeRange(end - parse_duration(since), end)
    start = parse_time(from_ts, "--from-ts") if from_ts else None
    if start is not None and end is not None and start >= end:
        raise UserError(f"--from-ts must be before --until, got {from_ts} .. {until}")
    return TimeRange(start, end)


@dataclass
class Source:
    """Where a history comes from, with absolute times: enough to read the same slice again."""

    kind: str  # "kafka" | "parquet"
    bootstrap: str | None = None
    topic: str | None = None
    paths: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None

    @property
    def range(self) -> TimeRange:
        return TimeRange(self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Source:
        return Source(**{k: d.get(k) for k in ("kind", "bootstrap", "topic", "start", "end")},
                      paths=list(d.get("paths") or []))  # fmt: skip


@dataclass
class History:
    """Time-ordered series (one per dimension), what was skipped, and where it came from."""

    series: list[Series]
    timestamps: list[np.ndarray]  # float64 epoch seconds, one array per series
    source: Source
    records: int = 0  # messages or rows read
    invalid: dict[str, int] = field(default_factory=dict)  # reason -> messages skipped
    outside: int = 0  # valid points outside the time range
    seconds: float = 0.0  # reading and decoding

    @property
    def points(self) -> int:
        return int(sum(len(s.values) for s in self.series))

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "range": self.source.range.describe(),
            "records": self.records,
            "series": len(self.series),
            "points": self.points,
            "invalid": dict(sorted(self.invalid.items())),
            "outside_range": self.outside,
            "seconds": round(self.seconds, 1),
        }


def group_points(
    names: list[str], ts: np.ndarray, values: np.ndarray
) -> tuple[list[Series], list[np.ndarray]]:
    """Points (any order) -> one time-ordered Series per name; of points with the same name and
    timestamp the last one read wins (as a replacement on the topic does in `serve`)."""
    import pandas as pd

    if not len(names):
        return [], []
    codes, uniques = pd.factorize(pd.Index(names))
    order = np.lexsort((np.arange(len(ts)), ts, codes))  # stable: later reads after earlier
    codes, ts, values = codes[order], ts[order], values[order]
    # Keep the last of each (series, ts) run.
    last = np.ones(len(ts), dtype=bool)
    last[:-1] = (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])
    codes, ts, values = codes[last], ts[last], values[last]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    series, stamps = [], []
    for c, t, v in zip(np.split(codes, bounds), np.split(ts, bounds), np.split(values, bounds),
                       strict=True):  # fmt: skip
        series.append(Series(str(uniques[c[0]]), v.astype(np.float32)))
        stamps.append(t.astype(np.float64))
    return series, stamps


def split_holdout(series: list[Series], fraction: float) -> tuple[list[Series], list[int]]:
    """(training part of every series, index where each held-back tail starts): the last
    `fraction` of each series' points are not trained on, so `promote` can score on them."""
    train, starts = [], []
    for s in series:
        start = len(s.values) - int(round(len(s.values) * fraction))
        train.append(Series(s.name, s.values[:start]))
        starts.append(start)
    return train, starts


# ----------------------------------------------------------------------------- Parquet datasets


def parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".pq") and p.is_file())
    return [path] if path.suffix in (".parquet", ".pq") and path.is_file() else []


def is_long_parquet(path: str) -> bool:
    """True for a Parquet file or folder in the topic's long form (`series` and `ts` columns)."""
    files = parquet_files(Path(path))
    if not files:
        return False
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(files[0]).names)
    except Exception:  # not readable as Parquet: the wide-file reader says what is wrong
        return False
    return all(c in names for c in LONG_COLUMNS)


def read_parquet(paths: list[str], span: TimeRange) -> History:
    """Points of long-form Parquet files/folders (hive partitions such as `date=...` are read as
    columns and ignored) within `span`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    names: list[str] = []
    ts_parts, value_parts = [], []
    records = outside = 0
    for raw in paths:
        try:
            dataset = ds.dataset(raw, format="parquet", partitioning="hive")
            table = dataset.to_table()
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{raw}: cannot read Parquet ({exc})") from None
        files = parquet_files(Path(raw))
        # Columns that come from folder names (hive partitions such as date=...), not the files.
        partition_keys = set(table.column_names) - set(pq.read_schema(files[0]).names)
        ts_col = table.column("ts")
        if pa.types.is_timestamp(ts_col.type):
            ts = (
                pc.cast(ts_col, pa.timestamp("us", "UTC"))
                .cast(pa.int64())
                .to_numpy(zero_copy_only=False)
                / 1e6
            )
        elif pa.types.is_integer(ts_col.type) or pa.types.is_floating(ts_col.type):
            ts = ts_col.to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            raise UserError(
                f"{raw}: column ts must be epoch seconds or a timestamp, got {ts_col.type}"
            )
        dims = [
            c
            for c in table.column_names
            if c not in (*LONG_COLUMNS, *partition_keys)
            and (
                pa.types.is_integer(table.column(c).type)
                or pa.types.is_floating(table.column(c).type)
            )
        ]
        if not dims:
            raise UserError(f"{raw}: no numeric value column beside series and ts")
        series = table.column("series").to_pylist()
        records += len(series)
        keep = span.mask(ts)
        outside += int((~keep).sum())
        idx = np.flatnonzero(keep)
        for d in dims:
            v = table.column(d).to_numpy(zero_copy_only=False).astype(np.float64)[idx]
            v[~np.isfinite(v)] = np.nan
            label = (lambda s: s) if dims == ["value"] else (lambda s, d=d: f"{s}[{d}]")
            names.extend(label(series[i]) for i in idx)
            ts_parts.append(ts[idx])
            value_parts.append(v)
    ts_all = np.concatenate(ts_parts) if ts_parts else np.zeros(0)
    values_all = np.concatenate(value_parts) if value_parts else np.zeros(0)
    grouped, stamps = group_points(names, ts_all, values_all)
    source = Source("parquet", paths=list(paths), start=span.start, end=span.end)
    return History(grouped, stamps, source, records=records, outside=outside)


# ----------------------------------------------------------------------------- the CLI's part


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The history options `tsguard train` and `tsguard promote` share."""
    from stream.cli import env_default

    g = p.add_argument_group("history (the metrics topic, or long-form Parquet in --data)")
    g.add_argument(
        "--from-kafka",
        action="store_true",
        help="read a time slice of the metrics topic (needs --bootstrap and --since or --from-ts)",
    )
    g.add_argument(
        "--bootstrap",
        default=env_default("bootstrap"),
        metavar="H:P",
        help="Kafka bootstrap servers (env TSGUARD_BOOTSTRAP)",
    )
    g.add_argument("--topic", default=None, help="metrics topic (default tsguard.metrics)")
    g.add_argument("--since", metavar="D", help="the last D up to --until or now: 30m, 12h, 7d, 2w")
    g.add_argument("--from-ts", metavar="T", help="start: epoch seconds or ISO 8601 (with zone)")
    g.add_argument("--until", metavar="T", help="end (exclusive): epoch seconds or ISO 8601")


def history_args_given(args: argparse.Namespace) -> bool:
    return bool(args.from_kafka or args.since or args.from_ts or args.until)


def kafka_source(args: argparse.Namespace) -> Source:
    """The Kafka slice the options ask for (absolute times), checked."""
    from stream.settings import Topics

    if not args.bootstrap:
        raise UserError("--from-kafka needs --bootstrap H:P (or TSGUARD_BOOTSTRAP)")
    span = time_range(args.since, args.from_ts, args.until)
    if span.start is None:
        raise UserError("--from-kafka needs --since D or --from-ts T: a bounded slice")
    end = span.end if span.end is not None else time.time()
    return Source("kafka", bootstrap=args.bootstrap, topic=args.topic or Topics().metrics,
                  start=span.start, end=end)  # fmt: skip


def read_source(source: Source, progress: bool = True) -> History:
    """Read a recorded or requested source; a source with no usable point is a user error."""
    started = time.monotonic()
    if source.kind == "kafka":
        from training.kafka_history import read_topic_slice

        history = read_topic_slice(source, progress=progress)
    elif source.kind == "parquet":
        history = read_parquet(source.paths, source.range)
    else:
        raise UserError(f"unknown history source {source.kind!r}")
    history.seconds = time.monotonic() - started
    if not history.series:
        where = source.topic if source.kind == "kafka" else ", ".join(source.paths)
        raise UserError(
            f"no metric points in {where} for {source.range.describe()} "
            f"({history.records} records read, {sum(history.invalid.values())} invalid, "
            f"{history.outside} outside the range)"
        )
    return history


@dataclass
class RealData:
    """The real (not generated) series a model trains on, and what was held back of each."""

    series: list[Series]  # whole series, time-ordered
    holdout_starts: list[int]  # index where each series' held-back tail starts
    summary: dict[str, Any]
    history: History | None = None  # the source's series with their timestamps, when read

    def training_part(self) -> list[Series]:
        return [Series(s.name, s.values[:k]) for s, k in zip(self.series, self.holdout_starts,
                                                               strict=True)]  # fmt: skip


def real_data(files: list[str], source: Source | None, holdout: float, min_length: int,
              progress: bool = True) -> RealData:  # fmt: skip
    """Series of the wide CSV/Parquet `files` and of the history `source`, and their held-back
    tails (the last `holdout` of each). History series too short to train on are left out and
    counted; a short file series is an error (training/datasets.py)."""
    from training.datasets import load_series

    # A file series must still fill a window once its tail is held back.
    need = int(math.ceil(min_length / max(1e-9, 1.0 - holdout)))
    series = load_series(files, min_length=need) if files else []
    summary: dict[str, Any] = {"files": list(files), "file_series": len(series)}
    if source is not None:
        history = read_source(source, progress=progress)
        kept = [s for s in history.series if np.isfinite(s.values).sum() >= need]
        summary["history"] = history.summary() | {"too_short": len(history.series) - len(kept)}
        if not kept:
            raise UserError(
                f"every series of {source.kind} history is shorter than {need} observed points; "
                "read a longer slice (--since) or train a smaller --window"
            )
        series += kept
    _, starts = split_holdout(series, holdout)
    summary["holdout"] = holdout
    return RealData(series, starts, summary, history if source is not None else None)
