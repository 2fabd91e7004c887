"""Pages on series with nothing to page: stationary generated series, one process each, through
the shipped `Detector` (all signals, the default model), counting episode starts.

A label-free check of what the tails promise: an episode starts at a fused tail probability of
1e-8, so a series that only repeats itself should page about never. Each kind below is a shape
operators and the outside collections have (counts, pulses, state toggles, regular jobs):

    python -m benchmarks.quiet_bench                      # 100,000 points per kind, seed 0
    python -m benchmarks.quiet_bench --points 30000 --kinds pulse,spikes --seeds 0,1

Points are 60 s apart; the first `--skip` points (a warm-up: every tail and the time-of-day
profile filled) are not counted. Prints starts per 1,000 points and the signal loudest at them,
writes JSON (--out). Not a test: nothing here asserts on a rate.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from benchmarks._common import add_common_args, environment, print_table, write_json


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    e = rng.normal(0.0, 1.0, n)
    x = np.empty(n)
    x[0] = e[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


# kind -> (what it is, generator of n points)
KINDS = {
    "noise": ("white Gaussian noise", lambda r, t: r.normal(0.0, 1.0, len(t))),
    "ar1": ("AR(1), phi 0.99", lambda r, t: _ar1(r, len(t), 0.99)),
    "walk": ("random walk", lambda r, t: np.cumsum(r.normal(0.0, 1.0, len(t)))),
    "daily": ("daily sine + noise 0.1", lambda r, t: np.sin(2 * np.pi * t / 1440) + r.normal(0.0, 0.1, len(t))),
    "pulse": ("sharp pulse every 300 (ECG-like)", lambda r, t: np.sin(2 * np.pi * t / 300) ** 15 + r.normal(0.0, 0.02, len(t))),
    "square": ("square wave, 150 up / 150 down", lambda r, t: ((t // 150) % 2).astype(float) + r.normal(0.0, 0.02, len(t))),
    "sawtooth": ("sawtooth, period 200", lambda r, t: (t % 200) / 200 + r.normal(0.0, 0.01, len(t))),
    "spikes": ("spike of 5 every 500 points", lambda r, t: 5.0 * (t % 500 == 0) + r.normal(0.0, 0.1, len(t))),
    "counts": ("Poisson counts, mean 0.2", lambda r, t: r.poisson(0.2, len(t)).astype(float)),
    "bounded": ("Beta(5, 1) values", lambda r, t: r.beta(5.0, 1.0, len(t))),
}  # fmt: skip


def run_kind(scorer, kind: str, seed: int, points: int, skip: int) -> dict:
    from detector.detector import SIGNALS, START, Detector

    t = np.arange(points)
    x = KINDS[kind][1](np.random.default_rng(seed), t)
    started = time.perf_counter()
    run = Detector(scorer).run_series(x[:, None], 60.0 * t)
    starts = np.flatnonzero(run.kinds == START)
    counted = starts[starts >= skip]
    loudest = Counter(SIGNALS[int(np.nanargmax(run.signals[s]))] for s in counted)
    return {
        "kind": kind,
        "seed": seed,
        "points": points,
        "counted_points": points - skip,
        "starts": int(len(counted)),
        "starts_per_1k": 1000.0 * len(counted) / max(points - skip, 1),
        "loudest": dict(loudest.most_common()),
        "first_start": int(counted[0]) if len(counted) else None,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default=list(KINDS), type=lambda s: s.split(","),
                   help=f"comma list (default all: {','.join(KINDS)})")  # fmt: skip
    p.add_argument("--points", type=int, default=100_000, help="points per series")
    p.add_argument("--skip", type=int, default=20_000, help="first points not counted")
    p.add_argument("--seeds", default=[0], type=lambda s: [int(x) for x in s.split(",")])
    add_common_args(p, "quiet")
    args = p.parse_args(argv)
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if not 0 <= args.skip < args.points:
        p.error("need 0 <= --skip < --points")

    import torch

    from detector.scorer import load_scorer

    torch.set_num_threads(args.threads)
    scorer = load_scorer(None, "cpu")
    rows = [run_kind(scorer, k, s, args.points, args.skip) for k in args.kinds for s in args.seeds]
    result = {"benchmark": "quiet", "model": scorer.version,
              "config": vars(args) | {"out": str(args.out)}, "runs": rows,
              "environment": environment()}  # fmt: skip
    table = [r | {"what": KINDS[r["kind"]][0], "per 1k": r["starts_per_1k"],
                  "loudest": " ".join(f"{k} {v}" for k, v in r["loudest"].items()) or "-"}
             for r in rows]  # fmt: skip
    print_table(
        table,
        ["kind", "what", "seed", "starts", "per 1k", "loudest"],
        title=f"episode starts on series with nothing to page: {args.points:,} points each, "
        f"the first {args.skip:,} not counted ({scorer.version})",
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
