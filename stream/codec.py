"""The metrics topic's decoder: Kafka message values in, points out.

A metric message value is a point or an array of points:
    {"series": "web-01/cpu", "ts": 1700000000.0, "value": 0.42}
    {"series": "m-1", "ts": "2024-05-01T12:00:00Z", "values": {"cpu": 0.4, "mem": 0.7}}
`ts` is epoch seconds or ISO 8601 (`parse_ts`); null (or NaN) is a missing value; unknown fields
are ignored. Telegraf's outputs are read too (stream/influx.py): InfluxDB line protocol and its
JSON format, each numeric field a series. Anything else raises `InvalidMessage` with a short, bounded `reason` (a metric label)
and a detail. The message types of every topic, and their encoders, are in detector/messages.py.

Most messages are one plain point: univariate, epoch-seconds ts. `_plain` is the one check for
it, with `_decode_uniform` its column-wise form; what fails it goes through `_point`, which says
exactly what is wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import orjson

from detector.api import TS_MAX, TS_MIN
from detector.messages import InvalidMessage, InvalidReason, parse_ts
from stream.influx import (
    NotLineProtocol,
    Sample,
    is_telegraf_json,
    line_protocol_points,
    telegraf_json_points,
)

MAX_SERIES_ID = 256
MAX_DIM_NAME = 64
FLOAT32_MAX = 3.4e38
UNIVARIATE = ("value",)


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
        raise InvalidMessage(InvalidReason.INVALID_UTF8, str(exc)) from None
    if text.lstrip()[:1] not in ("{", "["):  # not a point or an array: NaN cannot be the reason
        raise InvalidMessage(InvalidReason.INVALID_JSON, "not a JSON object or array")
    try:
        return json.loads(text, parse_constant=_nan_only)
    except ValueError as exc:
        raise InvalidMessage(InvalidReason.INVALID_JSON, str(exc)[:200]) from None


def _nan_only(token: str) -> float:
    if token == "NaN":
        return math.nan
    raise ValueError(f"{token} is not a valid metric value")


def _value(raw: Any, name: str) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidMessage(
            InvalidReason.BAD_VALUE, f"{name} must be a number or null, got {type(raw).__name__}"
        )
    try:
        v = float(raw)
    except OverflowError:  # an integer beyond float range (the NaN fallback parser keeps them)
        v = math.inf
    if math.isnan(v):
        return v
    if not abs(v) <= FLOAT32_MAX:
        raise InvalidMessage(
            InvalidReason.VALUE_OUT_OF_RANGE, f"{name}={raw!r} is not a finite float32"
        )
    return v


def _plain(obj: dict) -> tuple[str, float | int, float | int | None] | None:
    """(series, ts, value) of a plain point: univariate, epoch-seconds ts, every field valid
    (value None or NaN = missing). None for anything else, valid or not: `_point` then checks
    field by field and says exactly what is wrong. `_decode_uniform` is the same check column
    by column."""
    s = obj.get("series")
    t = obj.get("ts")
    v = obj.get("value", _ABSENT)
    tv = type(v)
    if (
        type(s) is str
        and 0 < len(s) <= MAX_SERIES_ID
        and (type(t) is float or type(t) is int)
        and TS_MIN <= t <= TS_MAX
        and (
            v is None
            or ((tv is float or tv is int) and (-FLOAT32_MAX <= v <= FLOAT32_MAX or v != v))
        )
        and "values" not in obj
    ):
        return s, t, v
    return None


_ABSENT = object()


def _series(series: Any) -> str:
    """A point's series id: a non-empty string of at most MAX_SERIES_ID characters."""
    if not isinstance(series, str) or not series:
        raise InvalidMessage(InvalidReason.BAD_SERIES, "series must be a non-empty string")
    if len(series) > MAX_SERIES_ID:
        raise InvalidMessage(
            InvalidReason.BAD_SERIES, f"series id longer than {MAX_SERIES_ID} characters"
        )
    return series


