"""Every benchmark, one after the other at the sizes the README quotes, then every table.

    python -m benchmarks.run_all            # final sizes: ~13 min on a 2-core machine
    python -m benchmarks.run_all --quick    # tiny sizes, a smoke check (~1-2 min)
    python -m benchmarks.run_all --only ingest,latency

Each benchmark runs in its own process (no torch threads or imports carried from one to the
next) and writes its JSON to --results (default benchmarks/results; with --quick
benchmarks/results/quick, which git ignores, so a smoke check never overwrites real numbers).
The time each part took is printed at the end and kept in <results>/run_all.json, then
benchmarks.report prints every table (Markdown, for benchmarks/README.md).

The logs part needs the loghub samples in ../shared/data/loghub; without them it is skipped
with the reason printed. A part that fails is reported and the others still run; the exit code
is then 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import REPO, RESULTS, environment, print_table, write_json

# name -> (module, final-size arguments, --quick arguments, result file)
PARTS: dict[str, tuple[str, str, str, str]] = {
    "ingest": (
        "benchmarks.ingest_bench",
        "--points 200000 --series 200 --strides 1,16 --torch-threads 0,2",
        "--points 2000 --series 4 --strides 1,16 --repeats 1",
        "ingest.json",
    ),
    "scoring": (
        "benchmarks.scoring_bench",
        "--batches 1,2,4,8,16,32,64,128,256,512,1024,2048,4096 --points 100000 --series 200",
        "--batches 1,16 --seconds 0.05 --points 2000 --series 4",
        "scoring.json",
    ),
    "latency": (
        "benchmarks.latency_bench",
        "--rates 1000,5000 --max-wait-ms 5,50 --fetch-max-wait-ms 10,500 --series 500 "
        "--anomaly-every 0.1 --duration 20",
        "--rates 200 --max-wait-ms 20 --series 4 --duration 2 --anomaly-every 0.5 "
        "--history 280 --drain 20 --settle 1",
        "latency.json",
    ),
    # The optional librdkafka client (serve --kafka-client confluent), beside the default one.
    "ingest_confluent": (
        "benchmarks.ingest_bench",
        "--points 200000 --series 200 --strides 1,16 --kafka-clients confluent",
        "--points 2000 --series 4 --strides 16 --repeats 1 --kafka-clients confluent",
        "ingest_confluent.json",
    ),
    "latency_confluent": (
        "benchmarks.latency_bench",
        "--rates 1000,5000 --max-wait-ms 5,50 --fetch-max-wait-ms 10 --series 500 "
        "--anomaly-every 0.1 --duration 20 --kafka-client confluent --no-floor",
        "--rates 200 --max-wait-ms 20 --series 4 --duration 2 --anomaly-every 0.5 "
        "--history 280 --drain 20 --settle 1 --kafka-client confluent --no-floor",
        "latency_confluent.json",
    ),
    "memory": (
        "benchmarks.memory_bench",
        "--counts 10000,100000,1000000 --stream 1000000 --caps 10000,100000",
        "--counts 300 --stream 2000 --caps 500 --samples 2",
        "memory.json",
    ),
    "logs": ("benchmarks.logs_bench", "", "--skip-throughput", "logs_bench.json"),
}


def skip_reason(name: str) -> str | None:
    if name == "logs":
        from benchmarks.logs_bench import LOGHUB

        if not LOGHUB.is_dir():
            return f"no loghub data at {LOGHUB} (the log benchmark reads the loghub samples)"
    return None


def run_part(name: str, results: Path, quick: bool, timeout_s: float) -> dict:
    module, full, small, file = PARTS[name]
    reason = skip_reason(name)
    if reason:
        print(f"\n=== {name}: skipped: {reason}", flush=True)
        return {"part": name, "status": "skipped", "reason": reason, "seconds": 0.0}
    sizes = (small if quick else full).split()
    cmd = [sys.executable, "-m", module, *sizes, "--out", str(results / file)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=REPO, timeout=timeout_s).returncode
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:  # run() has killed it
        status = f"timed out after {timeout_s:.0f} s"
    seconds = time.perf_counter() - t
    print(f"=== {name}: {status} in {seconds:.0f} s", flush=True)
    return {"part": name, "status": status, "seconds": seconds, "command": cmd[1:],
            "loadavg_1m_before": load, "loadavg_1m_after": os.getloadavg()[0]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(PARTS),
        help=f"comma list of parts (default all: {','.join(PARTS)})",
    )
    p.add_argument("--results", type=Path, default=None, help="where the JSON files go")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per part")
    args = p.parse_args(argv)
    unknown = set(args.only) - set(PARTS)
    if unknown:
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    timeout_s = args.timeout or (600.0 if args.quick else 3600.0)

    t = time.perf_counter()
    parts = [run_part(name, results, args.quick, timeout_s) for name in args.only]
    total = time.perf_counter() - t
    summary = {"benchmark": "run_all", "quick": args.quick, "parts": parts, "total_s": total,
               "environment": environment()}  # fmt: skip
    write_json(results / "run_all.json", summary)

    from benchmarks import report

    print()
    report.main(["--results", str(results)])
    print_table(
        [{"part": r["part"], "status": r["status"], "seconds": r["seconds"],
          "load before": r.get("loadavg_1m_before"), "load after": r.get("loadavg_1m_after")}
         for r in parts] + [{"part": "total", "seconds": total}],
        ["part", "status", "seconds", "load before", "load after"],
        title=f"run_all{' --quick' if args.quick else ''}: time per part (results in {results})",
    )  # fmt: skip
    return 0 if all(r["status"] in ("ok", "skipped") for r in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
