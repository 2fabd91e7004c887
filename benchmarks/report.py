"""Markdown tables from the benchmarks' JSON results, with the issue's targets next to them, for
benchmarks/README.md after a (quiet) run:

    python -m benchmarks.report [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import orjson

from benchmarks._common import RESULTS


def _f(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _load(path: Path) -> dict | None:
    return orjson.loads(path.read_bytes()) if path.is_file() else None


def _env(d: dict) -> str:
    e = d["environment"]
    return f"{e['when']}, {e['host_cpus']} CPUs ({e['cpu']}), load avg {e['loadavg']['1m']:.2f}"


def ingest(d: dict) -> str:
    limit = d["limit_points_per_s"]
    rows = [["bare kafka-python consumer + orjson.loads (limit)", "-", _f(limit), "1.00", "-",
             "-", "-"]]  # fmt: skip
    for s in d.get("serve", []):
        rows.append([f"`tsguard serve --stop-at-end` [{s['variant']}]", str(s["stride"]),
                     _f(s["points_per_s"]), _f(s["ratio_to_limit"], 2),
                     _f(s.get("points_per_s_excl_probe")),
                     _f(s.get("ratio_to_limit_excl_probe"), 2), "-"])  # fmt: skip
    for ip in d.get("inprocess", []):
        rows.append([f"pipeline in-process [{ip['variant']}]", str(ip["stride"]),
                     _f(ip["points_per_s"]), _f(ip["ratio_to_limit"], 2),
                     _f(ip["points_per_s_excl_probe"]), _f(ip["ratio_to_limit_excl_probe"], 2),
                     _f(ip["framework_overhead_excl_probe"], 2)])  # fmt: skip
    head = ["run", "stride", "points/s", "ratio", "points/s excl. end probe", "ratio excl.",
            "overhead excl. probe"]  # fmt: skip
    n = d["config"]["points"]
    return f"{n:,} points, {d['config']['series']} series; {_env(d)}\n\n" + _table(head, rows)


def scoring(d: dict) -> str:
    m = d["model"]
    rows = [[str(r["batch"]), _f(r["ms_per_batch"], 2), _f(r["windows_per_s"])]
            for r in d["model_alone"]]  # fmt: skip
    out = f"model {m['version']} on {m['device']}; {_env(d)}\n\n"
    out += _table(["batch", "ms/batch", "windows/s"], rows)
    if d.get("pipeline"):
        rows = [[r["handle"], _f(r["points_per_s"]), _f(r["windows_per_s"]),
                 _f(r["model_windows_per_s"]), _f(r["mean_batch"]),
                 _f(r["decode_and_window_s"], 2), _f(r["after_model_s"], 2),
                 _f(r["framework_overhead"], 2)] for r in d["pipeline"]]  # fmt: skip
        out += "\n\nPipeline in-process (no Kafka), same model:\n\n" + _table(
            ["head", "points/s", "windows/s", "model windows/s", "mean batch",
             "decode+window s", "after-model s", "overhead"], rows)  # fmt: skip
    return out


def latency(d: dict) -> str:
    rows = [[r["variant"], _f(r["max_wait_ms"]), _f(r["rate"]), _f(r["achieved"]),
             str(r["events"]), _f(r["publish_p50_ms"], 1), _f(r["publish_p99_ms"], 1),
             _f(r["e2e_p50_ms"], 1), _f(r["e2e_p99_ms"], 1), str(r["kept_up"])]
            for r in d["runs"]]  # fmt: skip
    out = f"{d['config']['series']} series, stride {d['config']['stride']}; {_env(d)}\n\n"
    out += _table(["serve", "max-wait ms", "rate", "achieved", "events", "publish p50 ms",
                   "publish p99 ms", "e2e p50 ms", "e2e p99 ms", "kept up"], rows)  # fmt: skip
    if d.get("floor"):
        rows = [[_f(r["rate"]), str(r["fetch_max_wait_ms"]), _f(r["p50_ms"], 1),
                 _f(r["p99_ms"], 1)] for r in d["floor"]]  # fmt: skip
        out += "\n\nFloor (bare consumer, no tsguard):\n\n" + _table(
            ["rate", "fetch.max.wait.ms", "p50 ms", "p99 ms"], rows
        )
    return out


def memory(d: dict) -> str:
    rows = [[_f(float(r["series"])), _f(r["bytes_per_series_fresh"]),
             _f(r["bytes_per_series_warm"]), str(r["window_bytes"]),
             _f(r["bytes_per_series_warm"] - r["window_bytes"])]
            for r in d["per_series"]]  # fmt: skip
    out = f"{_env(d)}\n\n" + _table(
        ["series", "bytes/series", "bytes/series (warm calibrators)", "window bytes",
         "beyond the window (warm)"], rows)  # fmt: skip
    for c in d.get("caps", []):
        curve = c["curve"]
        out += (f"\n\n`--max-series {c['cap']:,}`: {c['series_streamed']:,} distinct series "
                f"streamed; RSS {curve[0]['rss'] / 2**20:.0f} MiB after "
                f"{curve[0]['series_seen']:,}, {curve[-1]['rss'] / 2**20:.0f} MiB at the end "
                f"(growth after 2x the cap: {c['rss_growth_after_2x_cap']} bytes), "
                f"{c['evicted']:,} evicted")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for name, fn in (("ingest", ingest), ("scoring", scoring), ("latency", latency),
                     ("memory", memory)):  # fmt: skip
        d = _load(args.results / f"{name}.json")
        if d is not None:
            print(f"### {name}\n\n{fn(d)}\n")


if __name__ == "__main__":
    main()
