"""Detector settings on a development set, fast: the model's errors are cached per series, and
every run after the first re-runs only the rest of the `Detector` (signals, tails, fusion,
episodes) with the settings given. The figures equal `tsguard evaluate labelled`'s for the same
settings (same `Detector.run_series`, same `file_metrics`).

    python -m benchmarks.detector_dev kpitrain                 # the model's own settings
    python -m benchmarks.detector_dev kpitrain hysteresis=0.1  # DetectorConfig fields overridden

Sets: `kpitrain` (the last 20,000 points of each KPI train series, the first 3,000 of them
warm-up: where detection settings are chosen), `nab`, `kpitest`, `smd` (as `evaluate labelled`
reads them, warm-up cut to 20,000). The cache is under --cache (per model version); delete it
when the model changes. Prints one line of means over files and writes JSON (--out). On `nab` it
also prints NAB v1.1's three profile scores of the episode starts, as `tsguard evaluate nab`
computes them (training/nab.py, the corpus-optimised threshold), from the same runs. `--tails`
also prints how often each signal's tail reaches a score on ordinary points against the
probability the score claims, and which signal was loudest at true and false episode starts.
"""

from __future__ import annotations

import argparse
import ast
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks._common import REPO, environment, write_json
from detector.api import WindowScores

DATA = REPO.parent / "shared" / "data"
SETS = ("kpitrain", "nab", "kpitest", "smd")


def series_set(name: str, data: Path = DATA) -> list:
    from training.labelled import LabelledSeries, load_path, read_csv_series, trim_warmup

    if name == "kpitrain":
        out = []
        for f in sorted((data / "kpi" / "train").glob("*.csv*")):
            values, ts, labels, dims, _ = read_csv_series(f)
            n = min(len(values), 20_000)
            stem = f.name.split(".")[0]
            out.append(LabelledSeries("kpitrain", stem, values[-n:], ts[-n:], labels[-n:], 3000,
                                      dims))  # fmt: skip
        return out
    path = {"nab": data / "nab", "kpitest": data / "kpi", "smd": data / "smd"}[name]
    return [trim_warmup(s, 20_000) for s in load_path(path)]


