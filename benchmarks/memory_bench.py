"""Memory: resident bytes per tracked series, against the window's own bytes, and resident memory
staying flat past the `--max-series` cap. No broker: fake records go straight into the real
`MetricsHead.handle` (windows and the detector's rows per series), as the pipeline calls it.

1. per series: n distinct series (default 10k, 100k, 1M), each in a fresh process; RSS (psutil)
   after the head is built vs after every series is tracked, divided by n. "warm" also feeds each
   series' detector rows (tails, signals, episodes) 20 points, as the head does (its rows are then
   written: fixed-size arrays, the same size after any number of points). The window's own bytes
   are L*D*4 (float32 values) + L*8 (float64 timestamps).
2. cap: 1M distinct series streamed through heads capped at --caps (default 10k, 100k); RSS
   sampled as they arrive, so the curve shows it flat once the cap is reached.

    python -m benchmarks.memory_bench --counts 10000,100000,1000000 --stream 1000000

Prints tables and writes JSON (--out). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import orjson

from benchmarks._common import REPO, add_common_args, environment, print_table, write_json

Record = namedtuple("Record", "topic partition offset key value")
CHUNK = 5000


def rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def build_head(max_series: int):
    import torch

    from detector.scorer import load_scorer
    from stream.heads.metrics import MetricsHead
    from stream.metrics import Metrics
    from stream.settings import Settings

    torch.set_num_threads(1)
    scorer = load_scorer(None, "cpu")
    settings = Settings(max_series=max_series)
    return MetricsHead(settings, scorer, Metrics())


def records(lo: int, hi: int, topic: str) -> list[Record]:
    out = []
    for i in range(lo, hi):
        name = f"host-{i:07d}/cpu"
        body = orjson.dumps({"series": name, "ts": 1_700_000_000.0, "value": 0.5})
        out.append(Record(topic, i % 4, i, name.encode(), body))
    return out


WARM_ERRORS = 20  # points fed to each series' detector rows, so that they are written


def warm_state(head, rng: np.random.Generator) -> None:
    """Feed a few points per series through the detector's tails, signals and episodes (not
    the model: its output does not change the state's size), so every row the series owns is
    written (resident)."""
    det = head.detector
    slots = np.array([s.slot for _, s in head.series.items()], dtype=np.int64)
    length = det.window_length
    seconds = 1_700_000_000.0 + 300.0 * np.arange(length)
    for lo in range(0, len(slots), CHUNK):
        part = slots[lo : lo + CHUNK]
        windows = rng.normal(50.0, 5.0, (len(part), length, 1)).astype(np.float32)
        times = np.broadcast_to(seconds, (len(part), length))
        errors = rng.gamma(2.0, 0.5, (len(part), WARM_ERRORS))
        det.detect(
            1, part, windows, times, errors[:, :, None], np.ones((*errors.shape, 1), np.float32)
        )


def child_per_series(n: int) -> dict:
    head = build_head(max_series=n + 1)
    base = rss()
    t = time.perf_counter()
    for lo in range(0, n, CHUNK):
        head.handle(records(lo, min(n, lo + CHUNK), head.topic), 0.0)
    feed_s = time.perf_counter() - t
    fresh = rss()
    warm_state(head, np.random.default_rng(0))
    warm = rss()
    store = head.store
    bank = store._banks[1]
    length = store.length
    assert len(store) == n and len(head.series) == n
    return {
        "series": n,
        "rss_base": base,
        "rss_fresh": fresh,
        "rss_warm": warm,
        "bytes_per_series_fresh": (fresh - base) / n,
        "bytes_per_series_warm": (warm - base) / n,
        "window_bytes": length * 1 * 4 + length * 8,
        "bank_capacity": len(bank.pos),
        "feed_s": feed_s,
        "breakdown": breakdown(head),
    }


def breakdown(head) -> dict[str, int]:
    """Bytes held per series, by owner: sys.getsizeof of one tracked series' Python objects plus
    its share of the two dicts that index series by name, and the bytes of its rows in the
    head's numpy arrays."""
    store, table = head.store, head.series
    name, series = list(table.items())[-1]
    sizeof = sys.getsizeof
    n = len(table)
    bank = store._banks[1]
    detector_bank = head.detector.banks[1]
    return {
        "series_name_str": sizeof(name),
        "series_table_dict_share": sizeof(table._series) // n,
        "series_record": _deep_size(series),
        "tail_rows": detector_bank.tails.bytes_per_series,
        **{f"{name}_rows": sig.rows.bytes_per_row for name, sig in detector_bank.signals.items()},
        "episode_row": detector_bank.episodes.bytes_per_series,
        "bank_bookkeeping_arrays": bank.pos.itemsize * 3 + bank.last_ts.itemsize,
        "window_values_float32": store.length * 4,
        "window_ts_float64": store.length * 8,
    }


