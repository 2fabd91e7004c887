"""The metrics message codec: every form in the contract decodes, everything else is rejected
with a bounded reason (which becomes the dead-letter reason and metric label)."""

import doctest
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stream.influx
from detector.messages import DeadLetter, InvalidReason
from stream.codec import InvalidMessage, Point, decode_points, parse_ts

INVALID_REASONS = tuple(InvalidReason)  # the metric's label values


def test_single_point_epoch():
    (p,) = decode_points(b'{"series": "web-01/cpu", "ts": 1700000000.0, "value": 0.42}')
    assert p == Point("web-01/cpu", 1700000000.0, ("value",), (0.42,))


def test_multivariate_iso_timestamp_dims_sorted():
    raw = b'{"series": "m-1", "ts": "2024-05-01T12:00:00Z", "values": {"mem": 0.7, "cpu": 0.4}}'
    (p,) = decode_points(raw)
    assert p.ts == 1714564800.0
    assert p.dims == ("cpu", "mem") and p.values == (0.4, 0.7)


def test_array_of_points_and_unknown_fields_ignored():
    raw = json.dumps([
        {"series": "a", "ts": 1, "value": 1, "host": "x"},
        {"series": "b", "ts": 2, "value": 2, "unit": "ms"},
    ]).encode()  # fmt: skip
    assert [p.series for p in decode_points(raw)] == ["a", "b"]


@pytest.mark.parametrize(
    "raw", [b'{"series":"a","ts":1,"value":null}', b'{"series":"a","ts":1,"value":NaN}']
)
def test_null_and_nan_are_missing(raw):
    (p,) = decode_points(raw)
    assert math.isnan(p.values[0])


def test_telegraf_line_protocol_each_numeric_field_a_series():
    raw = (
        b"# a comment\n"
        b'cpu,host=web-01,cpu=cpu0 usage_idle=91.5,usage_user=3i,up=true,state="ok" 1700000000000000000\n'
        b"disk,path=/var\\ lib,host=db-01 used\\ percent=42.5 1700000000123456789"
    )
    assert decode_points(raw) == [
        Point("web-01/cpu_usage_idle{cpu=cpu0}", 1700000000.0, ("value",), (91.5,)),
        Point("web-01/cpu_usage_user{cpu=cpu0}", 1700000000.0, ("value",), (3.0,)),
        Point("web-01/cpu_up{cpu=cpu0}", 1700000000.0, ("value",), (1.0,)),
        Point("db-01/disk_used percent{path=/var lib}", 1700000000.1234567, ("value",), (42.5,)),
    ]


def test_telegraf_json_single_and_batch():
    one = {"name": "mem", "tags": {"host": "h"}, "fields": {"used": 7, "ok": False, "s": "x"},
           "timestamp": 1700000000}  # fmt: skip
    expected = [Point("h/mem_used", 1700000000.0, ("value",), (7.0,)),
                Point("h/mem_ok", 1700000000.0, ("value",), (0.0,))]  # fmt: skip
    assert decode_points(json.dumps(one).encode()) == expected
    batch = {"metrics": [one, {**one, "timestamp": 1700000060000}]}  # milliseconds
    assert [p.ts for p in decode_points(json.dumps(batch).encode())] == [1700000000.0] * 2 + [
        1700000060.0
    ] * 2


def test_influx_doctests():
    result = doctest.testmod(stream.influx)
    assert result.attempted > 0 and result.failed == 0


