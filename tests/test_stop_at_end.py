"""`tsguard serve --stop-at-end` exits 0 only once the group has committed the end offset of every
partition of its input, whoever processed it (issue 20), on the real embedded broker."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.broker import EmbeddedBroker, free_port
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.conftest import point, produce, tsguard
from tests.test_reliability import (
    T0,
    _kill_leftovers,
    _track,
    event_ids,
    reference_ids,
    scenario,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["_kill_leftovers"]  # the autouse fixture: no serve process outlives a test
TOPIC = "tsguard.metrics"


@pytest.fixture(scope="module")
def backfill():
    """20,000 points of 4 series, and the event ids an uninterrupted run publishes for them."""
    messages = scenario(n_series=4, n_points=5000)
    return messages, reference_ids(messages)


def serve(broker: EmbeddedBroker, log: Path, *extra: str) -> subprocess.Popen:
    """`tsguard serve --stop-at-end` in group g, its log in a file the test reads."""
    out = log.open("w")
    return _track(tsguard("serve", "--bootstrap", broker.bootstrap, "--group-id", "g",
                          "--stop-at-end", "--session-timeout-ms", "6000",
                          "--metrics-port", str(free_port()), *extra,
                          stdout=out, stderr=subprocess.STDOUT))  # fmt: skip


# An "assigned [...]" line with one to three of the four tsguard.metrics partitions.
SHARED_ASSIGNMENT = (
    r"assigned \[(?![^\]]*(?:'tsguard\.metrics'[^\]]*){4}\])[^\]]*'tsguard\.metrics'"
)


def wait_log(log: Path, pattern: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{log.name}: no line matching {pattern!r} in {timeout_s}s")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def committed(broker: EmbeddedBroker, partitions: list[int]) -> dict[int, int | None]:
    """The group's committed offsets (an offset fetch from a consumer that joins no group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="g", enable_auto_commit=False
    )
    try:
        return {p: consumer.committed(TopicPartition(TOPIC, p)) for p in partitions}
    finally:
        consumer.close()


