"""Reliability against the real embedded broker: SIGKILL restarts and rebalances lose no anomaly
event nor an operator's verdict, a flood of malformed input is dead-lettered while valid points
are all scored, and model hot reload refuses bad models while the old one keeps serving."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
import urllib.request

import numpy as np
import orjson
import pytest

from detector.scorer import MIN_POINTS
from stream.broker import EmbeddedBroker, free_port
from stream.clients import TopicPartition
from stream.feedback import Verdict
from stream.kafka_io import GroupOffsets, ensure_topics
from stream.settings import Settings
from tests.conftest import produce, read_topic, tsguard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_700_000_000.0


def scenario(n_series: int, n_points: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Interleaved seasonal series, each with a few large spikes and one level shift."""
    rng = np.random.default_rng(seed)
    columns = []
    for k in range(n_series):
        t = np.arange(n_points)
        v = 100 + 20 * np.sin(2 * np.pi * t / 60 + k) + rng.normal(0, 1.0, n_points)
        for at in rng.choice(np.arange(300, n_points - 5), size=3, replace=False):
            v[at] += rng.choice([-1, 1]) * 60
        v[int(n_points * 0.8) :] += 40
        columns.append(v)
    return [
        (f"host-{k}/cpu".encode(), orjson.dumps({"series": f"host-{k}/cpu", "ts": T0 + 60 * i, "value": float(columns[k][i])}))
        for i in range(n_points)
        for k in range(n_series)
    ]  # fmt: skip


def fresh_broker_with(messages) -> EmbeddedBroker:
    broker = EmbeddedBroker().start()
    ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
    produce(broker.bootstrap, "tsguard.metrics", messages)
    return broker


