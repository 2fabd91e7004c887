"""Latency: end-to-end p50/p99 from producing a point to its anomaly event being published, at
fixed produce rates, for each `--max-wait-ms` (the batching trade-off) and `--fetch-max-wait-ms`
(how long the broker may hold an empty fetch) of `tsguard serve`.

Per setting (each max-wait with each fetch-wait): a fresh embedded broker and `tsguard serve`
(subprocess). Every series is first given a history (window + calibration warm-up) and serve is
waited for until it has read it. Then, per rate, a producer sends points round-robin over the
series at that fixed rate for --duration seconds, with a spike injected into one series every
--anomaly-every seconds. A point's `ts` is the wall-clock time it was sent, and an anomaly event
carries the `ts` of the point that triggered it, so each event maps back to its send time:

- end-to-end = time this benchmark consumed the event - send time of the triggering point;
- publish    = the event's Kafka timestamp (set by serve's producer) - send time;
- serve CPU  = serve's process CPU time (every thread) from the first point sent to the last one
  read, per point and per second (cores): what the rate costs, without the noise of the
  latency percentiles.

The floor: a bare consumer (no group, no tsguard; in its own process, as serve is) reading the
same stream *beside serve*, at serve's fetch wait, in the same seconds (floor beside: the consume
hop alone, under the same broker state and machine load; on this broker it swung between p99 ~45
and ~270 ms from one run to the next, so only a floor taken alongside says what serve adds); and
once more on its own, after the serve runs, at kafka-python's default fetch.max.wait.ms (500)
and at 10 ms (serve's default).

    python -m benchmarks.latency_bench --rates 1000,5000 --max-wait-ms 5,50 --duration 20
    python -m benchmarks.latency_bench --max-wait-ms 5,50 --fetch-max-wait-ms 10,500
    python -m benchmarks.latency_bench --kafka-client confluent   # serve and floors on librdkafka

Prints a table and writes JSON (--out). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import numpy as np
import orjson
import psutil

from benchmarks._common import (
    BackgroundLoop,
    ServeProcess,
    add_common_args,
    add_session_timeout_arg,
    embedded_broker,
    environment,
    percentiles,
    point_value,
    print_table,
    scrape,
    series_name,
    serve_command,
    write_json,
)

METRICS, ANOMALIES = "tsguard.metrics", "tsguard.anomalies"
SPIKE = 40.0  # ~80 noise sigmas above a calm seasonal value


class AnomalyListener(BackgroundLoop):
    """Reads tsguard.anomalies from its end in a thread; records (event, consumed-at)."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaConsumer, TopicPartition

        super().__init__()
        # A short fetch wait, so that this listener does not add latency of its own.
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        parts = self.consumer.partitions_for_topic(ANOMALIES) or {0}
        tps = [TopicPartition(ANOMALIES, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end(*tps)
        for tp in tps:
            self.consumer.position(tp)  # resolve "end" now, before anything is produced
        self.events: list[tuple[dict, float, float]] = []

    def once(self) -> None:
        for records in self.consumer.poll(timeout_ms=50).values():
            now = time.time()
            for r in records:
                self.events.append((orjson.loads(r.value), now, r.timestamp / 1000.0))

    def close(self) -> None:
        self.consumer.close()


class Feed:
    """The metric stream: calm seasonal series, each point's ts = its send time.

    Sent with librdkafka (confluent-kafka), not kafka-python: the feed shares the machine with
    the service it measures, and librdkafka's producer takes a fraction of kafka-python's CPU
    (benchmarks/README.md, latency). Producers run on other machines in a deployment; what the
    feed takes here is taken from the service under test.
    """

    def __init__(self, bootstrap: str, n_series: int, seed: int = 0):
        from confluent_kafka import Producer

        # linger 5 ms, as a metrics shipper batches (and as the previous kafka-python feed did:
        # with 1 ms its own request rate dominated the floor).
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})
        self.names = [series_name(i) for i in range(n_series)]
        self.keys = [n.encode() for n in self.names]
        self.step = [0] * n_series
        self.rng = np.random.default_rng(seed)
        self.next = 0
        # Spikes go to series 0, 7, 14, ... (mod n, so every series once before any twice), and
        # the cycle carries on across runs: after a spike a series' calibrator holds it in its
        # tail for on the order of a thousand points, so a second spike soon after may not
        # open an episode (spikes found would then measure the calibrator, not latency).
        self.spike_series = 0
        self.spiked = 0

    def send(self, s: int, ts: float, spike: bool = False) -> None:
        value = point_value(s, self.step[s], self.rng) + (SPIKE if spike else 0.0)
        self.step[s] += 1
        body = {"series": self.names[s], "ts": ts, "value": round(value, 4)}
        self.producer.produce(METRICS, key=self.keys[s], value=orjson.dumps(body))

    def history(self, points_per_series: int) -> int:
        """Calm past points (1 s apart, ending 1 s ago) so every series is scored from the start."""
        now = time.time()
        n = len(self.names)
        for k in range(points_per_series):
            ts = now - (points_per_series - k)
            for s in range(n):
                self.send(s, ts)
            self.producer.poll(0)  # serve delivery reports, so the local queue never fills
        self._flush()
        return points_per_series * n

    def run(self, rate: float, duration: float, anomaly_every: float) -> dict:
        """Send at `rate` points/s for `duration` s; returns {(series, ts): sent-at} and stats."""
        n = len(self.names)
        sent: dict[tuple[str, float], float] = {}
        spikes: set[tuple[str, float]] = set()
        start = time.perf_counter()
        wall0 = time.time() - start
        count = 0
        next_spike = anomaly_every
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= duration:
                break
            due = int(rate * elapsed) - count
            for _ in range(max(0, due)):
                s = self.next
                self.next = (self.next + 1) % n
                spike = False
                if elapsed >= next_spike and s == self.spike_series:
                    spike, next_spike = True, next_spike + anomaly_every
                    self.spike_series = (self.spike_series + 7) % n
                    self.spiked += 1
                ts = wall0 + time.perf_counter()
                self.send(s, ts, spike)
                sent[(self.names[s], ts)] = ts
                if spike:
                    spikes.add((self.names[s], ts))
                count += 1
            self.producer.poll(0)
            time.sleep(0.001)
        self._flush()
        took = time.perf_counter() - start
        return {"sent": sent, "spikes": spikes, "count": count, "seconds": took}

    def _flush(self) -> None:
        if self.producer.flush(60) > 0:
            raise RuntimeError("the feed could not deliver every point within 60 s")

    def close(self) -> None:
        self.producer.flush(10)


