"""Pattern novelty alone: the signal's two searches (detector/signals/novelty.py) on the same
calls, one window per series as the stream batches them, at the detector's default query
length and history, with every ring already full.

- loop: the compiled sliding dot product per point (numba, one core), the search on the CPU;
- matmul: the batched matrix product (torch, `--threads` CPU threads, or `--device cuda`),
  the search on a GPU.

    python -m benchmarks.novelty_bench --batches 1,64,1024 --seconds 2
    python -m benchmarks.novelty_bench --device cuda   # on a GPU machine

Prints a table and writes JSON (--out). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import add_common_args, environment, print_table, write_json
from benchmarks.scoring_bench import realistic_windows

WINDOW = 128  # the default model's window


def time_search(search: str, args: argparse.Namespace, batch: int) -> dict:
    from detector.detector import DetectorConfig
    from detector.signals import PatternNovelty

    c = DetectorConfig()
    sig = PatternNovelty(args.dims, c.novelty_length, c.novelty_history, c.long_window,
                         device=args.device, search=search)  # fmt: skip
    rng = np.random.default_rng(0)
    for s in range(batch):
        sig.reset(s)
    # Full rings (as after `history` points): a young ring has fewer candidates to search.
    ring = realistic_windows(batch, sig.history, args.dims)
    ring[rng.random(ring.shape) < 0.01] = np.nan
    sig.rows.ring[:batch] = ring
    sig.rows.pos[:batch] = 2 * sig.history
    slots = np.arange(batch)
    calls = [realistic_windows(batch, WINDOW, args.dims, seed=k) for k in range(4)]
    for w in calls[:2]:  # warm-up (compile, allocator)
        sig.raw(slots, w, None, args.n_new)
    n, t = 0, time.perf_counter()
    while True:
        sig.raw(slots, calls[n % len(calls)], None, args.n_new)  # numpy out: the work is done
        n += 1
        elapsed = time.perf_counter() - t
        if elapsed >= args.seconds and n >= 3:
            break
    return {
        "search": search,
        "device": "cpu" if search == "loop" else args.device,
        "batch": batch,
        "calls": n,
        "ms_per_call": 1000 * elapsed / n,
        "windows_per_s": batch * n / elapsed,
        "points_per_s": batch * n * args.n_new / elapsed,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="matmul's device")
    p.add_argument("--searches", default="loop,matmul", type=lambda s: s.split(","))
    p.add_argument("--batches", default=[1, 64, 1024],
                   type=lambda s: [int(x) for x in s.split(",")], help="windows per call")  # fmt: skip
    p.add_argument("--dims", type=int, default=1, help="dimensions per window")
    p.add_argument("--n-new", type=int, default=1, help="new points scored per window (= stride)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per search and batch size")
    add_common_args(p, "novelty", threads=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = [time_search(s, args, b) for b in args.batches for s in args.searches]
    result = {"benchmark": "novelty", "config": vars(args) | {"out": str(args.out)},
              "runs": rows, "environment": environment()}  # fmt: skip
    if args.device == "cuda":
        result["environment"]["gpu"] = torch.cuda.get_device_name()
    print_table(
        rows,
        ["search", "device", "batch", "ms_per_call", "windows_per_s", "points_per_s"],
        title=f"pattern novelty alone: D={args.dims}, n_new={args.n_new}, {args.threads} torch "
        f"threads (load avg {result['environment']['loadavg']['1m']:.2f})",
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
