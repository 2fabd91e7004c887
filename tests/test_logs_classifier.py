"""Zero-shot log classification with the real all-MiniLM-L6-v2 (loaded once per process)."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from detector.errors import UserError
from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord
from detector.logs.classifier import (
    UNKNOWN,
    ZeroShotClassifier,
    load_label_set,
)
from detector.logs.encoder import CachedEncoder, shared_encoder

LOGHUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loghub"
CLASS_KEYS = {"source", "ts", "message", "label", "confidence", "scores"}


class CountingEncoder:
    """The real encoder, counting the texts that reach it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.texts = 0

    def encode(self, texts):
        self.texts += len(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.set_num_threads(1)  # the suite shares two cores
    enc = shared_encoder("cpu")
    enc.encode(["load the model once"])
    return enc


def _records(lines: list[str], source: str = "app") -> list[LogRecord]:
    return [LogRecord(source, 1_700_000_000.0 + i, line) for i, line in enumerate(lines)]


def test_obvious_lines_get_their_severity_zero_shot(encoder) -> None:
    # The zero-shot path (the trained head off): what any other label set gets.
    head = LogAnalyzer(LogAnalyzerConfig(unknown_below=0.0, severity_head=False), encoder=encoder)
    out = head.classify(
        _records(
            [
                "ERROR: could not open database connection to 10.0.0.5: connection refused",
                "Unhandled exception in worker thread 7, aborting request",
                "WARNING: disk usage at 91% on /dev/sda1, consider cleaning up",
                "Request took 5012 ms, slower than expected; retrying",
                "Service started successfully on port 8080",
                "User alice logged in from 192.168.1.20",
            ]
        )
    )
    assert [o.label for o in out] == ["error", "error", "warning", "warning", "info", "info"]
    for o in out:
        assert set(orjson.loads(o.encode())) == CLASS_KEYS  # no header: none was parsed
        assert set(o.scores) == {"error", "warning", "info"}
        assert sum(o.scores.values()) == pytest.approx(1.0, abs=1e-3)
        assert o.confidence == max(o.scores.values())


def test_variables_do_not_decide_the_label(encoder) -> None:
    head = LogAnalyzer(LogAnalyzerConfig(), encoder=encoder)
    pairs = [
        (
            "Failed to write block blk_4001 to 10.0.0.1:50010, error code 13",
            "Failed to write block blk_-77 to 172.16.254.3:9, error code 255",
        ),
        (
            "session 0x1f3a opened for user id 1000 in /home/a/b",
            "session 0xdeadbeef opened for user id 0 in /var/lib/x/y",
        ),
        (
            "object 9f4ef63 retry 3 of 5 after 250 ms",
            "object a64f992 retry 1 of 10 after 3 ms",
        ),
    ]
    for a, b in pairs:
        first, second = head.classify(_records([a, b]))
        assert first.label == second.label
        assert first.scores == second.scores


def test_low_confidence_is_unknown(encoder) -> None:
    lines = _records(["Request took 5012 ms, retrying", "Task 17 finished"])
    strict = LogAnalyzer(LogAnalyzerConfig(unknown_below=0.999), encoder=encoder).classify(lines)
    assert all(o.label == UNKNOWN for o in strict)
    assert all(0 < o.confidence < 0.999 for o in strict)  # still reported
    lax = LogAnalyzer(LogAnalyzerConfig(unknown_below=0.0), encoder=encoder).classify(lines)
    assert all(o.label != UNKNOWN for o in lax)


def test_a_repeated_template_costs_no_new_embedding(encoder) -> None:
    counting = CountingEncoder(encoder)
    head = LogAnalyzer(LogAnalyzerConfig(), encoder=counting)
    head.classify(_records(["Received block blk_1 of size 67108864 from 10.250.19.102"]))
    after_first = counting.texts
    assert after_first > 0
    head.classify(_records(["Received block blk_-98 of size 3545 from 10.251.71.16"]))
    assert counting.texts == after_first
    # and without the cache every line is embedded again
    uncached = CountingEncoder(encoder)
    head = LogAnalyzer(LogAnalyzerConfig(template_cache=False), encoder=uncached)
    head.classify(_records(["Received block blk_1 of size 67108864 from 10.250.19.102"]))
    first = uncached.texts
    head.classify(_records(["Received block blk_-98 of size 3545 from 10.251.71.16"]))
    assert uncached.texts > first


def test_a_widened_template_keeps_its_label_without_a_new_embedding(encoder) -> None:
    counting = CountingEncoder(encoder)
    head = LogAnalyzer(LogAnalyzerConfig(), encoder=counting)
    first = head.classify(_records(["session opened for user alice by sshd"]))[0]
    after_first = counting.texts
    # Drain turns "alice" into <*>: the same template, widened.
    second = head.classify(_records(["session opened for user bob by sshd"]))[0]
    assert head.miner.template("app", 1) == "session opened for user <*> by sshd"
    assert counting.texts == after_first
    assert (second.label, second.scores) == (first.label, first.scores)


def test_a_template_id_reused_after_eviction_is_a_new_template(encoder) -> None:
    lines = ["disk controller failure, data lost", "service started on port 8080"]
    head = LogAnalyzer(LogAnalyzerConfig(max_sources=1, unknown_below=0.0), encoder=encoder)
    head.classify(_records(lines[:1], "a"))
    head.classify(_records(lines[:1], "b"))  # evicts source a's miner: a's ids start over
    again = head.classify(_records(lines[1:], "a"))[0]
    fresh = LogAnalyzer(LogAnalyzerConfig(unknown_below=0.0), encoder=encoder)
    assert again.scores == fresh.classify(_records(lines[1:], "a"))[0].scores


def test_lines_of_one_template_get_their_own_scores_dict(encoder) -> None:
    head = LogAnalyzer(LogAnalyzerConfig(), encoder=encoder)
    a, b = head.classify(_records(["job 1 started", "job 2 started"]))
    assert a.scores == b.scores and a.scores is not b.scores


def test_classify_and_observe_on_one_batch_mine_each_line_once(encoder) -> None:
    head = LogAnalyzer(LogAnalyzerConfig(window_s=60), encoder=encoder)
    batch = _records(["job 1 started", "job 2 started"])
    head.classify(batch)
    head.observe(batch)
    assert head.lines == 2


def test_topic_set_and_names_only_labels(encoder) -> None:
    topic = LogAnalyzer(LogAnalyzerConfig(labels="topic", unknown_below=0.0), encoder=encoder)
    out = topic.classify(
        _records(
            [
                "Failed password for invalid user admin from 61.177.172.13 port 52436 ssh2",
                "Out of memory: killed process 4242, heap exhausted",
            ]
        )
    )
    assert [o.label for o in out] == ["security", "resources"]
    names = LogAnalyzer(
        LogAnalyzerConfig(labels="database,network", unknown_below=0.0), encoder=encoder
    )
    (o,) = names.classify(_records(["connection reset by peer while reading socket"]))
    assert o.label == "network" and set(o.scores) == {"database", "network"}


def test_severity_temperature_is_fitted_names_only_is_not(encoder) -> None:
    fitted = ZeroShotClassifier(load_label_set("severity"), encoder=CachedEncoder(encoder))
    fitted.probabilities(["anything"])
    assert fitted.temperature_fitted and 0.001 < fitted.temperature < 1.0
    names = ZeroShotClassifier(load_label_set("a,b"), encoder=CachedEncoder(encoder))
    names.probabilities(["anything"])
    assert not names.temperature_fitted


@pytest.mark.skipif(not LOGHUB.is_dir(), reason="loghub data (../shared/data/loghub) not present")
def test_apache_error_lines_are_errors(encoder) -> None:
    path = LOGHUB / "Apache" / "Apache_2k.log_structured.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:400]
    head = LogAnalyzer(LogAnalyzerConfig(unknown_below=0.0), encoder=encoder)
    out = head.classify(_records([r["Content"] for r in rows], "Apache"))
    errors = [o.label for o, r in zip(out, rows, strict=True) if r["Level"] == "error"]
    notices = [o.label for o, r in zip(out, rows, strict=True) if r["Level"] == "notice"]
    assert errors and notices
    assert sum(label == "error" for label in errors) / len(errors) >= 0.8
    assert sum(label == "info" for label in notices) / len(notices) >= 0.8


# ----------------------------------------------------------------------------- label files


def test_label_file_yaml_and_toml(tmp_path: Path) -> None:
    y = tmp_path / "mine.yaml"
    y.write_text(
        "labels:\n"
        "  - name: db\n    description: database queries and transactions\n"
        "    examples: [query failed, transaction committed]\n"
        "  - payments\n"
    )
    ls = load_label_set(str(y))
    assert ls.names == ["db", "payments"] and ls.labels[0].examples == (
        "query failed",
        "transaction committed",
    )
    t = tmp_path / "mine.toml"
    t.write_text('[labels]\ndb = "database queries"\nnet = "network traffic"\n')
    assert load_label_set(str(t)).names == ["db", "net"]
    m = tmp_path / "map.yml"
    m.write_text("db: database\nnet: network\n")
    assert load_label_set(str(m)).labels[1].description == "network"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("labels: [only]\n", "at least two"),
        ("labels: [a, a]\n", "duplicate"),
        ("labels: [a, unknown]\n", "reserved"),
        ("labels: [a, b]\nhypotheses: [no placeholder]\n", "hypotheses"),
        ("labels: [a: b\n", "invalid YAML"),
        ("labels:\n  - name: a\n    prior: 2\n  - b\n", "prior"),
    ],
)
def test_bad_label_files_are_user_errors(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=match):
        load_label_set(str(f))


def test_missing_label_file_and_bad_names() -> None:
    with pytest.raises(UserError, match="not found"):
        load_label_set("/nonexistent/labels.yaml")
    with pytest.raises(UserError, match="at least two"):
        load_label_set("solo")
    assert load_label_set("topic").names == [
        "network", "storage", "security", "resources", "hardware", "application",
    ]  # fmt: skip
