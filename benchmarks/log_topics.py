"""Topic label set on loghub: hand-labelled ground truth, a keyword baseline, leave one system out.

The keyword baseline was written and committed before any topic measurement (see the guide in
`benchmarks/data/log_topics_guide.md`): the first pattern that matches the message content names
its topic, in the order below (specific words first); no match is `application`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOPICS = ("network", "storage", "security", "resources", "hardware", "application")

_W = r"(?<![A-Za-z])"
TOPIC_KEYWORDS: tuple[tuple[str, str], ...] = (
    (
        "security",
        r"auth|login|logon|logoff|logout|password|passwd|permission|denied|\bdeny\b|sshd?\b|"
        r"credential|certificate|privilege|sudo|pam_|kerberos|token|security|sandbox|"
        r"break-in|intrusion|invalid user|\buser\b|\bsession\b",
    ),
    (
        "hardware",
        r"hardware|device|sensor|temperature|thermal|power|battery|\bfan\b|driver|firmware|"
        r"\busb\b|voltage|\bpci|acpi|\birq\b|interrupt|bios|display|screen|keyboard|mouse|"
        r"\bbluetooth\b",
    ),
    (
        "resources",
        r"memory|\bmem\b|\bcpu\b|thread|quota|container|heap|resource|\bload\b|capacity|"
        r"alloc|\bgc\b|garbage|\boom\b|\bpool\b|\bcores?\b|\blimit",
    ),
    (
        "storage",
        r"disk|file|filesystem|\bblock|blk_|volume|mount|database|\bdb\b|replica|storage|"
        r"director(?:y|ies)|\bpath\b|cache|partition|spill|checkpoint|\bwrit(?:e|ing|ten)\b|"
        r"\bread\b|namenode|datanode",
    ),
    (
        "network",
        r"network|connect|socket|\bhost|\bport\b|\bdns\b|proxy|https?\b|\btcp\b|\budp\b|"
        r"\bip\b|address|route|packet|interface|\beth\d|wi-?fi|wlan|\bpeer\b|remote|"
        r"\bclient\b|\bserver\b|\burl\b|\d+\.\d+\.\d+\.\d+",
    ),
)
_TOPIC_RES = tuple((topic, re.compile(p, re.IGNORECASE)) for topic, p in TOPIC_KEYWORDS)


def topic_keyword_label(message: str) -> str:
    """The keyword baseline: the first topic whose pattern matches, else application."""
    for topic, rx in _TOPIC_RES:
        if rx.search(message):
            return topic
    return "application"


# ------------------------------------------------------------------------- ground truth

TRUTH = Path(__file__).resolve().parent / "data" / "log_topics.csv"


def load_topic_truth(path: Path = TRUTH) -> dict[tuple[str, str], str]:
    """(system, EventId) -> topic, from the hand-labelled templates."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"system", "event_id", "topic"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: needs the columns system, event_id and topic")
        out = {(r["system"], r["event_id"]): r["topic"] for r in reader}
    unknown = {t for t in out.values() if t not in TOPICS}
    if unknown:
        raise ValueError(f"{path}: topics {sorted(unknown)} are not in {TOPICS}")
    return out


def _structured_rows(loghub: Path, system: str) -> list[dict[str, str]]:
    path = loghub / system / f"{system}_2k.log_structured.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def system_lines(loghub: Path, system: str, truth: dict[tuple[str, str], str]):
    """Content lines of a system's structured CSV and the topic of each (by its EventId)."""
    rows = _structured_rows(loghub, system)
    return [r["Content"] for r in rows], [truth[(system, r["EventId"])] for r in rows]


