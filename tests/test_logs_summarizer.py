"""Window summaries: counts, new templates, window boundaries, highlights, text, abstractive mode.

A deterministic stand-in encoder (a fixed random vector per text) keeps these tests independent of
the embedding model; the abstractive test builds a tiny randomly initialised T5 offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from detector.errors import UserError
from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord, parse_log_value
from detector.logs.summarizer import mmr_select
from detector.messages import SummaryWindow
from tests.fakes import HashEncoder

SUMMARY_KEYS = {"source", "window", "lines", "templates", "leads", "highlights", "summary"}


def _head(**kw) -> LogAnalyzer:
    return LogAnalyzer(LogAnalyzerConfig(**kw), encoder=HashEncoder())


def _rec(ts: float, message: str, source: str = "app") -> LogRecord:
    return LogRecord(source, ts, message)


A = "Received block blk_{} of size {} from 10.0.0.{}"
B = "Deleting block blk_{} file /data/current/blk_{}"
C = "Got exception while serving blk_{} to /10.0.0.{}"


def test_window_closes_when_a_later_line_arrives_and_counts_templates() -> None:
    head = _head(window_s=60)
    first = [_rec(i, A.format(i, 100 + i, i)) for i in range(3)] + [_rec(10, B.format(7, 7))]
    assert head.observe(first) == []  # the window [0, 60) is still open
    (summary,) = head.observe([_rec(60, A.format(9, 9, 9))])
    assert set(orjson.loads(summary.encode())) == SUMMARY_KEYS
    assert summary.source == "app"
    assert summary.window == SummaryWindow(0.0, 60.0)
    assert summary.lines == 4
    counts = {t.template: t.count for t in summary.templates}
    assert sorted(counts.values()) == [1, 3]
    assert all(t.new for t in summary.templates)  # first window: everything is new
    assert summary.templates[0].count == 3  # most frequent first


def test_new_is_relative_to_the_sources_history() -> None:
    head = _head(window_s=60)
    head.observe([_rec(0, A.format(1, 1, 1)), _rec(1, B.format(2, 2))])
    (w1,) = head.observe([_rec(60, A.format(3, 3, 3)), _rec(61, C.format(4, 4))])
    assert w1.window.start == 0.0
    (w2,) = head.flush()
    assert w2.window == SummaryWindow(60.0, 120.0) and w2.lines == 2
    new = {t.template: t.new for t in w2.templates}
    assert sorted(new.values()) == [False, True]
    assert any("exception" in t and flag for t, flag in new.items())
    assert "1 new template" in w2.summary


def test_windows_are_per_source_and_empty_windows_are_skipped() -> None:
    head = _head(window_s=10)
    out = head.observe(
        [
            _rec(1, "alpha started", "a"),
            _rec(2, "beta started", "b"),
            _rec(35, "alpha stopped", "a"),  # closes a's [0, 10); nothing for [10, 30)
        ]
    )
    assert [(s.source, s.window.start) for s in out] == [("a", 0.0)]
    rest = sorted((s.source, s.window.start) for s in head.flush())
    assert rest == [("a", 30.0), ("b", 0.0)]
    assert head.flush() == []


def test_late_lines_count_in_the_open_window() -> None:
    head = _head(window_s=10)
    head.observe([_rec(1, "x started"), _rec(12, "x started")])  # closes [0, 10)
    head.observe([_rec(3, "x started")])  # late for [0, 10): counted in [10, 20)
    (summary,) = head.flush()
    assert summary.window.start == 10.0 and summary.lines == 2


def test_advance_closes_quiet_windows() -> None:
    head = _head(window_s=10)
    head.observe([_rec(1, "x started", "a"), _rec(15, "y started", "b")])
    closed = head.advance(watermark=10.0)
    assert [(s.source, s.window.end) for s in closed] == [("a", 10.0)]
    assert [s.source for s in head.advance(watermark=20.0)] == ["b"]


def test_windows_per_scope_hold_the_position_of_their_first_line() -> None:
    """The Kafka head's view: scope = partition, position = offset. A scope's windows are its own,
    and holds() is the lowest first position among the open windows of each scope."""
    head = _head(window_s=10)
    recs = [_rec(1, "x started", "a"), _rec(2, "x started", "a"), _rec(3, "y started", "b")]
    assert head.observe(recs, scopes=[0, 1, 0], positions=[100, 7, 101]) == []
    assert head.holds() == {0: 100, 1: 7}
    # The same source in two partitions: two windows, one summary each.
    (closed,) = head.observe([_rec(12, "x started", "a")], scopes=[0], positions=[102])
    assert (closed.source, closed.lines) == ("a", 1)
    assert head.holds() == {0: 101, 1: 7}  # b's window (101) is now partition 0's oldest
    head.drop({1})  # partition 1 given away: its window goes unpublished
    assert head.holds() == {0: 101}
    rest = sorted((s.source, s.window.start, s.lines) for s in head.flush())
    assert rest == [("a", 10.0, 1), ("b", 0.0, 1)]
    assert head.holds() == {}


def test_without_scopes_there_is_one_window_per_source_and_nothing_held() -> None:
    head = _head(window_s=10)
    head.observe([_rec(1, "x started", "a"), _rec(2, "x started", "a")])
    assert head.holds() == {}
    (summary,) = head.flush()
    assert summary.lines == 2


def test_highlights_are_lines_of_distinct_templates_and_text_names_counts() -> None:
    head = _head(window_s=300, highlights=3)
    lines = []
    for i in range(1204):
        fmt = (A, B, C, "User {} logged in from 10.1.1.{}")[i % 4]
        lines.append(_rec(i * 0.1, fmt.format(i, i, i)))
    head.observe(lines)
    (summary,) = head.flush()
    messages = {r.message for r in lines}
    assert 1 <= len(summary.highlights) <= 3
    assert all(h in messages for h in summary.highlights)
    masked = {head.miner.add("app", h).template_id for h in summary.highlights}
    assert len(masked) == len(summary.highlights)  # one highlight per template
    text = summary.summary
    assert text.startswith("app, 1970-01-01 00:00-00:05 UTC: 1,204 lines;")
    assert "4 templates" in text and "most frequent:" in text


def test_a_template_is_embedded_once_across_windows() -> None:
    enc = HashEncoder()
    head = LogAnalyzer(LogAnalyzerConfig(window_s=10), encoder=enc)
    head.observe([_rec(0, A.format(1, 1, 1)), _rec(1, B.format(1, 1))])
    head.observe([_rec(11, A.format(2, 2, 2)), _rec(12, B.format(3, 3))])  # closes window 1
    after = enc.texts
    head.observe([_rec(21, A.format(4, 4, 4)), _rec(22, B.format(5, 5))])  # closes window 2
    assert enc.texts == after  # same templates: highlights reuse the cached vectors


def test_mmr_trades_relevance_for_diversity() -> None:
    v = np.asarray([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    relevance = np.asarray([1.0, 0.95, 0.6])
    assert mmr_select(v, relevance, k=2, lam=1.0) == [0, 1]  # relevance only
    assert mmr_select(v, relevance, k=2, lam=0.5) == [0, 2]  # the near-duplicate loses
    assert mmr_select(v, relevance, k=5, lam=0.5) == [0, 2, 1]
    assert mmr_select(np.zeros((0, 2)), np.zeros(0), k=3, lam=0.5) == []


# ----------------------------------------------------------------------------- abstractive


def _tiny_seq2seq(path: Path) -> None:
    """A randomly initialised 1-layer T5 with a word-level tokenizer, built with no download."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = ["summarize", "lines", "templates", "new", "most", "frequent", "block", "error", "info"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = T5Config(
        vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1,
        num_decoder_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    fast.save_pretrained(path)