class CachedErrors:
    """The scorer, its answers recorded (npz) on the first pass over a series and replayed on
    later ones: a series' windows come in the same batches every time."""

    def __init__(self, scorer, path: Path) -> None:
        self.scorer, self.path, self.answers, self.calls = scorer, path, [], 0
        if path.exists():
            with np.load(path) as f:
                self.answers = [WindowScores(f[f"e{i}"], f[f"c{i}"]) for i in range(len(f) // 2)]
            if self.answers and self.answers[0].errors.ndim != 3:
                raise SystemExit(f"{path}: errors cached before they were per dimension; delete "
                                 "the cache")  # fmt: skip
        # An empty record was written by a run without the forecast (an ablation): not a cache.
        self.replaying = bool(self.answers)

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def score(self, windows: np.ndarray, n_new: int) -> WindowScores:
        self.calls += 1
        if self.replaying:
            return self.answers[self.calls - 1]
        self.answers.append(self.scorer.score(windows, n_new))
        return self.answers[-1]

    def save(self) -> None:
        if not self.replaying and self.answers:  # a run that never asked the model records nothing
            arrays = {}
            for i, r in enumerate(self.answers):
                arrays[f"e{i}"], arrays[f"c{i}"] = r.errors, r.contributions
            np.savez(self.path, **arrays)


def nab_scores(onsets: dict[str, np.ndarray], corpus_root: Path = DATA / "nab") -> dict:
    """NAB's normalised score per cost profile of the score at each episode start (0 elsewhere),
    keyed by series name as `series_set("nab")` names them (the corpus file without .csv), and
    where the standard profile's points go at its corpus-optimised threshold."""
    from training import nab

    corpus = nab.read_corpus(corpus_root)
    scores = {f.name: onsets[f.name.removesuffix(".csv")] for f in corpus.files}
    results = nab.score_all_profiles(scores, corpus.files, corpus.profiles)
    out = {name: round(r.normalised, 4) for name, r in results.items()}
    standard = results["standard"]
    costs, credits = [], []
    for f in corpus.files:
        file_costs, file_credits = nab.file_parts(scores[f.name], f, standard.threshold)
        costs += file_costs.tolist()
        credits += file_credits
    missed = credits.count(None)
    credits = [c for c in credits if c is not None]
    fp_weight = corpus.profiles["standard"].fp_weight
    out["standard_breakdown"] = {
        "threshold": round(standard.threshold, 4),
        "windows_hit": len(credits),
        "hit_credit": round(sum(credits), 2),  # 1 for a detection at a window's start
        "false_starts": len(costs),
        "false_cost": round(fp_weight * sum(costs), 2),
        "windows_missed": missed,  # each costs 1
        "raw_per_point": round((standard.perfect - standard.null) / 100, 2),
    }
    return out


LEVELS = (0.3, 0.4, 0.6, 1.0)  # tail scores: P 1e-3, 1e-4, 1e-6, 1e-10 at 10 decades
QUIET = 50  # points from any labelled point beyond which a point counts as ordinary


def tail_diagnosis(runs: list, tail_decades: float) -> dict:
    """How the tails' scores hold up on the set: per signal, the share of quiet points (test
    part, farther than QUIET points from every labelled point) whose tail score reaches each of
    LEVELS, beside the probability it claims; and, at the episode starts of the test part, which
    signal was loudest and how often it was at its cap (1.0), for starts within 2 points of a
    labelled point ("true") and the others ("false"). runs: (LabelledSeries, SeriesRun) pairs."""
    from detector.detector import SIGNALS, START, tail_probability

    quiet, starts = [], {"true": [], "false": []}
    for s, run in runs:
        labels = np.asarray(s.labels).astype(bool)
        near = np.convolve(labels, np.ones(2 * QUIET + 1), "same") > 0
        test = np.arange(len(labels)) >= s.test_start
        quiet.append(run.signals[test & ~near & run.scored])
        close = np.convolve(labels, np.ones(5), "same") > 0
        for t in np.flatnonzero((run.kinds == START) & test):
            starts["true" if close[t] else "false"].append(run.signals[t])
    q = np.concatenate(quiet)
    shares = {name: [float(np.mean(q[np.isfinite(q[:, i]), i] >= lvl)) if q.size else np.nan
                     for lvl in LEVELS] for i, name in enumerate(SIGNALS)}  # fmt: skip
    anatomy = {}
    for kind, rows in starts.items():
        t = np.nan_to_num(np.array(rows).reshape(-1, len(SIGNALS)), nan=0.0)
        loudest = t.argmax(axis=1)
        anatomy[kind] = {
            "starts": len(t),
            "loudest": {n: int((loudest == i).sum()) for i, n in enumerate(SIGNALS)},
            "loudest_at_cap": {
                n: int(((loudest == i) & (t.max(axis=1) >= 1.0)).sum())
                for i, n in enumerate(SIGNALS)
            },
        }
    return {"quiet_points": len(q), "levels": list(LEVELS),
            "claimed": [tail_probability(lvl, tail_decades) for lvl in LEVELS],
            "share_at_or_above": shares, "starts": anatomy}  # fmt: skip


def print_diagnosis(d: dict) -> None:
    print(f"tails on {d['quiet_points']} quiet points, share at or above score "
          + " / ".join(f"{v:g}" for v in d["levels"]) + " (claimed "
          + " / ".join(f"{p:.0e}" for p in d["claimed"]) + "):")  # fmt: skip
    for name, shares in d["share_at_or_above"].items():
        print(f"  {name:9s}" + " / ".join(f"{v:.1e}" for v in shares))
    for kind, a in d["starts"].items():
        loud = ", ".join(f"{n} {c} ({a['loudest_at_cap'][n]} at cap)"
                         for n, c in a["loudest"].items() if c)  # fmt: skip
        print(f"{kind} episode starts {a['starts']}, loudest signal: {loud}")


def overrides(pairs: list[str]) -> dict:
    """`key=value` pairs; values are Python literals (numbers, tuples) or bare words."""
    out = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def main(argv: list[str] | None = None) -> int:
    from detector.detector import START, Detector, onset_scores
    from detector.scorer import load_scorer
    from training.labelled import MEAN_KEYS, DetectorRun, file_metrics

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("set", choices=SETS)
    p.add_argument("settings", nargs="*", help="DetectorConfig fields, key=value")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: shipped)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/tsguard_detector_dev"))
    p.add_argument("--out", type=Path, default=None, help="JSON here (default: none)")
    p.add_argument("--tails", action="store_true",
                   help="also print how often each signal's tail reaches its scores on quiet "
                        "points, and the loudest signal at true and false episode starts")  # fmt: skip
    args = p.parse_args(argv)
    scorer = load_scorer(args.model, device="cpu")
    settings = overrides(args.settings)
    config = replace(scorer.calibration, **settings)
    cache = args.cache / scorer.version / args.set
    cache.mkdir(parents=True, exist_ok=True)
    started, rows, onsets, runs = time.time(), [], {}, []
    for s in series_set(args.set):
        errors = CachedErrors(scorer, cache / (s.name.replace("/", "_") + ".npz"))
        run = Detector(errors, config).run_series(s.values, s.timestamps)
        errors.save()
        onsets[s.name] = onset_scores(run)
        if args.tails:
            runs.append((s, run))
        rows.append(
            {"series": s.name, **file_metrics(s, DetectorRun(run.scores, run.kinds == START))}
        )
    means = {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in MEAN_KEYS
             if any(k in r for r in rows)}  # fmt: skip
    print(args.set, settings or "(model settings)",
          " ".join(f"{k}={v:.4f}" for k, v in means.items()), f"({time.time() - started:.0f} s)")  # fmt: skip
    report = {"set": args.set, "settings": settings, "means": means}
    if args.set == "nab":
        report["nab"] = nab_scores(onsets)
        b = report["nab"].pop("standard_breakdown")
        print("NAB", " ".join(f"{k}={v:.2f}" for k, v in report["nab"].items()))
        print(f"NAB standard at {b['threshold']}: {b['windows_hit']} windows hit (credit "
              f"{b['hit_credit']}), {b['false_starts']} false starts (cost {b['false_cost']}), "
              f"{b['windows_missed']} missed (cost -{b['windows_missed']}); one point of the "
              f"score is {b['raw_per_point']} raw")  # fmt: skip
        report["nab_standard_breakdown"] = b
    if args.tails:
        report["tails"] = tail_diagnosis(runs, config.tail_decades)
        print_diagnosis(report["tails"])
    if args.out:
        write_json(args.out, {**report, "files": rows, "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