_running: list = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A failing test must not leave serve processes behind."""
    yield
    while _running:
        proc = _running.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve(broker: EmbeddedBroker, group: str, *extra: str, port: int | None = None):
    return _track(tsguard("serve", "--bootstrap", broker.bootstrap, "--group-id", group,
                   "--session-timeout-ms", "6000", "--metrics-port", str(port or free_port()), *extra))  # fmt: skip


def _track(proc):
    _running.append(proc)
    return proc


def metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_metric(port: int, name: str, at_least: float, timeout_s: float = 90.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = metric(port, name)
        if value is not None and value >= at_least:
            return value
        time.sleep(0.2)
    raise AssertionError(
        f"{name} did not reach {at_least} in {timeout_s}s (last: {metric(port, name)})"
    )


def event_ids(broker: EmbeddedBroker) -> tuple[set[str], int]:
    events = read_topic(broker.bootstrap, "tsguard.anomalies")
    return {e["event_id"] for e in events}, len(events)


def reference_ids(messages) -> set[str]:
    broker = fresh_broker_with(messages)
    try:
        assert serve(broker, "reference", "--stop-at-end").wait(timeout=240) == 0
        ids, _ = event_ids(broker)
    finally:
        broker.stop()
    assert len(ids) >= 8, "the scenario must produce anomalies to compare"
    return ids


@pytest.fixture(scope="module")
def crash_scenario():
    messages = scenario(n_series=6, n_points=1500)
    return messages, reference_ids(messages)


def test_sigkill_at_several_points_loses_no_event(crash_scenario):
    messages, expected = crash_scenario
    # The stream arrives in five parts, one before each run, so every killed run has points it
    # has not seen (a run can consume everything produced so far in a second or two).
    parts = np.array_split(np.arange(len(messages)), 5)
    broker = fresh_broker_with(messages[: len(parts[0])])
    try:
        for k, idx in enumerate(parts[1:]):
            port = free_port()
            proc = serve(broker, "crashy", port=port)
            # points_total counts only new (not replayed) points, so each run makes progress.
            wait_metric(port, "tsguard_points_total", 1)
            time.sleep(random.Random(k).uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            produce(broker.bootstrap, "tsguard.metrics", messages[idx[0] : idx[-1] + 1])
        assert serve(broker, "crashy", "--stop-at-end").wait(timeout=240) == 0
        got, published = event_ids(broker)
    finally:
        broker.stop()
    assert got == expected, f"lost {len(expected - got)}, unexpected {len(got - expected)}"
    assert published >= len(got)  # duplicates are allowed, losses are not


def test_rebalance_join_and_leave_matches_single_process(crash_scenario):
    messages, expected = crash_scenario
    half = len(messages) // 2
    broker = fresh_broker_with(messages[:half])
    try:
        port_a, port_b = free_port(), free_port()
        a = serve(broker, "pair", port=port_a)
        wait_metric(port_a, "tsguard_points_total", 1000)
        b = serve(broker, "pair", port=port_b)  # joins: partitions move from a to b
        wait_metric(port_b, "tsguard_points_replayed_total", 1)  # b rebuilt state for its share
        produce(broker.bootstrap, "tsguard.metrics", messages[half:])
        time.sleep(2.0)
        a.send_signal(signal.SIGTERM)  # leaves: b takes every partition and rebuilds their state
        assert a.wait(timeout=30) == 0
        deadline = time.monotonic() + 180
        got, _ = event_ids(broker)
        while not expected <= got and time.monotonic() < deadline:
            time.sleep(2.0)
            got, _ = event_ids(broker)
        assert b.poll() is None
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0
        got, _ = event_ids(broker)
    finally:
        broker.stop()
    assert got == expected, f"lost {len(expected - got)}, unexpected {len(got - expected)}"


def test_a_false_positive_verdict_is_still_in_force_after_a_sigkill():
    """tsguard.feedback is state: a verdict the killed process had read and committed past is
    read back on assignment by the next one, which keeps the judged series quiet on a surprise
    below the judged score while the other series, the same surprise in its own noise, alerts."""
    from tests.test_feedback import stream

    messages, t0 = stream(n=400, spike_at=300)  # a/1's 400 points, then b/1's
    a, b, cut = messages[:400], messages[400:], 250
    broker = fresh_broker_with(a[:cut] + b[:cut])
    judged = Verdict(
        "ev-a", "a/1", "false_positive", time.time(), by="ops", score=0.9, threshold=0.4
    )
    produce(broker.bootstrap, "tsguard.feedback", [(b"a/1", judged.encode())])
    group = "judged"
    committed = GroupOffsets(Settings(bootstrap=broker.bootstrap, group_id=group))
    feedback = [TopicPartition("tsguard.feedback", p) for p in range(Settings().partitions)]
    fp = 'tsguard_feedback_verdicts_total{verdict="false_positive"}'
    try:
        port = free_port()
        proc = serve(broker, group, port=port)
        wait_metric(port, fp, 1)
        deadline = time.monotonic() + 30
        while sum(committed.read(feedback).values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(committed.read(feedback).values()) == 1, "the verdict's offset was not committed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        produce(broker.bootstrap, "tsguard.metrics", a[cut:] + b[cut:])  # the surprise, in both
        port = free_port()
        proc = serve(broker, group, port=port)
        wait_metric(port, "tsguard_points_total", 2 * (400 - cut))
        assert metric(port, fp) == 0  # read back on assignment, not consumed again
        proc.send_signal(signal.SIGTERM)  # scores what is pending, flushes, commits
        assert proc.wait(timeout=30) == 0
        starts = [
            e for e in read_topic(broker.bootstrap, "tsguard.anomalies") if e["kind"] == "start"
        ]
        spike = t0 + 60 * 300
        assert any(e["series"] == "b/1" and e["ts"] >= spike for e in starts), "control: no alert"
        assert not [e for e in starts if e["series"] == "a/1" and e["ts"] >= t0 + 60 * cut]
    finally:
        committed.close()
        broker.stop()


MALFORMED_KINDS = [
    (b"{not json", "invalid_json"),
    (b'{"series": "x", "ts": 1700000000, "value": "1.0"}', "bad_value"),
    (b'{"series": "x", "ts": 1700000000, "value": NaN, "extra": Infinity}', "invalid_json"),
    (b'{"series": "x", "ts": 1700000000, "value": 1e39}', "value_out_of_range"),
    (b"\xc3\x28\xa0\xa1", "invalid_utf8"),
    (b'{"series": "x", "value": 1}', "missing_ts"),
    (b'{"series": "x", "ts": 1700000000}', "missing_value"),
    (b'{"series": 17, "ts": 1700000000, "value": 1}', "bad_series"),
    (b'{"series": "x", "ts": "not a time", "value": 1}', "bad_ts"),
    (b'{"series": "x", "ts": 99999999999999, "value": 1}', "ts_out_of_range"),
    (b"[]", "empty"),
    (b'"just a string"', "not_an_object"),
    (b'{"series": "x", "ts": 1700000000, "values": {"a": 1, "b": "two"}}', "bad_value"),
    (b"x" * 700_000, "too_large"),
]


def test_ten_thousand_malformed_messages_are_dead_lettered_and_valid_ones_scored():
    rng = random.Random(5)
    n_bad, n_series, n_points = 10_000, 50, 160
    bad = [MALFORMED_KINDS[i % (len(MALFORMED_KINDS) - 1)] for i in range(n_bad - 2)]
    bad += [MALFORMED_KINDS[-1]] * 2  # two oversize messages
    good = [
        (f"flood-{k}".encode(), orjson.dumps({"series": f"flood-{k}", "ts": T0 + 60 * i, "value": 10.0 + (i % 7)}))
        for i in range(n_points) for k in range(n_series)
    ]  # fmt: skip
    stream = [(b"bad", raw) for raw, _ in bad] + good
    rng.shuffle(stream)
    # keep each series' points in time order after the shuffle
    good_iter = iter(good)
    stream = [next(good_iter) if key != b"bad" else (key, raw) for key, raw in stream]
    broker = EmbeddedBroker().start()
    try:
        ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
        produce(broker.bootstrap, "tsguard.metrics", stream)
        port = free_port()
        proc = serve(broker, "flood", "--max-message-bytes", "500000", port=port)
        try:
            wait_metric(port, "tsguard_points_total", n_series * n_points, timeout_s=180)
            # A series is scored from its MIN_POINTS-th point on (stride 1).
            windows = n_series * (n_points - MIN_POINTS + 1)
            wait_metric(port, "tsguard_windows_scored_total", windows, timeout_s=60)
            assert metric(port, "tsguard_points_total") == n_series * n_points
            assert metric(port, "tsguard_windows_scored_total") == windows
            assert proc.poll() is None, "the service must stay up"
            dead = read_topic(broker.bootstrap, "tsguard.dead-letter", expect=n_bad, timeout_s=60)
            assert len(dead) == n_bad
            want: dict[str, int] = {}
            for _, reason in bad:
                want[reason] = want.get(reason, 0) + 1
            got: dict[str, int] = {}
            for d in dead:
                got[d["reason"]] = got.get(d["reason"], 0) + 1
            assert got == want
            for reason, count in want.items():
                assert metric(port, f'tsguard_messages_invalid_total{{reason="{reason}"}}') == count
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        broker.stop()


def test_hot_reload_refuses_bad_models_and_swaps_good_ones(tmp_path):
    from detector.scorer import DEFAULT_MODEL_DIR

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    good_config = (model / "config.json").read_text()
    good_weights = (model / "model.safetensors").read_bytes()
    broker = EmbeddedBroker().start()
    port = free_port()
    proc = serve(broker, "reload", "--model", str(model), port=port)
    sent = 0

    def feed(n: int) -> None:
        nonlocal sent
        produce(broker.bootstrap, "tsguard.metrics",
                [(b"r", orjson.dumps({"series": "r", "ts": T0 + 60 * (sent + i), "value": float(i % 9)})) for i in range(n)])  # fmt: skip
        sent += n

    def version() -> str:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        line = next(x for x in text.splitlines() if x.startswith("tsguard_model_info{"))
        return line.split('version="')[1].split('"')[0]

    try:
        feed(200)
        wait_metric(port, "tsguard_points_total", 200)
        original = version()
        broken = [
            ("config.json", b"{ this is not json"),
            ("config.json", good_config.replace('"window": 128', '"window": 64').encode()),
            ("model.safetensors", good_weights[: len(good_weights) // 2]),
        ]
        for i, (name, content) in enumerate(broken, start=1):
            (model / name).write_bytes(content)
            proc.send_signal(signal.SIGHUP)
            wait_metric(port, 'tsguard_model_reloads_total{result="refused"}', i)
            (model / "config.json").write_text(good_config)
            (model / "model.safetensors").write_bytes(good_weights)
            feed(50)  # still serving with the old model
            wait_metric(port, "tsguard_points_total", sent)
            assert version() == original
        refused = metric(port, 'tsguard_model_reloads_total{result="refused"}')
        config = json.loads(good_config)
        config["version"] = "reloaded-v2"
        (model / "config.json").write_text(json.dumps(config))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while version() != "reloaded-v2" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert version() == "reloaded-v2"
        feed(50)
        wait_metric(port, "tsguard_points_total", sent)
        assert proc.poll() is None
        assert refused >= len(broken)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()


def test_broker_outage_is_survived_and_processing_resumes():
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())

    def points(lo: int, hi: int, spike: int | None = None):
        return [(b"o", orjson.dumps({"series": "o", "ts": T0 + 60 * i, "value": (500.0 if i == spike else 50.0) + i % 10}))
                for i in range(lo, hi)]  # fmt: skip

    produce(broker.bootstrap, "tsguard.metrics", points(0, 300))
    mport = free_port()
    proc = serve(broker, "outage", port=mport)
    try:
        wait_metric(mport, "tsguard_points_total", 300)
        broker.stop()  # the broker goes away...
        wait_metric(mport, 'tsguard_kafka_errors_total{op="lag"}', 1, timeout_s=30)
        assert proc.poll() is None
        broker = EmbeddedBroker(port=port).start()  # ...and comes back (empty: memory storage)
        ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
        produce(broker.bootstrap, "tsguard.metrics", points(300, 600, spike=500))
        wait_metric(mport, "tsguard_points_total", 600, timeout_s=90)
        deadline = time.monotonic() + 30
        starts = []
        while not starts and time.monotonic() < deadline:
            starts = [
                e for e in read_topic(broker.bootstrap, "tsguard.anomalies") if e["kind"] == "start"
            ]
        assert [e["ts"] for e in starts] == [T0 + 60 * 500]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        broker.stop()
