"""Log summaries are at-least-once: a summary window still open when the service is killed is
rebuilt from the re-read lines and published after the restart (the real embedded broker)."""

from __future__ import annotations

import signal
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.broker import free_port
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.conftest import produce, read_topic, tsguard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Far in the future (2096): the wall-clock watermark never closes these windows, only the end of
# input (--stop-at-end) does.
T0 = 3_999_999_960.0  # a multiple of the 60 s window
GROUP = "logs-delivery"


def lines(source: str, start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (source.encode(), orjson.dumps({"source": source, "ts": T0 + start + i,
                                        "message": f"worker {start + i} finished job in {i} ms"}))
        for i in range(n)
    ]  # fmt: skip


def serve(bootstrap: str, *extra: str):
    return tsguard("serve", "--bootstrap", bootstrap, "--heads", "logs", "--group-id", GROUP,
                   "--log-window", "60", "--session-timeout-ms", "6000",
                   "--metrics-port", str(free_port()), *extra)  # fmt: skip


def committed(bootstrap: str) -> dict[int, int]:
    """The group's committed offsets of tsguard.logs (an offset fetch; joins no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic("tsguard.logs") or set()
        out = {}
        for p in parts:
            offset = consumer.committed(TopicPartition("tsguard.logs", p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        consumer.close()


def test_a_summary_window_open_at_a_crash_is_published_after_restart(broker):
    ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
    # Window [T0, T0 + 60) of "svc": 12 lines before the crash, 8 after; "other" closes its
    # window before the crash, so only "svc" holds the commit back.
    other = lines("other", 0, 3) + lines("other", 60, 1)  # the 4th line closes [T0, T0 + 60)
    produce(broker.bootstrap, "tsguard.logs", lines("svc", 0, 12) + other)

    proc = serve(broker.bootstrap)
    try:
        classes = read_topic(broker.bootstrap, "tsguard.log-classes", expect=16, timeout_s=120)
        assert len(classes) == 16
        # Every line was consumed and classified, but the commit stays at svc's first line
        # (offset 0 of its partition): its window is still open.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not committed(broker.bootstrap):
            time.sleep(0.3)
        before = read_topic(broker.bootstrap, "tsguard.log-summaries")
        assert [(s["source"], s["lines"]) for s in before] == [("other", 3)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    held = committed(broker.bootstrap)
    assert 0 in held.values(), f"the open window's first line must stay uncommitted: {held}"

    produce(broker.bootstrap, "tsguard.logs", lines("svc", 12, 8))
    assert serve(broker.bootstrap, "--stop-at-end").wait(timeout=180) == 0

    summaries = read_topic(broker.bootstrap, "tsguard.log-summaries")
    svc = [s for s in summaries if s["source"] == "svc"]
    assert [(s["window"]["start"], s["lines"]) for s in svc] == [(T0, 20)]
    assert sum(t["count"] for t in svc[0]["templates"]) == 20
    # What was re-read is published again (at-least-once): svc's 12 lines are classified twice.
    classes = read_topic(broker.bootstrap, "tsguard.log-classes", expect=36)
    assert sum(c["source"] == "svc" for c in classes) >= 20
    sent = lines("svc", 0, 12) + lines("svc", 12, 8)
    assert {c["message"] for c in classes if c["source"] == "svc"} == {
        orjson.loads(v)["message"] for _, v in sent
    }
