"""The batch fast path (codec.decode_batch + WindowStore.add_batch) does exactly what the per-point
path (decode_points + WindowStore.add on each point) does: same points, same rejections, same
windows in the same pending order, same evictions."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import InvalidMessage, decode_batch, decode_points
from stream.windows import ACCEPTED, DIMENSION_MISMATCH, WindowStore

SERIES = ["a", "b", "c", "d", "e"]


def message(draw_kind: str, series: str, ts: float, value: float) -> bytes:
    if draw_kind == "uni":
        return json.dumps({"series": series, "ts": ts, "value": value}).encode()
    if draw_kind == "int":
        return json.dumps({"series": series, "ts": int(ts), "value": int(value)}).encode()
    if draw_kind == "null":
        return json.dumps({"series": series, "ts": ts, "value": None}).encode()
    if draw_kind == "nan":
        return json.dumps({"series": series, "ts": ts, "value": math.nan}).encode()
    if draw_kind == "multi":
        return json.dumps({"series": series, "ts": ts, "values": {"cpu": value}}).encode()
    if draw_kind == "multi2":
        return json.dumps({"series": series, "ts": ts, "values": {"x": value, "y": 1}}).encode()
    if draw_kind == "array":
        pts = [{"series": series, "ts": ts + i * 0.5, "value": value + i} for i in range(3)]
        return json.dumps(pts).encode()
    if draw_kind == "iso":
        return json.dumps({"series": series, "ts": "2024-05-01T12:00:00Z", "value": value}).encode()
    if draw_kind == "bad":
        return b'{"series": "' + series.encode() + b'", "ts": 1, "value": "high"}'
    if draw_kind == "huge":
        return b'{"series": "x", "ts": 1, "value": 1' + b"0" * 400 + b"}"
    return b"not json"


KINDS = ["uni"] * 12 + ["int", "null", "nan", "multi", "multi2", "array", "iso"]
KINDS += ["bad", "huge", "junk"]


@st.composite
def streams(draw):
    n = draw(st.integers(1, 120))
    clock = {s: 1000.0 for s in SERIES}
    out = []
    for _ in range(n):
        s = draw(st.sampled_from(SERIES))
        step = draw(st.sampled_from([1.0, 1.0, 1.0, 1.0, 0.0, -2.0]))  # dup / late sometimes
        clock[s] = max(0.0, clock[s] + step)
        kind = draw(st.sampled_from(KINDS))
        value = draw(st.floats(-1e3, 1e3, allow_nan=False))
        out.append(message(kind, s, clock[s], value))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return out, cuts


def partition_of(message: int) -> int:
    return message % 3


def run_per_point(store: WindowStore, raws: list[bytes]):
    errors, counts = [], {"accepted": 0, "skipped": {}, "mismatched": {}, "touched": set()}
    for i, raw in enumerate(raws):
        try:
            points = decode_points(raw)
        except InvalidMessage as exc:
            errors.append((i, exc.reason))
            continue
        for p in points:
            status = store.add(p, now=0.0, partition=partition_of(i))
            if status is ACCEPTED:
                counts["accepted"] += 1
                counts["touched"].add(p.series)
            elif status is DIMENSION_MISMATCH:
                counts["mismatched"][i] = counts["mismatched"].get(i, 0) + 1
            else:
                counts["skipped"][status] = counts["skipped"].get(status, 0) + 1
    return errors, counts


def pending(store: WindowStore) -> dict:
    out = {}
    for dims, pend in store.pending_batches():
        n = len(pend)
        out[dims] = (pend.windows[:n].copy(), pend.ts[:n].copy(), list(pend.series))
        store.clear_pending(dims)
    return out


def table(store: WindowStore) -> list:
    return [(name, s.dims, s.slot, s.partition) for name, s in store.series.items()]


def assert_same_pending(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for d in x:
        np.testing.assert_array_equal(x[d][0], y[d][0])  # NaN == NaN here
        np.testing.assert_array_equal(x[d][1], y[d][1])
        assert x[d][2] == y[d][2]


@settings(max_examples=300, deadline=None)
@given(
    streams(),
    st.integers(2, 6),
    st.integers(1, 4),
    st.sampled_from([2, 3, 100]),
    st.integers(1, 6),
)
def test_add_batch_equals_add_per_point(stream, length, stride, max_series, min_points):
    raws, cuts = stream
    kw = dict(length=length, stride=stride, max_batch=4, max_series=max_series)
    slow = WindowStore(**kw, min_points=min_points)
    fast = WindowStore(**kw, min_points=min_points)
    fast.min_vector_run = 1  # these runs are short: vectorise every one of them
    bounds = [0, *cuts, len(raws)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        chunk = raws[lo:hi]
        errors, counts = run_per_point(slow, chunk)
        cols = decode_batch(chunk)
        res = fast.add_batch(cols, now=0.0, partitions=[partition_of(i) for i in range(len(chunk))])
        assert [(i, e.reason) for i, e in cols.errors] == errors
        assert res.accepted == counts["accepted"]
        assert res.skipped == counts["skipped"]
        assert res.mismatched == counts["mismatched"]
        assert res.touched == counts["touched"]
        # Same LRU order, evictions, slots, and partitions (of each series' first point).
        assert table(fast) == table(slow)
        assert fast.series.evicted == slow.series.evicted
        assert_same_pending(pending(slow), pending(fast))


def test_long_run_many_series_matches_per_point():
    """A steady stream (the vectorised case): thousands of points, windows wrap many times."""
    rng = np.random.default_rng(1)
    raws = []
    for k in range(300):
        for s in rng.permutation(40):
            v = float(rng.normal())
            raws.append(json.dumps({"series": f"s{s}", "ts": 1e9 + k, "value": v}).encode())
    for stride, min_points in ((1, None), (7, None), (16, None), (1, 5), (7, 3)):
        slow = WindowStore(length=16, stride=stride, max_batch=64, min_points=min_points)
        fast = WindowStore(length=16, stride=stride, max_batch=64, min_points=min_points)
        for lo in range(0, len(raws), 997):
            run_per_point(slow, raws[lo : lo + 997])
            fast.add_batch(decode_batch(raws[lo : lo + 997]), now=0.0)
            assert_same_pending(pending(slow), pending(fast))


def test_live_polls_one_point_per_series_match_per_point():
    """A live stream's polls: every series brings one point per poll (the vectorised path's
    one-point case), across ring wrap-around and the first partial windows."""
    rng = np.random.default_rng(2)
    for stride, min_points in ((1, 5), (3, None), (16, None)):
        slow = WindowStore(length=16, stride=stride, max_batch=8, min_points=min_points)
        fast = WindowStore(length=16, stride=stride, max_batch=8, min_points=min_points)
        for k in range(60):
            order = rng.permutation(40)
            poll = [json.dumps({"series": f"s{s}", "ts": 1e9 + k, "value": float(rng.normal())})
                    .encode() for s in order]  # fmt: skip
            run_per_point(slow, poll)
            fast.add_batch(decode_batch(poll), now=0.0)
            assert_same_pending(pending(slow), pending(fast))


def test_decode_batch_columns():
    raws = [
        b'{"series": "a", "ts": 1, "value": 2}',
        b'{"series": "b", "ts": 2, "values": {"y": 1, "x": null}}',
        None,
        b'[{"series": "c", "ts": 3, "value": null}, {"series": "c", "ts": 4, "value": 5}]',
    ]
    cols = decode_batch(raws)
    assert cols.series == ["a", "b", "c", "c"]
    assert cols.message.tolist() == [0, 1, 3, 3]
    assert cols.ts.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert cols.value[0] == 2.0 and math.isnan(cols.value[2]) and cols.value[3] == 5.0
    assert cols.multi[1].dims == ("x", "y") and math.isnan(cols.multi[1].values[0])
    assert [(i, e.reason) for i, e in cols.errors] == [(2, "empty")]
    assert cols.point(3) == decode_points(raws[3])[1]


def _same_as_per_message(raws: list[bytes | None]) -> None:
    cols = decode_batch(raws)
    points, errors = [], []
    for i, raw in enumerate(raws):
        try:
            points += [(i, p) for p in decode_points(raw)]
        except InvalidMessage as exc:
            errors.append((i, exc.reason))
    assert [(i, e.reason) for i, e in cols.errors] == errors
    assert len(cols) == len(points)
    for r, (i, p) in enumerate(points):
        q = cols.point(r)
        assert int(cols.message[r]) == i
        assert (q.series, q.ts, q.dims) == (p.series, p.ts, p.dims)
        assert np.array_equal(q.values, p.values, equal_nan=True)


def test_decode_batch_uniform_batches_and_their_exceptions():
    ok = [b'{"series": "a", "ts": 1700000000, "value": 2}',
          b'{"series": "b", "ts": 1.5, "value": null, "unit": "ms"}',
          b'{"series": "c", "ts": 2.5, "value": 3.25}']  # fmt: skip
    _same_as_per_message(ok)
    odd = [
        b'{"series": "a", "ts": 1, "value": true}',
        b'{"series": "a", "ts": 1, "value": 1' + b"0" * 400 + b"}",
        b'{"series": "a", "ts": 1' + b"0" * 400 + b', "value": 1}',
        b'{"series": "a", "ts": 1, "value": 1, "values": {"x": 2}}',
        b'{"series": "", "ts": 1, "value": 1}',
        b'{"series": "' + b"x" * 257 + b'", "ts": 1, "value": 1}',
        b'{"series": "a", "ts": 1, "value": 1e39}',
        b'{"series": "a", "ts": -1, "value": 1}',
        b'{"series": "a", "ts": 1}',
        b'{"series": "a", "ts": 1, "value": NaN}',
        b'[{"series": "a", "ts": 1, "value": 1}]',
        None,
    ]
    for bad in odd:  # one odd message among good ones: same result as one by one
        _same_as_per_message([*ok, bad, *ok])
