"""The one JSON codec: metric messages in, anomaly events and dead-letter records out.

A metric message value is a point or an array of points:
    {"series": "web-01/cpu", "ts": 1700000000.0, "value": 0.42}
    {"series": "m-1", "ts": "2024-05-01T12:00:00Z", "values": {"cpu": 0.4, "mem": 0.7}}
`ts` is epoch seconds or ISO 8601; null (or NaN) is a missing value; unknown fields are ignored.
Anything else raises `InvalidMessage` with a short, bounded `reason` (a metric label) and a detail.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, NamedTuple

import orjson

MAX_SERIES_ID = 256
MAX_DIM_NAME = 64
FLOAT32_MAX = 3.4e38
# Timestamps outside 1970..2100 are almost always unit mistakes (ms or us since the epoch).
TS_MIN, TS_MAX = 0.0, 4102444800.0
UNIVARIATE = ("value",)


class InvalidMessage(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Point(NamedTuple):
    series: str
    ts: float
    dims: tuple[str, ...]
    values: tuple[float, ...]  # NaN = missing


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Python producers write NaN for missing values (json.dumps default); accept that, nothing else.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage("invalid_utf8", str(exc)) from None
    try:
        return json.loads(text, parse_constant=_nan_only)
    except ValueError as exc:
        raise InvalidMessage("invalid_json", str(exc)[:200]) from None


def _nan_only(token: str) -> float:
    if token == "NaN":
        return math.nan
    raise ValueError(f"{token} is not a valid metric value")


def parse_ts(raw: Any) -> float:
    if isinstance(raw, bool) or raw is None:
        raise InvalidMessage("bad_ts", f"ts must be epoch seconds or ISO 8601, got {raw!r}")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
        except ValueError:
            raise InvalidMessage("bad_ts", f"unparseable timestamp {raw[:64]!r}") from None
        if dt.tzinfo is None:
            raise InvalidMessage("bad_ts", f"timestamp {raw[:64]!r} has no timezone")
        ts = dt.timestamp()
    else:
        raise InvalidMessage("bad_ts", f"ts must be a number or string, got {type(raw).__name__}")
    if not (TS_MIN <= ts <= TS_MAX):  # also rejects NaN and inf
        raise InvalidMessage("ts_out_of_range", f"ts {ts!r} is not epoch seconds in 1970..2100")
    return ts


def _value(raw: Any, name: str) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidMessage(
            "bad_value", f"{name} must be a number or null, got {type(raw).__name__}"
        )
    v = float(raw)
    if math.isnan(v):
        return v
    if not abs(v) <= FLOAT32_MAX:
        raise InvalidMessage("value_out_of_range", f"{name}={raw!r} is not a finite float32")
    return v


def _point(obj: Any, max_dims: int) -> Point:
    if not isinstance(obj, dict):
        raise InvalidMessage(
            "not_an_object", f"a point must be a JSON object, got {type(obj).__name__}"
        )
    series = obj.get("series")
    if not isinstance(series, str) or not series:
        raise InvalidMessage("bad_series", "series must be a non-empty string")
    if len(series) > MAX_SERIES_ID:
        raise InvalidMessage("bad_series", f"series id longer than {MAX_SERIES_ID} characters")
    if "ts" not in obj:
        raise InvalidMessage("missing_ts", "point has no ts")
    ts = parse_ts(obj["ts"])
    if "values" in obj:
        values = obj["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidMessage(
                "bad_value", "values must be a non-empty object {dimension: number}"
            )
        if len(values) > max_dims:
            raise InvalidMessage("too_many_dimensions", f"{len(values)} dimensions > {max_dims}")
        dims = tuple(sorted(values))
        for d in dims:
            if len(d) > MAX_DIM_NAME:
                raise InvalidMessage("bad_value", f"dimension name longer than {MAX_DIM_NAME}")
        return Point(series, ts, dims, tuple(_value(values[d], d) for d in dims))
    if "value" in obj:
        return Point(series, ts, UNIVARIATE, (_value(obj["value"], "value"),))
    raise InvalidMessage("missing_value", "point has neither value nor values")


def decode_points(
    raw: bytes | None, max_bytes: int = 1_000_000, max_points: int = 10_000, max_dims: int = 64
) -> list[Point]:
    """Decode one Kafka message value into points. All-or-nothing: one bad point rejects the message,
    so a producer's batch is never half-applied."""
    if raw is None:
        raise InvalidMessage("empty", "message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidMessage("too_large", f"{len(raw)} bytes > {max_bytes}")
    obj = _loads(raw)
    if isinstance(obj, list):
        if not obj:
            raise InvalidMessage("empty", "empty array of points")
        if len(obj) > max_points:
            raise InvalidMessage("too_large", f"{len(obj)} points > {max_points}")
        return [_point(o, max_dims) for o in obj]
    return [_point(obj, max_dims)]


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def dead_letter_record(
    error: InvalidMessage | str, topic: str, partition: int, offset: int, payload: bytes | None
) -> bytes:
    """The contract's dead-letter value. The payload is kept as text when it is UTF-8, else base64."""
    if payload is None:
        text: str | None = None
        encoding = "none"
    else:
        try:
            text, encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            import base64

            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    reason = error.reason if isinstance(error, InvalidMessage) else "error"
    return dumps(
        {
            "error": str(error),
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "payload": text,
            "payload_encoding": encoding,
        }
    )