def agreement(loghub: Path, systems: list[str], first: dict, second: dict) -> list[dict]:
    """How two labellers' topics agree, per system and over all: the share of templates given
    the same topic, and Cohen's kappa over templates and over lines (each template weighted by
    its lines in the 2k sample)."""
    from sklearn.metrics import cohen_kappa_score

    def kappa(a: list[str], b: list[str], w: list[int]) -> float | None:
        # one topic on both sides leaves nothing to agree by chance on
        return float(cohen_kappa_score(a, b, sample_weight=w)) if len({*a, *b}) > 1 else None

    rows, every = [], ([], [], [])
    for system in systems:
        lines: dict[str, int] = {}
        for r in _structured_rows(loghub, system):
            lines[r["EventId"]] = lines.get(r["EventId"], 0) + 1
        a = [first[(system, e)] for e in lines]
        b = [second[(system, e)] for e in lines]
        w = list(lines.values())
        for acc, part in zip(every, (a, b, w), strict=True):
            acc += part
        rows.append((system, a, b, w))
    rows.append(("all", *every))
    return [
        {
            "system": name,
            "templates": len(a),
            "same_topic": float(np.mean([x == y for x, y in zip(a, b, strict=True)])),
            "kappa_templates": kappa(a, b, [1] * len(a)),
            "kappa_lines": kappa(a, b, w),
        }
        for name, a, b, w in rows
    ]


# ------------------------------------------------------------------------- the protocol


@dataclass
class TopicSystem:
    name: str
    contents: list[str]
    truth: list[str]  # per line
    emb: np.ndarray  # (distinct template inputs, 384): MiniLM embedding, as LogAnalyzer computes it
    zeroshot: np.ndarray  # (distinct template inputs, topics): zero-shot probabilities
    row: np.ndarray  # (lines,) row of emb / zeroshot for each line
    templates: list[str] = field(default_factory=list)  # masked template of each distinct input
    _features: dict[bool, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def features(self, ngrams: bool) -> np.ndarray:
        """The topic head's feature rows (detector.logs.topic.features), computed once."""
        from detector.logs.topic import features

        if ngrams not in self._features:
            self._features[ngrams] = features(self.emb, self.zeroshot, self.templates, ngrams)
        return self._features[ngrams]


def topic_system(loghub: Path, system: str, truth_map, encoder) -> TopicSystem:
    """A system's lines mined and embedded exactly as LogAnalyzer does (mask, Drain per source)."""
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord

    contents, truth = system_lines(loghub, system, truth_map)
    head = LogAnalyzer(LogAnalyzerConfig(labels="topic", topic_head=False), encoder=encoder)
    mined = head._mine([LogRecord(system, float(i), c) for i, c in enumerate(contents)])
    inputs = [head._input(m) for m in mined]
    distinct = list(dict.fromkeys(inputs))
    index = {t: i for i, t in enumerate(distinct)}
    emb = head.encoder.encode([t.sentence for t in distinct])
    zeroshot = head.classifier.probabilities(distinct)
    rows = np.asarray([index[t] for t in inputs])
    templates = [t.raw or t.sentence for t in distinct]
    return TopicSystem(system, contents, truth, emb, zeroshot, rows, templates)


def fit_predict(train: list[TopicSystem], held: TopicSystem, design=None) -> list[str]:
    """The topic head (`training.topic.fit`, `design` or the shipped one) fitted on `train`,
    the topic of each line of `held`."""
    from training.topic import DESIGN, fit

    design = design or DESIGN
    model = fit(train, design)
    return [TOPICS[int(k)] for k in model.logits(held.features(design.ngrams)).argmax(1)[held.row]]


def _loso_f1(data: list[TopicSystem], design) -> float:
    truth: list[str] = []
    pred: list[str] = []
    for held in data:
        truth += held.truth
        pred += fit_predict([d for d in data if d is not held], held, design)
    return _f1(truth, pred, TOPICS)


def nested_choice(others: list[TopicSystem]):
    """The head design (`training.topic.DESIGNS`) with the best leave-one-system-out F1 among
    `others` only."""
    from training.topic import DESIGNS

    return max(DESIGNS, key=lambda design: _loso_f1(others, design))


def examples_file(data: list[TopicSystem], path: Path) -> Path:
    """Few-shot examples (`--examples`) from other systems: one line per distinct template."""
    with path.open("w", encoding="utf-8") as f:
        for d in data:
            seen: set[int] = set()
            for i, r in enumerate(d.row.tolist()):
                if r not in seen:
                    seen.add(r)
                    f.write(json.dumps({"label": d.truth[i], "message": d.contents[i]}) + "\n")
    return path


def bootstrap_gain(truth, pred, baseline, groups, n: int, seed: int = 0) -> np.ndarray:
    """`n` resamples of the (pred - baseline) macro-F1 difference, in points: the groups of lines
    (a system's templates, the unit its hand labels were given to; or whole systems) drawn with
    replacement, each with all its lines, the F1 over the topics each resample has."""
    truth, pred, baseline = np.asarray(truth), np.asarray(pred), np.asarray(baseline)
    groups = np.asarray(groups)
    ids = np.unique(groups)
    lines = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for b in range(n):
        ix = np.concatenate([lines[k] for k in rng.integers(0, len(ids), len(ids))])
        t = truth[ix].tolist()
        present = tuple(topic for topic in TOPICS if topic in set(t))
        out[b] = 100 * (_f1(t, pred[ix].tolist(), present) - _f1(t, baseline[ix].tolist(), present))
    return out


def gain_spread(gains: np.ndarray) -> dict[str, float]:
    """The columns a row gets from `bootstrap_gain`'s resamples."""
    p05, p95 = np.quantile(gains, [0.05, 0.95]).tolist()
    return {
        "head_vs_kw_sd": float(gains.std()),
        "head_vs_kw_p05": p05,
        "head_vs_kw_p95": p95,
        "p_head_5_below_kw": float(np.mean(gains < -5)),
    }


def _f1(truth: list[str], pred: list[str], labels: tuple[str, ...]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=list(labels), average="macro", zero_division=0))