def _point(obj: Any, max_dims: int) -> Point:
    if type(obj) is dict:
        plain = _plain(obj)
        if plain is not None:
            s, t, v = plain
            return Point(s, float(t), UNIVARIATE, (math.nan if v is None else float(v),))
    if not isinstance(obj, dict):
        raise InvalidMessage(
            InvalidReason.NOT_AN_OBJECT, f"a point must be a JSON object, got {type(obj).__name__}"
        )
    series = _series(obj.get("series"))
    if "ts" not in obj:
        raise InvalidMessage(InvalidReason.MISSING_TS, "point has no ts")
    ts = parse_ts(obj["ts"])
    if "values" in obj:
        values = obj["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidMessage(
                InvalidReason.BAD_VALUE, "values must be a non-empty object {dimension: number}"
            )
        if len(values) > max_dims:
            raise InvalidMessage(
                InvalidReason.TOO_MANY_DIMENSIONS, f"{len(values)} dimensions > {max_dims}"
            )
        dims = tuple(sorted(values))
        for d in dims:
            if len(d) > MAX_DIM_NAME:
                raise InvalidMessage(
                    InvalidReason.BAD_VALUE, f"dimension name longer than {MAX_DIM_NAME}"
                )
        return Point(series, ts, dims, tuple(_value(values[d], d) for d in dims))
    if "value" in obj:
        return Point(series, ts, UNIVARIATE, (_value(obj["value"], "value"),))
    raise InvalidMessage(InvalidReason.MISSING_VALUE, "point has neither value nor values")


def _sampled(samples: list[Sample], max_points: int) -> list[Point]:
    """Telegraf's metrics (stream/influx.py) as points, checked as a JSON point's are."""
    if len(samples) > max_points:
        raise InvalidMessage(InvalidReason.TOO_LARGE, f"{len(samples)} points > {max_points}")
    return [Point(_series(s), ts, UNIVARIATE, (_value(v, s),)) for s, ts, v in samples]


