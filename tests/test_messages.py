"""Each topic's message type encodes to the contract's JSON, byte for byte: field order, and the
optional fields left out when unset (docs/ARCHITECTURE.md, "Topics")."""

from __future__ import annotations

import pytest

from detector.messages import (
    AnomalyEvent,
    DeadLetter,
    EventWindow,
    InvalidMessage,
    InvalidReason,
    Lead,
    LogClass,
    LogHeader,
    LogSummary,
    SummaryWindow,
    TemplateCount,
    parse_ts,
)


def test_anomaly_event() -> None:
    event = AnomalyEvent("e1", "p1", "start", "web-01/cpu", 1700000000.0, 0.5, 0.3, "v1",
                         EventWindow(1699999000.0, 1700000000.0, 128), {"value": 1.0}, 1.5,
                         signals={"forecast": 0.91, "shift": 0.2})  # fmt: skip
    assert event.encode() == (
        b'{"event_id":"e1","episode_id":"p1","kind":"start","series":"web-01/cpu",'
        b'"ts":1700000000.0,"score":0.5,"threshold":0.3,"model_version":"v1",'
        b'"window":{"start":1699999000.0,"end":1700000000.0,"length":128},'
        b'"contributions":{"value":1.0},"detected_at":1.5,"labels":{},'
        b'"signals":{"forecast":0.91,"shift":0.2}}'
    )


def test_dead_letter() -> None:
    error = InvalidMessage(InvalidReason.BAD_TS, "unparseable timestamp 'x'")
    assert DeadLetter.of(error, "tsguard.metrics", 1, 7, b"{}").encode() == (
        b'{"error":"bad_ts: unparseable timestamp \'x\'","reason":"bad_ts",'
        b'"topic":"tsguard.metrics","partition":1,"offset":7,"payload":"{}",'
        b'"payload_encoding":"utf-8"}'
    )
    assert (
        DeadLetter.of(error, "t", 0, 0, None)
        .encode()
        .endswith(b'"payload":null,"payload_encoding":"none"}')
    )


def test_log_class_leaves_out_unset_fields() -> None:
    plain = LogClass("web", 1.0, "disk full", "error", 0.9, {"error": 0.9, "info": 0.1})
    assert plain.encode() == (
        b'{"source":"web","ts":1.0,"message":"disk full","label":"error","confidence":0.9,'
        b'"scores":{"error":0.9,"info":0.1}}'
    )
    full = LogClass("web", 1.0, "E disk", "error", 1.0, {"error": 1.0},
                    LogHeader("E", None), corrected=True)  # fmt: skip
    assert full.encode().endswith(
        b'"scores":{"error":1.0},"header":{"level":"E","component":null},"corrected":true}'
    )


def test_log_summary_leaves_out_usual_unless_rising() -> None:
    summary = LogSummary(
        "web", SummaryWindow(0.0, 60.0), 3,
        [TemplateCount("a <NUM>", 2, True, False, 0), TemplateCount("b", 1, False, True, 1)],
        [Lead("a <NUM>", 2, ["new"]), Lead("b", 1, ["error", "rising"], 0.25)],
        ["a 1"], "web: 3 lines.",
    )  # fmt: skip
    assert summary.encode() == (
        b'{"source":"web","window":{"start":0.0,"end":60.0},"lines":3,"templates":['
        b'{"template":"a <NUM>","count":2,"new":true,"rising":false,"errors":0},'
        b'{"template":"b","count":1,"new":false,"rising":true,"errors":1}],"leads":['
        b'{"template":"a <NUM>","count":2,"why":["new"]},'
        b'{"template":"b","count":1,"why":["error","rising"],"usual":0.25}],'
        b'"highlights":["a 1"],"summary":"web: 3 lines."}'
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2024-05-01T12:00:00", InvalidReason.BAD_TS),  # no timezone
        ("yesterday", InvalidReason.BAD_TS),
        (True, InvalidReason.BAD_TS),
        (1e30, InvalidReason.TS_OUT_OF_RANGE),
        (-1, InvalidReason.TS_OUT_OF_RANGE),
    ],
)
def test_one_timestamp_rule(raw: object, reason: InvalidReason) -> None:
    assert parse_ts("2024-05-01T12:00:00Z") == parse_ts(1714564800) == 1714564800.0
    with pytest.raises(InvalidMessage) as exc:
        parse_ts(raw)
    assert exc.value.reason is reason
