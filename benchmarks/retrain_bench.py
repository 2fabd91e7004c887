"""Retraining from Kafka history: the wall time of `tsguard train --from-kafka` and of
`tsguard promote` over a week of 1-minute points of many series, on the embedded broker.

    python -m benchmarks.retrain_bench --series 1000 --days 7 --epochs 1

The history (a daily cycle, a slow random walk and noise per series; `--points-per-message`
points of one series per message, record timestamp = its last point's) is produced first and
not timed as part of the job. Then, each as a user runs it (a subprocess, so imports count):
`train --from-kafka --since <days>d --init default` (reading + decoding, then training: the
phases from the model card) and `promote` of the candidate against the shipped model installed
as the serving one (re-reading the same slice, scoring both on the held-back tail).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks._common import REPO, add_common_args, embedded_broker, environment, print_table
from benchmarks._common import write_json as write_result


def history_messages(n_series: int, n_points: int, per_message: int, end: float, seed: int = 0):
    """(key, value, timestamp_ms) per message: `per_message` consecutive points of one series."""
    rng = np.random.default_rng(seed)
    ts = end - 60.0 * np.arange(n_points, 0, -1)
    day = 2 * np.pi * np.arange(n_points) / 1440.0
    for s in range(n_series):
        name = f"host-{s:05d}/cpu"
        values = (
            50
            + 10 * np.sin(day + rng.uniform(0, 2 * np.pi))
            + np.cumsum(rng.normal(0, 0.05, n_points))
            + rng.normal(0, 1.0, n_points)
        )
        key = name.encode()
        for i in range(0, n_points, per_message):
            body = [
                {"series": name, "ts": float(t), "value": round(float(v), 3)}
                for t, v in zip(ts[i : i + per_message], values[i : i + per_message], strict=True)
            ]
            yield key, orjson.dumps(body), int(ts[min(i + per_message, n_points) - 1] * 1000)


def produce_history(bootstrap: str, args: argparse.Namespace, end: float) -> tuple[int, float]:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1024 * 1024, acks=1,
        max_request_size=16 * 1024 * 1024, compression_type=None,
    )  # fmt: skip
    n_points = int(args.days * 1440)
    started, messages = time.perf_counter(), 0
    try:
        for key, value, ts_ms in history_messages(args.series, n_points, args.points_per_message,
                                                  end):  # fmt: skip
            producer.send("tsguard.metrics", key=key, value=value, timestamp_ms=ts_ms)
            messages += 1
        producer.flush()
    finally:
        producer.close()
    return messages, time.perf_counter() - started


def run(cmd: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stream.cli", *cmd], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    took = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{cmd[0]} failed with exit {proc.returncode}")
    return proc.returncode, took, proc.stdout


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--days", type=float, default=7.0, help="days of 1-minute points per series")
    p.add_argument("--points-per-message", type=int, default=60)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--stride", type=int, default=4, help="train --stride")
    p.add_argument("--partitions", type=int, default=4)
    add_common_args(p, "retrain", threads=2)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tsguard-retrain-") as tmp, \
            embedded_broker(args.partitions) as bootstrap:  # fmt: skip
        end = time.time()
        messages, produce_s = produce_history(bootstrap, args, end)
        since = f"{args.days * 86400 + 120:.0f}"  # every produced point, a little margin
        candidate, serving = Path(tmp) / "candidate", Path(tmp) / "current"
        rc, train_s, _ = run(["train", "--from-kafka", "--bootstrap", bootstrap, "--since",
                              since, "--init", "default", "--epochs", str(args.epochs),
                              "--stride", str(args.stride), "--threads", str(args.threads),
                              "--device", "cpu", "--version", "retrain-bench",
                              "--out", str(candidate)])  # fmt: skip
        run(["promote", "default", "--serving", str(serving), "--report", str(Path(tmp) / "r0")])
        rc, promote_s, out = run(["promote", str(candidate), "--serving", str(serving),
                                  "--bootstrap", bootstrap])  # fmt: skip
        card = json.loads((candidate / "report.json").read_text())
        report = json.loads((candidate / "promotion" / "promotion.json").read_text())
    history = card["data"]["real"]["history"]
    held = report["metrics"]["held_back"]
    row = {
        "series": args.series,
        "points": history["points"],
        "messages": messages,
        "produce_s": round(produce_s, 1),
        "train_total_s": round(train_s, 1),
        "read_s": history["seconds"],
        "fit_s": card["seconds"],
        "windows": card["data"]["train_windows"],
        "epochs": card["epochs_run"],
        "promote_s": round(promote_s, 1),
        "nll_candidate": round(held["candidate"]["nll"], 4),
        "nll_shipped": round(held["serving"]["nll"], 4),
        "decision": report["decision"],
    }
    print_table([row], list(row), f"retrain from Kafka (load {os.getloadavg()[0]:.1f})")
    result = {
        "config": vars(args) | {"out": str(args.out)},
        "result": row,
        "promotion": {"checks": report["checks"], "disagreements": report["disagreements"][:5]},
        "environment": environment(),
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