def _deep_size(obj) -> int:
    """Bytes of an object with __slots__/__dict__ and the containers, numbers and arrays it owns
    (not small ints and other interned singletons)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if id(x) in seen or x is None or isinstance(x, bool):
            continue
        seen.add(id(x))
        if isinstance(x, int) and -5 <= x <= 256:
            continue  # cached small ints are shared
        if isinstance(x, float) and x == 0.0:
            continue  # the shared 0.0 of a fresh buffer
        total += sys.getsizeof(x)
        if isinstance(x, np.ndarray):
            continue  # getsizeof includes an owned array's data
        if isinstance(x, list | tuple):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        for name in getattr(type(x), "__slots__", ()):
            if hasattr(x, name):
                stack.append(getattr(x, name))
        if hasattr(x, "__dict__") and not isinstance(x, type):
            stack.extend(vars(x).values())
    return total


def child_cap(total: int, cap: int, samples: int) -> dict:
    head = build_head(max_series=cap)
    base = rss()
    every = max(CHUNK, (total // samples) // CHUNK * CHUNK)
    curve = []
    t = time.perf_counter()
    for lo in range(0, total, CHUNK):
        head.handle(records(lo, min(total, lo + CHUNK), head.topic), 0.0)
        done = min(total, lo + CHUNK)
        if done % every == 0 or done == total:
            curve.append({"series_seen": done, "tracked": len(head.series), "rss": rss(),
                          "elapsed_s": time.perf_counter() - t})  # fmt: skip
    after_cap = [c["rss"] for c in curve if c["series_seen"] >= 2 * cap]
    return {
        "cap": cap,
        "series_streamed": total,
        "rss_base": base,
        "curve": curve,
        "rss_final": curve[-1]["rss"],
        "rss_growth_after_2x_cap": (max(after_cap) - min(after_cap)) if after_cap else None,
        "evicted": head.series.evicted,
        "seconds": time.perf_counter() - t,
    }


def run_child(*args: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory_bench", "--child", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--counts", type=ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--stream", type=int, default=1_000_000, help="series streamed for the caps")
    p.add_argument("--caps", type=ints, default=[10_000, 100_000])
    p.add_argument("--samples", type=int, default=20, help="RSS samples per cap run")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process, not one fresh process each (RSS then means little; for "
        "smoke tests)",
    )
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    add_common_args(p, "memory")
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "per-series":
            out = child_per_series(int(rest[0]))
        else:
            out = child_cap(int(rest[0]), int(rest[1]), args.samples)
        print(json.dumps(out))
        return out

    result: dict = {"benchmark": "memory", "config": vars(args) | {"out": str(args.out)}}
    if args.in_process:
        per = [child_per_series(n) for n in args.counts]
    else:
        per = [run_child("per-series", str(n)) for n in args.counts]
    result["per_series"] = per
    rows = []
    for r in per:
        w = r["window_bytes"]
        rows.append({"series": r["series"], "bytes/series (fresh)": r["bytes_per_series_fresh"],
                     "bytes/series (warm)": r["bytes_per_series_warm"], "window bytes": w,
                     "beyond window (warm)": r["bytes_per_series_warm"] - w,
                     "bank capacity": r["bank_capacity"]})  # fmt: skip
    if per:
        print_table(rows, list(rows[0]), title="resident bytes per tracked series (target: "
                    "<= 8 KiB beyond the window, issue 15)")  # fmt: skip
        print("per-series Python objects (sys.getsizeof):", per[-1]["breakdown"])
    if args.in_process:
        caps = [child_cap(args.stream, cap, args.samples) for cap in args.caps]
    else:
        caps = [
            run_child("cap", str(args.stream), str(cap), "--samples", str(args.samples))
            for cap in args.caps
        ]
    result["caps"] = caps
    for c in caps:
        print_table(
            [{"series seen": x["series_seen"], "tracked": x["tracked"],
              "RSS MiB": x["rss"] / 2**20, "elapsed s": x["elapsed_s"]} for x in c["curve"]],
            ["series seen", "tracked", "RSS MiB", "elapsed s"],
            title=f"--max-series {c['cap']:,}: {c['series_streamed']:,} distinct series streamed "
            f"(RSS growth after 2x cap: {c['rss_growth_after_2x_cap']})",
        )  # fmt: skip
    result["environment"] = environment()
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
