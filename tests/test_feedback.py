"""Operator verdicts (`tsguard feedback`, tsguard.feedback; contract: topics and CLI): the record,
what a verdict does to a series, the command against the real embedded broker, and a replay of
the same stream after a false-positive verdict."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.broker import EmbeddedBroker, free_port
from stream.feedback import FP_FACTOR, Verdict, Verdicts
from tests.conftest import point, produce, read_topic, stop, tsguard
from tests.test_serve_integration import scrape


@pytest.mark.parametrize(
    "value, says",
    [
        (b"{nope", "invalid JSON"),
        (b"[1]", "not an object"),
        (b'{"series": "s", "verdict": "false_positive"}', "needs an event_id"),
        (b'{"event_id": "e", "series": "s", "verdict": "maybe"}', "verdict must be"),
        (b'{"event_id": "e", "series": "s", "verdict": "true_positive", "score": 7}', "0..1"),
    ],
)
def test_a_record_that_is_not_a_verdict_says_why(value: bytes, says: str):
    with pytest.raises(ValueError, match=says):
        Verdict.decode(value)


def test_verdict_round_trip_and_the_key_names_the_series():
    v = Verdict("e1", "web-01/cpu", "false_positive", 1.5, "ops", "deploy", 0.5, 0.4)
    assert Verdict.decode(v.encode()) == v
    assert (
        Verdict.decode(b'{"event_id": "e2", "verdict": "true_positive"}', b"db/1").series == "db/1"
    )


def test_the_latest_verdict_on_an_event_wins_and_rereading_changes_nothing():
    v = Verdicts()
    fp = Verdict("e1", "s", "false_positive", 0.0, score=0.6, threshold=0.4)
    v.add(fp)
    raised = v.scale("s")
    assert raised == pytest.approx(0.6 * 1.01 / 0.4)
    v.add(fp)  # read back after a restart
    assert v.scale("s") == raised
    v.add(Verdict("e1", "s", "true_positive", 1.0))  # changed their mind
    assert v.scale("s") == 1.0 and len(v) == 1  # the series still counts: its scale must reset
    v.add(Verdict("e9", "t", "false_positive", 0.0))  # the event's score unknown
    assert v.scale("t") == FP_FACTOR
    v.add(Verdict("e0", "u", "false_positive", 0.0, score=1.0, threshold=0.4))
    assert v.scale("u") * 0.4 == pytest.approx(0.99)  # a score of 1 still alerts


def records(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    out, quiet = [], 0
    while quiet < 3:
        batch = consumer.poll(timeout_ms=300)
        quiet = 0 if batch else quiet + 1
        for recs in batch.values():
            out.extend(recs)
    consumer.close()
    return out


def test_feedback_looks_the_event_up_and_publishes_co_partitioned(broker):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("tsguard.metrics", 3, 1)])  # not the default 4
    admin.close()
    event = {"event_id": "ev-1", "episode_id": "ep", "kind": "start", "series": "web-01/cpu",
             "ts": 1.0, "score": 0.45, "threshold": 0.4, "model_version": "v"}  # fmt: skip
    produce(broker.bootstrap, "tsguard.anomalies", [(b"web-01/cpu", orjson.dumps(event))])
    produce(broker.bootstrap, "tsguard.metrics", [point("web-01/cpu", 1.0, 1.0)])
    proc = tsguard("feedback", "--event-id", "ev-1", "--verdict", "false_positive", "--by", "ops",
                   "--bootstrap", broker.bootstrap, stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    printed = orjson.loads(out)
    (rec,) = records(broker.bootstrap, "tsguard.feedback")
    value = orjson.loads(rec.value)
    assert value == printed
    assert {k: value[k] for k in ("event_id", "series", "verdict", "by", "note")} == {
        "event_id": "ev-1", "series": "web-01/cpu", "verdict": "false_positive", "by": "ops",
        "note": ""}  # fmt: skip
    assert value["score"] == 0.45 and value["ts"] > 0
    (metric,) = records(broker.bootstrap, "tsguard.metrics")
    assert rec.key == b"web-01/cpu" and rec.partition == metric.partition  # co-partitioned
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    assert len(consumer.partitions_for_topic("tsguard.feedback")) == 3
    consumer.close()

    # Metrics keyed by host (Telegraf): the verdict goes with the host's key, names its series.
    proc = tsguard("feedback", "--event-id", "ev-1", "--verdict", "true_positive", "--key",
                   "web-01", "--bootstrap", broker.bootstrap)  # fmt: skip
    assert proc.wait(timeout=60) == 0
    (keyed,) = [r for r in records(broker.bootstrap, "tsguard.feedback") if r.key == b"web-01"]
    assert orjson.loads(keyed.value)["series"] == "web-01/cpu"

    proc = tsguard("feedback", "--event-id", "nope", "--verdict", "true_positive",
                   "--bootstrap", broker.bootstrap, "--lookup-timeout", "10",
                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "tsguard: error: event nope not found on tsguard.anomalies; give --series"
    )


def stream(n: int = 400, spike_at: int = 300) -> tuple[list, float]:
    t0 = time.time() - 60 * n
    messages = []
    for k, name in enumerate(["a/1", "b/1"]):
        rng = np.random.default_rng(k)
        t = np.arange(n)
        values = 50 + 10 * np.sin(2 * np.pi * t / 50) + rng.normal(0, 0.5, n)
        values[spike_at] += 15.0  # a surprise the detector just alerts on
        messages += [point(name, t0 + 60 * i, float(v)) for i, v in enumerate(values)]
    return messages, t0


def starts(events: list, series: str) -> list:
    return [e for e in events if e["kind"] == "start" and e["series"] == series]


@pytest.mark.integration
def test_a_false_positive_verdict_quiets_that_series_on_a_replay(broker, tmp_path):
    messages, _ = stream()
    produce(broker.bootstrap, "tsguard.metrics", messages)
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--stop-at-end", "--metrics-port",
                   str(free_port()), "--group-id", "fb-1", "--session-timeout-ms", "6000")  # fmt: skip
    assert proc.wait(timeout=180) == 0
    first = read_topic(broker.bootstrap, "tsguard.anomalies")
    assert starts(first, "a/1") and starts(first, "b/1")
    judged = starts(first, "a/1")[0]
    proc = tsguard("feedback", "--event-id", judged["event_id"], "--verdict", "false_positive",
                   "--bootstrap", broker.bootstrap)  # fmt: skip
    assert proc.wait(timeout=60) == 0
    (verdict,) = records(broker.bootstrap, "tsguard.feedback")

    # The same stream again, on a fresh broker that holds the verdict and a malformed record.
    with EmbeddedBroker() as again:
        produce(again.bootstrap, "tsguard.feedback",
                [(verdict.key, verdict.value), (b"a/1", b'{"verdict": "maybe"}')])  # fmt: skip
        port = free_port()
        proc = tsguard("serve", "--bootstrap", again.bootstrap, "--metrics-port", str(port),
                       "--group-id", "fb-2", "--session-timeout-ms", "6000")  # fmt: skip
        try:

            def sample(name: str) -> float:
                try:
                    return scrape(port).get(name, 0.0)
                except OSError:
                    return 0.0

            deadline = time.monotonic() + 120
            fp = 'tsguard_feedback_verdicts_total{verdict="false_positive"}'
            while sample(fp) < 1 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert sample(fp) == 1
            produce(again.bootstrap, "tsguard.metrics", messages)
            while sample("tsguard_points_total") < len(messages) and time.monotonic() < deadline:
                time.sleep(0.3)
            assert sample("tsguard_points_total") == len(messages)
            proc.send_signal(signal.SIGTERM)  # scores what is pending, flushes, commits
            assert proc.wait(timeout=60) == 0
        finally:
            stop(proc)
        second = read_topic(again.bootstrap, "tsguard.anomalies")
        dead = read_topic(again.bootstrap, "tsguard.dead-letter", expect=1)
    assert len(starts(second, "a/1")) < len(starts(first, "a/1"))
    assert len(starts(second, "b/1")) >= len(starts(first, "b/1"))
    assert [d["reason"] for d in dead] == ["invalid_feedback"]
    assert "needs an event_id" in dead[0]["error"]