def leave_one_system_out(
    loghub: Path,
    encoder,
    systems: list[str],
    few_shot: bool = True,
    nested: bool = False,
    bootstrap: int = 0,
    truth: Path = TRUTH,
):
    """Per system and pooled macro-F1 of the keyword baseline, zero-shot (label descriptions,
    nothing fitted), few-shot (`--examples` from the other systems' templates) and the trained
    topic head (fitted on the other systems; with `nested` its design, `training.topic.DESIGNS`,
    is chosen by a leave-one-system-out inside those systems). With `bootstrap` n, each system's
    row also gets the spread of the head's gain over the keyword baseline under `n` resamples of
    its templates (`bootstrap_gain`): how far one system's figure can be trusted; the pooled row,
    under resamples of whole systems. `truth`: the hand labels fitted on and scored against
    (another labeller's file, same columns). Returns
    (rows, pooled predictions, the design used for each held-out system)."""
    import tempfile

    from benchmarks.logs_bench import classify_all, records
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig
    from training.topic import DESIGN

    truth_map = load_topic_truth(truth)
    data = [topic_system(loghub, s, truth_map, encoder) for s in systems]
    methods = ["keyword", "zeroshot", *(["fewshot"] if few_shot else []), "head"]
    pooled: dict[str, list[str]] = {m: [] for m in ["truth", *methods]}
    rows = []
    chosen: dict[str, str] = {}
    for held in data:
        others = [d for d in data if d is not held]
        pred = {"keyword": [topic_keyword_label(c) for c in held.contents]}
        head = LogAnalyzer(LogAnalyzerConfig(labels="topic", topic_head=False), encoder=encoder)
        pred["zeroshot"] = [o.label for o in classify_all(head, records(held.name, held.contents))]
        if few_shot:
            with tempfile.TemporaryDirectory() as tmp:
                ex = examples_file(others, Path(tmp) / "examples.jsonl")
                config = LogAnalyzerConfig(labels="topic", examples=str(ex), topic_head=False)
                head = LogAnalyzer(config, encoder=encoder)
                out = classify_all(head, records(held.name, held.contents))
            pred["fewshot"] = [o.label for o in out]
        design = nested_choice(others) if nested else DESIGN
        chosen[held.name] = design.name
        pred["head"] = fit_predict(others, held, design)
        present = tuple(t for t in TOPICS if t in set(held.truth))
        row = {
            "system": held.name,
            "lines": len(held.truth),
            "topics": len(present),
            "design": design.name,
        }
        for m in methods:
            row[f"{m}_f1"] = _f1(held.truth, pred[m], present)
            pooled[m] += pred[m]
        if bootstrap:
            gains = bootstrap_gain(held.truth, pred["head"], pred["keyword"], held.row, bootstrap)
            row.update(gain_spread(gains))
        pooled["truth"] += held.truth
        rows.append(row)
    overall = {"system": "overall (pooled)", "lines": len(pooled["truth"]), "topics": len(TOPICS)}
    if bootstrap:  # the pooled gain over resamples of whole systems: how it may transfer
        system_of = np.repeat(np.arange(len(rows)), [r["lines"] for r in rows])
        gains = bootstrap_gain(pooled["truth"], pooled["head"], pooled["keyword"], system_of,
                               bootstrap)  # fmt: skip
        overall.update(gain_spread(gains))
    mean = {"system": "mean of systems", "topics": None}
    for m in methods:
        overall[f"{m}_f1"] = _f1(pooled["truth"], pooled[m], TOPICS)
        mean[f"{m}_f1"] = float(np.mean([r[f"{m}_f1"] for r in rows]))
    for r in [*rows, overall, mean]:
        for m in methods[1:]:
            r[f"{m}_vs_kw"] = 100 * (r[f"{m}_f1"] - r["keyword_f1"])
    return [*rows, overall, mean], pooled, chosen


