"""Scoring: windows/s of the model alone at batch sizes 1..4096, and what the pipeline achieves
with the same model, so the framework's overhead is measured against the model's own time.

1. model: `detector.scorer.load_scorer(...).score(windows, n_new)` on realistic windows (seasonal
   series with noise), per batch size; CPU with `torch.set_num_threads(--threads)`, or
   `--device cuda` (the scorer runs the network under bf16 autocast there; `--compile` adds
   `torch.compile`).
2. pipeline (in-process, no Kafka): N pre-encoded messages through the real `MetricsHead`
   (decode, windows, batching, scoring, calibration, episodes, events) as the pipeline drives it:
   `handle` per poll-sized chunk, `ready` after each. Framework overhead = (pipeline time - model
   time) / model time, model time = the tsguard_scoring_seconds histogram sum.
   The pipeline with Kafka in the loop is in ingest_bench.py.
3. decode + windows alone (no model): the per-point API (`decode_points` + `WindowStore.add`)
   against the batch fast path `MetricsHead` uses (`decode_batch` + `WindowStore.add_batch`).

    python -m benchmarks.scoring_bench --points 200000 --series 200
    python -m benchmarks.scoring_bench --device cuda --compile   # on a GPU machine

Prints tables and writes JSON (--out). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import namedtuple

import numpy as np

from benchmarks._common import (
    add_common_args,
    encoded_points,
    environment,
    print_table,
    write_json,
)

Record = namedtuple("Record", "topic partition offset key value")
POLL_RECORDS = 5000  # max_poll_records of tsguard's consumer


def realistic_windows(b: int, length: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None] + rng.integers(0, 1000, (b, 1, dims))
    period = rng.uniform(20, 200, (b, 1, dims))
    level = rng.uniform(-100, 100, (b, 1, dims))
    amp = rng.uniform(0.1, 10, (b, 1, dims))
    noise = rng.normal(0, 1, (b, length, dims)) * amp * 0.1
    return (level + amp * np.sin(2 * np.pi * t / period) + noise).astype(np.float32)


def model_sweep(scorer, args: argparse.Namespace) -> list[dict]:
    import torch

    rows = []
    for b in args.batches:
        windows = realistic_windows(b, scorer.window_length, args.dims)
        for _ in range(2):  # warm-up (allocator, autotuning, compile)
            scorer.score(windows, args.n_new)
        if scorer.device == "cuda":
            torch.cuda.synchronize()
        calls, t = 0, time.perf_counter()
        while True:
            scorer.score(windows, args.n_new)  # returns numpy: the device work is finished
            calls += 1
            elapsed = time.perf_counter() - t
            if elapsed >= args.seconds and calls >= 3:
                break
        rows.append({
            "batch": b,
            "calls": calls,
            "ms_per_batch": 1000 * elapsed / calls,
            "windows_per_s": b * calls / elapsed,
            "points_per_s": b * calls * args.n_new / elapsed,
        })  # fmt: skip
    return rows


def hot_loop(length: int, args: argparse.Namespace) -> list[dict]:
    """Decode + windows alone (no model): the per-point API (decode_points + WindowStore.add on
    each point) vs the batch path MetricsHead.handle takes (decode_batch + WindowStore.add_batch),
    poll-sized chunks, best of 3."""
    from stream.codec import decode_batch, decode_points
    from stream.windows import WindowStore

    values = [v for _, v in encoded_points(args.points, args.series)]

    def per_point(store: WindowStore, chunk: list[bytes]) -> None:
        for raw in chunk:
            for p in decode_points(raw):
                store.add(p, 0.0)

    def batch(store: WindowStore, chunk: list[bytes]) -> None:
        store.add_batch(decode_batch(chunk), 0.0)

    rows = []
    paths = (("per-point (decode_points + add)", per_point),
             ("batch (decode_batch + add_batch: MetricsHead)", batch))  # fmt: skip
    for name, step in paths:
        best = math.inf
        for _ in range(3):
            store = WindowStore(length, args.n_new, args.max_batch)
            t = time.perf_counter()
            for lo in range(0, len(values), POLL_RECORDS):
                step(store, values[lo : lo + POLL_RECORDS])
                for dims, _ in store.pending_batches():
                    store.clear_pending(dims)
            best = min(best, time.perf_counter() - t)
        rows.append({"path": name, "points_per_s": len(values) / best,
                     "us_per_point": 1e6 * best / len(values)})  # fmt: skip
    return rows


def pipeline_run(scorer, args: argparse.Namespace) -> dict:
    """The real MetricsHead over pre-encoded messages, driven as Pipeline.step drives it."""
    from stream.heads.metrics import MetricsHead
    from stream.metrics import Metrics
    from stream.settings import Settings

    settings = Settings(stride=args.n_new, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    metrics = Metrics()
    head = MetricsHead(settings, scorer, metrics)
    msgs = encoded_points(args.points, args.series)
    parts = 4
    records = [
        Record(settings.topics.metrics, hash(key) % parts, i, key, value)
        for i, (key, value) in enumerate(msgs)
    ]
    del msgs
    handle_s = drain_s = 0.0
    outputs = 0
    t = time.perf_counter()
    for lo in range(0, len(records), POLL_RECORDS):
        a = time.perf_counter()
        outputs += len(head.handle(records[lo : lo + POLL_RECORDS], time.monotonic()))
        b = time.perf_counter()
        for part in head.ready(time.monotonic()):
            outputs += len(part)
        handle_s += b - a
        drain_s += time.perf_counter() - b
    a = time.perf_counter()
    outputs += sum(map(len, head.ready(time.monotonic(), flush=True)))
    drain_s += time.perf_counter() - a
    total = time.perf_counter() - t
    sample = metrics.registry.get_sample_value
    model_s = sample("tsguard_scoring_seconds_sum") or 0.0
    batches = sample("tsguard_scoring_seconds_count") or 0.0
    windows = sample("tsguard_windows_scored_total") or 0.0
    return {
        "stride": args.n_new,
        "points": args.points,
        "seconds": total,
        "points_per_s": args.points / total,
        "windows": windows,
        "windows_per_s": windows / total,
        "mean_batch": windows / batches if batches else 0.0,
        "model_s": model_s,
        "model_windows_per_s": windows / model_s if model_s else math.nan,
        "decode_and_window_s": handle_s,
        "after_model_s": drain_s - model_s,  # calibration, episodes, events, metrics
        "outputs": outputs,
        "framework_overhead": (total - model_s) / model_s if model_s else math.nan,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma list of batch sizes (default 1,2,4,...,4096 on CPU, up to 262144 on CUDA)",
    )
    p.add_argument("--dims", type=int, default=1, help="dimensions per window")
    p.add_argument("--n-new", type=int, default=1, help="new points scored per window (= stride)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per batch size")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
        help="torch.compile mode (reduce-overhead = CUDA graphs)",
    )
    p.add_argument("--points", type=int, default=100_000, help="pipeline run: messages")
    p.add_argument("--series", type=int, default=200, help="pipeline run: distinct series")
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--max-wait-ms", type=float, default=50.0)
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline run")
    add_common_args(p, "scoring", threads=None)
    args = p.parse_args(argv)

    import torch

    from detector.scorer import load_scorer

    torch.set_num_threads(args.threads)
    scorer = load_scorer(args.model, args.device)
    if args.batches is None:
        top = 18 if scorer.device == "cuda" else 12
        args.batches = [2**k for k in range(top + 1)]
    if args.compile:
        scorer.compile(args.compile_mode)
    result: dict = {
        "benchmark": "scoring",
        "config": vars(args) | {"out": str(args.out)},
        "model": {"version": scorer.version, "device": scorer.device,
                  "window": scorer.window_length,
                  "parameters": sum(p.numel() for p in scorer.model.parameters())},
    }  # fmt: skip
    if scorer.device == "cuda":
        result["model"]["gpu"] = torch.cuda.get_device_name()
        result["model"]["precision"] = "bf16 autocast (network), fp32 normalisation"
    sweep = model_sweep(scorer, args)
    result["model_alone"] = sweep
    best = max(sweep, key=lambda r: r["windows_per_s"])
    result["model_best_windows_per_s"] = best["windows_per_s"]
    print_table(
        sweep,
        ["batch", "ms_per_batch", "windows_per_s", "points_per_s"],
        title=f"model alone: {scorer.version} on {scorer.device}, D={args.dims}, "
        f"n_new={args.n_new}, {args.threads} threads",
    )
    hot = hot_loop(scorer.window_length, args)
    result["decode_and_window"] = hot
    print_table(hot, ["path", "points_per_s", "us_per_point"],
                title=f"decode + windows only (no model), stride {args.n_new}")  # fmt: skip
    runs = [] if args.no_pipeline else [pipeline_run(scorer, args)]
    result["pipeline"] = runs
    result["environment"] = environment()
    if runs:
        print_table(
            runs,
            ["stride", "points_per_s", "windows_per_s", "mean_batch", "seconds", "model_s",
             "decode_and_window_s", "after_model_s", "framework_overhead"],
            title=f"pipeline in-process (no Kafka): {args.points:,} points, {args.series} series, "
            f"stride {args.n_new} (load avg {result['environment']['loadavg']['1m']:.2f})",
        )  # fmt: skip
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
