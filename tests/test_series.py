"""The series table (stream/series.py): slots per dimensionality, least recently seen eviction,
and the listeners that keep slot-indexed arrays in step."""

from __future__ import annotations

import doctest

import pytest

import detector.rows
import stream.series
from stream.series import SeriesTable

UNI, BI = ("value",), ("cpu", "mem")


def test_doctests() -> None:
    for module in (stream.series, detector.rows):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_each_dimensionality_has_its_own_dense_slots() -> None:
    table = SeriesTable()
    slots = [table.track(f"u{i}", UNI, 0).slot for i in range(3)]
    slots += [table.track(f"b{i}", BI, 0).slot for i in range(2)]
    assert slots == [0, 1, 2, 0, 1]
    table.drop("u1")
    assert table.track("u3", UNI, 0).slot == 1  # a slot given back is taken first
    assert table.track("b2", BI, 0).slot == 2


def test_the_idlest_series_are_evicted_at_the_cap_and_listeners_hear_it() -> None:
    table = SeriesTable(max_series=200)
    taken, gone = [], []
    table.on_taken.append(lambda s: taken.append(s.slot))
    table.on_gone.append(lambda name, s: gone.append((name, s.slot)))
    for i in range(200):
        table.track(f"s{i}", UNI, partition=i % 4)
    assert table.touch("s0").partition == 0 and table.touch("s1") is not None
    assert table.touch("missing") is None
    new = table.track("new", UNI, partition=3)  # full: the idlest 1% (2 series) go
    assert gone == [("s2", 2), ("s3", 3)] and table.evicted == 2
    assert new.slot in (2, 3) and taken[-1] == new.slot and len(table) == 199
    assert list(table)[:2] == ["s4", "s5"] and list(table)[-3:] == ["s0", "s1", "new"]
    table.touch_all(["s4"])
    assert list(table)[-1] == "s4"
    table.drop("s4")
    table.drop("s4")  # dropping what is not there does nothing
    assert gone[-1] == ("s4", 4) and len(gone) == 3 and "s4" not in table


def test_a_table_needs_room_for_one_series() -> None:
    with pytest.raises(ValueError, match="max_series"):
        SeriesTable(max_series=0)