COLUMNS = ["system", "lines", "topics", "keyword_f1", "zeroshot_f1", "zeroshot_vs_kw",
           "fewshot_f1", "fewshot_vs_kw", "design", "head_f1", "head_vs_kw", "head_vs_kw_sd",
           "head_vs_kw_p05", "head_vs_kw_p95", "p_head_5_below_kw"]  # fmt: skip


def columns(rows: list[dict]) -> list[str]:
    """The COLUMNS a run's rows have (few-shot and the bootstrap are optional)."""
    return [c for c in COLUMNS if c in rows[0]]


TITLE = (
    "Topic, leave one system out (12 loghub systems, hand-labelled templates): keyword baseline, "
    "zero-shot (descriptions), few-shot (--examples from the other 11), trained head (fit on 11)"
)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    import torch

    from benchmarks._common import RESULTS, add_common_args, print_table, write_json
    from benchmarks.logs_bench import LOGHUB
    from detector.logs.encoder import CachedEncoder, shared_encoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "log_topics")
    p.add_argument("--no-few-shot", action="store_true", help="skip the few-shot column (slow)")
    p.add_argument(
        "--nested", action="store_true", help="choose the head's design inside each fold (slow)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="per system, N resamples of its templates: the spread of the head's gain",
    )
    p.add_argument(
        "--truth",
        type=Path,
        default=TRUTH,
        metavar="CSV",
        help="hand labels to fit on and score against (system,event_id,topic; default "
        "benchmarks/data/log_topics.csv)",
    )
    p.add_argument(
        "--agreement",
        type=Path,
        metavar="CSV",
        help="only compare another labeller's file with --truth (Cohen's kappa) and exit",
    )
    args = p.parse_args(argv)
    if not LOGHUB.is_dir():
        print(f"tsguard: error: loghub data not found at {LOGHUB}", file=sys.stderr)
        return 2
    systems = sorted(d.name for d in LOGHUB.iterdir() if d.is_dir())
    try:
        first = load_topic_truth(args.truth)
        second = load_topic_truth(args.agreement) if args.agreement else None
    except (OSError, ValueError) as exc:
        print(f"tsguard: error: {exc}", file=sys.stderr)
        return 2
    if second is not None:
        if set(first) != set(second):
            print(f"tsguard: error: {args.agreement} and {args.truth} label different templates "
                  f"({len(set(first) ^ set(second))} differ)", file=sys.stderr)  # fmt: skip
            return 2
        rows = agreement(LOGHUB, systems, first, second)
        print_table(
            rows, list(rows[0]), f"Topic labels: {args.truth.name} against {args.agreement.name}"
        )
        out = (
            args.out if args.out != p.get_default("out") else RESULTS / "log_topics_agreement.json"
        )
        write_json(out, {"topic_agreement": rows})
        return 0
    torch.set_num_threads(args.threads)
    rows, _, _ = leave_one_system_out(
        LOGHUB,
        CachedEncoder(shared_encoder("cpu")),
        systems,
        not args.no_few_shot,
        args.nested,
        args.bootstrap,
        args.truth,
    )
    print_table(rows, columns(rows), TITLE)
    write_json(args.out, {"topic_leave_one_system_out": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
