"""`tsguard evaluate nab`: run a detector over the NAB corpus as a stream and score it with NAB.

Every series is replayed in time order: the score of a point uses only the points up to it
(per-series adaptation from the past is allowed, as NAB's probationary period intends). The run
writes one NAB result CSV per data file (timestamp,value,anomaly_score,label), a JSON with the
three profile scores, optional PNG plots of the worst files, and prints the profile scores as JSON
on stdout. With `--scores DIR` it only scores existing NAB result CSVs (e.g. NAB's published
results/numenta), which is how the scorer is checked against the published scoreboard.

    tsguard evaluate nab --corpus ../shared/data/nab --out nab.json --plots plots/
    tsguard evaluate nab --corpus ../shared/data/nab --detector windowed-gaussian
    tsguard evaluate nab --corpus ../shared/data/nab --scores ../shared/data/nab/results/numenta
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import UserError

log = logging.getLogger("tsguard.evaluate")

DETECTORS = ("tsguard", "windowed-gaussian", "isolation-forest", "pca", "null")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate detectors on benchmarks (NAB)")
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    n = sub.add_parser(
        "nab",
        help="run a detector over the NAB corpus and print the three NAB profile scores as JSON",
        description="Run a detector over every NAB series as a stream (each score uses only the "
        "past), score the results with the NAB scorer (threshold optimised per profile over the "
        "corpus, normalised null=0 / perfect=100) and print the three profile scores as JSON.",
    )
    n.add_argument("--corpus", type=Path, required=True, help="NAB directory (data/, labels/)")
    n.add_argument(
        "--model",
        default=os.environ.get("TSGUARD_MODEL"),
        help="model directory for --detector tsguard (default: the shipped model; env TSGUARD_MODEL)",
    )
    n.add_argument(
        "--detector", default="tsguard", choices=DETECTORS, help="detector to run (default tsguard)"
    )
    n.add_argument(
        "--scores",
        type=Path,
        help="only score existing NAB result CSVs under this directory (no detector is run)",
    )
    n.add_argument("--out", type=Path, help="write the scores (profiles, per file) as JSON here")
    n.add_argument(
        "--results-dir",
        type=Path,
        help="write NAB result CSVs here (default: <out without .json>_results/ when --out is set)",
    )
    n.add_argument("--plots", type=Path, help="write PNG plots of the worst files here")
    n.add_argument("--n-plots", type=int, default=6, help="number of worst files to plot")
    n.add_argument(
        "--device",
        default=os.environ.get("TSGUARD_DEVICE", "auto"),
        choices=["auto", "cpu", "cuda"],
        help="where the tsguard model runs (default auto; env TSGUARD_DEVICE)",
    )
    n.add_argument(
        "--stride",
        type=int,
        default=1,
        help="tsguard: points scored per window (1 = every point forecast one step ahead, as in "
        "a live stream; larger is faster, up to the model's horizon)",
    )
    n.add_argument(
        "--files",
        default="*",
        help="glob over corpus file names to evaluate a subset, e.g. 'realKnownCause/*'",
    )
    n.set_defaults(handler=run_nab)

    from training.labelled import register_labelled

    register_labelled(sub)


# ----------------------------------------------------------------------------- tsguard detector


@dataclass
class TsguardDetector:
    """tsguard as a NAB detector: the same `Detector` that serves (detector/detector.py), fed
    each series as the stream feeds it (`Detector.run_series`).

    NAB sees the episodes: the score at each episode start and 0 elsewhere, since NAB rewards
    the first detection in a window and penalises every further one (the continuous score is
    what `evaluate labelled` ranks). `scorer` is a detector.api.WindowScorer; `config` defaults
    to the model's own detection settings.
    """

    scorer: object
    stride: int = 1
    config: object = None
    name: str = "tsguard"

    def __post_init__(self) -> None:
        from detector.detector import Detector

        max_new = getattr(self.scorer, "max_new", None)
        if self.stride < 1 or (max_new is not None and self.stride > max_new):
            raise UserError(f"--stride must be in 1..{max_new or 'inf'}, got {self.stride}")
        self.detector = Detector(self.scorer, self.config)

    @classmethod
    def from_model(
        cls,
        model_dir: str | None = None,
        device: str = "auto",
        stride: int = 1,
        signals: tuple[str, ...] | None = None,
    ) -> TsguardDetector:
        """The model directory's detector; `signals` keeps only those (an ablation)."""
        from dataclasses import replace

        from detector.scorer import load_scorer

        scorer = load_scorer(model_dir, device=device)
        config = None if signals is None else replace(scorer.calibration, signals=signals)
        return cls(scorer, stride=stride, config=config)

    def run(self, values: np.ndarray, timestamps: np.ndarray):
        """The detector's SeriesRun of one series; timestamps as datetime64 or epoch seconds
        (NAB's are naive local times, read as UTC: each point still lands in its own
        time-of-day bin, which is all the seasonal profile needs)."""
        ts = np.asarray(timestamps)
        if np.issubdtype(ts.dtype, np.datetime64):
            seconds = ts.astype("datetime64[ns]").astype(np.int64) / 1e9
        else:
            seconds = ts.astype(np.float64)
        return self.detector.run_series(np.asarray(values, np.float64), seconds, self.stride)

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        from detector.detector import onset_scores

        return onset_scores(self.run(values, timestamps))


