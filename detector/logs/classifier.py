"""Zero-shot log classification with sentence embeddings; no training on labelled logs.

Method (embedding zero-shot classification, in the spirit of Yin et al. 2019 "Benchmarking
Zero-shot Text Classification", with sentence embeddings instead of NLI):

1. Each label is described in text: its name, an optional description, optional short example
   messages, optional cue words and an optional prior (the expected share in a stream). The name
   and description are wrapped in hypothesis templates ("This log message reports {}.").
2. A log line is reduced to the words of its template (`templates.embedding_text`: masks and
   punctuation dropped, identifiers split), so the variable parts of a line cannot move its label.
3. Sentence score of a label: a soft maximum (log-mean-exp with a sharp fixed temperature) of the
   cosine similarities between the line and the label's phrases.
   Word score of a label: the largest cosine similarity between any single word of the line and any
   cue word of the label. A sentence embedding of a whole line is dominated by its topic ("block",
   "container"); the word score lets one telling word ("refused", "timeout") count, and because it
   is an embedding similarity, synonyms of the cues count too.
4. score = w * sentence + (1 - w) * word + PRIOR_SCALE * log prior; p = softmax(score / T).
   T is fitted (maximum likelihood) on the label set's own examples, each scored leave-one-out
   against the other phrases; without enough examples a default temperature is used. The prior
   enters in score units with a fixed scale rather than divided by the fitted T: the examples are
   short and clean, so T fitted on them is sharper than real lines warrant, and a prior scaled by
   it would swing the decisions with every change to the examples. This way T only sets how
   confident the probabilities are, and the decision boundary stays put.

Probabilities are cached per template text, so a repeated template costs no embedding.

Example (loads all-MiniLM-L6-v2 from the installed package, a few seconds):
    >>> clf = ZeroShotClassifier(load_label_set("severity"))   # doctest: +SKIP
    >>> clf.classify(["Connection refused by <IP>"])[0].label  # doctest: +SKIP
    'error'
"""

from __future__ import annotations

import math
import re
import tomllib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from detector.errors import UserError
from detector.logs.encoder import CachedEncoder, TextEncoder

UNKNOWN = "unknown"
SHIPPED_LABEL_SETS = ("severity", "topic")
DEFAULT_HYPOTHESES = ("This log message is about {}.",)
# Used when a label set has too few examples to fit a temperature (e.g. `--labels a,b,c`). It is of
# the order the shipped sets fit to (severity: see the benchmark output), i.e. a 0.05 cosine gap
# is worth about a factor e in odds.
DEFAULT_TEMPERATURE = 0.05
# Scale of the log prior in score (cosine) units: a prior ratio of e moves a boundary by 0.05.
PRIOR_SCALE = 0.05
# Sharpness of the soft maximum over a label's phrases: close to a max, but several good matches
# count for a little more than one.
PHRASE_POOL_TEMPERATURE = 0.05
_WORD_RE = re.compile(r"[A-Za-z']+")
_MIN_WORD_LEN = 3


