"""`tsguard serve`, `broker`, `replay` and `demo`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from detector.errors import UserError
from stream.cli import env_default

log = logging.getLogger("tsguard")


def register_cli(sub) -> None:
    p = sub.add_parser("serve", help="run the service: Kafka in, anomalies and metrics out")
    _service_options(p)
    p.add_argument(
        "--stop-at-end",
        action="store_true",
        help="backfill/replay job: exit 0 once the group's committed offset of every partition "
        "of the input topics reaches the end offset recorded at start, whoever processed it",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        metavar="S",
        help="with --stop-at-end: exit 1 after S seconds, naming the partitions not done "
        "(default: wait as long as it takes)",
    )
    p.set_defaults(handler=serve)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--port", type=int, default=int(env_default("broker-port", "9092")))
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(handler=broker)

    p = sub.add_parser(
        "replay", help="produce a CSV (timestamp,value[,value...]) into the metrics topic"
    )
    p.add_argument("file", type=Path)
    p.add_argument("--series", help="series id (default: the file name without extension)")
    p.add_argument("--topic", default="tsguard.metrics")
    p.add_argument("--bootstrap", default=env_default("bootstrap", "127.0.0.1:9092"))
    p.add_argument(
        "--rate", type=float, default=0.0, help="points per second (0: as fast as possible)"
    )
    p.set_defaults(handler=replay)

    p = sub.add_parser(
        "demo", help="everything local in one command: broker, live stream, detector"
    )
    p.add_argument("--duration", type=float, default=90.0, help="seconds to run (default 90)")
    p.add_argument("--series", type=int, default=6, help="number of live series")
    p.add_argument("--rate", type=float, default=20.0, help="points per second per series")
    p.add_argument("--metrics-port", type=int, default=int(env_default("metrics-port", "9109")))
    p.add_argument(
        "--model", default=env_default("model"), help="model directory (default: the shipped model)"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-logs", action="store_true", help="leave the log heads out")
    p.set_defaults(handler=demo)


def _service_options(p: argparse.ArgumentParser) -> None:  # fmt: skip
    p.add_argument(
        "--bootstrap",
        default=env_default("bootstrap"),
        help="Kafka bootstrap servers H:P[,H:P] (env TSGUARD_BOOTSTRAP); none: start the embedded broker",
    )
    p.add_argument(
        "--model",
        default=env_default("model"),
        help="model directory (env TSGUARD_MODEL); default: the model shipped with tsguard",
    )
    p.add_argument(
        "--heads", default=env_default("heads", "metrics"), help="comma list of: metrics, logs"
    )
    p.add_argument("--metrics-port", type=int, default=int(env_default("metrics-port", "9109")))
    p.add_argument(
        "--metrics-addr",
        default=env_default("metrics-addr", "0.0.0.0"),
        help="bind address of the metrics endpoint",
    )
    p.add_argument("--group-id", default=env_default("group-id", "tsguard"))
    p.add_argument(
        "--device", default=env_default("device", "auto"), choices=["auto", "cpu", "cuda"]
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=int(env_default("torch-threads", "0")),
        help="CPU threads for the model (0: half the cores, at most 4)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=env_default("compile", "0") not in ("0", "", "false", "no"),
        help="torch.compile the model at load: slower start; pays on a GPU (1.45x measured on "
        "an H100), not measurably on a small CPU; needs a C++ compiler on the CPU",
    )
    p.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=10,
        help="longest the broker may hold an empty fetch (latency vs. idle requests)",
    )
    p.add_argument(
        "--kafka-client",
        default=env_default("kafka-client", "kafka-python"),
        choices=["kafka-python", "confluent"],
        help="the service's Kafka client: kafka-python, or librdkafka (needs the confluent "
        "extra; less CPU per record)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=int(env_default("stride", "1")),
        help="score a series every N new points",
    )
    p.add_argument("--max-batch", type=int, default=1024, help="windows per scoring call")
    p.add_argument(
        "--max-wait-ms", type=float, default=50.0, help="longest a window waits for a fuller batch"
    )
    p.add_argument(
        "--max-series", type=int, default=100_000, help="tracked series cap (idlest evicted)"
    )
    p.add_argument(
        "--max-series-gauges", type=int, default=1000, help="cap on per-series score gauges"
    )
    p.add_argument("--max-message-bytes", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=4, help="partitions of topics tsguard creates")
    p.add_argument("--session-timeout-ms", type=int, default=10000)
    p.add_argument("--log-window", type=float, default=60.0, help="seconds per log summary window")
    p.add_argument(
        "--log-corrections",
        metavar="FILE",
        help='log label corrections, JSON lines {"source", "message", "label"}: the label of '
        "that message's template in that source from then on (re-read at every start)",
    )
    p.add_argument(
        "--rebuild-messages",
        type=int,
        default=50_000,
        help="messages per partition read back on assignment to rebuild windows (0: none)",
    )
    p.add_argument(
        "--security-protocol",
        default=env_default("security-protocol", "PLAINTEXT"),
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
    )
    p.add_argument(
        "--sasl-mechanism",
        default=env_default("sasl-mechanism"),
        choices=[None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        help="credentials come from TSGUARD_SASL_USERNAME / TSGUARD_SASL_PASSWORD",
    )
    p.add_argument("--ssl-cafile", default=env_default("ssl-cafile"), help="CA bundle for SSL")


def _settings(args: argparse.Namespace, bootstrap: str):
    from stream.settings import Settings

    heads = tuple(h.strip() for h in args.heads.split(",") if h.strip())
    unknown = set(heads) - {"metrics", "logs"}
    if unknown or not heads:
        raise UserError(f"--heads takes metrics and/or logs, got {args.heads!r}")
    if args.kafka_client == "confluent":
        from stream import confluent_io

        confluent_io.require()  # before the model loads
    stop_timeout = getattr(args, "stop_timeout", None)
    if stop_timeout is not None and not getattr(args, "stop_at_end", False):
        raise UserError("--stop-timeout needs --stop-at-end")
    if stop_timeout is not None and not stop_timeout > 0:
        raise UserError(f"--stop-timeout must be a positive number of seconds, got {stop_timeout}")
    for name in ("stride", "max_batch", "max_series", "max_message_bytes", "partitions"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    return Settings(
        bootstrap=bootstrap, group_id=args.group_id, security=_security(args),
        rebuild_messages=args.rebuild_messages,
        partitions=args.partitions, session_timeout_ms=args.session_timeout_ms,
        model_dir=args.model, device=args.device, heads=heads, stride=args.stride,
        torch_threads=args.torch_threads, compile=args.compile,
        fetch_max_wait_ms=args.fetch_max_wait_ms, kafka_client=args.kafka_client,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_series=args.max_series,
        max_message_bytes=args.max_message_bytes, max_series_gauges=args.max_series_gauges,
        metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
        stop_at_end=getattr(args, "stop_at_end", False), stop_timeout_s=stop_timeout,
        log_window_s=args.log_window, log_corrections=getattr(args, "log_corrections", None),
    )  # fmt: skip


def _security(args: argparse.Namespace):
    """Kafka security from flags; secrets only from the environment (never on a command line)."""
    import os

    from stream.settings import KafkaSecurity

    if args.sasl_mechanism and not args.security_protocol.startswith("SASL"):
        raise UserError("--sasl-mechanism needs --security-protocol SASL_SSL or SASL_PLAINTEXT")
    if args.ssl_cafile and not Path(args.ssl_cafile).is_file():
        raise UserError(f"--ssl-cafile {args.ssl_cafile}: no such file")
    user, password = (
        os.environ.get("TSGUARD_SASL_USERNAME"),
        os.environ.get("TSGUARD_SASL_PASSWORD"),
    )
    if args.sasl_mechanism and not (user and password):
        raise UserError(
            "SASL needs TSGUARD_SASL_USERNAME and TSGUARD_SASL_PASSWORD in the environment"
        )
    return KafkaSecurity(
        protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=user,
        sasl_password=password,
        ssl_cafile=args.ssl_cafile,
    )


def build_service(settings):
    """Load the model and heads, create topics, and return a ready (not yet running) pipeline."""
    from stream.heads import MetricsHead
    from stream.kafka_io import ensure_topics
    from stream.metrics import Metrics
    from stream.pipeline import Pipeline

    metrics = Metrics(max_series_gauges=settings.max_series_gauges)
    heads = []
    if "metrics" in settings.heads:
        import torch

        from detector.scorer import load_scorer

        # Kafka's client thread needs a core too: torch taking every core makes small batches
        # many times slower on a busy machine (benchmarks/README.md).
        torch.set_num_threads(settings.torch_threads or max(1, min(4, (os.cpu_count() or 2) // 2)))

        scorer = load_scorer(settings.model_dir, settings.device, compile=settings.compile)
        log.info("model %s on %s (window %d)", scorer.version, scorer.device, scorer.window_length)
        heads.append(MetricsHead(settings, scorer, metrics))
    if "logs" in settings.heads:
        from stream.log_head import LogFeedbackHead, LogsHead

        logs_head = LogsHead(settings, metrics)
        heads += [logs_head, LogFeedbackHead(settings, metrics, logs_head)]
    ensure_topics(settings, settings.topics.all())
    return Pipeline(settings, heads, metrics), metrics


@contextlib.contextmanager
def _broker_for(bootstrap: str | None):
    """Yield a bootstrap address: the given one, or an embedded broker's for the duration."""
    if bootstrap:
        yield bootstrap
        return
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        log.info("no --bootstrap: started the embedded broker on %s", b.bootstrap)
        yield b.bootstrap