def make_detector(args: argparse.Namespace):
    """The detector named by --detector (SeriesDetector interface of training/baselines.py)."""
    if args.detector == "tsguard":
        return TsguardDetector.from_model(args.model, device=args.device, stride=args.stride)
    from training.baselines import BASELINES

    return BASELINES[args.detector]()


# ----------------------------------------------------------------------------- the harness


def run_detector(detector, corpus) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Score every series of the corpus; returns (scores per file, seconds per file)."""
    scores, seconds = {}, {}
    for s in corpus.series:
        t0 = time.perf_counter()
        out = np.asarray(detector.score_series(s.values, s.timestamps), dtype=np.float64)
        seconds[s.name] = time.perf_counter() - t0
        if out.shape != (len(s.values),):
            raise RuntimeError(
                f"{detector.name} returned {out.shape} scores for {len(s.values)} points"
            )
        if not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0:
            raise RuntimeError(f"{detector.name} returned scores outside 0..1 for {s.name}")
        scores[s.name] = out
        log.debug("%s: %d points in %.2fs", s.name, len(out), seconds[s.name])
    return scores, seconds


def write_result_csvs(out_dir: Path, detector_name: str, corpus, scores: dict) -> None:
    """NAB layout: <out_dir>/<category>/<detector>_<file>.csv with timestamp,value,anomaly_score,label."""
    import pandas as pd

    for s in corpus.series:
        category, _, file_name = s.name.rpartition("/")
        path = out_dir / category / f"{detector_name}_{file_name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "timestamp": pd.to_datetime(s.timestamps).strftime("%Y-%m-%d %H:%M:%S"),
                "value": s.values,
                "anomaly_score": scores[s.name],
                "label": s.labels.label_mask().astype(int),
            }
        ).to_csv(path, index=False)


def worst_files(results: dict, corpus, n: int) -> list[str]:
    """Files that lose the most against a perfect detector under the standard profile."""
    std = results.get("standard") or next(iter(results.values()))
    profile = corpus.profiles[std.profile]
    shortfall = {
        f.name: profile.tp_weight * len(f.windows) - std.per_file[f.name] for f in corpus.files
    }
    return sorted(shortfall, key=lambda k: shortfall[k], reverse=True)[:n]


def plot_files(
    plot_dir: Path, names: list[str], corpus, scores: dict, results: dict, title: str
) -> list[Path]:
    """One PNG per file: the values with anomaly windows shaded, and the score with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = results.get("standard") or next(iter(results.values()))
    by_name = {s.name: s for s in corpus.series}
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, name in enumerate(names, 1):
        s = by_name[name]
        idx = np.arange(len(s.values))
        fig, (ax_v, ax_s) = plt.subplots(2, 1, figsize=(12, 5), sharex=True)
        for ax in (ax_v, ax_s):
            ax.axvspan(0, s.labels.probation, color="0.85", label="probation")
            for k, (first, last) in enumerate(s.labels.windows):
                ax.axvspan(
                    first,
                    last,
                    color="tab:red",
                    alpha=0.2,
                    label="anomaly window" if k == 0 else None,
                )
        ax_v.plot(idx, s.values, lw=0.7, color="tab:blue")
        ax_v.set_ylabel("value")
        ax_v.set_title(f"{title}: {name} (standard raw {std.per_file[name]:+.2f})")
        ax_v.legend(loc="upper left", fontsize=7)
        sc = scores[name]
        ax_s.plot(idx, sc, lw=0.7, color="tab:green")
        ax_s.axhline(
            std.threshold, color="k", ls="--", lw=0.8, label=f"threshold {std.threshold:.4g}"
        )
        hits = (sc >= std.threshold) & (idx >= s.labels.probation)
        ax_s.scatter(idx[hits], sc[hits], s=6, color="k", zorder=3, label="detections")
        ax_s.set_ylim(-0.02, 1.02)
        ax_s.set_ylabel("anomaly score")
        ax_s.set_xlabel("point")
        ax_s.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        path = plot_dir / f"{rank:02d}_{name.replace('/', '_').removesuffix('.csv')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def run_nab(args: argparse.Namespace) -> int:
    from training import nab

    corpus = nab.read_corpus(args.corpus)
    if args.files != "*":
        keep = [s for s in corpus.series if fnmatch.fnmatch(s.name, args.files)]
        if not keep:
            raise UserError(f"--files {args.files!r} matches no file of the corpus")
        corpus = nab.NabCorpus(corpus.root, keep, corpus.profiles)

    t0 = time.perf_counter()
    info: dict = {"corpus": str(args.corpus), "files": len(corpus.series)}
    if args.scores is not None:
        scores = nab.read_result_scores(args.scores, corpus)
        name = args.scores.name
        info["scores"] = str(args.scores)
    else:
        detector = make_detector(args)
        name = detector.name
        scorer = getattr(detector, "scorer", None)
        if scorer is not None:
            info.update(model_version=scorer.version, device=scorer.device, stride=args.stride)
        scores, _ = run_detector(detector, corpus)
    detect_s = time.perf_counter() - t0
    results = nab.score_all_profiles(scores, corpus.files, corpus.profiles)
    info.update(detector=name, detect_seconds=round(detect_s, 2))
    log.info(
        "%s over %d files: %s %.1fs, NAB scoring %.1fs",
        name,
        len(corpus.series),
        "reading scores" if args.scores is not None else "detection",
        detect_s,
        time.perf_counter() - t0 - detect_s,
    )

    results_dir = args.results_dir
    if results_dir is None and args.out is not None and args.scores is None:
        results_dir = args.out.with_name(args.out.stem + "_results")
    if results_dir is not None:
        write_result_csvs(results_dir / name, name, corpus, scores)
        info["results_dir"] = str(results_dir / name)
    if args.plots is not None:
        plotted = plot_files(
            args.plots, worst_files(results, corpus, args.n_plots), corpus, scores, results, name
        )
        info["plots"] = [str(p) for p in plotted]
    if args.out is not None:
        report = {
            **info,
            "profiles": {k: r.to_dict() for k, r in results.items()},
            "per_file_raw": {
                f.name: {k: r.per_file[f.name] for k, r in results.items()} for f in corpus.files
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump({k: round(r.normalised, 4) for k, r in results.items()}, sys.stdout)
    sys.stdout.write("\n")
    return 0