@dataclass(frozen=True)
class Label:
    """One class: a name plus the text that describes it (see module docstring)."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()
    cues: tuple[str, ...] = ()
    prior: float | None = None


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[Label, ...]
    hypotheses: tuple[str, ...] = DEFAULT_HYPOTHESES
    temperature: float | None = None  # fixed temperature; None = fit on the examples

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]


@dataclass(frozen=True)
class ClassifierConfig:
    unknown_below: float = 0.0  # confidence under which the label is "unknown" (0: never)
    sentence_weight: float = 0.7  # w in score = w * sentence + (1 - w) * word
    use_words: bool = True  # the word score (off = sentence score only)
    cache_size: int = 50_000  # templates whose probabilities are kept


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Label sets: shipped YAML, a file (YAML or TOML), or a comma-separated list of names


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text) if len(w) >= _MIN_WORD_LEN]


class TemplateText(NamedTuple):
    """What the classifier scores: the sentence to embed and the words for the word score."""

    sentence: str
    words: tuple[str, ...]
    raw: str = ""  # the masked template as first seen (the severity head's lexical cues)


def as_input(text: str) -> TemplateText:
    """A plain text as classifier input: every word of it counts for the word score."""
    return TemplateText(text, tuple(dict.fromkeys(_words(text))))


def _label_from(obj: Any, where: str) -> Label:
    if isinstance(obj, str):
        return Label(name=obj.strip())
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise UserError(f"{where}: each label needs a non-empty 'name'")

    def strings(key: str) -> tuple[str, ...]:
        value = obj.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: label {obj['name']!r}: '{key}' must be a list of strings")
        return tuple(v.strip() for v in value if v.strip())

    prior = obj.get("prior")
    if prior is not None and (not isinstance(prior, int | float) or not 0 < prior <= 1):
        raise UserError(f"{where}: label {obj['name']!r}: 'prior' must be in (0, 1]")
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where}: label {obj['name']!r}: 'description' must be a string")
    return Label(
        name=obj["name"].strip(),
        description=description.strip(),
        examples=strings("examples"),
        cues=tuple(c.lower() for c in strings("cues")),
        prior=None if prior is None else float(prior),
    )


def label_set_from_dict(data: Any, where: str, default_name: str = "custom") -> LabelSet:
    """Build a LabelSet from parsed YAML/TOML.

    Accepted shapes: {"labels": [ {name, description?, examples?, cues?, prior?} | "name", ...]},
    {"labels": {name: description, ...}}, or a bare {name: description, ...} mapping. Optional
    top-level keys: name, hypotheses (each with one "{}"), temperature.
    """
    if isinstance(data, dict) and "labels" in data:
        raw = data["labels"]
        meta = data
    else:
        raw, meta = data, {}
    if isinstance(raw, dict):
        items = [{"name": k, "description": v if v is not None else ""} for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise UserError(f"{where}: expected a list or mapping of labels")
    labels = tuple(_label_from(item, where) for item in items)
    _check_labels(labels, where)
    hypotheses = meta.get("hypotheses", list(DEFAULT_HYPOTHESES))
    if (
        not isinstance(hypotheses, list)
        or not hypotheses
        or not all(isinstance(h, str) and h.count("{}") == 1 for h in hypotheses)
    ):
        raise UserError(f"{where}: 'hypotheses' must be a list of strings with one '{{}}' each")
    temperature = meta.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or temperature <= 0):
        raise UserError(f"{where}: 'temperature' must be a positive number")
    return LabelSet(
        name=str(meta.get("name", default_name)),
        labels=labels,
        hypotheses=tuple(hypotheses),
        temperature=None if temperature is None else float(temperature),
    )


def _check_labels(labels: Sequence[Label], where: str) -> None:
    names = [label.name for label in labels]
    if len(names) < 2:
        raise UserError(f"{where}: need at least two labels, got {len(names)}")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: duplicate label names")
    if UNKNOWN in names:
        raise UserError(f"{where}: '{UNKNOWN}' is reserved for low-confidence lines")


def load_label_set(spec: str) -> LabelSet:
    """`severity` / `topic` (shipped), a .yaml/.yml/.toml file, or comma-separated names."""
    spec = spec.strip()
    if spec in SHIPPED_LABEL_SETS:
        text = resources.files("detector.logs").joinpath("labels", f"{spec}.yaml").read_text()
        return _parse_yaml(text, f"label set {spec}", spec)
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".toml"):
        if not path.is_file():
            raise UserError(f"label file not found: {spec}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read label file {spec}: {exc}") from exc
        if path.suffix.lower() == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise UserError(f"{spec}: invalid TOML: {exc}") from exc
            return label_set_from_dict(data, spec, path.stem)
        return _parse_yaml(text, spec, path.stem)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    labels = tuple(Label(name=n) for n in names)
    _check_labels(labels, "--labels")
    return LabelSet(name="custom", labels=labels)


def load_examples(path: str, label_set: LabelSet) -> dict[str, list[str]]:
    """Few-shot examples: a JSON lines file of {"label", "message"} objects, or a CSV file with
    `label` and `message` columns. Returns, per label, the examples as the encoder sees a
    template (header split off, variables masked, words only)."""
    import csv

    from detector.logs.analyzer import json_lines, parse_log_value
    from detector.logs.templates import embedding_text, mask_variables

    file = Path(path)
    if not file.is_file():
        raise UserError(f"examples file not found: {path}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read examples file {path}: {exc}") from exc
    pairs: list[tuple[int, object, object]] = []
    if file.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"label", "message"} <= set(rows[0]):
            raise UserError(f"{path}: a CSV of examples needs 'label' and 'message' columns")
        pairs = [(i + 2, r["label"], r["message"]) for i, r in enumerate(rows)]
    else:
        for i, obj in json_lines(path, text.splitlines()):
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{i}: not a JSON object")
            pairs.append((i, obj.get("label"), obj.get("message")))

    out: dict[str, list[str]] = {}
    for where, label, message in pairs:
        if not isinstance(label, str) or label not in label_set.names:
            raise UserError(f"{path}:{where}: label {label!r} is not one of {label_set.names}")
        if not isinstance(message, str) or not message.strip():
            raise UserError(f"{path}:{where}: 'message' must be a non-empty string")
        record = parse_log_value(message.encode(), None, 0.0)
        words = embedding_text(mask_variables(record.text))
        if words:
            out.setdefault(label, []).append(words)
    if not out:
        raise UserError(f"{path}: no examples")
    return out


def _parse_yaml(text: str, where: str, default_name: str) -> LabelSet:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise UserError(f"{where}: invalid YAML: {first}") from exc
    return label_set_from_dict(data, where, default_name)


# ---------------------------------------------------------------------------------------------
# The classifier


def _pool(similarities: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Soft maximum over the last axis: tau * log(mean(exp(sim / tau))) over the unmasked items."""
    z = similarities / PHRASE_POOL_TEMPERATURE
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    top = z.max(axis=-1, keepdims=True)
    count = similarities.shape[-1] if mask is None else mask.sum(axis=-1)
    pooled = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1) / count)
    return PHRASE_POOL_TEMPERATURE * pooled


