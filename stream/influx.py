"""Metrics as Telegraf writes them to Kafka: InfluxDB line protocol (its default `data_format`)
and Telegraf's JSON (`data_format = "json"`), read as tsguard points (stream/codec.py).

A metric is a measurement with tags and fields; every numeric field is one univariate series:
`host/measurement_field{tag=value,...}`, the `host` tag as the prefix that groups a host's
series into one incident (stream/incidents.py), the other tags sorted. Booleans are 1 and 0;
string fields are not series and are left out. Times: line protocol's integer timestamp, and
Telegraf JSON's `timestamp`, in seconds, milliseconds, microseconds or nanoseconds (read from
its size, as `json_timestamp_units` and the precision vary); a metric without one is rejected
(tsguard does not invent a point's time).

Line protocol (https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/):
`measurement[,tag=value...] field=value[,field=value...] [timestamp]`, commas, spaces and `=`
escaped with a backslash in names, string values double-quoted, integers with a trailing `i`
(unsigned `u`), booleans `t`, `true`, `f`, `false` (any case as written by the spec), lines
starting with `#` comments.

>>> line_protocol_points(
...     'cpu,host=web-01,cpu=cpu0 usage_idle=91.5,up=t,note="ok" 1700000000000000000')
[('web-01/cpu_usage_idle{cpu=cpu0}', 1700000000.0, 91.5), ('web-01/cpu_up{cpu=cpu0}', 1700000000.0, 1.0)]
"""

from __future__ import annotations

import re
from typing import Any

from detector.messages import InvalidMessage, InvalidReason, epoch_seconds, parse_ts

# Measurement and tags run to the first unescaped space, the measurement to the first comma.
_KEYS = re.compile(r"(?:[^ \\]|\\.)+")
_MEASUREMENT = re.compile(r"(?:[^,\\]|\\.)+")
_NAME = r"(?:[^,= \\]|\\.)+"  # a tag key or value, a field key
_TAG = re.compile(r",(" + _NAME + r")=(" + _NAME + r")")
_FIELD = re.compile(r"(" + _NAME + r')=("(?:[^"\\]|\\.)*"|[^,\s"]+)')
_TIMESTAMP = re.compile(r" +(-?\d+)\s*")
_UNESCAPE = re.compile(r"\\(.)")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+[iu]")
_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}

# (series, ts, value): codec.py makes them points and checks the values' range.
Sample = tuple[str, float, float]


class NotLineProtocol(ValueError):
    """The text does not have line protocol's shape (the caller says it is not JSON either)."""


def _unescape(name: str) -> str:
    return _UNESCAPE.sub(r"\1", name) if "\\" in name else name


def _field_value(raw: str) -> float | None:
    """A field's value as a float; None for a string field (not a series)."""
    if raw.startswith('"'):
        return None
    if raw in _TRUE or raw in _FALSE:
        return float(raw in _TRUE)
    if _INTEGER.fullmatch(raw):
        return float(raw[:-1])
    if _FLOAT.fullmatch(raw):
        return float(raw)
    raise InvalidMessage(InvalidReason.BAD_VALUE, f"field value {raw[:40]!r} is not a number")


def series_id(measurement: str, field: str, tags: dict[str, str]) -> str:
    """`host/measurement_field{tag=value,...}` (see the module docstring).

    >>> series_id("disk", "used_percent", {"path": "/", "host": "db-01", "fstype": "ext4"})
    'db-01/disk_used_percent{fstype=ext4,path=/}'
    """
    name = f"{measurement}_{field}"
    rest = sorted((k, v) for k, v in tags.items() if k != "host")
    if rest:
        name += "{" + ",".join(f"{k}={v}" for k, v in rest) + "}"
    host = tags.get("host")
    return f"{host}/{name}" if host else name