def _floor_reader(
    bootstrap: str, partitions: int, fetch_wait: int, client: str, ready, stop, out
) -> None:
    """In its own process: a bare consumer from the end of the metrics topic; puts the
    produce -> consume latency of every point sent after it started on `out` when `stop` is set.

    Points sent before are left out: the embedded broker reports the end of a partition as the
    base offset of its last record batch (see stream.clients.end_offsets), so "the end" still
    holds the last batch of what came before, whose age would swamp the latency.

    `client`: kafka-python, or confluent (a bare librdkafka consumer, the floor for serve's
    `--kafka-client confluent`)."""
    if client == "confluent":
        import confluent_kafka as ck

        from stream.confluent_io import fetch_config, take

        consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "floor-reader",
                                **fetch_config(fetch_wait)})  # fmt: skip
        consumer.assign([ck.TopicPartition(METRICS, p, ck.OFFSET_END) for p in range(partitions)])

        def values():
            return [m.value() for m in take(consumer, 0.05) if m.error() is None]
    else:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                 fetch_max_wait_ms=fetch_wait)  # fmt: skip
        tps = [TopicPartition(METRICS, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)

        def values():
            return [r.value for records in consumer.poll(timeout_ms=50).values() for r in records]

    started = time.time()
    ready.set()
    lat: list[float] = []
    try:
        while not stop.is_set():
            batch = values()
            now = time.time()
            sent = (orjson.loads(v)["ts"] for v in batch)
            lat.extend(now - ts for ts in sent if ts >= started)
    finally:
        consumer.close()
        out.put(lat)


class FloorReader:
    """A bare consumer reading the metrics topic from its end in a process of its own (see
    _floor_reader), for a `with` block: `percentiles_ms()` after the block."""

    def __init__(self, bootstrap: str, partitions: int, fetch_wait: int, client: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process with client threads
        self.ready, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.process = ctx.Process(target=_floor_reader, args=(
            bootstrap, partitions, fetch_wait, client, self.ready, self.stop, self.out))  # fmt: skip
        self.latencies: list[float] | None = None

    def __enter__(self) -> FloorReader:
        self.process.start()
        if not self.ready.wait(60):
            self._end()  # nothing to collect: it never started reading
            raise RuntimeError("the floor's consumer did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        try:
            if exc[0] is None:
                self.latencies = self.out.get(timeout=60)  # before join: the queue holds it
        finally:
            self._end()

    def _end(self) -> None:
        self.stop.set()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()

    def percentiles_ms(self) -> dict:
        return percentiles(np.asarray(self.latencies or []) * 1000)


def consumer_floor(args: argparse.Namespace) -> list[dict]:
    """What the broker and client alone cost: a bare consumer (no group), in a process of its own
    as serve is, reading points produced at each rate, at kafka-python's default
    fetch.max.wait.ms (500) and at 10 ms (serve's default)."""
    rows = []
    with embedded_broker(args.partitions) as bootstrap:
        feed = Feed(bootstrap, args.series)
        try:
            for rate in args.rates:
                for fetch_wait in (500, 10):
                    with FloorReader(bootstrap, args.partitions, fetch_wait,
                                     args.kafka_client) as reader:  # fmt: skip
                        feed.run(rate, min(args.duration, 10.0), anomaly_every=math.inf)
                        time.sleep(min(1.0, args.settle))
                    q = reader.percentiles_ms()
                    rows.append({"rate": rate, "fetch_max_wait_ms": fetch_wait, "points": q["n"],
                                 "p50_ms": q["p50"], "p99_ms": q["p99"], "max_ms": q["max"]})  # fmt: skip
        finally:
            feed.close()
    return rows


def wait_points(port: int, target: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    got = 0.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            got = scrape(port).get("tsguard_points_total", 0.0)
            if got >= target:
                return got
        time.sleep(0.25)
    return got


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    """Prometheus-style quantile of a scraped histogram (linear within the bucket)."""
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), v)
        for k, v in metrics.items()
        if k.startswith(name + "_bucket{")
    )
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return math.nan


def one_setting(max_wait: float, fetch_wait: int, args: argparse.Namespace) -> list[dict]:
    from stream.broker import free_port

    rows = []
    with embedded_broker(args.partitions) as bootstrap:
        port = free_port()
        extra = ["--max-wait-ms", str(max_wait), "--fetch-max-wait-ms", str(fetch_wait),
                 "--stride", str(args.stride), "--device", "cpu",
                 "--torch-threads", str(args.threads), "--kafka-client", args.kafka_client]  # fmt: skip
        cmd = serve_command(bootstrap, port, *extra, session_timeout_ms=args.session_timeout_ms)
        with ServeProcess(cmd, echo=args.verbose) as proc:
            proc.wait_for(r"assigned \[", timeout_s=120)
            serve_cpu = psutil.Process(proc.proc.pid)
            feed = Feed(bootstrap, args.series)
            try:
                history = feed.history(args.history)
                got = wait_points(port, history, timeout_s=args.warmup_timeout)
                if got < history:
                    raise RuntimeError(f"serve read {got} of {history} history points in time")
                for rate in args.rates:
                    before = scrape(port)
                    spiked_before = feed.spiked
                    beside = FloorReader(bootstrap, args.partitions, fetch_wait, args.kafka_client)
                    with AnomalyListener(bootstrap) as listener, beside:
                        cpu0 = sum(serve_cpu.cpu_times()[:2])  # user + system, every thread
                        run = feed.run(rate, args.duration, args.anomaly_every)
                        target = before.get("tsguard_points_total", 0.0) + run["count"]
                        caught_up = wait_points(port, target, timeout_s=args.drain)
                        cpu = sum(serve_cpu.cpu_times()[:2]) - cpu0
                        time.sleep(args.settle)  # last events in flight
                    after = scrape(port)
                    row = summarise(max_wait, rate, run, listener.events, before, after,
                                    caught_up >= target)  # fmt: skip
                    floor = beside.percentiles_ms()
                    row["floor_beside_p50_ms"] = floor["p50"]
                    row["floor_beside_p99_ms"] = floor["p99"]
                    row["serve_cores"] = cpu / run["seconds"]
                    row["serve_cpu_us_per_point"] = 1e6 * cpu / max(run["count"], 1)
                    # spikes on a series that had one earlier in this setting (see Feed)
                    row["spikes_repeated"] = max(0, feed.spiked - args.series) - max(
                        0, spiked_before - args.series
                    )
                    if row["spikes_repeated"]:
                        print(f"note: {row['spikes_repeated']} spikes hit a series spiked before "
                              "(more spikes than --series): some may not be found")  # fmt: skip
                    rows.append({"kafka_client": args.kafka_client, "fetch_max_wait_ms": fetch_wait,
                                 "torch_threads": args.threads, **row})  # fmt: skip
                    print_table(rows[-1:], COLUMNS)
            finally:
                feed.close()
    return rows


COLUMNS = ["max_wait_ms", "fetch_max_wait_ms", "rate", "achieved", "events", "spikes_found",
           "e2e_p50_ms", "e2e_p99_ms", "e2e_max_ms", "publish_p50_ms", "publish_p99_ms",
           "serve_e2e_p99_ms", "floor_beside_p50_ms", "floor_beside_p99_ms", "serve_cores",
           "serve_cpu_us_per_point", "kept_up"]  # fmt: skip


def summarise(max_wait, rate, run, events, before, after, kept_up) -> dict:
    sent = run["sent"]
    e2e, publish = [], []
    found = set()
    for ev, consumed_at, kafka_ts in events:
        key = (ev.get("series"), ev.get("ts"))
        t0 = sent.get(key)
        if t0 is None:
            continue  # from the history
        e2e.append(consumed_at - t0)
        publish.append(kafka_ts - t0)
        if ev.get("kind") == "start" and key in run["spikes"]:
            found.add(key)
    hist = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if "end_to_end" in k}
    e = percentiles(np.asarray(e2e) * 1000)
    p = percentiles(np.asarray(publish) * 1000)
    return {
        "max_wait_ms": max_wait,
        "rate": rate,
        "achieved": run["count"] / run["seconds"],
        "events": len(e2e),
        "spikes": len(run["spikes"]),
        "spikes_found": len(found),
        "e2e_p50_ms": e["p50"],
        "e2e_p90_ms": e["p90"],
        "e2e_p99_ms": e["p99"],
        "e2e_max_ms": e["max"],
        "publish_p50_ms": p["p50"],
        "publish_p99_ms": p["p99"],
        "serve_e2e_p50_ms": 1000 * histogram_quantile(hist, "tsguard_end_to_end_seconds", 0.5),
        "serve_e2e_p99_ms": 1000 * histogram_quantile(hist, "tsguard_end_to_end_seconds", 0.99),
        "kept_up": kept_up,
        "windows_scored": after.get("tsguard_windows_scored_total", 0.0)
        - before.get("tsguard_windows_scored_total", 0.0),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    nums = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--rates", type=nums, default=[1000.0, 5000.0], help="points/s, comma list")
    p.add_argument("--max-wait-ms", type=nums, default=[5.0, 50.0], help="serve settings to try")
    p.add_argument(
        "--fetch-max-wait-ms",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[10],
        help="serve --fetch-max-wait-ms settings to try (default 10, serve's default)",
    )
    # 2 rates x 20 s / 0.1 s = 400 spikes, each on its own series, so the p99 of a rate rests on
    # ~200 events rather than the ~40 that 100 series and a spike every 0.5 s gave.
    p.add_argument("--series", type=int, default=500)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    p.add_argument(
        "--anomaly-every",
        type=float,
        default=0.1,
        help="seconds between spikes (keep spikes per setting, all rates, <= --series)",
    )
    p.add_argument("--history", type=int, default=300, help="warm-up points per series")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument(
        "--kafka-client",
        default="kafka-python",
        choices=["kafka-python", "confluent"],
        help="serve's --kafka-client; the floor readers use the same client",
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--warmup-timeout", type=float, default=600.0)
    p.add_argument("--drain", type=float, default=30.0, help="max seconds to catch up per rate")
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait for the last events in flight"
    )
    p.add_argument("--no-floor", action="store_true", help="skip the bare-consumer floor")
    p.add_argument("--verbose", action="store_true", help="echo serve's log")
    add_session_timeout_arg(p)
    add_common_args(p, "latency", threads=None)
    args = p.parse_args(argv)

    result: dict = {"benchmark": "latency", "config": vars(args) | {"out": str(args.out)}}
    rows = []
    for fetch_wait in args.fetch_max_wait_ms:
        for w in args.max_wait_ms:
            rows.extend(one_setting(w, fetch_wait, args))
    result["runs"] = rows
    result["floor"] = [] if args.no_floor else consumer_floor(args)
    if result["floor"]:
        print_table(result["floor"], list(result["floor"][0]), title="broker + client floor: "
                    "a bare consumer's produce -> consume latency")  # fmt: skip
    result["environment"] = environment()
    print_table(
        rows,
        COLUMNS,
        title=f"end-to-end latency, {args.series} series, stride {args.stride}, "
        f"{args.threads} torch threads, {args.kafka_client} client "
        f"(load avg {result['environment']['loadavg']['1m']:.2f})",
    )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