class ZeroShotClassifier:
    """Scores embedding texts (template words) against a LabelSet; see the module docstring."""

    def __init__(
        self,
        label_set: LabelSet,
        encoder: TextEncoder | None = None,
        config: ClassifierConfig | None = None,
        device: str = "cpu",
    ) -> None:
        from detector.logs.encoder import shared_encoder

        self.label_set = label_set
        self.config = config or ClassifierConfig()
        if isinstance(encoder, CachedEncoder):
            self.encoder = encoder
        else:
            self.encoder = CachedEncoder(encoder or shared_encoder(device))
        self.names = label_set.names
        self._probs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._prepared = False
        self.temperature = label_set.temperature or DEFAULT_TEMPERATURE
        self.temperature_fitted = False

    # Preparation (phrase and cue embeddings, temperature) happens on first use, so building a
    # classifier is free and the model loads only when there is something to classify.
    def prepare(self) -> None:
        """Embed the label phrases and fit the temperature (also done lazily on first use)."""
        self._prepare()

    def _prepare(self) -> None:
        if self._prepared:
            return
        phrases: list[str] = []
        owner: list[int] = []
        is_example: list[bool] = []
        cue_words: list[str] = []
        cue_owner: list[int] = []
        for j, label in enumerate(self.label_set.labels):
            texts = [h.format(label.name) for h in self.label_set.hypotheses]
            if label.description:
                texts += [h.format(label.description) for h in self.label_set.hypotheses]
            phrases += texts + list(label.examples)
            owner += [j] * (len(texts) + len(label.examples))
            is_example += [False] * len(texts) + [True] * len(label.examples)
            cues = label.cues or tuple(_words(label.name)) or (label.name.lower(),)
            cue_words += list(cues)
            cue_owner += [j] * len(cues)
        self._phrase_vecs = self.encoder.encode(phrases)
        self._phrase_owner = np.asarray(owner)
        self._phrase_masks = np.stack(
            [self._phrase_owner == j for j in range(len(self.names))]
        )  # (labels, phrases)
        self._cue_vecs = self.encoder.encode(cue_words)
        self._cue_owner = np.asarray(cue_owner)
        priors = [label.prior for label in self.label_set.labels]
        if any(p is not None for p in priors):
            # Labels without a prior share what the others leave (at least a little).
            given = sum(p for p in priors if p is not None)
            rest = [p for p in priors if p is None]
            fill = max(1.0 - given, 1e-3) / len(rest) if rest else 0.0
            prior = np.asarray([p if p is not None else fill for p in priors], dtype=np.float64)
        else:
            prior = np.ones(len(priors))
        self.log_prior = np.log(prior / prior.sum())
        self._prepared = True
        if self.label_set.temperature is None:
            self._fit_temperature(np.asarray(is_example), phrases)

    def _scores(
        self, items: Sequence[TemplateText], exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw label scores (n, labels). `exclude`: (n, phrases) bool, phrases to leave out."""
        word_lists = [item.words for item in items] if self.config.use_words else []
        vocab = list(dict.fromkeys(w for ws in word_lists for w in ws))
        # Sentences and words in one encoder call: every forward pass streams all the model's
        # weights, so fewer, fuller batches are what makes a burst of new templates cheap.
        all_vecs = self.encoder.encode([item.sentence for item in items] + vocab)
        vecs, word_vecs = all_vecs[: len(items)], all_vecs[len(items) :]
        sims = vecs @ self._phrase_vecs.T  # (n, phrases)
        sentence = np.empty((len(items), len(self.names)), dtype=np.float64)
        for j in range(len(self.names)):
            mask = np.broadcast_to(self._phrase_masks[j], sims.shape)
            if exclude is not None:
                mask = mask & ~exclude
            sentence[:, j] = _pool(sims, mask)
        if not self.config.use_words:
            return sentence
        word = np.zeros_like(sentence)
        if vocab:
            cue_sims = word_vecs @ self._cue_vecs.T  # (vocab, cues)
            per_label = np.stack(
                [cue_sims[:, self._cue_owner == j].max(axis=1) for j in range(len(self.names))],
                axis=1,
            )  # (vocab, labels)
            index = {w: i for i, w in enumerate(vocab)}
            for i, ws in enumerate(word_lists):
                if ws:
                    word[i] = per_label[[index[w] for w in ws]].max(axis=0)
        w = self.config.sentence_weight
        return w * sentence + (1.0 - w) * word

    def _fit_temperature(self, is_example: np.ndarray, phrases: list[str]) -> None:
        """Maximum-likelihood temperature on the examples, each scored leave-one-out."""
        idx = np.flatnonzero(is_example)
        per_label = np.bincount(self._phrase_owner[idx], minlength=len(self.names))
        if per_label.min() < 2:
            return  # too few examples for a fit: keep DEFAULT_TEMPERATURE
        exclude = np.zeros((len(idx), len(phrases)), dtype=bool)
        exclude[np.arange(len(idx)), idx] = True
        scores = self._scores([as_input(phrases[i]) for i in idx], exclude)
        truth = self._phrase_owner[idx]

        scores = scores + PRIOR_SCALE * self.log_prior

        def nll(log_t: float) -> float:
            z = scores / math.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return float(-logp[np.arange(len(truth)), truth].mean())

        from scipy.optimize import minimize_scalar

        result = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(1.0)), method="bounded")
        self.temperature = float(math.exp(result.x))
        self.temperature_fitted = True

    def _softmax(self, scores: np.ndarray) -> np.ndarray:
        z = (scores + PRIOR_SCALE * self.log_prior) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def probabilities(self, inputs: Sequence[str | TemplateText]) -> np.ndarray:
        """Calibrated label probabilities (n, labels); cached per input.

        An input is a TemplateText, or a plain string (its words are then all its words)."""
        self._prepare()
        texts = [x if isinstance(x, TemplateText) else as_input(x) for x in inputs]
        if self.config.cache_size <= 0:  # no cache: score every text, duplicates too
            return self._softmax(self._scores(texts)) if texts else np.zeros((0, len(self.names)))
        todo = [t for t in dict.fromkeys(texts) if t not in self._probs]
        if todo:
            p = self._softmax(self._scores(todo))
            for text, row in zip(todo, p, strict=True):
                self._probs[text] = row
            while len(self._probs) > self.config.cache_size:
                self._probs.popitem(last=False)
        out = []
        for t in texts:
            row = self._probs.get(t)
            if row is None:  # evicted within this very batch (batch larger than the cache)
                row = self.probabilities([t])[0]
            else:
                self._probs.move_to_end(t)
            out.append(row)
        return np.stack(out) if out else np.zeros((0, len(self.names)))

    def decide(self, probs: np.ndarray) -> Classification:
        """Label, confidence and rounded scores from one probability row."""
        best = int(np.argmax(probs))
        confidence = float(probs[best])
        label = self.names[best] if confidence >= self.config.unknown_below else UNKNOWN
        scores = {name: round(float(p), 4) for name, p in zip(self.names, probs, strict=True)}
        return Classification(label=label, confidence=round(confidence, 4), scores=scores)

    def classify(self, inputs: Sequence[str | TemplateText]) -> list[Classification]:
        return [self.decide(row) for row in self.probabilities(inputs)]
