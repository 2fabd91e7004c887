"""The bookkeeping of `--stop-at-end` (stream/end_of_input.py), without a broker."""

from __future__ import annotations

import logging
from collections import namedtuple

import pytest

from stream.clients import TopicPartition
from stream.end_of_input import WAIT_LOG_EVERY_S, EndOfInput

Rec = namedtuple("Rec", "offset")
P0, P1 = TopicPartition("tsguard.metrics", 0), TopicPartition("tsguard.metrics", 1)


def test_records_at_or_past_the_end_offset_are_not_handled():
    end = EndOfInput({P0: 10, P1: 0}, timeout_s=None, started=0.0)
    assert end.clip(P0, [Rec(7), Rec(8)]) == ([Rec(7), Rec(8)], 9)
    # A batch that reaches the end: what lies before it was all handed over.
    assert end.clip(P0, [Rec(9), Rec(10), Rec(11)]) == ([Rec(9)], 10)
    assert end.clip(P0, [Rec(12)]) == ([], 10)
    assert end.clip(P1, [Rec(0)]) == ([], 0)


def test_done_only_when_every_partition_is_committed_to_its_end():
    end = EndOfInput({P0: 10, P1: 0}, timeout_s=None, started=0.0)
    assert end.left({}) == {P0: 0}  # nothing committed: an empty partition is done already
    assert end.left({P0: 9, P1: 0}) == {P0: 9}
    assert end.left({P0: 12}) == {}


def test_waiting_is_logged_when_it_changes_and_every_30_s(caplog):
    end = EndOfInput({P0: 10, P1: 5}, timeout_s=None, started=0.0)
    caplog.set_level(logging.INFO, logger="stream.end_of_input")
    caplog.clear()
    for now, left in [(1.0, {P0: 0, P1: 0}), (2.0, {P0: 3, P1: 0}), (3.0, {P0: 4}),
                      (3.0 + WAIT_LOG_EVERY_S - 0.1, {P0: 4}), (3.0 + WAIT_LOG_EVERY_S, {P0: 4})]:  # fmt: skip
        end.waiting(left, now)
    assert [r.getMessage() for r in caplog.records] == [
        "stop-at-end: waiting for the group to commit tsguard.metrics[0] (committed 0 of 10), "
        "tsguard.metrics[1] (committed 0 of 5)",
        "stop-at-end: waiting for the group to commit tsguard.metrics[0] (committed 4 of 10)",
        "stop-at-end: waiting for the group to commit tsguard.metrics[0] (committed 4 of 10)",
    ]


@pytest.mark.parametrize(
    ("left", "named"),
    [
        ({P1: 2}, "tsguard.metrics[1] (committed 2 of 5)"),
        (None, "tsguard.metrics[0], tsguard.metrics[1] (group offsets unreadable)"),
    ],
)
def test_timeout_names_the_partitions_not_done(left, named):
    end = EndOfInput({P0: 10, P1: 5}, timeout_s=30.0, started=100.0)
    assert not end.timed_out(129.9) and end.timed_out(130.0)
    assert (
        str(end.timeout_error(left)) == f"--stop-timeout 30s passed, partitions not done: {named}"
    )
    assert not EndOfInput({P0: 1}, timeout_s=None, started=0.0).timed_out(1e9)
