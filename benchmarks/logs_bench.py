"""Log heads: severity quality on loghub against a keyword baseline, and throughput.

Leave one system out (the honest number). Only six of the twelve loghub samples have a level
column (below), so the protocol runs over those six: for each, the trained severity head
(training/severity.py) is fitted on the other five, its temperature on the other five's own
leave-one-out logits, and the held-out system's Content lines go through LogAnalyzer.classify with
that model; macro-F1 per system (over the classes it logs) and pooled, beside the keyword
baseline, and the ECE of the pooled confidences. Nothing fitted sees the system it is scored on.
Raw `.log` lines of all twelve: the share whose header is parsed, whose header states a level
(reported as that level, confidence 1), and how often that stated level is the true one.

Zero-shot, for reference. On the loghub 2k samples (../shared/data/loghub) whose `*_structured.csv` has a real level
column (Android, Apache, HDFS, Hadoop, Spark, Windows; Linux's "Level" column holds the host name
and the other systems have none), classify severity from the message content alone (the `Content`
column: no timestamp, no level field) with the shipped severity label set, and compare with a
keyword baseline (error|fail|fatal|exception -> error, else warn -> warning, else info). Levels
map: E/F/ERROR/FATAL/error/Error -> error; W/WARN/Warning -> warning; I/D/V/INFO/notice/Info ->
info. Macro-F1 per system is over the classes present in that system's ground truth (a class a
system never logs has no F1); "overall" is macro-F1 over error/warning/info, all systems pooled.
Forced decisions (no "unknown") for the F1; the unknown rate at the default threshold and the
calibration of the confidence (expected calibration error, 10 bins) are reported beside it.

Topic (the second label set: network, storage, security, resources, hardware, application), all
twelve systems, leave one system out, against a keyword baseline written before measuring: see
`benchmarks/log_topics.py` (ground truth: hand-labelled templates, `benchmarks/data/`).

Throughput. Lines per second through LogAnalyzer.classify (mask, Drain3, classify, output dicts) with
the template cache on and off, the model loaded and warm beforehand, `--chunk` lines per classify
call (default 2000: `tsguard logs classify` reads its input 1 MiB at a time, thousands of loghub
lines, and the Kafka head gets polls of up to 5000 records; the new templates of one call are
embedded together, so small calls cost more per line, shown by the 500-line row):
  - cached, cold: one fresh head (as in a serving process) over each file once, file by file
    (every new template costs an embedding; per file and in total);
  - cached, cold, 500-line chunks: the same with small calls (a trickle of small polls);
  - cached, warm: the same lines again (templates known: the steady state of a long stream);
  - raw+json: the raw `.log` lines end to end (parse_log_value, classify, LogClass.encode), cold;
  - no cache: every line embedded (on a prefix of each file, it is slow).
Each row notes the 1-minute load average when it finished: the machine is shared, and on 2 cores
one busy neighbour halves these figures. The cold pass runs `--cold-passes` times (default 3),
each with a fresh head, so one row is not one lucky or unlucky moment.

    python -m benchmarks.logs_bench [--threads 2] [--chunk 2000] [--cold-passes 3]
                                    [--nocache-lines 300] [--sweep] [--skip-throughput]
                                    [--skip-topics] [--topic-nested]

Prints tables and writes JSON (--out). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

from benchmarks._common import REPO, add_common_args, environment, print_table, write_json
from detector.logs.severity import keyword_level
from detector.messages import LogClass

LOGHUB = REPO.parent / "shared" / "data" / "loghub"
LEVELLED = ("Android", "Apache", "HDFS", "Hadoop", "Spark", "Windows")
CLASSES = ("error", "warning", "info")
LEVEL_MAP = {
    "e": "error", "f": "error", "error": "error", "fatal": "error",
    "w": "warning", "warn": "warning", "warning": "warning",
    "i": "info", "d": "info", "v": "info", "info": "info", "notice": "info",
}  # fmt: skip
# The keyword baseline (the severity head also takes its answer as a feature: one rule, one place).
keyword_label = keyword_level


def load_structured(system: str) -> tuple[list[str], list[str] | None]:
    """Content lines and mapped levels (None when the system has no level column)."""
    path = LOGHUB / system / f"{system}_2k.log_structured.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    contents = [r["Content"] for r in rows]
    if "Level" not in rows[0] or system not in LEVELLED:
        return contents, None
    return contents, [LEVEL_MAP[r["Level"].strip().lower()] for r in rows]


def macro_f1(truth: list[str], pred: list[str], classes: tuple[str, ...]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=list(classes), average="macro", zero_division=0))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: mean |accuracy - confidence| over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (confidence > lo) & (confidence <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total)


def make_head(encoder, severity=None, **kw):
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig

    return LogAnalyzer(LogAnalyzerConfig(**kw), encoder=encoder, severity=severity)


def records(system: str, lines: list[str]):
    from detector.logs.analyzer import LogRecord

    return [LogRecord(system, float(i), line) for i, line in enumerate(lines)]


CHUNK = 2000  # lines per classify call (see the module docstring)


def classify_all(head, recs, batch: int = CHUNK) -> list[LogClass]:
    out: list[LogClass] = []
    for i in range(0, len(recs), batch):
        out.extend(head.classify(recs[i : i + batch]))
    return out


def quality(encoder, systems: list[str], **head_kw) -> tuple[list[dict], dict]:
    rows = []
    all_truth: list[str] = []
    all_pred: list[str] = []
    all_kw: list[str] = []
    conf: list[float] = []
    correct: list[bool] = []
    unknown = 0
    temperature = None
    for system in systems:
        contents, truth = load_structured(system)
        if truth is None:
            continue
        head = make_head(encoder, unknown_below=0.0, severity_head=False, **head_kw)
        out = classify_all(head, records(system, contents))
        temperature = head.classifier.temperature
        pred = [o.label for o in out]
        kw = [keyword_label(c) for c in contents]
        present = tuple(c for c in CLASSES if c in set(truth))
        default_threshold = 0.4
        sys_unknown = sum(o.confidence < default_threshold for o in out)
        unknown += sys_unknown
        rows.append(
            {
                "system": system,
                "lines": len(contents),
                "classes": "/".join(present),
                "keyword_f1": macro_f1(truth, kw, present),
                "zeroshot_f1": macro_f1(truth, pred, present),
                "delta_pts": 100 * (macro_f1(truth, pred, present) - macro_f1(truth, kw, present)),
                "unknown@0.4": sys_unknown / len(contents),
                "templates": head.miner.template_count(system),
                "embedded": head.embedded_texts,
            }
        )
        all_truth += truth
        all_pred += pred
        all_kw += kw
        conf += [o.confidence for o in out]
        correct += [p == t for p, t in zip(pred, truth, strict=True)]
    overall = {
        "system": "overall (pooled)",
        "lines": len(all_truth),
        "classes": "/".join(CLASSES),
        "keyword_f1": macro_f1(all_truth, all_kw, CLASSES),
        "zeroshot_f1": macro_f1(all_truth, all_pred, CLASSES),
        "delta_pts": 100
        * (macro_f1(all_truth, all_pred, CLASSES) - macro_f1(all_truth, all_kw, CLASSES)),
        "unknown@0.4": unknown / max(len(all_truth), 1),
    }
    mean = {
        "system": "mean of systems",
        "keyword_f1": float(np.mean([r["keyword_f1"] for r in rows])),
        "zeroshot_f1": float(np.mean([r["zeroshot_f1"] for r in rows])),
    }
    mean["delta_pts"] = 100 * (mean["zeroshot_f1"] - mean["keyword_f1"])
    conf_a = np.asarray(conf)
    correct_a = np.asarray(correct, dtype=np.float64)
    coverage = [
        {
            "unknown_below": th,
            "coverage": float((conf_a >= th).mean()),
            "accuracy_covered": float(correct_a[conf_a >= th].mean())
            if (conf_a >= th).any()
            else float("nan"),
        }
        for th in (0.4, 0.5, 0.6, 0.7, 0.8)
    ]
    calib = {
        "coverage": coverage,
        "temperature": temperature,
        "ece": ece(conf_a, correct_a),
        "mean_confidence": float(np.mean(conf)),
        "accuracy": float(np.mean(correct)),
    }
    return [*rows, overall, mean], calib


def leave_one_system_out(encoder) -> tuple[list[dict], dict]:
    """The trained severity head, each system scored by a model that never saw it.

    For each levelled system: the head is fitted on the other five (training.severity.fit), its
    temperature on those five's own leave-one-out logits (nested: the held-out system is in no
    fit), and the held-out system's Content lines go through LogAnalyzer.classify with that model.
    """
    from detector.logs.severity import SeverityModel
    from training.severity import fit, fit_temperature, leave_one_out, system_data

    data = [system_data(LOGHUB, s, encoder) for s in LEVELLED]
    rows = []
    all_truth: list[str] = []
    all_pred: list[str] = []
    all_kw: list[str] = []
    conf: list[float] = []
    correct: list[bool] = []
    temperatures = {}
    for held in data:
        others = [d for d in data if d is not held]
        inner = leave_one_out(others)
        temperature = fit_temperature(
            np.concatenate([inner[d.name] for d in others]),
            np.concatenate([d.truth for d in others]),
        )
        temperatures[held.name] = temperature
        weight, bias = fit(others)
        model = SeverityModel(weight, bias, temperature, {})
        head = make_head(encoder, severity=model)
        out = classify_all(head, records(held.name, held.contents))
        truth = [CLASSES[i] for i in held.truth]
        pred = [o.label for o in out]
        kw = [keyword_label(c) for c in held.contents]
        present = tuple(c for c in CLASSES if c in set(truth))
        rows.append(
            {
                "system": held.name,
                "lines": len(truth),
                "classes": "/".join(present),
                "keyword_f1": macro_f1(truth, kw, present),
                "loso_f1": macro_f1(truth, pred, present),
                "delta_pts": 100 * (macro_f1(truth, pred, present) - macro_f1(truth, kw, present)),
                "temperature": temperature,
            }
        )
        all_truth += truth
        all_pred += pred
        all_kw += kw
        conf += [o.confidence for o in out]
        correct += [p == t for p, t in zip(pred, truth, strict=True)]
    kw_f1 = macro_f1(all_truth, all_kw, CLASSES)
    loso_f1 = macro_f1(all_truth, all_pred, CLASSES)
    rows.append(
        {
            "system": "overall (pooled)",
            "lines": len(all_truth),
            "classes": "/".join(CLASSES),
            "keyword_f1": kw_f1,
            "loso_f1": loso_f1,
            "delta_pts": 100 * (loso_f1 - kw_f1),
        }
    )
    conf_a = np.asarray(conf)
    correct_a = np.asarray(correct, dtype=np.float64)
    calib = {
        "ece": ece(conf_a, correct_a),
        "mean_confidence": float(conf_a.mean()),
        "accuracy": float(correct_a.mean()),
        "temperatures": temperatures,
    }
    return rows, calib


def stated_levels() -> list[dict]:
    """Raw `.log` lines: how often the header is parsed and states a level, and (where the
    structured CSV has levels) how often the stated level is the true one."""
    from detector.logs.analyzer import parse_log_value
    from detector.logs.severity import STATED_LEVELS

    rows = []
    for system in sorted(d.name for d in LOGHUB.iterdir() if d.is_dir()):
        path = LOGHUB / system / f"{system}_2k.log"
        if not path.is_file():
            continue
        lines = [v for v in path.read_bytes().splitlines() if v.strip()]
        recs = [parse_log_value(v, system.encode(), 0.0) for v in lines]
        stated = [STATED_LEVELS.get((r.level or "").lower()) for r in recs]
        row = {
            "system": system,
            "lines": len(recs),
            "header_parsed": sum(r.content is not None for r in recs) / len(recs),
            "level_stated": sum(x is not None for x in stated) / len(recs),
            "stated_correct": float("nan"),
        }
        _, truth = load_structured(system)
        if truth is not None and len(truth) == len(stated):
            pairs = [(x, t) for x, t in zip(stated, truth, strict=True) if x is not None]
            if pairs:
                row["stated_correct"] = sum(x == t for x, t in pairs) / len(pairs)
        rows.append(row)
    return rows


def throughput(
    encoder, systems: list[str], nocache_lines: int, chunk: int, cold_passes: int = 1
) -> list[dict]:
    from detector.logs.analyzer import parse_log_value

    rows = []
    corpus = {s: load_structured(s)[0] for s in systems}
    raw = {
        s: (LOGHUB / s / f"{s}_2k.log").read_bytes().splitlines()
        for s in systems
        if (LOGHUB / s / f"{s}_2k.log").is_file()
    }

    def timed(label: str, fn, n: int, head, system: str = "all") -> None:
        before = head.embedded_texts
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        rows.append(
            {
                "mode": label,
                "system": system,
                "lines": n,
                "seconds": dt,
                "lines_per_s": n / dt,
                "embedded": head.embedded_texts - before,
                "load1": os.getloadavg()[0],
            }
        )

    # One head for all systems, as in a serving process (templates are per source anyway). The
    # label phrases are embedded before timing: like the model load, a once-per-process cost.
    all_recs = {s: records(s, corpus[s]) for s in systems}
    n_all = sum(len(r) for r in all_recs.values())

    def cold_pass(label: str, size: int, per_system: bool = True):
        head = make_head(encoder)
        head.prepare()
        for s in systems:  # cold, file by file: every new template costs an embedding
            timed(label, lambda s=s: classify_all(head, all_recs[s], size), len(corpus[s]), head, s)
        cold = rows[-len(systems) :]
        if not per_system:
            del rows[-len(systems) :]
        rows.append(
            {
                "mode": label,
                "system": "all",
                "lines": n_all,
                "seconds": sum(r["seconds"] for r in cold),
                "lines_per_s": n_all / sum(r["seconds"] for r in cold),
                "embedded": sum(r["embedded"] for r in cold),
                "load1": os.getloadavg()[0],
            }
        )
        return head

    head = cold_pass("cache on, cold", chunk)
    # More first passes, each with a fresh head: on a shared 2-core machine one pass can meet a
    # busy neighbour, so the spread (and the load beside each) is part of the result.
    for k in range(2, cold_passes + 1):
        cold_pass(f"cache on, cold (pass {k})", chunk, per_system=False)
    # As many warm passes over the first pass's head: one pass swings by a third on this machine.
    for k in range(1, cold_passes + 1):
        timed(
            "cache on, warm (templates known)" + (f" (pass {k})" if k > 1 else ""),
            lambda: [classify_all(head, all_recs[s], chunk) for s in systems],
            n_all,
            head,
        )
    if chunk != 500:
        cold_pass("cache on, cold, 500-line chunks", 500)

    # Raw .log lines end to end, cold: parse, classify, serialise.
    raw_head = make_head(encoder)
    raw_head.prepare()
    n_raw = sum(len(v) for v in raw.values())

    def end_to_end() -> None:
        now = time.time()
        for s, lines in raw.items():
            key = s.encode()
            for i in range(0, len(lines), chunk):
                recs = [parse_log_value(v, key, now) for v in lines[i : i + chunk] if v.strip()]
                b"".join(o.encode() + b"\n" for o in raw_head.classify(recs))

    timed("raw .log + parse + JSON out, cache on, cold", end_to_end, n_raw, raw_head)

    # No cache: every line is embedded; a prefix of each file keeps this bounded.
    nc_head = make_head(encoder, template_cache=False)
    nc_head.prepare()
    nc_recs = {s: all_recs[s][:nocache_lines] for s in systems}
    n_nc = sum(len(r) for r in nc_recs.values())
    timed(
        f"cache off (first {nocache_lines} lines/file)",
        lambda: [classify_all(nc_head, nc_recs[s], batch=64) for s in systems],
        n_nc,
        nc_head,
    )
    return rows


def sweep(encoder) -> list[dict]:
    """Sensitivity of the overall F1 to the two hand-set knobs (info prior, sentence weight)."""
    from dataclasses import replace

    from detector.logs.classifier import load_label_set

    base = load_label_set("severity")
    out = []
    for info_prior in (0.7, 0.8, 0.9):
        other = (1.0 - info_prior) / 2
        priors = {"error": other, "warning": other, "info": info_prior}
        labels = tuple(replace(lab, prior=priors[lab.name]) for lab in base.labels)
        for weight in (0.5, 0.6, 0.7, 0.8, 0.9):
            rows, _ = quality(
                encoder,
                list(LEVELLED),
                label_set=replace(base, labels=labels),
                sentence_weight=weight,
            )
            overall, mean = rows[-2], rows[-1]
            out.append(
                {
                    "info_prior": info_prior,
                    "sentence_weight": weight,
                    "overall_f1": overall["zeroshot_f1"],
                    "overall_delta_pts": overall["delta_pts"],
                    "mean_f1": mean["zeroshot_f1"],
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "logs_bench")
    p.add_argument("--nocache-lines", type=int, default=300, help="lines per file without cache")
    p.add_argument(
        "--chunk", type=int, default=CHUNK, help=f"lines per classify call (default {CHUNK})"
    )
    p.add_argument(
        "--cold-passes",
        type=int,
        default=3,
        help="first passes, each with a fresh head (and as many passes once templates are known)",
    )
    p.add_argument("--sweep", action="store_true", help="also sweep prior and sentence weight")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-topics", action="store_true", help="skip the topic label set")
    p.add_argument(
        "--topic-nested",
        action="store_true",
        help="choose the topic head's design inside each fold (slow)",
    )
    args = p.parse_args(argv)
    if not LOGHUB.is_dir():
        print(f"loghub data not found at {LOGHUB}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from detector.logs.encoder import shared_encoder

    encoder = shared_encoder("cpu")
    t = time.perf_counter()
    encoder.encode(["warm up the model"])
    load_s = time.perf_counter() - t

    from detector.logs.encoder import CachedEncoder

    # Quality runs (and the sweep) share one cache: the embeddings do not depend on the knobs.
    shared = CachedEncoder(encoder)
    l_rows, l_calib = leave_one_system_out(shared)
    print_table(
        l_rows,
        ["system", "lines", "classes", "keyword_f1", "loso_f1", "delta_pts", "temperature"],
        "Severity, trained head, leave one system out (fit on the other five, score the sixth)",
    )
    print(
        f"leave-one-system-out calibration: ece={l_calib['ece']:.3f} "
        f"mean confidence={l_calib['mean_confidence']:.3f} accuracy={l_calib['accuracy']:.3f}"
    )
    s_rows = stated_levels()
    print_table(
        s_rows,
        ["system", "lines", "header_parsed", "level_stated", "stated_correct"],
        "Raw .log lines: header parsed, level stated (reported as such), stated level correct",
    )
    q_rows, calib = quality(shared, list(LEVELLED))
    print_table(
        q_rows,
        [
            "system",
            "lines",
            "classes",
            "keyword_f1",
            "zeroshot_f1",
            "delta_pts",
            "unknown@0.4",
            "templates",
            "embedded",
        ],  # fmt: skip
        "Zero-shot (label descriptions written from these systems' templates: fitted, "
        "not transfer), for reference",
    )
    print(
        f"calibration: T={calib['temperature']:.4f} ece={calib['ece']:.3f} "
        f"mean confidence={calib['mean_confidence']:.3f} accuracy={calib['accuracy']:.3f}"
    )
    print_table(
        calib["coverage"],
        ["unknown_below", "coverage", "accuracy_covered"],
        "Threshold for 'unknown': share of lines labelled, accuracy on them (all systems)",
    )
    result = {
        "env": environment(),
        "model_load_s": load_s,
        "encoder": {
            "max_tokens": encoder.max_tokens,
            "batch_size": encoder.batch_size,
            "batch_tokens": getattr(encoder, "batch_tokens", None),
            "workers": encoder.workers or args.threads,
            "chunk_lines": args.chunk,
        },
        "leave_one_system_out": l_rows,
        "leave_one_system_out_calibration": l_calib,
        "stated_levels": s_rows,
        "quality": q_rows,
        "calibration": calib,
    }
    if not args.skip_topics:
        from benchmarks import log_topics

        systems = sorted(d.name for d in LOGHUB.iterdir() if d.is_dir())
        t_rows, _, _ = log_topics.leave_one_system_out(
            LOGHUB, shared, systems, nested=args.topic_nested
        )
        print_table(t_rows, log_topics.columns(t_rows), log_topics.TITLE)
        result["topic_leave_one_system_out"] = t_rows
    if not args.skip_throughput:
        all_systems = sorted(d.name for d in LOGHUB.iterdir() if d.is_dir())
        t_rows = throughput(
            encoder, all_systems, args.nocache_lines, args.chunk, max(1, args.cold_passes)
        )
        print_table(
            t_rows,
            ["mode", "system", "lines", "seconds", "lines_per_s", "embedded", "load1"],
            f"Throughput, LogAnalyzer.classify, {len(all_systems)} loghub files, "
            f"{args.threads} torch thread(s), {args.chunk}-line calls",
        )
        result["throughput"] = t_rows
    if args.sweep:
        w_rows = sweep(shared)
        print_table(
            w_rows,
            ["info_prior", "sentence_weight", "overall_f1", "overall_delta_pts", "mean_f1"],
            "Sensitivity (shipped: info prior 0.8, sentence weight 0.7)",
        )
        result["sweep"] = w_rows
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