def test_iso_offset_timestamp():
    assert parse_ts("2024-05-01T14:00:00+02:00") == 1714564800.0


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe{", "invalid_utf8"),
        (b"42", "not_an_object"),
        (b"[]", "empty"),
        (b'{"ts": 1, "value": 1}', "bad_series"),
        (b'{"series": "", "ts": 1, "value": 1}', "bad_series"),
        (b'{"series": 5, "ts": 1, "value": 1}', "bad_series"),
        (b'{"series": "a", "value": 1}', "missing_ts"),
        (b'{"series": "a", "ts": "yesterday", "value": 1}', "bad_ts"),
        (b'{"series": "a", "ts": "2024-05-01T12:00:00", "value": 1}', "bad_ts"),
        (b'{"series": "a", "ts": true, "value": 1}', "bad_ts"),
        (b'{"series": "a", "ts": 1700000000000, "value": 1}', "ts_out_of_range"),
        (b'{"series": "a", "ts": -5, "value": 1}', "ts_out_of_range"),
        (b'{"series": "a", "ts": 1}', "missing_value"),
        (b'{"series": "a", "ts": 1, "value": "high"}', "bad_value"),
        (b'{"series": "a", "ts": 1, "value": true}', "bad_value"),
        (b'{"series": "a", "ts": 1, "value": 1e300}', "value_out_of_range"),
        (b'{"series": "a", "ts": 1, "value": Infinity}', "invalid_json"),
        (b'{"series": "a", "ts": 1, "values": {}}', "bad_value"),
        (b'{"series": "a", "ts": 1, "values": [1, 2]}', "bad_value"),
        (b'[{"series": "a", "ts": 1, "value": 1}, 7]', "not_an_object"),
        # Telegraf's line protocol and JSON (stream/influx.py)
        (b"cpu usage=1", "missing_ts"),  # tsguard does not invent a point's time
        (b"cpu usage=high 1700000000", "bad_value"),
        (b'cpu state="ok" 1700000000', "missing_value"),
        (b"cpu usage=1e39 1700000000", "value_out_of_range"),
        (b"cpu usage=1 yesterday", "invalid_json"),  # neither JSON nor line protocol
        (b"hello world", "invalid_json"),
        (b'{"name": "cpu", "fields": {"v": 1}}', "missing_ts"),
        (b'{"name": "cpu", "fields": {"v": [1]}, "timestamp": 1}', "bad_value"),
        (b'{"name": "cpu", "tags": {"n": 1}, "fields": {"v": 1}, "timestamp": 1}', "bad_series"),
        (b'{"metrics": [1]}', "not_an_object"),
    ],
)
def test_rejections_have_reasons(raw, reason):
    with pytest.raises(InvalidMessage) as exc:
        decode_points(raw)
    assert exc.value.reason == reason
    assert reason in INVALID_REASONS


def test_limits():
    with pytest.raises(InvalidMessage, match="too_large"):
        decode_points(b" " * 100 + b"{}", max_bytes=50)
    many = json.dumps([{"series": "a", "ts": i, "value": 1} for i in range(11)]).encode()
    with pytest.raises(InvalidMessage, match="too_large"):
        decode_points(many, max_points=10)
    wide = json.dumps({"series": "a", "ts": 1, "values": {f"d{i}": 1 for i in range(9)}}).encode()
    with pytest.raises(InvalidMessage, match="too_many_dimensions"):
        decode_points(wide, max_dims=8)
    with pytest.raises(InvalidMessage, match="bad_series"):
        decode_points(json.dumps({"series": "x" * 257, "ts": 1, "value": 1}).encode())
    with pytest.raises(InvalidMessage, match="empty"):
        decode_points(None)


def test_dead_letter_record_keeps_payload():
    err = InvalidMessage("bad_value", "value must be a number")
    rec = json.loads(DeadLetter.of(err, "tsguard.metrics", 3, 17, b'{"x": 1}').encode())
    assert rec["error"].startswith("bad_value") and rec["reason"] == "bad_value"
    assert (rec["topic"], rec["partition"], rec["offset"], rec["payload"]) == (
        "tsguard.metrics",
        3,
        17,
        '{"x": 1}',
    )
    binary = json.loads(DeadLetter.of(err, "t", 0, 0, b"\xff\x00").encode())
    assert binary["payload_encoding"] == "base64" and binary["payload"] == "/wA="


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_never_crash(raw):
    try:
        points = decode_points(raw)
    except InvalidMessage as exc:
        assert exc.reason in INVALID_REASONS
    else:
        assert points and all(isinstance(p, Point) for p in points)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["series", "ts", "value", "values", "x"]), json_values, max_size=5
    )
)
def test_fuzz_objects_decode_or_reject(obj):
    raw = json.dumps(obj).encode()
    try:
        (p,) = decode_points(raw)
    except InvalidMessage as exc:
        assert exc.reason in INVALID_REASONS
    else:
        assert isinstance(p.series, str) and 0 < len(p.series) <= 256
        assert 0.0 <= p.ts <= 4102444800.0
        assert all(math.isnan(v) or abs(v) <= 3.4e38 for v in p.values)
