"""Ingest: `tsguard serve --stop-at-end` against the limit of its Kafka client, in one run.

N points are pre-produced to a fresh embedded broker (one JSON point per message, keyed by
series). Then, on the same data:

1. limit: a bare kafka-python consumer (all partitions assigned, from the beginning, the same fetch
   settings as tsguard's consumer) that only reads and orjson-decodes each value, until N are read;
2. serve: `tsguard serve --stop-at-end` as a subprocess (what a user runs), timed from start to
   exit, with the startup (model load, group join) read off its log and reported separately;
3. in-process: the same pipeline built in this process (`build_service` + `Pipeline.run`), so the
   model time (tsguard_scoring_seconds sum) is exact: framework overhead = (pipeline time - model
   time) / model time. `--profile` adds a cProfile of this run.

Each of 2 and 3 runs once per `--strides` value and per `--torch-threads` value (serve's own
`--torch-threads`; default: serve's default, half the cores, at most 4), and per
`--kafka-clients` value (serve's `--kafka-client`). For the optional librdkafka client the limit
is measured the same way with a bare librdkafka consumer; every ratio is against the limit of
kafka-python, the default client the target names, and also against the run's own client.

    python -m benchmarks.ingest_bench --points 200000 --series 200 --strides 1,16
    python -m benchmarks.ingest_bench --torch-threads 1,2   # the model/Kafka-client trade-off
    python -m benchmarks.ingest_bench --kafka-clients kafka-python,confluent

Prints a table and writes JSON (--out). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import threading
import time
import uuid

import orjson

from benchmarks._common import (
    Scraper,
    ServeProcess,
    add_common_args,
    add_session_timeout_arg,
    embedded_broker,
    encoded_points,
    environment,
    print_table,
    produce,
    serve_command,
    write_json,
)

TOPIC = "tsguard.metrics"


def bare_consume(bootstrap: str, n: int, timeout_s: float = 600.0) -> dict:
    """The limit for this client: read and JSON-decode n messages, nothing else."""
    from kafka import KafkaConsumer, TopicPartition

    from stream.settings import Settings

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,  # the same fetch settings as stream.kafka_io.consumer_kwargs
        fetch_max_wait_ms=Settings().fetch_max_wait_ms,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=2_000_000,
    )
    try:
        parts = consumer.partitions_for_topic(TOPIC) or set()
        tps = [TopicPartition(TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return _read_and_decode(
            lambda: [r.value for rs in consumer.poll(timeout_ms=500).values() for r in rs],
            n,
            timeout_s,
        )
    finally:
        consumer.close()


def bare_consume_confluent(bootstrap: str, n: int, timeout_s: float = 600.0) -> dict:
    """The limit for the librdkafka client: read and JSON-decode n messages, nothing else."""
    import confluent_kafka as ck

    from stream.confluent_io import fetch_config, take
    from stream.settings import Settings

    consumer = ck.Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",  # required; never joined (assign only)
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 2_000_000,
        **fetch_config(Settings().fetch_max_wait_ms),  # as serve's consumer
    })  # fmt: skip
    try:
        parts = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        consumer.assign([ck.TopicPartition(TOPIC, p, ck.OFFSET_BEGINNING) for p in sorted(parts)])
        return _read_and_decode(lambda: [m.value() for m in take(consumer, 0.5)], n, timeout_s)
    finally:
        consumer.close()


def _read_and_decode(next_values, n: int, timeout_s: float) -> dict:
    """Time reading n message values (next_values() returns the next batch) + orjson.loads."""
    got = 0
    decoded_points = 0
    t = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while got < n and time.monotonic() < deadline:
        values = next_values()
        for value in values:
            obj = orjson.loads(value)
            decoded_points += 1 if isinstance(obj, dict) else len(obj)
        got += len(values)
    seconds = time.perf_counter() - t
    return {
        "messages": got,
        "points": decoded_points,
        "seconds": seconds,
        "points_per_s": got / seconds,
    }


LIMIT_READERS = {"kafka-python": bare_consume, "confluent": bare_consume_confluent}


def serve_run(
    bootstrap: str, n: int, client: str, stride: int, threads: int, args: argparse.Namespace
) -> dict:
    """`tsguard serve --stop-at-end` as a user runs it; phases from its log lines."""
    from stream.broker import free_port

    port = free_port()
    extra = ["--stop-at-end", "--stride", str(stride), "--max-batch", str(args.max_batch)]
    if args.model:
        extra += ["--model", args.model]
    extra += ["--device", args.device, "--torch-threads", str(threads), "--kafka-client", client]
    cmd = serve_command(bootstrap, port, *extra, session_timeout_ms=args.session_timeout_ms)
    with ServeProcess(cmd, echo=args.verbose) as proc, Scraper(port) as scraper:
        rc = proc.wait(timeout_s=args.timeout)
        final = scraper.latest
    if rc != 0:
        raise RuntimeError(f"serve exited {rc}:\n{proc.tail()}")
    start, end = proc.started, proc.exited
    assert end is not None
    model = proc.first(r"model .* on ")
    serving = proc.first(r"serving .* \(group")
    assigned = proc.first(r"assigned \[")
    targets = proc.first(r"stop-at-end targets")  # recorded before the join
    reached = proc.first(r"reached the end")
    flushed = proc.first(r"final checkpoint")
    processing = end - (assigned or start)
    out = {
        "kafka_client": client,
        "stride": stride,
        "torch_threads": threads,
        "exit_code": rc,
        "wall_s": end - start,
        "startup_s": (assigned or start) - start,
        "model_loaded_s": (model - start) if model else None,
        "group_join_s": (assigned - model) if assigned and model else None,
        "end_offset_probe_s": (targets - serving) if targets and serving else None,
        "drain_and_close_s": (end - reached) if reached else None,
        "processing_s": processing,
        "points_per_s_wall": n / (end - start),
        "points_per_s": n / processing,
        # Steady: from the assignment (the end offsets are known before it) to the last outputs
        # flushed, as the bare consumer is timed from its first poll to its last record.
        "steady_s": (flushed - assigned) if flushed and assigned else None,
        "points_per_s_steady": n / (flushed - assigned) if flushed and assigned else None,
        "last_scrape_before_exit_s": (end - scraper.latest_at) if final else None,
        "windows_scored_at_last_scrape": final.get("tsguard_windows_scored_total"),
        "scoring_seconds_sum_at_last_scrape": final.get("tsguard_scoring_seconds_sum"),
    }
    return out


def inprocess_run(
    bootstrap: str, client: str, stride: int, threads: int, args: argparse.Namespace
) -> dict:
    """The same pipeline in this process: exact model time from the metrics registry."""
    from stream.commands import build_service
    from stream.settings import Settings

    settings = Settings(
        bootstrap=bootstrap,
        group_id=f"bench-inproc-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=args.session_timeout_ms,
        device=args.device,
        torch_threads=threads,  # build_service sets torch's threads from this
        stride=stride,
        max_batch=args.max_batch,
        model_dir=args.model,
        stop_at_end=True,
        kafka_client=client,
    )
    t_build = time.perf_counter()
    pipeline, metrics = build_service(settings)
    build_s = time.perf_counter() - t_build
    assigned_at: list[float] = []

    def watch() -> None:
        while not pipeline.assigned and not pipeline.stop_event.is_set():
            time.sleep(0.001)
        assigned_at.append(time.perf_counter())

    watcher = threading.Thread(target=watch, daemon=True)
    probe_log = _LogTimes("stream.pipeline", "stream.end_of_input")
    profiler = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    watcher.start()
    try:
        if profiler:
            profiler.enable()
        pipeline.run()
    finally:
        if profiler:
            profiler.disable()
        pipeline.stop()
        probe_log.close()
    end = time.perf_counter()
    watcher.join(timeout=1)
    start = assigned_at[0] if assigned_at else t
    sample = metrics.registry.get_sample_value
    model_s = sample("tsguard_scoring_seconds_sum") or 0.0
    batches = sample("tsguard_scoring_seconds_count") or 0.0
    windows = sample("tsguard_windows_scored_total") or 0.0
    points = sample("tsguard_points_total") or 0.0
    pipeline_s = end - start
    targets = probe_log.first("stop-at-end targets")
    probe_s = (targets - t) if targets else 0.0  # recorded before the join
    flushed = probe_log.first("final checkpoint")
    steady_s = (flushed or end) - start
    out = {
        "kafka_client": client,
        "stride": stride,
        "torch_threads": threads,
        "build_s": build_s,
        "group_join_s": start - t,
        "pipeline_s": pipeline_s,
        "points": points,
        "points_per_s": points / pipeline_s,
        "windows_scored": windows,
        "windows_per_s": windows / pipeline_s,
        "scoring_batches": batches,
        "mean_batch": windows / batches if batches else 0.0,
        "model_s": model_s,
        "model_windows_per_s": windows / model_s if model_s else None,
        "framework_overhead": (pipeline_s - model_s) / model_s if model_s else None,
        "end_offset_probe_s": probe_s,
        "steady_s": steady_s,
        "points_per_s_steady": points / steady_s,
        "framework_overhead_steady": (steady_s - model_s) / model_s if model_s else None,
    }
    if profiler:
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).sort_stats("tottime")
        stats.print_stats(25)
        prof_path = args.out.with_suffix(f".{client}.stride{stride}.threads{threads}.prof")
        prof_path.parent.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(prof_path)
        out["profile_top_tottime"] = buf.getvalue()
        out["profile_file"] = str(prof_path)
    return out


class _LogTimes(logging.Handler):
    """perf_counter time of each record logged by the named loggers (INFO and up) while
    attached."""

    def __init__(self, *names: str):
        super().__init__(logging.INFO)
        self.times: list[tuple[float, str]] = []
        self.loggers = [logging.getLogger(name) for name in names]
        self.saved_levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.INFO)
            logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append((time.perf_counter(), record.getMessage()))

    def first(self, text: str) -> float | None:
        return next((t for t, msg in self.times if text in msg), None)

    def close(self) -> None:
        for logger, level in zip(self.loggers, self.saved_levels, strict=True):
            logger.removeHandler(self)
            logger.setLevel(level)
        super().close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=200_000, help="N points pre-produced")
    p.add_argument("--series", type=int, default=200, help="distinct series (round-robin)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--strides",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="serve --stride values to run (1 = every point scored in its own window; 16 = the "
        "default model's horizon: one forward pass scores 16 new points)",
    )
    p.add_argument(
        "--kafka-clients",
        type=lambda s: s.split(","),
        default=["kafka-python"],
        help="serve --kafka-client values to run: kafka-python (the default), confluent",
    )
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=2, help="bare-consumer repeats (best = limit)")
    p.add_argument("--no-serve", action="store_true", help="skip the serve subprocess runs")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process runs")
    p.add_argument("--profile", action="store_true", help="cProfile the in-process runs")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    p.add_argument("--verbose", action="store_true", help="echo serve's log")
    add_session_timeout_arg(p)
    add_common_args(p, "ingest", threads=None, sweep=True)
    args = p.parse_args(argv)

    n = args.points
    messages = encoded_points(n, args.series)
    result: dict = {"benchmark": "ingest", "config": vars(args) | {"out": str(args.out)}}
    with embedded_broker(args.partitions) as bootstrap:
        produce_s = produce(bootstrap, TOPIC, messages)
        del messages
        result["produce"] = {"seconds": produce_s, "points_per_s": n / produce_s}
        result["limit_runs"] = [bare_consume(bootstrap, n) for _ in range(args.repeats)]
        limit = max(r["points_per_s"] for r in result["limit_runs"])
        result["limit_points_per_s"] = limit
        limits = {"kafka-python": limit}
        for client in args.kafka_clients:
            if client not in limits:
                runs = [LIMIT_READERS[client](bootstrap, n) for _ in range(args.repeats)]
                result.setdefault("client_limit_runs", {})[client] = runs
                limits[client] = max(r["points_per_s"] for r in runs)
        result["client_limits_points_per_s"] = limits
        runs = [(c, k, t) for c in args.kafka_clients for k in args.strides for t in args.threads]
        if not args.no_serve:
            result["serve"] = [serve_run(bootstrap, n, c, k, t, args) for c, k, t in runs]
        if not args.no_inprocess:
            result["inprocess"] = [inprocess_run(bootstrap, c, k, t, args) for c, k, t in runs]
    result["environment"] = environment()

    rows = [{"run": f"limit: {client} read + orjson.loads", "points/s": lim,
             "ratio": lim / limit} for client, lim in limits.items()]  # fmt: skip
    for s in result.get("serve", []):
        own = limits[s["kafka_client"]]
        s["ratio_to_limit"] = s["points_per_s"] / limit
        s["ratio_to_limit_wall"] = s["points_per_s_wall"] / limit
        steady = s["points_per_s_steady"]
        s["ratio_to_limit_steady"] = steady / limit if steady else None
        s["ratio_to_own_client_limit_steady"] = steady / own if steady else None
        rows.append({"run": "serve", "client": s["kafka_client"], "stride": s["stride"],
                     "threads": s["torch_threads"],
                     "points/s": s["points_per_s"], "ratio": s["ratio_to_limit"],
                     "steady": steady, "ratio steady": s["ratio_to_limit_steady"],
                     "own client": s["ratio_to_own_client_limit_steady"],
                     "start-exit": s["points_per_s_wall"],
                     "windows/s": s["windows_scored_at_last_scrape"] / s["processing_s"]
                     if s["windows_scored_at_last_scrape"] else None})  # fmt: skip
    for ip in result.get("inprocess", []):
        own = limits[ip["kafka_client"]]
        ip["ratio_to_limit"] = ip["points_per_s"] / limit
        ip["ratio_to_limit_steady"] = ip["points_per_s_steady"] / limit
        ip["ratio_to_own_client_limit_steady"] = ip["points_per_s_steady"] / own
        rows.append({"run": "in-process", "client": ip["kafka_client"], "stride": ip["stride"],
                     "threads": ip["torch_threads"],
                     "points/s": ip["points_per_s"], "ratio": ip["ratio_to_limit"],
                     "steady": ip["points_per_s_steady"],
                     "ratio steady": ip["ratio_to_limit_steady"],
                     "own client": ip["ratio_to_own_client_limit_steady"],
                     "windows/s": ip["windows_per_s"], "model s": ip["model_s"],
                     "overhead": ip["framework_overhead"],
                     "overhead steady": ip["framework_overhead_steady"]})  # fmt: skip
    print_table(
        rows,
        ["run", "client", "stride", "threads", "points/s", "ratio", "steady", "ratio steady",
         "own client", "start-exit", "windows/s", "model s", "overhead", "overhead steady"],
        title=f"ingest: {n:,} points, {args.series} series; points/s from the group join to exit, "
        f"steady: from the end offsets known to the last outputs flushed (load avg "
        f"{result['environment']['loadavg']['1m']:.2f})",
    )  # fmt: skip
    for s in result.get("serve", []):
        print(
            f"serve [{s['kafka_client']}, stride {s['stride']}, {s['torch_threads']} threads] "
            f"phases (s): model load "
            f"{_f(s['model_loaded_s'])}, group join "
            f"{_f(s['group_join_s'])}, end-offset probe {_f(s['end_offset_probe_s'])}, "
            f"drain+close {_f(s['drain_and_close_s'])}"
        )
    if args.profile:
        for ip in result.get("inprocess", []):
            print(f"[{ip['kafka_client']}, stride {ip['stride']}, {ip['torch_threads']} threads]",
                  ip["profile_top_tottime"])  # fmt: skip
    write_json(args.out, result)
    return result


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