def _on_signals(pipeline) -> None:
    def handler(signum, _frame):
        log.info(
            "%s: finishing the batch in flight, flushing and committing",
            signal.Signals(signum).name,
        )
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, lambda *_: pipeline.reload_requested.set())


def serve(args: argparse.Namespace) -> int:
    from stream.end_of_input import StopTimeout

    with _broker_for(args.bootstrap) as bootstrap:
        settings = _settings(args, bootstrap)
        pipeline, metrics = build_service(settings)
        metrics.serve(settings.metrics_port, settings.metrics_addr)
        _on_signals(pipeline)
        log.info(
            "serving %s from %s (group %s)", ",".join(pipeline.heads), bootstrap, settings.group_id
        )
        try:
            return pipeline.run()
        except StopTimeout as exc:
            print(f"tsguard: error: {exc}", file=sys.stderr)
            return 1


def broker(args: argparse.Namespace) -> int:
    from stream.broker import EmbeddedBroker

    b = EmbeddedBroker(port=args.port, host=args.host).start()
    print(f"embedded Kafka-compatible broker (Tansu) on {b.bootstrap}; Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if b._proc is None or b._proc.poll() is not None:
                raise UserError("the embedded broker exited")
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()
    return 0


def replay(args: argparse.Namespace) -> int:
    from stream.replay import replay_csv

    n = replay_csv(args.file, args.series, args.topic, args.bootstrap, args.rate)
    print(f"produced {n} points from {args.file} to {args.topic}", file=sys.stderr)
    return 0


def demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args)