def decode_points(
    raw: bytes | None, max_bytes: int = 1_000_000, max_points: int = 10_000, max_dims: int = 64
) -> list[Point]:
    """Decode one Kafka message value into points. All-or-nothing: one bad point rejects the message,
    so a producer's batch is never half-applied."""
    if raw is None:
        raise InvalidMessage(InvalidReason.EMPTY, "message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidMessage(InvalidReason.TOO_LARGE, f"{len(raw)} bytes > {max_bytes}")
    try:
        obj = _loads(raw)
    except InvalidMessage as exc:
        if exc.reason is not InvalidReason.INVALID_JSON:
            raise
        try:  # Telegraf's default output (the bytes are UTF-8: _loads checked)
            samples = line_protocol_points(raw.decode("utf-8"))
        except NotLineProtocol as why:
            raise InvalidMessage(
                InvalidReason.INVALID_JSON, f"{exc.detail}; not line protocol either: {why}"
            ) from None
        return _sampled(samples, max_points)
    if is_telegraf_json(obj):
        return _sampled(telegraf_json_points(obj), max_points)
    if isinstance(obj, list):
        if not obj:
            raise InvalidMessage(InvalidReason.EMPTY, "empty array of points")
        if len(obj) > max_points:
            raise InvalidMessage(InvalidReason.TOO_LARGE, f"{len(obj)} points > {max_points}")
        return [_point(o, max_dims) for o in obj]
    return [_point(obj, max_dims)]


@dataclass
class PointColumns:
    """The points of many messages, column by column: no Python object per point.

    Row i is a point of message `message[i]` (its index in the list given to `decode_batch`);
    rows keep the order of the messages and of the points within each. Univariate points have
    their value in `value`; multivariate points (rare on the hot path) keep their `Point` in
    `multi` under their row, with NaN in `value`. `errors` holds the messages that were rejected
    whole, in message order.
    """

    series: list[str]
    ts: np.ndarray  # float64 [n], epoch seconds
    value: np.ndarray  # float64 [n], NaN = missing (or multivariate row)
    message: np.ndarray  # int64 [n]
    multi: dict[int, Point] = field(default_factory=dict)
    errors: list[tuple[int, InvalidMessage]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    def point(self, row: int) -> Point:
        p = self.multi.get(row)
        if p is not None:
            return p
        return Point(self.series[row], float(self.ts[row]), UNIVARIATE, (float(self.value[row]),))


def decode_batch(
    raws: list[bytes | None],
    max_bytes: int = 1_000_000,
    max_points: int = 10_000,
    max_dims: int = 64,
) -> PointColumns:
    """Decode many message values at once: the same points, and the same rejections, as
    `decode_points` on each, gathered into columns.

    A message that is one valid univariate point with epoch-seconds ts (the common case) costs
    one `orjson.loads` and a few type checks; anything else goes through `decode_points`.

    >>> cols = decode_batch([b'{"series": "a", "ts": 1, "value": 2}', b"nope"])
    >>> cols.series, cols.ts.tolist(), cols.value.tolist(), [(i, e.reason) for i, e in cols.errors]
    (['a'], [1.0], [2.0], [(1, <InvalidReason.INVALID_JSON: 'invalid_json'>)])
    """
    uniform = _decode_uniform(raws, max_bytes)
    if uniform is not None:
        return uniform
    series: list[str] = []
    ts: list = []
    value: list = []
    message: list[int] = []
    multi: dict[int, Point] = {}
    errors: list[tuple[int, InvalidMessage]] = []
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for i, raw in enumerate(raws):
        if raw is not None and len(raw) <= max_bytes:
            try:
                obj = loads(raw)
            except decode_error:
                obj = None
            plain = _plain(obj) if type(obj) is dict else None
            if plain is not None:
                s, t, v = plain
                series.append(s)
                ts.append(t)
                value.append(v)  # None -> NaN in the float64 column
                message.append(i)
                continue
        try:
            points = decode_points(raw, max_bytes, max_points, max_dims)
        except InvalidMessage as exc:
            errors.append((i, exc))
            continue
        for p in points:
            if p.dims != UNIVARIATE:
                multi[len(series)] = p
                value.append(math.nan)
            else:
                value.append(p.values[0])
            series.append(p.series)
            ts.append(p.ts)
            message.append(i)
    return PointColumns(
        series,
        np.array(ts, dtype=np.float64),
        np.array(value, dtype=np.float64),
        np.array(message, dtype=np.int64),
        multi,
        errors,
    )


_NUMBER = {float, int}
_NUMBER_OR_NULL = {float, int, type(None)}


def _decode_uniform(raws: list[bytes | None], max_bytes: int) -> PointColumns | None:
    """The steady state of a metrics topic, column at a time: every message a plain point
    (`_plain`'s check, run over a whole column in C: map, set, numpy; not per message in
    Python). None as soon as any message is anything else; `decode_batch` then takes them one
    by one."""
    n = len(raws)
    if not n or None in raws or max(map(len, raws)) > max_bytes:
        return None
    try:
        objs = list(map(orjson.loads, raws))
    except orjson.JSONDecodeError:
        return None
    if set(map(type, objs)) != {dict}:
        return None
    get = dict.get
    series = list(map(get, objs, repeat("series", n)))
    ts = list(map(get, objs, repeat("ts", n)))
    value = list(map(get, objs, repeat("value", n), repeat(_ABSENT, n)))
    if (
        set(map(type, series)) != {str}
        or not set(map(type, ts)) <= _NUMBER
        or not set(map(type, value)) <= _NUMBER_OR_NULL
        or any(map(dict.__contains__, objs, repeat("values", n)))
        or min(map(len, series)) == 0
        or max(map(len, series)) > MAX_SERIES_ID
    ):
        return None
    try:
        ts_col = np.array(ts, dtype=np.float64)
        value_col = np.array(value, dtype=np.float64)  # None -> NaN (missing)
    except OverflowError:  # an integer beyond float range
        return None
    if not (
        ((ts_col >= TS_MIN) & (ts_col <= TS_MAX)).all()
        and not (np.abs(value_col) > FLOAT32_MAX).any()  # (NaN compares False: missing is fine)
    ):
        return None
    return PointColumns(series, ts_col, value_col, np.arange(n, dtype=np.int64))
