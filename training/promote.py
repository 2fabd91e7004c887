"""`tsguard promote CANDIDATE --serving DIR`: swap a retrained model in only when it is not worse.

    tsguard promote models/next --serving /models/current
    tsguard promote models/next --serving /models/current --labelled ../shared/data/kpi --dry-run

Both models are scored on the same data: the held-back recent tail of every series of the
candidate's own history (`tsguard train --holdout`, re-read from the source its model card
records, or from the history options given here), by the forecast objective (Laplace NLL and
mean absolute error of the next `horizon` points, robust-normalised, as in training), on any
labelled collections by `tsguard evaluate labelled`'s machinery (training/labelled.py), and, for
a Kafka history, on the operators' verdicts (tsguard.feedback, their events looked up on
tsguard.anomalies). The rule: the candidate's held-back NLL may exceed the serving model's by at
most `--max-nll-increase`, its VUS-PR on each labelled collection may fall by at most
`--max-vus-drop`, and it may alert on no fewer judged true positives and no more judged false
positives than the serving model. The report (promotion.json + promotion.png: the metrics side by side and the
series where the two models disagree most) goes to `--report` (default CANDIDATE/promotion).

The swap is atomic for `tsguard serve`, which reloads when the files under its --model change.
The serving path is best a symlink (promote creates one when the path does not exist yet): the
candidate's files are copied beside it into DIR.versions/<version>-<time>/, then a new symlink is
renamed over DIR, so a reader sees the old model or the new one, never a mix. A plain directory
gets its files replaced one by one, the weights first and config.json last. Exit 0 when promoted
(or with --dry-run), 1 when the candidate is refused, 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import ModelLoadError, UserError

log = logging.getLogger("tsguard.promote")

MODEL_FILES = ("model.safetensors", "config.json")  # copy order: the config last
CARD_FILES = ("report.json", "loss.png")  # copied along when present
N_DISAGREEMENTS = 10


def register_cli(subparsers: Any) -> None:
    from stream.cli import env_default
    from training.history import add_source_arguments

    p = subparsers.add_parser(
        "promote",
        help="score a candidate model against the serving one; swap it in atomically if not worse",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "candidate",
        type=Path,
        metavar="CANDIDATE",
        help="candidate model directory ('default': the shipped model)",
    )
    p.add_argument(
        "--serving",
        type=Path,
        default=env_default("model"),
        required=env_default("model") is None,
        metavar="DIR",
        help="the directory `tsguard serve --model` watches (env TSGUARD_MODEL); best a symlink",
    )
    add_source_arguments(p)
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="history files instead of the ones the candidate's model card records",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=None,
        metavar="F",
        help="held-back share of every series (default: the candidate's --holdout)",
    )
    p.add_argument(
        "--labelled",
        nargs="+",
        default=[],
        type=Path,
        metavar="PATH",
        help="labelled collections to score both on (formats of `tsguard evaluate labelled`)",
    )
    p.add_argument("--max-nll-increase", type=float, default=0.0, metavar="X",
                   help="rule: held-back NLL may exceed the serving model's by at most X")  # fmt: skip
    p.add_argument("--max-vus-drop", type=float, default=0.0, metavar="X",
                   help="rule: VUS-PR on each labelled collection may fall by at most X")  # fmt: skip
    p.add_argument("--max-warmup", type=int, default=20000,
                   help="labelled: keep the last N warm-up points of a series")  # fmt: skip
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="where promotion.json and promotion.png go (default CANDIDATE/promotion)")  # fmt: skip
    p.add_argument("--keep", type=int, default=3, help="model versions kept beside a symlink")
    p.add_argument("--dry-run", action="store_true", help="score and report, never swap")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.set_defaults(handler=run_promote)


# ----------------------------------------------------------------------------- held-back data


@dataclass
class HeldBack:
    """Windows whose forecast targets are held-back points, and the series of each window."""

    windows: np.ndarray  # float32 [N, window]
    series_of: np.ndarray  # int [N], index into names
    names: list[str]
    summary: dict[str, Any]
    history: Any = None  # training.history.History of a topic or Parquet source (timestamps)


def held_back_windows(real, window: int, horizon: int) -> np.ndarray:
    """Per series: windows stepping by `horizon` whose last `horizon` points tile the held-back
    tail (their context may reach back into the trained part: only targets are held back)."""
    context = window - horizon
    out, owner = [], []
    for i, (s, k) in enumerate(zip(real.series, real.holdout_starts, strict=True)):
        seg = s.values[max(0, k - context) :]
        if len(seg) < window:
            continue
        starts = np.arange(0, len(seg) - window + 1, horizon)
        w = np.lib.stride_tricks.sliding_window_view(seg, window)[starts]
        w = w[np.isfinite(w[:, context:]).any(axis=1) & (np.isfinite(w).sum(axis=1) >= window // 2)]
        out.append(w)
        owner.append(np.full(len(w), i))
    if not out:
        return np.zeros((0, window), np.float32), np.zeros(0, int)
    return np.concatenate(out).astype(np.float32), np.concatenate(owner)


def load_held_back(args: argparse.Namespace, card: dict, window: int, horizon: int) -> HeldBack:
    """The candidate's held-back history: from the options, or as its model card records."""
    from training.history import Source, real_data
    from training.train import history_source

    recorded = (card.get("training", {}).get("data") or {}).get("real") or {}
    holdout = args.holdout if args.holdout is not None else recorded.get("holdout", 0.1)
    if not 0.0 < holdout < 0.9:
        raise UserError(f"--holdout must be in (0, 0.9), got {holdout}")
    files, source = history_source(args)
    if not files and source is None:
        files = list(recorded.get("files") or [])
        history = recorded.get("history")
        if history is not None:
            source = dict(history["source"])
            if args.bootstrap and source["kind"] == "kafka":
                source["bootstrap"] = args.bootstrap  # the same topic, reached another way
    if not files and source is None:
        return HeldBack(np.zeros((0, window), np.float32), np.zeros(0, int), [], {})
    real = real_data(files, Source.from_dict(source) if source else None, holdout, window + 1)
    windows, owner = held_back_windows(real, window, horizon)
    return HeldBack(windows, owner, [s.name for s in real.series], real.summary, real.history)


