"""Corrections stick: an operator's label for a template overrides the head, from a file, after a
restart too, and is counted in a metric."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from detector.errors import UserError
from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, parse_log_value
from stream.heads.logs import LogsHead
from stream.metrics import Metrics
from stream.settings import Settings
from tests.fakes import HashEncoder

LINES = [b"cache node 3 evicted 120 keys", b"cache node 9 evicted 7 keys", b"job 5 started"]


def _corrections(tmp_path, rows) -> str:
    f = tmp_path / "corrections.jsonl"
    f.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows))
    return str(f)


def _classify(head: LogAnalyzer, source: bytes = b"api") -> list[dict]:
    return head.classify([parse_log_value(v, source, 1e9) for v in LINES])


def test_a_correction_overrides_the_template_and_survives_a_restart(tmp_path) -> None:
    path = _corrections(
        tmp_path, [{"source": "api", "message": "cache node 1 evicted 5 keys", "label": "error"}]
    )
    for _ in range(2):  # a second head reading the same file is a restarted process
        head = LogAnalyzer(LogAnalyzerConfig(corrections=path), encoder=HashEncoder())
        out = _classify(head)
        assert [o.label for o in out[:2]] == ["error", "error"]
        assert out[0].confidence == 1.0 and out[0].corrected is True
        assert not out[2].corrected
        assert head.corrected_lines == 2
    # Another source's lines of the same text are not corrected.
    other = _classify(
        LogAnalyzer(LogAnalyzerConfig(corrections=path), encoder=HashEncoder()), b"web"
    )
    assert not any(o.corrected for o in other)


def test_a_correction_made_while_running_applies_from_then_on() -> None:
    head = LogAnalyzer(LogAnalyzerConfig(labels="a,b"), encoder=HashEncoder())
    head.correct("api", "job 1 started", "b")
    assert _classify(head)[2].label == "b"
    with pytest.raises(ValueError, match="not one of"):
        head.correct("api", "job 1 started", "c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"source": "api", "message": "x"}\n', "needs non-empty strings"),
        ('{"source": "api", "message": "x", "label": "bogus"}\n', "not one of"),
        ("[1]\n", "needs non-empty strings"),
    ],
)
def test_bad_corrections_are_one_clear_error(tmp_path, text, message) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        LogAnalyzer(LogAnalyzerConfig(corrections=str(f)), encoder=HashEncoder())


def test_serve_counts_corrections_in_metrics(tmp_path, monkeypatch) -> None:
    import detector.logs.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "shared_encoder", lambda device="cpu": HashEncoder())
    path = _corrections(
        tmp_path, [{"source": "api", "message": "cache node 1 evicted 5 keys", "label": "error"}]
    )
    metrics = Metrics()
    head = LogsHead(Settings(log_corrections=path), metrics)
    records = [
        SimpleNamespace(value=v, key=b"api", partition=0, offset=i, timestamp=None)
        for i, v in enumerate(LINES)
    ]
    head.handle(records, 0.0)
    assert metrics.registry.get_sample_value("tsguard_log_corrections") == 1.0
    assert metrics.registry.get_sample_value("tsguard_log_corrected_lines_total") == 2.0


def test_feedback_topic_records_correct_the_logs_head(tmp_path, monkeypatch) -> None:
    import detector.logs.encoder as encoder_module
    from stream.heads.logs import LogFeedbackHead
    from stream.pipeline import split_replayed

    monkeypatch.setattr(encoder_module, "shared_encoder", lambda device="cpu": HashEncoder())
    metrics = Metrics()
    settings = Settings()
    logs = LogsHead(settings, metrics)
    feedback = LogFeedbackHead(settings, metrics, logs)
    values = [
        orjson.dumps({"message": "cache node 1 evicted 5 keys", "label": "error"}),
        b"not json",
        orjson.dumps({"message": "job 1 started", "label": "bogus"}),
    ]
    records = [
        SimpleNamespace(
            value=v, key=b"api", topic=settings.topics.log_feedback, partition=0, offset=i
        )
        for i, v in enumerate(values)
    ]
    # Offsets 0-1 are read back after a restart (below the committed offset 2): they apply.
    replayed, fresh = split_replayed(records, 2)
    assert fresh == records[2:]
    feedback.rebuild(replayed, 0.0)
    out = feedback.handle(fresh, 0.0)
    assert [o.topic for o in out] == [settings.topics.dead_letter]  # only the new bad record
    assert metrics.registry.get_sample_value("tsguard_log_corrections") == 1.0
    lines = [
        SimpleNamespace(value=LINES[0], key=b"api", partition=0, offset=0, timestamp=None),
    ]
    (cls,) = [o for o in logs.handle(lines, 0.0) if o.topic == settings.topics.log_classes]
    assert orjson.loads(cls.value)["label"] == "error"
