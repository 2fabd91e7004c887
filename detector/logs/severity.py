"""The trained cross-system severity head: error / warning / info from a template's text.

Features of a template (its masked text as first seen, `templates.mask_variables` + Drain):
the all-MiniLM-L6-v2 embedding of its words (`templates.embedding_text`, the same vector the
zero-shot classifier uses, so a template costs no extra forward pass) and `LEXICAL_CUES`, the
cues a person reads a level from: level words, exception and signal names, failure and refusal
words, negations ("no error", "corrected", "recovered"), counts and durations. A multinomial
logistic regression over both, trained on the levelled loghub systems (see `training/severity.py`
and the model card `models/severity/README.md`), shipped as safetensors (weights) + JSON (the
feature list, classes, temperature, training provenance); never a pickle. The temperature was
fitted on out-of-fold logits (each system scored by a model that never saw it).

A line whose header states its level (`headers.py`) is reported as that level with
confidence 1; the head only judges lines that do not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from detector.errors import UserError
from detector.logs.linear import LinearClassifier

CLASSES = ("error", "warning", "info")
MODEL_DIR = "models/severity"  # inside the detector.logs package

# Each cue is one binary feature: does the template match it (case-insensitive)?
_W = r"(?<![A-Za-z])"
_E = r"(?![A-Za-z])"
LEXICAL_CUES: tuple[tuple[str, str], ...] = (
    ("level_error", _W + r"(?:error|err|errors|fatal|critical|crit|severe|emerg|emergency)" + _E),
    ("level_warn", _W + r"(?:warn|warning|warnings)" + _E),
    ("level_info", _W + r"(?:info|notice|debug|trace|verbose)" + _E),
    (
        "exception_name",
        r"[A-Za-z](?:Exception|Error|Fault)\b|Traceback|stack ?trace|\bat [\w$.]+\(",
    ),
    ("signal_name", r"\bSIG[A-Z]{2,}\b|\bsignal\b"),
    ("fail", _W + r"fail(?:s|ed|ure|ures|ing)?" + _E),
    ("refused", r"refus|denied|deny|forbidden|unauthori[sz]ed|rejected|not permitted|blocked"),
    ("timeout", r"time[d ]?[- ]?out"),
    ("unable", r"unable|cannot|can't|could not|couldn't|can not|not able|impossible"),
    ("invalid", _W + r"(?:invalid|illegal|malformed|corrupt\w*|bad|wrong|mismatch\w*)" + _E),
    ("not_found", r"not found|missing|no such|does not exist|doesn't exist|unknown"),
    ("crash", r"crash|panic|abort|killed|kill|segfault|segmentation|core dump|died|dead\b"),
    ("lost", r"\blost\b|disconnect|unreachable|\bdown\b|broken|reset by peer|interrupt"),
    ("retry", r"retry|retrying|again|backoff|back off|reconnect"),
    ("deprecated", r"deprecat|obsolete|not recommended|no longer supported"),
    ("pressure", r"exceed|too many|too large|too long|\bfull\b|out of|overflow|limit|threshold"),
    ("slow", r"\bslow|\blow\b|\bhigh\b|latency|delay|lag\b|pressure"),
    ("unexpected", r"unexpected|unusual|ignor(?:e|ed|ing)|skip(?:ped|ping)?|fallback|fall back"),
    ("success", r"success|succeed|\bok\b|complete|done\b|finish|ready|start(?:ed|ing)|loaded"),
    ("recovered", r"correct(?:ed|able)|recover|resolv|restored|no errors?|0 errors?|without err"),
    ("negation", _W + r"(?:not|no|never|none|n't)" + _E),
    ("count", r"<NUM>\s*(?:times|attempts?|retries|errors?|failures?)|count|attempt"),
    ("duration", r"<NUM>\s*(?:ms|s|sec|secs|seconds?|min|minutes?)\b|elapsed|took"),
    ("exclaim", r"!"),
    ("has_number", r"<NUM>"),
    ("shouting", r"\b[A-Z]{4,}\b"),
)
_CUE_RES = tuple(re.compile(p, re.IGNORECASE) for _, p in LEXICAL_CUES)
# Exception names and shouting are about case: these two keep it.
_CASED = {"exception_name", "shouting", "signal_name"}
_CUE_RES = tuple(
    re.compile(p) if name in _CASED else rx
    for (name, p), rx in zip(LEXICAL_CUES, _CUE_RES, strict=True)
)
# The keyword rule a person tries first (also logs_bench's baseline): substrings, in this order.
_KEYWORD_ERROR = re.compile(r"error|fail|fatal|exception", re.IGNORECASE)
_KEYWORD_WARN = re.compile(r"warn", re.IGNORECASE)


def keyword_level(message: str) -> str:
    """error if the text contains error/fail/fatal/exception, else warning if warn, else info."""
    if _KEYWORD_ERROR.search(message):
        return "error"
    if _KEYWORD_WARN.search(message):
        return "warning"
    return "info"


KEYWORD_NAMES = tuple(f"keyword_{c}" for c in CLASSES)  # keyword_level as a one-hot
LEXICAL_NAMES = tuple(name for name, _ in LEXICAL_CUES) + KEYWORD_NAMES + ("log_words",)


def lexical_features(template: str) -> np.ndarray:
    """The cue vector of one masked template: binary cues, the keyword rule's level one-hot,
    log(1 + words) / 4."""
    out = np.zeros(len(LEXICAL_NAMES), dtype=np.float32)
    for i, rx in enumerate(_CUE_RES):
        if rx.search(template):
            out[i] = 1.0
    out[len(_CUE_RES) + CLASSES.index(keyword_level(template))] = 1.0
    out[-1] = np.log1p(len(template.split())) / 4.0
    return out


def features(embeddings: np.ndarray, templates: list[str]) -> np.ndarray:
    """(n, 384 + cues) feature rows for templates whose sentence embeddings are given."""
    lex = np.stack([lexical_features(t) for t in templates]) if templates else None
    if lex is None:
        return np.zeros((0, embeddings.shape[1] + len(LEXICAL_NAMES)), dtype=np.float32)
    return np.concatenate([embeddings.astype(np.float32), lex], axis=1)


@dataclass
class SeverityModel(LinearClassifier):
    """Weights (classes, features), bias (classes), temperature and the JSON card."""

    NAME = "severity"

    def card(self) -> dict:
        meta = dict(super().card(), classes=list(CLASSES))
        meta["features"] = {"embedding_dim": int(self.weight.shape[1]) - len(LEXICAL_NAMES),
                            "lexical": list(LEXICAL_NAMES)}  # fmt: skip
        return meta

    def check(self, card: Path) -> None:
        meta = self.meta
        if tuple(meta.get("classes", ())) != CLASSES or meta.get("features", {}).get(
            "lexical"
        ) != list(LEXICAL_NAMES):
            raise UserError(f"{card}: made for other classes or cues; retrain the severity model")

    @classmethod
    def load(cls, directory: Path | None = None) -> SeverityModel:
        if directory is None:
            directory = Path(str(resources.files("detector.logs").joinpath(MODEL_DIR)))
        return cls._load(directory)


# Names a user may give the three levels (`--labels error,warning,info`, `err,warn,info`...).
_ALIASES = {
    "error": "error", "errors": "error", "err": "error", "fatal": "error", "critical": "error",
    "warning": "warning", "warn": "warning", "warnings": "warning",
    "info": "info", "information": "info", "informational": "info", "notice": "info",
    "normal": "info", "ok": "info",
}  # fmt: skip

# Stated levels in headers: syslog, log4j, Android letters, Windows, Apache.
STATED_LEVELS = {
    "emerg": "error", "emergency": "error", "alert": "error", "crit": "error", "critical": "error",
    "err": "error", "error": "error", "fatal": "error", "failure": "error", "severe": "error",
    "panic": "error", "eror": "error", "dbug": "info",  # logrus' panic; log15's eror, dbug
    "fail": "error", "trce": "info",  # .NET's console logger (read only as its header line)
    "log": "info",  # PostgreSQL's LOG: (read only as `LOG:`, detector/logs/headers.py)
    "d1": "info", "d2": "info", "d3": "info", "d4": "info", "d5": "info",  # MongoDB's debug
    "e": "error", "f": "error", "a": "error",
    "warn": "warning", "warning": "warning", "w": "warning",
    "notice": "info", "info": "info", "information": "info", "informational": "info", "i": "info",
    "debug": "info", "trace": "info", "verbose": "info", "d": "info", "v": "info", "fine": "info",
    "finer": "info", "finest": "info", "config": "info",
}  # fmt: skip


def severity_mapping(names: list[str]) -> list[int] | None:
    """For a label set that names exactly the three levels, the index of each CLASS in `names`;
    otherwise None (the label set is not severity: zero-shot handles it)."""
    mapped = [_ALIASES.get(n.strip().lower()) for n in names]
    if None in mapped or sorted(mapped) != sorted(CLASSES):
        return None
    return [mapped.index(c) for c in CLASSES]