def forecast_errors(scorer, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Laplace NLL, mean absolute error) per window of its last `horizon` points, robust-
    normalised by the context exactly as in training (training/train.py forecast_nll)."""
    import torch

    from detector.model import INPUT_CLIP, prepare

    c = scorer.cfg.context
    nll, mae = np.zeros(len(windows)), np.zeros(len(windows))
    with torch.inference_mode():
        for i in range(0, len(windows), 4096):
            x = torch.from_numpy(windows[i : i + 4096]).to(scorer.device)
            values, mask, loc, scale = prepare(x[:, :c])
            forecast, log_b = scorer.model(values, mask)
            goal = ((x[:, c:] - loc) / scale).clamp(-INPUT_CLIP, INPUT_CLIP)
            seen = torch.isfinite(goal)
            n = seen.sum(dim=1).clamp(min=1)
            diff = torch.where(seen, (goal - forecast).abs(), 0.0)
            per = torch.where(seen, diff * torch.exp(-log_b) + log_b, 0.0)
            nll[i : i + len(x)] = (per.sum(dim=1) / n).float().cpu().numpy()
            mae[i : i + len(x)] = (diff.sum(dim=1) / n).float().cpu().numpy()
    return nll, mae


# ----------------------------------------------------------------------------- verdicts
# Operators' verdicts (tsguard.feedback) on events (tsguard.anomalies): a model should still
# alert where a true positive was, and not where a false positive was.

ALERT_NEAR_POINTS = 5  # an episode start this many points from the judged event's point counts


@dataclass(frozen=True)
class Judged:
    series: str
    ts: float  # the judged event's time (its episode start)
    verdict: str  # "true_positive" | "false_positive"


def judged_events(bootstrap: str) -> tuple[list[Judged], int]:
    """The verdicts on tsguard.feedback (the last one per event wins) with their events' series
    and time from tsguard.anomalies; and how many verdicts name an event not found there."""
    import orjson

    from stream.feedback import Verdict
    from stream.kafka_io import read_to_end
    from stream.settings import Settings

    settings = Settings(bootstrap=bootstrap)
    topics = settings.topics

    def read_whole_topic(topic: str) -> list:
        return [rec for records in read_to_end(settings, topic, 60.0) for rec in records]

    verdicts: dict[str, Verdict] = {}
    for rec in read_whole_topic(topics.feedback):
        try:
            v = Verdict.decode(rec.value, rec.key)
        except ValueError:
            continue  # dead-lettered by serve when it read it
        verdicts[v.event_id] = v
    if not verdicts:
        return [], 0
    found: dict[str, tuple[str, float]] = {}
    for rec in read_whole_topic(topics.anomalies):
        try:
            ev = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(ev, dict) and ev.get("event_id") in verdicts and ev.get("kind") == "start":
            found[ev["event_id"]] = (str(ev.get("series")), float(ev.get("ts")))
    judged = [Judged(*found[e], v.verdict) for e, v in verdicts.items() if e in found]
    return judged, len(verdicts) - len(judged)


def verdict_metrics(model_dir: Path, history, judged: list[Judged], device: str) -> dict:
    """How many of the judged events the model's Detector, fed each judged series' history as
    serve feeds it, still alerts on: {true_positives, tp_alerted, false_positives, fp_alerted,
    not_in_history}."""
    from detector.detector import START
    from training.evaluate import TsguardDetector

    detector = TsguardDetector.from_model(str(model_dir), device)
    where = {s.name: i for i, s in enumerate(history.series)}
    out = dict.fromkeys(("true_positives", "tp_alerted", "false_positives", "fp_alerted",
                         "not_in_history"), 0)  # fmt: skip
    starts: dict[str, np.ndarray] = {}
    for j in judged:
        i = where.get(j.series)
        ts = history.timestamps[i] if i is not None else None
        if i is None or not len(ts) or not ts[0] <= j.ts <= ts[-1]:
            out["not_in_history"] += 1
            continue
        if j.series not in starts:
            run = detector.run(history.series[i].values, ts)
            starts[j.series] = np.flatnonzero(run.kinds == START)
        point = int(np.searchsorted(ts, j.ts))
        alerted = bool((np.abs(starts[j.series] - point) <= ALERT_NEAR_POINTS).any())
        kind = "tp" if j.verdict == "true_positive" else "fp"
        out["true_positives" if kind == "tp" else "false_positives"] += 1
        out[f"{kind}_alerted"] += int(alerted)
    return out


# ----------------------------------------------------------------------------- the comparison


LABELLED_KEYS = ("vus_pr", "auc_pr", "event_f1_shipped", "false_alerts_per_1k")


def labelled_metrics(model_dir: Path, series: list, device: str) -> dict[str, dict]:
    """Per collection: `tsguard evaluate labelled`'s metrics of the model's Detector."""
    from training.labelled import TsguardLabelled, evaluate

    report = evaluate([TsguardLabelled(str(model_dir), device)], series)
    collections = report["detectors"]["tsguard"]["collections"]
    return {c: {k: m.get(k) for k in LABELLED_KEYS} for c, m in collections.items()}


def compare(args: argparse.Namespace, serving_dir: Path | None) -> dict[str, Any]:
    """Score candidate and serving model; the report's metrics, checks and disagreements."""
    candidate = _load(args.candidate, "candidate", args.device)
    serving = _load(serving_dir, "serving model", args.device) if serving_dir else None
    report: dict[str, Any] = {
        "candidate": {"dir": str(args.candidate), "version": candidate.version},
        "serving": {"dir": str(args.serving), "version": serving.version if serving else None},
        "rule": {"max_nll_increase": args.max_nll_increase, "max_vus_drop": args.max_vus_drop},
        "metrics": {},
        "checks": [],
        "disagreements": [],
    }
    if serving is not None and serving.window_length != candidate.window_length:
        report["checks"].append({
            "metric": "window", "candidate": candidate.window_length,
            "serving": serving.window_length, "ok": False,
            "why": "serve keeps its window length across reloads: a restart is needed",
        })  # fmt: skip
        return report
    problem = detector_problem(candidate)
    if problem is not None:
        report["checks"].append({"metric": "serve", "candidate": problem, "serving": None,
                                 "ok": False, "why": "tsguard serve could not score with it"})  # fmt: skip
        return report
    held = load_held_back(args, candidate.config, candidate.window_length, candidate.max_new)
    if not len(held.windows) and not args.labelled and serving is not None:
        raise UserError(
            "nothing to score on: the candidate records no history, and no --from-kafka, "
            "--data or --labelled was given"
        )
    models = {"candidate": candidate} | ({"serving": serving} if serving else {})
    if len(held.windows):
        per_window = {name: forecast_errors(m, held.windows) for name, m in models.items()}
        report["metrics"]["held_back"] = {
            name: {"nll": float(nll.mean()), "mae": float(mae.mean())}
            for name, (nll, mae) in per_window.items()
        }
        report["held_back"] = held.summary | {"windows": len(held.windows),
                                              "series": len(set(held.series_of.tolist()))}  # fmt: skip
        if serving is not None:
            c, s = per_window["candidate"][0], per_window["serving"][0]
            report["checks"].append(_check("held_back.nll", c.mean(), s.mean(),
                                           s.mean() + args.max_nll_increase, lower=True))  # fmt: skip
            report["disagreements"] = _disagreements(held, c, s)
    source = (held.summary.get("history") or {}).get("source") or {}
    if held.history is not None and source.get("kind") == "kafka":
        judged, unmatched = judged_events(source["bootstrap"])
        if judged:
            by_model = {name: verdict_metrics(Path(d), held.history, judged, args.device)
                        for name, d in (("candidate", args.candidate), ("serving", serving_dir))
                        if d}  # fmt: skip
            report["metrics"]["verdicts"] = by_model | {"unmatched": unmatched}
            if serving is not None:
                c, s = by_model["candidate"], by_model["serving"]
                report["checks"].append(
                    _check(
                        "verdicts.tp_alerted",
                        c["tp_alerted"],
                        s["tp_alerted"],
                        s["tp_alerted"],
                        lower=False,
                    )
                )
                report["checks"].append(_check("verdicts.fp_alerted", c["fp_alerted"],
                                               s["fp_alerted"], s["fp_alerted"], lower=True))  # fmt: skip
    if args.labelled:
        from training.labelled import load_path, trim_warmup

        series = [trim_warmup(s, args.max_warmup) for p in args.labelled for s in load_path(p)]
        by_model = {name: labelled_metrics(Path(d), series, args.device)
                    for name, d in (("candidate", args.candidate), ("serving", serving_dir)) if d}  # fmt: skip
        report["metrics"]["labelled"] = {
            c: {name: m[c] for name, m in by_model.items()} for c in by_model["candidate"]
        }
        if serving is not None:
            for c, m in report["metrics"]["labelled"].items():
                cv, sv = m["candidate"]["vus_pr"], m["serving"]["vus_pr"]
                if cv is not None and sv is not None:
                    report["checks"].append(_check(f"labelled.{c}.vus_pr", cv, sv,
                                                   sv - args.max_vus_drop, lower=False))  # fmt: skip
    return report


