"""The topic benchmark and head: hand labels cover loghub's templates, the keyword baseline, the
leave-one-system-out rule (the trained head never sees the system it scores), the shipped model
and that serving scores what the benchmark measured."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import benchmarks.log_topics as topics
from benchmarks.logs_bench import LOGHUB
from detector.errors import UserError
from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord
from detector.logs.classifier import load_label_set
from detector.logs.encoder import CachedEncoder
from detector.logs.topic import NGRAM_BUCKETS, TopicModel, ngram_features, ngram_words
from detector.messages import LogClass
from tests.fakes import HashEncoder
from training.topic import DESIGN, DESIGNS, fit


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


def test_a_labels_file_without_the_topic_column_is_refused(tmp_path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("system,event_id,label\nX,E1,network\n")
    with pytest.raises(ValueError, match="system, event_id and topic"):
        topics.load_topic_truth(bad)


def _loghub(root: Path, system: str, event_ids: list[str]) -> None:
    (root / system).mkdir(parents=True)
    path = root / system / f"{system}_2k.log_structured.csv"
    path.write_text("EventId,Content\n" + "".join(f"{e},m\n" for e in event_ids))


def test_agreement_counts_templates_and_weights_kappa_by_lines(tmp_path) -> None:
    _loghub(tmp_path, "S", ["E1"] * 8 + ["E2", "E3"])
    _loghub(tmp_path, "T", ["E1", "E1"])
    first = {("S", "E1"): "network", ("S", "E2"): "storage", ("S", "E3"): "storage",
             ("T", "E1"): "security"}  # fmt: skip
    second = {**first, ("S", "E3"): "network"}
    rows = {r["system"]: r for r in topics.agreement(tmp_path, ["S", "T"], first, second)}
    assert rows["S"]["templates"] == 3 and rows["S"]["same_topic"] == pytest.approx(2 / 3)
    # templates: observed 2/3, chance (1/3 x 2/3 + 2/3 x 1/3) = 4/9 -> kappa 0.4; by lines the
    # one disagreement is 1 line of 10: observed 0.9, chance 0.8 x 0.9 + 0.2 x 0.1 = 0.74
    assert rows["S"]["kappa_templates"] == pytest.approx(0.4)
    assert rows["S"]["kappa_lines"] == pytest.approx((0.9 - 0.74) / (1 - 0.74))
    assert rows["T"]["kappa_templates"] is None  # one topic on both sides: no chance to correct
    assert rows["all"]["templates"] == 4 and rows["all"]["same_topic"] == pytest.approx(3 / 4)


def test_agreement_cli_refuses_files_of_different_templates(tmp_path, capsys) -> None:
    if not LOGHUB.is_dir():
        pytest.skip(f"loghub data not found at {LOGHUB}")
    other = tmp_path / "b.csv"
    other.write_text("system,event_id,topic\nApache,E1,network\n")
    assert topics.main(["--agreement", str(other), "--out", str(tmp_path / "a.json")]) == 2
    assert "label different templates" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


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
    lines = [f"line {i}" for i in range(n)]
    return topics.TopicSystem(name, lines, truth, emb, zs, np.arange(n), lines)


def test_leave_one_system_out_never_fits_on_the_held_out_system(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    fake = {s: _system(s, 12, rng) for s in ("A", "B", "C")}
    monkeypatch.setattr(topics, "topic_system", lambda _root, s, _truth, _enc: fake[s])
    monkeypatch.setattr(topics, "load_topic_truth", lambda _path: {})
    import benchmarks.logs_bench as bench

    network = LogClass("s", 0.0, "m", "network", 1.0, {"network": 1.0})
    monkeypatch.setattr(bench, "classify_all", lambda _h, recs: [network] * len(recs))
    seen: list[tuple[str, list[str]]] = []
    real = topics.fit_predict

    def spy(train, held, design=None):
        seen.append((held.name, [d.name for d in train]))
        return real(train, held, design)

    monkeypatch.setattr(topics, "fit_predict", spy)
    rows, pooled, chosen = topics.leave_one_system_out(
        LOGHUB, encoder=object(), systems=list(fake), few_shot=False, nested=True
    )
    assert seen, "the head was never fitted"
    outer = {held: train for held, train in seen if len(train) == 2}
    assert set(outer) == set(fake)
    for held, train in seen:
        assert held not in train
    assert set(chosen) == set(fake) and set(chosen.values()) <= {d.name for d in DESIGNS}
    assert len(pooled["truth"]) == len(pooled["head"]) == 36
    assert rows[-2]["system"] == "overall (pooled)"


def test_bootstrap_gain_resamples_whole_templates() -> None:
    truth = ["network"] * 6 + ["storage"] * 4
    templates = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    right, wrong = list(truth), ["network"] * 10
    same = topics.bootstrap_gain(truth, right, right, templates, 50)
    assert same.shape == (50,) and (same == 0).all()
    gains = topics.bootstrap_gain(truth, right, wrong, templates, 200, seed=1)
    assert (gains >= 0).all() and gains.max() > 0  # the head is never worse here
    # a resample with only network templates leaves one topic, on which both are perfect
    assert (gains == 0).any()
    # one template: every resample is the system itself
    one = topics.bootstrap_gain(truth[:3], ["storage"] * 3, truth[:3], [7, 7, 7], 20)
    assert np.allclose(one, -100.0)


# ----------------------------------------------------------------------------- the topic head

MODEL_DIR = Path(__file__).resolve().parents[1] / "detector" / "logs" / "models" / "topic"


def test_ngrams_read_the_words_of_a_template() -> None:
    assert ngram_words("ClusterFileSystem: domain <NUM> is full") == [
        "cluster", "file", "system", "domain", "num", "is", "full",
    ]  # fmt: skip
    v = ngram_features("Failed password for <*> from <IP>")
    assert v.shape == (NGRAM_BUCKETS,) and np.isclose(np.linalg.norm(v), 1.0)
    assert np.array_equal(v, ngram_features("failed PASSWORD for <*> from <IP>"))
    assert not ngram_features("").any()


def test_shipped_topic_model_is_safetensors_and_json_with_a_card() -> None:
    assert sorted(p.name for p in MODEL_DIR.iterdir()) == [
        "README.md",
        "topic.json",
        "topic.safetensors",
    ]
    model = TopicModel.load()
    width = 384 + len(topics.TOPICS) + NGRAM_BUCKETS
    assert model.weight.shape == (len(topics.TOPICS), width)
    assert tuple(model.meta["classes"]) == topics.TOPICS
    assert model.meta["design"] == DESIGN.name
    assert len(model.meta["trained_on"]["systems"]) == 12


def test_a_card_for_another_label_set_is_one_clear_error(tmp_path) -> None:
    model = TopicModel.load()
    model.meta = dict(model.meta, label_set_sha256="0" * 64)
    model.save(tmp_path)
    with pytest.raises(UserError, match="another labels/topic.yaml"):
        TopicModel.load(tmp_path)
    with pytest.raises(UserError, match="make topic-model"):
        TopicModel.load(tmp_path / "missing")


def test_the_topic_head_serves_the_shipped_topic_set_only() -> None:
    assert LogAnalyzer(LogAnalyzerConfig(labels="topic"), encoder=HashEncoder()).topic is not None
    off = LogAnalyzer(LogAnalyzerConfig(labels="topic", topic_head=False), encoder=HashEncoder())
    assert off.topic is None
    renamed = ",".join(topics.TOPICS)  # the same names without the descriptions: zero-shot
    assert LogAnalyzer(LogAnalyzerConfig(labels=renamed), encoder=HashEncoder()).topic is None


def test_serving_scores_what_the_benchmark_fitted() -> None:
    """LogAnalyzer.classify with a model gives the labels fit_predict measured (same templates,
    same features), so the leave-one-system-out figures are the served head's."""
    if not LOGHUB.is_dir():
        pytest.skip(f"loghub data not found at {LOGHUB}")
    truth = topics.load_topic_truth()
    encoder = CachedEncoder(HashEncoder())
    data = [topics.topic_system(LOGHUB, s, truth, encoder) for s in ("Apache", "OpenSSH")]
    train, held = data[0], data[1]
    model = fit([train])
    expected = topics.fit_predict([train], held)
    head = LogAnalyzer(LogAnalyzerConfig(labels="topic"), encoder=encoder, topic=model)
    records = [LogRecord(held.name, float(i), c) for i, c in enumerate(held.contents)]
    assert [o.label for o in head.classify(records)] == expected


def test_examples_pull_the_topic_head(tmp_path) -> None:
    ex = tmp_path / "ex.csv"
    ex.write_text("label,message\nstorage,quota of tenant 5 nearly used up\n")
    head = LogAnalyzer(LogAnalyzerConfig(labels="topic", examples=str(ex)), encoder=HashEncoder())
    assert head.topic is not None
    (o,) = head.classify([LogRecord("a", 0.0, "quota of tenant 77 nearly used up")])
    assert o.label == "storage" and o.confidence >= 0.99
