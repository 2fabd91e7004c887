"""`tsguard serve` against the real embedded broker: contract messages in, anomaly events,
dead-letter records and Prometheus metrics out."""

from __future__ import annotations

import math
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.broker import free_port
from tests.conftest import point, produce, read_topic, tsguard

pytestmark = pytest.mark.integration

EVENT_FIELDS = {"event_id", "episode_id", "kind", "series", "ts", "score", "threshold",
                "model_version", "window", "contributions", "detected_at"}  # fmt: skip


def normal_series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * t / 50) + rng.normal(0, 0.5, n)


MALFORMED = [
    (b"bad-1", b"{not json"),
    (b"bad-2", b'{"series": "s1", "ts": "yesterday", "value": 1}'),
    (b"bad-3", b'{"series": "s1", "ts": 1700000000, "value": "high"}'),
    (b"bad-4", b"\xff\xfe\x00"),
    (b"bad-5", b'{"ts": 1700000000, "value": 1}'),
]


def test_stop_at_end_publishes_anomaly_and_dead_letters(broker):
    t0, n, spike_at = 1_700_000_000.0, 400, 330
    values = normal_series(n)
    values[spike_at] += 40.0  # ~80 noise sigmas, 2x the seasonal amplitude
    messages = [point("s1", t0 + 60 * i, float(v)) for i, v in enumerate(values)]
    messages += [
        point("calm", t0 + 60 * i, float(v)) for i, v in enumerate(normal_series(n, seed=1))
    ]
    # The same spike as Telegraf writes it (line protocol, keyed by its host tag): series
    # "web-03/cpu_usage{cpu=total}"; its string field is no series.
    messages += [
        (
            b"web-03",
            f'cpu,host=web-03,cpu=total usage={v},state="ok" {int(t0 + 60 * i) * 10**9}'.encode(),
        )
        for i, v in enumerate(values)
    ]
    produce(broker.bootstrap, "tsguard.metrics", messages[:200] + MALFORMED + messages[200:])

    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--stop-at-end", "--metrics-port",
                   str(free_port()), "--group-id", "it-stop", "--session-timeout-ms", "6000")  # fmt: skip
    assert proc.wait(timeout=180) == 0

    events = read_topic(broker.bootstrap, "tsguard.anomalies")
    starts = [e for e in events if e["kind"] == "start" and e["series"] == "s1"]
    spike_ts = t0 + 60 * spike_at
    assert any(e["ts"] == spike_ts for e in starts), [e["ts"] for e in starts]
    ev = next(e for e in starts if e["ts"] == spike_ts)
    assert set(ev) >= EVENT_FIELDS
    assert 0.0 <= ev["score"] <= 1.0 and ev["score"] >= ev["threshold"]
    assert ev["window"]["end"] == spike_ts and ev["window"]["length"] >= 2
    assert ev["window"]["start"] < ev["window"]["end"]
    assert math.isclose(sum(ev["contributions"].values()), 1.0, abs_tol=1e-3)
    assert not [e for e in events if e["series"] == "calm" and e["kind"] == "start"]
    telegraf = [e for e in events if e["series"] == "web-03/cpu_usage{cpu=total}"]
    assert [e["ts"] for e in telegraf if e["kind"] == "start"] == [e["ts"] for e in starts]

    dead = read_topic(broker.bootstrap, "tsguard.dead-letter", expect=len(MALFORMED))
    assert len(dead) == len(MALFORMED)
    assert {d["reason"] for d in dead} == {
        "invalid_json",
        "bad_ts",
        "bad_value",
        "invalid_utf8",
        "bad_series",
    }
    assert all({"error", "topic", "partition", "offset", "payload"} <= set(d) for d in dead)
    assert all(d["topic"] == "tsguard.metrics" for d in dead)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_and_graceful_sigterm(broker):
    port = free_port()
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(port),
                   "--group-id", "it-metrics", "--session-timeout-ms", "6000")  # fmt: skip
    try:
        t0, n = 1_700_000_000.0, 200
        produce(broker.bootstrap, "tsguard.metrics",
                [point("m1", t0 + 60 * i, float(v)) for i, v in enumerate(normal_series(n))] + MALFORMED[:2])  # fmt: skip
        deadline = time.monotonic() + 90
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                samples = scrape(port)
            except OSError:
                samples = {}
            # The end-to-end histogram is observed last, after every part of a drain has been
            # scored and its gauges set: waiting on windows scored alone raced with it.
            if (
                samples.get("tsguard_points_total", 0) >= n
                and samples.get("tsguard_end_to_end_seconds_count", 0) > 0
            ):
                break
            time.sleep(0.5)
        assert samples["tsguard_points_total"] == n
        assert samples['tsguard_messages_invalid_total{reason="invalid_json"}'] == 1
        assert samples['tsguard_messages_invalid_total{reason="bad_ts"}'] == 1
        assert samples["tsguard_series_tracked"] == 1
        assert samples["tsguard_windows_scored_total"] > 0
        assert (
            samples["tsguard_batch_size_count"] > 0 and samples["tsguard_scoring_seconds_count"] > 0
        )
        assert samples["tsguard_end_to_end_seconds_count"] > 0
        assert 0.0 <= samples['tsguard_anomaly_score{series="m1"}'] <= 1.0
        assert any(k.startswith("tsguard_model_info{") and v == 1 for k, v in samples.items())
        assert "tsguard_anomalies_total" in samples
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # SIGTERM committed everything it consumed: the group's offsets reach the end.
        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id="it-metrics", enable_auto_commit=False
        )
        parts = [
            TopicPartition("tsguard.metrics", p)
            for p in consumer.partitions_for_topic("tsguard.metrics")
        ]
        committed = sum(consumer.committed(tp) or 0 for tp in parts)
        consumer.close()
        assert committed == n + 2
    finally:
        if proc.poll() is None:
            proc.kill()


def test_user_errors_are_one_line():
    proc = tsguard("serve", "--bootstrap", "127.0.0.1:1", "--heads", "nope",
                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("tsguard: error: --heads")
    assert "Traceback" not in err
