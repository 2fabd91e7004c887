"""`tsguard replay`: produce a CSV of timestamp,value[,value...] into the metrics topic."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import UserError
from detector.messages import dumps


def _epoch(raw: str, where: str) -> float:
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{where}: timestamp {raw!r} is neither epoch seconds nor ISO 8601"
        ) from None
    if dt.tzinfo is None:  # NAB and most exports write naive UTC
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _number(raw: str, where: str) -> float | None:
    raw = raw.strip()
    if raw == "" or raw.lower() in ("nan", "null", "none"):
        return None
    try:
        v = float(raw)
    except ValueError:
        raise UserError(f"{where}: value {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: value {raw!r} is not finite")
    return v


def read_points(path: Path, series: str) -> Iterator[dict]:
    """Contract messages from a CSV whose first row is a header (timestamp, then value columns)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with path.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or len(header) < 2:
            raise UserError(f"{path}: expected a header row 'timestamp,value[,value...]'")
        names = [h.strip() for h in header[1:]]
        for lineno, row in enumerate(rows, start=2):
            if not row:
                continue
            where = f"{path}:{lineno}"
            if len(row) != len(header):
                raise UserError(f"{where}: expected {len(header)} columns, got {len(row)}")
            ts = _epoch(row[0], where)
            values = [_number(v, where) for v in row[1:]]
            if len(values) == 1:
                yield {"series": series, "ts": ts, "value": values[0]}
            else:
                yield {"series": series, "ts": ts, "values": dict(zip(names, values, strict=True))}


def replay_csv(
    path: Path, series: str | None, topic: str, bootstrap: str, rate: float = 0.0
) -> int:
    from stream.clients import make_producer
    from stream.settings import Settings

    series = series or path.stem
    points = read_points(path, series)
    first = next(points, None)  # validate before connecting
    if first is None:
        raise UserError(f"{path}: no data rows")
    producer = make_producer(Settings(bootstrap=bootstrap))
    key = series.encode()
    n = 0
    start = time.monotonic()
    try:
        producer.send(topic, key, dumps(first))
        n = 1
        for msg in points:
            producer.send(topic, key, dumps(msg))
            n += 1
            if rate > 0:
                ahead = n / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
    return n
