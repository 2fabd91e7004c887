"""The topic benchmark: hand labels cover loghub's templates, the keyword baseline, and the
leave-one-system-out rule (the trained head never sees the system it scores)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import benchmarks.log_topics as topics
from benchmarks.logs_bench import LOGHUB
from detector.logs.classifier import load_label_set
from detector.messages import LogClass


def test_topics_are_the_shipped_label_set() -> None:
    assert tuple(load_label_set("topic").names) == topics.TOPICS


def test_labels_cover_every_loghub_template() -> None:
    if not LOGHUB.is_dir():
        pytest.skip(f"loghub data not found at {LOGHUB}")
    truth = topics.load_topic_truth()
    systems = sorted(d.name for d in LOGHUB.iterdir() if d.is_dir())
    assert len(systems) == 12
    for system in systems:
        with (LOGHUB / system / f"{system}_2k.log_templates.csv").open(encoding="utf-8") as f:
            ids = {r["EventId"] for r in csv.DictReader(f)}
        assert ids == {e for s, e in truth if s == system}, system
        contents, labels = topics.system_lines(LOGHUB, system, truth)
        assert len(contents) == len(labels) == 2000


def test_unknown_topic_in_the_labels_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("system,event_id,template,topic\nX,E1,hello,weather\n")
    with pytest.raises(ValueError, match="weather"):
        topics.load_topic_truth(bad)


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("Failed password for root from 10.0.0.1 port 22 ssh2", "security"),
        ("Received block blk_123 of size 67108864 from /10.250.19.102", "storage"),
        ("Could not connect to proxy proxy.example.com:5070", "network"),
        ("java.lang.OutOfMemoryError: Java heap space", "resources"),
        ("Temperature (52C) exceeds warning threshold", "hardware"),
        ("Task succeeded with attempt attempt_1445144423722_0020_m_000002_0", "application"),
    ],
)
def test_keyword_baseline(message: str, topic: str) -> None:
    assert topics.topic_keyword_label(message) == topic


def _system(name: str, n: int, rng: np.random.Generator) -> topics.TopicSystem:
    truth = [topics.TOPICS[i % len(topics.TOPICS)] for i in range(n)]
    emb = rng.standard_normal((n, 384)).astype(np.float32)
    zs = np.full((n, len(topics.TOPICS)), 1 / len(topics.TOPICS))
    return topics.TopicSystem(name, [f"line {i}" for i in range(n)], truth, emb, zs, np.arange(n))


def test_leave_one_system_out_never_fits_on_the_held_out_system(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    fake = {s: _system(s, 12, rng) for s in ("A", "B", "C")}
    monkeypatch.setattr(topics, "topic_system", lambda _root, s, _truth, _enc: fake[s])
    monkeypatch.setattr(topics, "load_topic_truth", lambda: {})
    import benchmarks.logs_bench as bench

    network = LogClass("s", 0.0, "m", "network", 1.0, {"network": 1.0})
    monkeypatch.setattr(bench, "classify_all", lambda _h, recs: [network] * len(recs))
    seen: list[tuple[str, list[str]]] = []
    real = topics.fit_predict

    def spy(train, held, kind=topics.HEAD_FEATURES):
        seen.append((held.name, [d.name for d in train]))
        return real(train, held, kind)

    monkeypatch.setattr(topics, "fit_predict", spy)
    rows, pooled, chosen = topics.leave_one_system_out(
        LOGHUB, encoder=object(), systems=list(fake), few_shot=False, nested=True
    )
    assert seen, "the head was never fitted"
    outer = {held: train for held, train in seen if len(train) == 2}
    assert set(outer) == set(fake)
    for held, train in seen:
        assert held not in train
    assert set(chosen) == set(fake) and set(chosen.values()) <= set(topics.FEATURE_SETS)
    assert len(pooled["truth"]) == len(pooled["head"]) == 36
    assert rows[-2]["system"] == "overall (pooled)"