def _samples(
    measurement: str, tags: dict[str, str], fields: dict[str, float | None], stamp: Any
) -> list[Sample]:
    if stamp is None:
        raise InvalidMessage(InvalidReason.MISSING_TS, f"metric {measurement!r} has no timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise InvalidMessage(InvalidReason.BAD_TS, f"timestamp {stamp!r} is not a number")
    ts = parse_ts(epoch_seconds(stamp))
    return [
        (series_id(measurement, field, tags), ts, value)
        for field, value in fields.items()
        if value is not None  # a string field, or a JSON null: no series
    ]


def line_protocol_points(text: str) -> list[Sample]:
    """The samples of one or more lines of line protocol. Raises NotLineProtocol when the text
    does not have its shape, InvalidMessage when it does but a part is wrong."""
    out: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keys = _KEYS.match(line)
        if keys is None or line[keys.end() : keys.end() + 1] != " ":
            raise NotLineProtocol("no measurement and field set")
        head = keys.group(0)
        m = _MEASUREMENT.match(head)
        if m is None:
            raise NotLineProtocol("no measurement")
        measurement, pos = _unescape(m.group(0)), m.end()
        tags = {}
        while pos < len(head):
            t = _TAG.match(head, pos)
            if t is None:
                raise NotLineProtocol(f"bad tag set in {head[:60]!r}")
            tags[_unescape(t.group(1))] = _unescape(t.group(2))
            pos = t.end()
        rest = line[keys.end() :].lstrip(" ")
        fields: dict[str, float | None] = {}
        pos = 0
        while True:
            f = _FIELD.match(rest, pos)
            if f is None:
                raise NotLineProtocol(f"bad field set in {rest[:60]!r}")
            fields[_unescape(f.group(1))] = _field_value(f.group(2))
            pos = f.end()
            if rest[pos : pos + 1] != ",":
                break
            pos += 1
        stamp = _TIMESTAMP.fullmatch(rest, pos)
        if stamp is None and rest[pos:].strip():
            raise NotLineProtocol(f"unreadable after the fields: {rest[pos:][:40]!r}")
        out.extend(_samples(measurement, tags, fields, stamp and int(stamp.group(1))))
    if not out:
        raise InvalidMessage(InvalidReason.MISSING_VALUE, "no numeric field in the metrics")
    return out


def is_telegraf_json(obj: Any) -> bool:
    """A Telegraf JSON metric `{"name", "tags", "fields", "timestamp"}` or its batch
    `{"metrics": [...]}` (and not a tsguard point, which has "series")."""
    return (
        isinstance(obj, dict)
        and "series" not in obj
        and (("name" in obj and "fields" in obj) or isinstance(obj.get("metrics"), list))
    )


def telegraf_json_points(obj: dict) -> list[Sample]:
    """The samples of a Telegraf JSON metric or batch (`is_telegraf_json`)."""
    metrics = obj["metrics"] if isinstance(obj.get("metrics"), list) else [obj]
    out: list[Sample] = []
    for metric in metrics:
        if not isinstance(metric, dict):
            raise InvalidMessage(InvalidReason.NOT_AN_OBJECT, "a Telegraf metric must be an object")
        name, tags, fields = metric.get("name"), metric.get("tags") or {}, metric.get("fields")
        if not isinstance(name, str) or not name:
            raise InvalidMessage(InvalidReason.BAD_SERIES, "a Telegraf metric needs a name")
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise InvalidMessage(InvalidReason.BAD_SERIES, "tags must be an object of strings")
        if not isinstance(fields, dict):
            raise InvalidMessage(InvalidReason.BAD_VALUE, "fields must be an object")
        numeric: dict[str, float | None] = {}
        for key, value in fields.items():
            if isinstance(value, int | float):  # bool included: 1 and 0
                numeric[key] = float(value)
            elif value is not None and not isinstance(value, str):
                raise InvalidMessage(InvalidReason.BAD_VALUE, f"field {key!r} is not a number")
        out.extend(_samples(name, tags, numeric, metric.get("timestamp")))
    if not out:
        raise InvalidMessage(InvalidReason.MISSING_VALUE, "no numeric field in the metrics")
    return out