def test_members_killed_during_their_join_do_not_end_the_job_early(backfill, tmp_path):
    messages, expected = backfill
    with EmbeddedBroker() as broker:
        ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
        # Series k in partition k: whichever partitions a dead member holds, skipping them loses
        # events (the issue had every series in partition 1, so losing it depended on which).
        for k in range(4):
            produce(broker.bootstrap, TOPIC, messages[k::4], partition=k)
        logs = [tmp_path / f"run{k}.log" for k in range(4)]
        # The first two runs are killed during their join (a new group's first join takes 3 s on
        # the embedded broker), each while the next one starts; the third once it is assigned
        # its share of the generation it formed with the final run.
        runs = [serve(broker, logs[0])]
        wait_log(logs[0], r"revoked \[\]")
        runs.append(serve(broker, logs[1]))
        time.sleep(1.0)
        kill(runs[0])
        wait_log(logs[1], r"revoked \[\]")
        runs.append(serve(broker, logs[2]))
        final = serve(broker, logs[3])
        time.sleep(1.0)
        kill(runs[1])
        # Killed once it and the final run each hold a share of the topic (on a busy machine the
        # third run's first share can come from a generation with the second, before final joins).
        wait_log(logs[2], SHARED_ASSIGNMENT)
        wait_log(logs[3], SHARED_ASSIGNMENT)
        time.sleep(0.2)
        kill(runs[2])
        try:
            rc = final.wait(timeout=150)
        except subprocess.TimeoutExpired:
            rc = None
        got, published = event_ids(broker)
        offsets = committed(broker, [0, 1, 2, 3])
    log = logs[3].read_text()
    assert rc == 0, log[-3000:]
    assert offsets == {k: len(messages) // 4 for k in range(4)}, offsets
    assert got == expected, f"lost {len(expected - got)}, unexpected {len(got - expected)}"
    assert published >= len(got)
    # The final run held part of the topic while another member lived; it said what it waited for.
    assert re.search(r"waiting for the group to commit .*tsguard.metrics\[\d\] \(committed", log)


def test_two_live_members_both_exit_0_once_the_whole_topic_is_done(backfill, tmp_path):
    messages, expected = backfill
    with EmbeddedBroker() as broker:
        ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
        produce(broker.bootstrap, TOPIC, messages)  # by key: partitions 0 and 3
        a = serve(broker, tmp_path / "a.log")
        b = serve(broker, tmp_path / "b.log")
        rcs = [p.wait(timeout=150) for p in (a, b)]
        got, _ = event_ids(broker)
        offsets = committed(broker, [0, 1, 2, 3])
    assert rcs == [0, 0], [(tmp_path / n).read_text()[-2000:] for n in ("a.log", "b.log")]
    assert sum(o or 0 for o in offsets.values()) == len(messages), offsets
    assert got == expected, f"lost {len(expected - got)}, unexpected {len(got - expected)}"
    for name in ("a.log", "b.log"):
        assert "reached the end of every input partition" in (tmp_path / name).read_text()


class _StuckMember:
    """A member of group g that polls (so it stays in the group) but never processes or commits
    what it is assigned: its partitions stay short of their end."""

    def __init__(self, broker: EmbeddedBroker):
        self.consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g",
                                      enable_auto_commit=False, session_timeout_ms=6000,
                                      heartbeat_interval_ms=1000)  # fmt: skip
        # serve's topics: a leader that lacks a member's topic learns its metadata later and
        # forces a second rebalance, which may take this member's partitions
        self.consumer.subscribe([TOPIC, Settings().topics.feedback])
        self.held: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.consumer.poll(timeout_ms=100)  # records are dropped, nothing is committed
            assigned = self.consumer.assignment()
            self.consumer.pause(*assigned)
            self.held = {tp.partition for tp in assigned if tp.topic == TOPIC}
        self.consumer.close(autocommit=False)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_stop_timeout_names_the_partitions_not_done(tmp_path):
    n = 200
    with EmbeddedBroker() as broker:
        ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
        for p in range(4):  # series p in partition p
            produce(
                broker.bootstrap, TOPIC, [point(f"s{p}", T0 + 60 * i, 1.0) for i in range(n)], p
            )
        stuck = _StuckMember(broker)
        try:
            deadline = time.monotonic() + 30
            while not stuck.held and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stuck.held == {0, 1, 2, 3}
            log = tmp_path / "serve.log"
            proc = serve(broker, log, "--stop-timeout", "20")
            rc = proc.wait(timeout=120)
            offsets = committed(broker, [0, 1, 2, 3])
        finally:
            stuck.close()
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "Traceback" not in text
    # Serve's last assignment is what it processed; the member kept the rest (its share is read
    # from serve's log, as the member's own view changes again once serve leaves the group).
    last_assignment = re.findall(r"assigned \[(.*)\]", text)[-1]
    mine = {int(p) for p in re.findall(r"'tsguard\.metrics', (\d)", last_assignment)}
    assert mine and mine != {0, 1, 2, 3}, last_assignment
    held = sorted({0, 1, 2, 3} - mine)
    not_done = ", ".join(f"tsguard.metrics[{p}] (committed 0 of {n})" for p in held)
    last = text.strip().splitlines()[-1]
    assert last == f"tsguard: error: --stop-timeout 20s passed, partitions not done: {not_done}", (
        text[-3000:]
    )
    assert f"waiting for the group to commit {not_done}\n" in text
    # What serve processed is committed, the stuck member's partitions are not.
    assert offsets == {p: None if p in held else n for p in range(4)}


def test_stop_timeout_is_checked_as_user_input():
    for args, message in [
        (("--stop-timeout", "5"), "--stop-timeout needs --stop-at-end"),
        (("--stop-at-end", "--stop-timeout", "0"), "--stop-timeout must be a positive"),
    ]:
        proc = tsguard("serve", "--bootstrap", "127.0.0.1:1", *args,
                       stderr=subprocess.PIPE, text=True)  # fmt: skip
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert err.strip().splitlines()[-1].startswith(f"tsguard: error: {message}")
        assert "Traceback" not in err