def detector_problem(scorer) -> str | None:
    """Why `tsguard serve`'s Detector cannot run this model (e.g. a window shorter than a
    signal reads), found by feeding it a short series as serve would; None when it runs."""
    from detector.detector import Detector

    n = 2 * scorer.window_length
    t = np.arange(n, dtype=np.float64)
    try:
        Detector(scorer).run_series(10.0 + np.sin(t / 7.0), 1.7e9 + 60.0 * t)
    except ValueError as exc:
        return str(exc)
    return None


def _load(path: Path, what: str, device: str):
    from detector.scorer import load_scorer

    try:
        return load_scorer(path, device=device)
    except ModelLoadError as exc:
        raise UserError(f"{what}: {exc}") from None


def _check(metric: str, cand: float, serv: float, bound: float, lower: bool) -> dict[str, Any]:
    ok = bool(cand <= bound) if lower else bool(cand >= bound)
    return {"metric": metric, "candidate": float(cand), "serving": float(serv),
            "bound": float(bound), "better": "lower" if lower else "higher", "ok": ok}  # fmt: skip


def _disagreements(held: HeldBack, cand: np.ndarray, serv: np.ndarray) -> list[dict[str, Any]]:
    """The series whose held-back NLL differs most between the models, largest first."""
    rows = []
    for i in np.unique(held.series_of):
        pick = held.series_of == i
        c, s = float(cand[pick].mean()), float(serv[pick].mean())
        rows.append({"series": held.names[i], "candidate_nll": c, "serving_nll": s,
                     "difference": c - s, "windows": int(pick.sum())})  # fmt: skip
    rows.sort(key=lambda r: abs(r["difference"]), reverse=True)
    return rows[:N_DISAGREEMENTS]


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Left: each metric, candidate beside serving; right: the largest disagreements."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float | None, float | None]] = []
    for name, m in report["metrics"].get("held_back", {}).get("candidate", {}).items():
        serving = report["metrics"]["held_back"].get("serving", {}).get(name)
        bars.append((f"held-back {name}", m, serving))
    for c, m in report["metrics"].get("labelled", {}).items():
        bars.append(
            (f"{c} VUS-PR", m["candidate"]["vus_pr"], (m.get("serving") or {}).get("vus_pr"))
        )
    verdicts = report["metrics"].get("verdicts", {})
    for key, what in (
        ("tp_alerted", "true positives alerted"),
        ("fp_alerted", "false positives alerted"),
    ):
        if "candidate" in verdicts:
            bars.append(
                (what, verdicts["candidate"][key], (verdicts.get("serving") or {}).get(key))
            )
    fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(bars))
    ax_m.bar(
        x - 0.2,
        [b[1] or 0.0 for b in bars],
        0.4,
        label=f"candidate {report['candidate']['version']}",
    )
    ax_m.bar(
        x + 0.2, [b[2] or 0.0 for b in bars], 0.4, label=f"serving {report['serving']['version']}"
    )
    ax_m.set_xticks(x, [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
    ax_m.axhline(0, color="k", lw=0.5)
    ax_m.legend(fontsize=7)
    ax_m.set_title(f"{report['decision']}: metrics side by side")
    rows = report["disagreements"][::-1]
    ax_d.barh(np.arange(len(rows)), [r["difference"] for r in rows],
              color=["tab:red" if r["difference"] > 0 else "tab:green" for r in rows])  # fmt: skip
    ax_d.set_yticks(np.arange(len(rows)), [r["series"][:40] for r in rows], fontsize=7)
    ax_d.axvline(0, color="k", lw=0.5)
    ax_d.set_xlabel("held-back NLL, candidate - serving (red: candidate worse)")
    ax_d.set_title("largest disagreements")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- the swap


def swap_in(candidate: Path, serving: Path, keep: int) -> Path:
    """Make `serving` hold the candidate's model, atomically for a reader. Returns the directory
    now served (the new version's folder, or `serving` itself when it is a plain directory)."""
    if serving.exists() and not serving.is_symlink():
        if not serving.is_dir():
            raise UserError(f"--serving {serving}: not a directory")
        _replace_files(candidate, serving)
        return serving
    versions = serving.parent / f"{serving.name}.versions"
    version = json.loads((candidate / "config.json").read_text())["version"]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / f"{_safe(version)}-{stamp}"
    for n in range(2, 100):  # the same version promoted twice within a second
        if not target.exists():
            break
        target = versions / f"{_safe(version)}-{stamp}-{n}"
    target.mkdir()
    for name in (*MODEL_FILES, *CARD_FILES):
        if (candidate / name).is_file():
            shutil.copyfile(candidate / name, target / name)
    link = serving.parent / f".{serving.name}.{os.getpid()}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(target, serving.parent))
    os.replace(link, serving)  # rename(2): readers see the old link or the new one
    _prune(versions, target, keep)
    return target


def _replace_files(candidate: Path, serving: Path) -> None:
    for name in (*CARD_FILES, *MODEL_FILES):  # config.json last: serve reloads on it
        if (candidate / name).is_file():
            tmp = serving / f".{name}.tmp"
            shutil.copyfile(candidate / name, tmp)
            os.replace(tmp, serving / name)


def _failure(check: dict[str, Any]) -> str:
    if isinstance(check["candidate"], str):
        return f"{check['metric']}: {check['candidate']}"
    return f"{check['metric']} {check['candidate']:.4g} vs serving {check['serving']:.4g}"


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)[:80] or "model"


def _prune(versions: Path, current: Path, keep: int) -> None:
    """Keep the newest `keep` versions (at least the current one and the one before it)."""
    old = sorted((p for p in versions.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for p in old[: max(0, len(old) - max(keep, 2))]:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- the command


def run_promote(args: argparse.Namespace) -> int:
    if str(args.candidate) == "default" and not args.candidate.exists():
        from detector.scorer import DEFAULT_MODEL_DIR

        args.candidate = DEFAULT_MODEL_DIR  # the shipped model, as `train --init default`
    if args.serving is None:
        raise UserError("--serving DIR is required (or TSGUARD_MODEL)")
    if args.candidate.resolve() == args.serving.resolve():
        raise UserError("the candidate is the serving model")
    serving_dir = args.serving if (args.serving / "config.json").is_file() else None
    plain = args.serving.is_dir() and not args.serving.is_symlink()
    if serving_dir is None and plain and any(args.serving.iterdir()):
        raise UserError(f"--serving {args.serving}: holds no model (no config.json)")
    report = compare(args, serving_dir)
    passed = all(c["ok"] for c in report["checks"])
    first = " (nothing serving)" if serving_dir is None else ""
    if not passed:
        report["decision"] = "refused"
    elif args.dry_run:
        report["decision"] = "dry run: would promote" + first
    else:
        report["decision"] = "promoted" + first
    report["swapped"] = False
    if passed and not args.dry_run:
        report["served_from"] = str(swap_in(args.candidate, args.serving, args.keep))
        report["swapped"] = True
    out = args.report or args.candidate / "promotion"
    out.mkdir(parents=True, exist_ok=True)
    from training.labelled import _json_safe

    (out / "promotion.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    plot_report(report, out / "promotion.png")
    summary = {k: report[k] for k in ("decision", "swapped")} | {
        "candidate": report["candidate"]["version"],
        "serving": report["serving"]["version"],
        "checks": [{k: c[k] for k in ("metric", "candidate", "serving", "ok")} for c in report["checks"]],
        "report": str(out / "promotion.json"),
    }  # fmt: skip
    json.dump(_json_safe(summary), sys.stdout)
    sys.stdout.write("\n")
    if not passed:
        failed = [c for c in report["checks"] if not c["ok"]]
        what = "; ".join(_failure(c) for c in failed)
        print(
            f"tsguard: candidate refused: {what} (report {out / 'promotion.json'})", file=sys.stderr
        )
        return 1
    return 0