def test_abstractive_mode_uses_the_local_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny-t5"
    _tiny_seq2seq(model_dir)
    assert (model_dir / "model.safetensors").is_file()
    head = _head(window_s=60, summarizer_model=str(model_dir))
    head.observe([_rec(0, A.format(1, 1, 1)), _rec(1, B.format(1, 1))])
    (summary,) = head.flush()
    extractive = _head(window_s=60)
    extractive.observe([_rec(0, A.format(1, 1, 1)), _rec(1, B.format(1, 1))])
    (plain,) = extractive.flush()
    assert isinstance(summary.summary, str)
    # A random model writes words of its own vocabulary, never our extractive sentence.
    assert summary.summary != plain.summary
    vocabulary = {"summarize", "lines", "templates", "new", "most", "frequent", "block", "error"}
    assert set(summary.summary.split()) <= vocabulary | {"info"}
    assert summary.lines == plain.lines and summary.templates == plain.templates


def test_abstractive_model_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="summarizer model not found"):
        _head(summarizer_model=str(tmp_path / "missing"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    head = _head(window_s=60, summarizer_model=str(tmp_path / "broken"))
    head.observe([_rec(0, "x started")])
    with pytest.raises(UserError, match="cannot load summarizer model"):
        head.flush()


def test_a_line_without_a_timestamp_is_filed_under_its_kafka_timestamp() -> None:
    """So a line consumed again after a restart lands in the window it was counted in first."""
    from types import SimpleNamespace

    from detector.logs.analyzer import parse_log_value
    from stream.heads.logs import _arrival

    record = SimpleNamespace(timestamp=1_700_000_123_456, timestamp_type=0)
    assert _arrival(record, wall=5.0) == 1_700_000_123.456
    assert parse_log_value(b"worker started", b"app", _arrival(record, 5.0)).ts == 1_700_000_123.456
    assert _arrival(SimpleNamespace(timestamp=-1, timestamp_type=-1), wall=5.0) == 5.0
    assert _arrival(SimpleNamespace(timestamp=10**16, timestamp_type=0), wall=5.0) == 5.0
    line = b"2023-11-14T22:13:21Z worker started"  # a timestamp of its own wins
    assert parse_log_value(line, b"app", _arrival(record, 5.0)).ts == 1_700_000_001.0


# ----------------------------------------------------------------------------- what leads


def test_summary_leads_with_new_rising_and_error_lines_not_routine_ones() -> None:
    head = _head(window_s=60, highlights=2)
    routine = "Received block blk_{} of size 512 from 10.0.0.1"
    chatty = "heartbeat from node {} ok"
    for w in range(3):  # three quiet windows: routine lines, two heartbeats, no error
        batch = [_rec(w * 60 + i * 0.1, routine.format(i)) for i in range(50)]
        batch += [_rec(w * 60 + 10 + i, chatty.format(i)) for i in range(2)]
        head.observe(batch)
    burst = [_rec(180 + i * 0.1, routine.format(i)) for i in range(50)]
    burst += [_rec(190 + i * 0.1, chatty.format(i)) for i in range(30)]  # 2 -> 30: rising
    # A line that states its level (no timestamp of its own: it arrives at 195).
    burst.append(parse_log_value(b"ERROR: connection pool exhausted", b"app", 195.0))
    head.observe(burst)
    (summary,) = head.flush()
    assert summary.window.start == 180
    leads = {lead.template: lead.why for lead in summary.leads}
    assert leads == {
        "connection pool exhausted": ["error", "new"],
        "heartbeat from node <NUM> ok": ["rising"],
    }
    # The routine template is the most frequent, yet listed after the flagged ones.
    assert [t.template for t in summary.templates][-1].startswith("Received block")
    assert summary.summary.split("; ")[1].startswith('error and new: "connection pool')
    assert summary.highlights[0].endswith("connection pool exhausted")
