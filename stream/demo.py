"""`tsguard demo`: the whole service on one machine, watching a live stream with injected anomalies.

It runs the real parts: the embedded Kafka broker, the pipeline with the shipped model, the
metrics endpoint; a producer plays metric series (daily seasonality, trend and noise) into
`tsguard.metrics`, and a separate consumer prints what arrives on `tsguard.anomalies`.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from detector.messages import dumps
from stream.broker import EmbeddedBroker, free_port

log = logging.getLogger(__name__)

SERIES = [
    "web-01/cpu", "web-02/latency_ms", "db-01/connections", "cache-01/hit_ratio",
    "queue-01/depth", "edge-01/requests_per_s", "web-03/cpu", "db-02/iops",
]  # fmt: skip
HISTORY_POINTS = 500  # per series, replayed at start so windows and calibration are warm
STEP_S = 60.0  # the simulated series are 1-minute metrics, played faster than real time
FIRST_INJECTION_S = 8.0
INJECTION_EVERY_S = 9.0


@dataclass
class Injection:
    series: str
    kind: str
    index: int  # point index in the series
    at_s: float  # demo time when it is played
    caught_s: float | None = None


def _plan(args: argparse.Namespace, rng: np.random.Generator):
    from training.synthetic import Anomaly, SeriesSpec, generate

    names = (
        SERIES[: args.series]
        if args.series <= len(SERIES)
        else [f"host-{i:02d}/metric" for i in range(args.series)]
    )
    live_points = int(args.duration * args.rate) + 1
    total = HISTORY_POINTS + live_points
    injections: list[Injection] = []
    t, i, kinds = (
        FIRST_INJECTION_S,
        0,
        ["spike", "level_shift", "dip", "noise_burst", "spike", "drift"],
    )
    while t < args.duration - 3:
        series = names[(i * 5 + 1) % len(names)]
        injections.append(
            Injection(series, kinds[i % len(kinds)], HISTORY_POINTS + int(t * args.rate), t)
        )
        t += INJECTION_EVERY_S
        i += 1
    data = {}
    for k, name in enumerate(names):
        spec = SeriesSpec.random(rng, seed=args.seed * 100 + k)
        spec = SeriesSpec(**{**spec.__dict__, "period": 288, "trend_per_point": 0.0})
        anomalies = [
            Anomaly(j.kind, j.index, 1 if j.kind == "spike" else 25, magnitude=8.0)
            for j in injections if j.series == name
        ]  # fmt: skip
        values, _ = generate(spec, total, anomalies)
        data[name] = values
    return names, data, injections, live_points


def run_demo(args: argparse.Namespace) -> int:
    from stream.clients import make_consumer, make_producer
    from stream.commands import build_service
    from stream.settings import Settings

    rng = np.random.default_rng(args.seed)
    names, data, injections, live_points = _plan(args, rng)
    heads = ("metrics",) if args.no_logs else ("metrics", "logs")
    t_start = time.monotonic()

    said = threading.Lock()  # the event printer and this loop both talk: one line at a time

    def say(msg: str) -> None:
        with said:
            print(f"[{time.monotonic() - t_start:5.1f}s] {msg}", flush=True)

    with EmbeddedBroker() as broker:
        say(f"embedded Kafka broker on {broker.bootstrap}")
        settings = Settings(bootstrap=broker.bootstrap, group_id="tsguard-demo", session_timeout_ms=6000,
                            heads=_available_heads(heads), max_wait_ms=20.0, model_dir=args.model, log_window_s=30.0)  # fmt: skip
        pipeline, metrics = build_service(settings)
        port = args.metrics_port
        try:
            metrics.serve(port, "127.0.0.1", pipeline.health)
        except Exception:
            port = free_port()
            metrics.serve(port, "127.0.0.1", pipeline.health)
        head = pipeline.heads[settings.topics.metrics]
        say(f"model {head.scorer.version} on {head.scorer.device}, window {head.scorer.window_length} points, "
            f"alert threshold {head.detector.threshold:.3f}")  # fmt: skip
        say(f"metrics: http://127.0.0.1:{port}/metrics")
        service = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
        service.start()

        producer = make_producer(settings)
        stop = threading.Event()
        anomalies = make_consumer(settings, group=False)
        caught: list[dict] = []
        printer = threading.Thread(target=_print_events, args=(anomalies, settings, injections, caught, say, stop, t_start), daemon=True)  # fmt: skip
        printer.start()

        base_ts = time.time() - HISTORY_POINTS * STEP_S
        for name in names:
            for i in range(HISTORY_POINTS):
                producer.send(
                    settings.topics.metrics,
                    key=name.encode(),
                    value=dumps(_msg(name, base_ts, i, data[name][i])),
                )
        producer.flush()
        say(f"replayed {HISTORY_POINTS} points of history for {len(names)} series; going live at "
            f"{args.rate:g} points/s per series for {args.duration:g}s")  # fmt: skip
        log_thread = None
        if "logs" in settings.heads:
            from stream.demo_logs import play_logs

            log_thread = threading.Thread(
                target=play_logs, args=(producer, settings, stop, say), daemon=True
            )
            log_thread.start()

        live_start = time.monotonic()
        pending = list(injections)
        for n in range(live_points):
            target = live_start + n / args.rate
            while (delay := target - time.monotonic()) > 0:
                time.sleep(delay)
            i = HISTORY_POINTS + n
            while pending and pending[0].index <= i:
                inj = pending.pop(0)
                inj.at_s = time.monotonic() - t_start
                say(f"injecting a {inj.kind} into {inj.series}")
            for name in names:
                producer.send(
                    settings.topics.metrics,
                    key=name.encode(),
                    value=dumps(_msg(name, base_ts, i, data[name][i])),
                )
        producer.flush()
        time.sleep(1.5)
        stop.set()
        pipeline.stop()
        service.join(timeout=15)
        printer.join(timeout=5)
        if log_thread:
            log_thread.join(timeout=5)
        producer.close()
        n_caught = sum(1 for j in injections if j.caught_s is not None)
        say(f"done: {n_caught} of {len(injections)} injected anomalies caught; "
            f"{len(caught)} anomaly episodes published in all")  # fmt: skip
    return 0


def _available_heads(wanted: tuple[str, ...]) -> tuple[str, ...]:
    if "logs" not in wanted:
        return wanted
    try:
        import detector.logs.analyzer  # noqa: F401
    except ImportError:
        log.warning("log heads not available; running the metrics head only")
        return tuple(h for h in wanted if h != "logs")
    return wanted


def _msg(series: str, base_ts: float, i: int, value: float) -> dict:
    return {"series": series, "ts": round(base_ts + i * STEP_S, 3), "value": round(float(value), 5)}


def _print_events(consumer, settings, injections, caught, say, stop, t_start) -> None:
    import orjson

    from stream.clients import TopicPartition

    topics = [settings.topics.anomalies, settings.topics.log_summaries]
    assignment = []
    for topic in topics:
        parts: set[int] = set()
        while not parts and not stop.is_set():
            parts = consumer.partitions_for(topic)
            if not parts:
                time.sleep(0.2)
        assignment += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(assignment)

    while not stop.is_set():
        for tp, records in consumer.poll(0.2).items():
            for r in records:
                ev = orjson.loads(r.value)
                if tp.topic == settings.topics.log_summaries:
                    say(f"  log summary   {ev['summary']}")
                    continue
                when = datetime.fromtimestamp(ev["ts"], UTC).strftime("%H:%M")
                if ev["kind"] != "start":
                    say(f"  anomaly END   {ev['series']:<24} (series time {when})")
                    continue
                caught.append(ev)
                note = ""
                for inj in injections:
                    if (
                        inj.series == ev["series"]
                        and inj.caught_s is None
                        and inj.at_s <= time.monotonic() - t_start
                    ):
                        inj.caught_s = time.monotonic() - t_start
                        note = f"  <- the injected {inj.kind}, caught {inj.caught_s - inj.at_s:.1f}s after injection"
                        break
                say(
                    f"  ANOMALY START {ev['series']:<24} score {ev['score']:.3f} (series time {when}){note}"
                )
    consumer.close()
