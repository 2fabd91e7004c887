"""The trained cross-system topic head: network / storage / security / resources / hardware /
application from a template's text.

Features of a template (its masked text as first seen, `templates.mask_variables` + Drain):
the all-MiniLM-L6-v2 embedding of its words (the vector the zero-shot classifier uses), the
zero-shot classifier's log-probabilities for the shipped `labels/topic.yaml` (descriptions, cues
and examples written by hand, nothing fitted), and the character 3- and 4-grams of its words,
hashed into `NGRAM_BUCKETS` and scaled to unit length (the word pieces a person reads a topic
from: "sshd", "blk", "proxy", "dentry"). A multinomial logistic regression over the three blocks,
trained on the twelve hand-labelled loghub systems (see `training/topic.py` and the model card
`models/topic/README.md`), shipped as safetensors (weights) + JSON (the feature layout, topics,
temperature, training provenance); never a pickle.

Example (weights from the shipped model; the encoder loads all-MiniLM-L6-v2, a few seconds):
    >>> from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord
    >>> head = LogAnalyzer(LogAnalyzerConfig(labels="topic"))                # doctest: +SKIP
    >>> head.classify([LogRecord("sshd", 0.0, "Failed password for root")])[0].label  # doctest: +SKIP
    'security'
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from detector.errors import UserError
from detector.logs.linear import LinearClassifier

MODEL_DIR = "models/topic"  # inside the detector.logs package
NGRAM_BUCKETS = 4096
NGRAM_SIZES = (3, 4)
# The zero-shot log-probabilities enter at this scale (log 1e-6 * 0.3 is about -4, the size of a
# strong embedding logit): fixed, not fitted.
ZEROSHOT_SCALE = 0.3
_LETTERS_RE = re.compile(r"[A-Za-z]+")
_CAMEL_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


def topic_label_set_digest() -> str:
    """sha256 of the shipped topic label set: the zero-shot features depend on its text."""
    text = resources.files("detector.logs").joinpath("labels", "topic.yaml").read_bytes()
    return hashlib.sha256(text).hexdigest()


def ngram_words(template: str) -> list[str]:
    """Lower-case words of a masked template, camelCase split (`ServerFileSystem` -> server,
    file, system); mask tokens count as words (`<IP>` -> ip)."""
    out = []
    for token in _LETTERS_RE.findall(template):
        out += [p.lower() for p in _CAMEL_PART_RE.findall(token) or [token] if len(p) >= 2]
    return out


def ngram_features(template: str) -> np.ndarray:
    """The hashed character n-grams of a template's words (binary, unit length)."""
    v = np.zeros(NGRAM_BUCKETS, dtype=np.float32)
    for word in set(ngram_words(template)):
        padded = f" {word} "
        for n in NGRAM_SIZES:
            for i in range(len(padded) - n + 1):
                v[zlib.crc32(padded[i : i + n].encode()) % NGRAM_BUCKETS] = 1.0
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


def features(
    embeddings: np.ndarray, zeroshot: np.ndarray, templates: list[str], ngrams: bool = True
) -> np.ndarray:
    """(n, 384 + topics [+ NGRAM_BUCKETS]) rows: embedding, scaled zero-shot log-probabilities
    and (with `ngrams`) the hashed n-grams of each template."""
    parts = [embeddings.astype(np.float32), ZEROSHOT_SCALE * np.log(zeroshot + 1e-6)]
    if ngrams:
        grams = [ngram_features(t) for t in templates]
        parts.append(np.stack(grams) if grams else np.zeros((0, NGRAM_BUCKETS), np.float32))
    return np.concatenate(parts, axis=1).astype(np.float32)


@dataclass
class TopicModel(LinearClassifier):
    """Weights (topics, features), bias, temperature and the JSON card; the topics are the
    shipped label set's names, in its order."""

    NAME = "topic"

    def card(self) -> dict:
        from detector.logs.classifier import load_label_set

        names = load_label_set("topic").names
        meta = dict(super().card(), classes=names)
        meta["features"] = {
            "embedding_dim": int(self.weight.shape[1]) - len(names) - NGRAM_BUCKETS,
            "zeroshot_log_probabilities": names,
            "zeroshot_scale": ZEROSHOT_SCALE,
            "ngram_buckets": NGRAM_BUCKETS,
            "ngram_sizes": list(NGRAM_SIZES),
        }
        return meta

    def check(self, card: Path) -> None:
        from detector.logs.classifier import load_label_set

        meta = self.meta
        if meta.get("classes") != load_label_set("topic").names:
            raise UserError(f"{card}: made for other topics; retrain (`make topic-model`)")
        if meta.get("label_set_sha256") != topic_label_set_digest():
            raise UserError(
                f"{card}: trained with another labels/topic.yaml; retrain (`make topic-model`)"
            )
        if meta.get("features", {}).get("ngram_buckets") != NGRAM_BUCKETS:
            raise UserError(f"{card}: made for other features; retrain (`make topic-model`)")

    @classmethod
    def load(cls, directory: Path | None = None) -> TopicModel:
        if directory is None:
            directory = Path(str(resources.files("detector.logs").joinpath(MODEL_DIR)))
        return cls._load(directory)
