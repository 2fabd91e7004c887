"""The log heads through Kafka: raw and JSON lines on tsguard.logs come out classified and
summarised on their topics; malformed JSON goes to the dead-letter topic."""

from __future__ import annotations

import orjson
import pytest

from stream.broker import free_port
from tests.conftest import produce, read_topic, tsguard

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def test_logs_classified_summarised_and_dead_lettered(broker):
    json_lines = [
        ("db", T0 + 1, "ERROR connection to database db-01 failed: connection refused"),
        ("db", T0 + 2, "INFO checkpoint complete: wrote 1842 buffers"),
        ("db", T0 + 3, "INFO checkpoint complete: wrote 77 buffers"),
        ("db", T0 + 70, "WARNING replication lag is 12 seconds, above the limit"),
        ("db", T0 + 71, "INFO checkpoint complete: wrote 9 buffers"),
    ]
    messages = [
        (s.encode(), orjson.dumps({"source": s, "ts": ts, "message": m})) for s, ts, m in json_lines
    ]
    raw = [
        (b"web", b"2023-11-14T22:13:21Z GET /index.html 200 5ms"),
        (b"web", b"2023-11-14T22:13:22Z GET /about.html 200 3ms"),
    ]
    trace = [  # one record written over three lines: its frame is folded into it
        (b"app", b"2023-11-14T22:13:23Z WARN [pool-1] com.acme.Client: call failed, retrying"),
        (b"app", b"java.net.SocketTimeoutException: Read timed out"),
        (b"app", b"\tat com.acme.Client.call(Client.java:88)"),
    ]
    raw += trace
    malformed = [
        (b"web", b'{"source": "web", "message": '),
        (b"web", b'{"source": "web", "ts": 1700000000, "message": 42}'),
    ]
    produce(broker.bootstrap, "tsguard.logs", messages + raw + malformed)

    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--heads", "logs", "--stop-at-end",
                   "--log-window", "60", "--metrics-port", str(free_port()), "--group-id", "logs-it",
                   "--session-timeout-ms", "6000")  # fmt: skip
    assert proc.wait(timeout=180) == 0

    classes = read_topic(broker.bootstrap, "tsguard.log-classes", expect=len(messages) + len(raw))
    assert len(classes) == len(messages) + len(raw)
    for c in classes:
        assert {"source", "ts", "message", "label", "confidence", "scores"} <= set(c)
        assert 0.0 <= c["confidence"] <= 1.0
    by_message = {c["message"]: c for c in classes}
    assert by_message[json_lines[0][2]]["label"] == "error"
    assert by_message[json_lines[1][2]]["label"] == "info"
    assert {c["source"] for c in classes} == {"db", "web", "app"}
    app = [c for c in classes if c["source"] == "app"]
    assert [(c["label"], c["confidence"], c["ts"]) for c in app] == [("warning", 1.0, T0 + 3)] * 3

    summaries = read_topic(broker.bootstrap, "tsguard.log-summaries")
    db = sorted((s for s in summaries if s["source"] == "db"), key=lambda s: s["window"]["start"])
    assert [s["lines"] for s in db] == [3, 2]  # two 60 s windows
    assert db[0]["window"]["end"] - db[0]["window"]["start"] == 60
    first_templates = {t["template"]: t for t in db[0]["templates"]}
    assert sum(t["count"] for t in first_templates.values()) == 3
    assert all(t["new"] for t in first_templates.values())
    assert any(not t["new"] for t in db[1]["templates"])  # the checkpoint template was seen before
    assert all(isinstance(s["summary"], str) and s["summary"] for s in summaries)
    assert sum(s["lines"] for s in summaries) == len(messages) + len(raw) - 1
    (app_summary,) = (s for s in summaries if s["source"] == "app")
    assert [t["template"] for t in app_summary["templates"]] == [
        "call failed, retrying",
        "java.net.SocketTimeoutException: Read timed out",
    ]

    dead = read_topic(broker.bootstrap, "tsguard.dead-letter", expect=len(malformed))
    assert len(dead) == len(malformed)
    assert all(d["reason"] == "invalid_log" and d["topic"] == "tsguard.logs" for d in dead)
