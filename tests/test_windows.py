"""Per-series ring buffers: snapshots are the right windows, in order, with duplicates,
out-of-order points, missing dimensions and eviction handled."""

import math

import numpy as np
import pytest

from stream.codec import Point
from stream.windows import ACCEPTED, DIMENSION_MISMATCH, DUPLICATE, OUT_OF_ORDER, WindowStore


def pt(series, ts, *values, dims=None):
    dims = dims or (("value",) if len(values) == 1 else tuple(f"d{i}" for i in range(len(values))))
    return Point(series, float(ts), dims, tuple(float(v) for v in values))


def drain(store):
    out = {}
    for dims, pend in store.pending_batches():
        out[dims] = (
            pend.windows[: len(pend)].copy(),
            pend.ts[: len(pend)].copy(),
            list(pend.series),
        )
        store.clear_pending(dims)
    return out


def test_first_window_when_full_then_every_stride():
    store = WindowStore(length=4, stride=2, max_batch=16)
    for t in range(9):
        store.add(pt("s", t, t * 10), now=0)
    w, ts, series = drain(store)[1]
    # windows end at t=3 (first full), 5, 7: each is the last 4 points, oldest first
    assert series == ["s", "s", "s"]
    np.testing.assert_array_equal(ts, [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])
    np.testing.assert_array_equal(w[:, :, 0], ts * 10)


def test_partial_windows_from_min_points_with_missing_older_slots():
    store = WindowStore(length=4, stride=1, max_batch=16, min_points=2)
    for t in range(5):
        store.add(pt("s", t, t * 10), now=0)
    w, ts, series = drain(store)[1]
    # First window at the 2nd point; until the ring is full its older slots are NaN (value and
    # timestamp), oldest first, so the model sees them as a gap before the series began.
    nan = np.nan
    np.testing.assert_array_equal(
        ts, [[nan, nan, 0, 1], [nan, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]]
    )
    np.testing.assert_array_equal(w[:, :, 0], ts * 10)
    assert series == ["s"] * 4


def test_a_reused_slot_starts_empty_again():
    store = WindowStore(length=3, stride=1, max_series=1, min_points=2)
    for t in range(5):
        store.add(pt("old", t, 1.0), now=0)
    drain(store)
    for t in range(2):
        store.add(pt("new", 100 + t, 2.0), now=0)  # evicts "old", takes its slot
    w, ts, _ = drain(store)[1]
    np.testing.assert_array_equal(ts, [[np.nan, 100, 101]])
    np.testing.assert_array_equal(w[:, :, 0], [[np.nan, 2.0, 2.0]])


def test_many_series_interleaved_do_not_mix():
    store = WindowStore(length=3, stride=1, max_batch=4)
    for t in range(5):
        for s in ("a", "b", "c"):
            store.add(pt(s, t, ord(s) * 100 + t), now=0)
    w, _, series = drain(store)[1]
    assert len(series) == 9  # 3 series x windows ending at t=2,3,4 (pending grows past max_batch)
    for row, s in zip(w[:, :, 0], series, strict=True):
        assert np.all(row // 100 == ord(s))
        assert np.all(np.diff(row) == 1)


def test_duplicate_replaces_and_out_of_order_is_dropped():
    store = WindowStore(length=3, stride=1)
    assert store.add(pt("s", 1, 1), 0) == ACCEPTED
    assert store.add(pt("s", 2, 2), 0) == ACCEPTED
    assert store.add(pt("s", 2, 5), 0) == DUPLICATE
    assert store.add(pt("s", 1.5, 9), 0) == OUT_OF_ORDER
    assert store.add(pt("s", 3, 3), 0) == ACCEPTED
    w, ts, _ = drain(store)[1]
    np.testing.assert_array_equal(w[0, :, 0], [1, 5, 3])
    np.testing.assert_array_equal(ts[0], [1, 2, 3])


def test_multivariate_missing_dimension_is_nan_and_new_dimension_rejected():
    store = WindowStore(length=2, stride=1)
    store.add(pt("m", 1, 1, 2, dims=("cpu", "mem")), 0)
    assert store.add(Point("m", 2.0, ("cpu",), (3.0,)), 0) == ACCEPTED
    assert store.add(Point("m", 3.0, ("disk",), (3.0,)), 0) == DIMENSION_MISMATCH
    w, _, _ = drain(store)[2]
    assert w[0, 1, 0] == 3 and math.isnan(w[0, 1, 1])


def test_banks_by_dimensionality():
    store = WindowStore(length=2, stride=1)
    for t in range(2):
        store.add(pt("uni", t, t), 0)
        store.add(pt("bi", t, t, t), 0)
    assert set(drain(store)) == {1, 2}


def test_max_series_evicts_the_idlest():
    store = WindowStore(length=2, stride=1, max_series=100)
    for i in range(100):
        store.add(pt(f"s{i}", 1, 1), 0)
    store.add(pt("s0", 2, 1), 0)  # s0 is now the most recently seen
    store.add(pt("new", 1, 1), 0)
    assert len(store) == 100
    assert "s0" in store and "new" in store and "s1" not in store
    assert store.series.evicted == 1


def test_slots_are_reused_after_eviction():
    store = WindowStore(length=2, stride=1, max_series=10)
    for i in range(1000):
        store.add(pt(f"s{i}", 1, 1), 0)
    assert len(store) <= 10
    assert (
        sum(len(b.pos) for b in store._banks.values()) <= 64
    )  # no growth past the first allocation


def test_bad_configuration():
    with pytest.raises(ValueError):
        WindowStore(length=1)
