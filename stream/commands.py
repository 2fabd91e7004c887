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
    from stream.settings import add_arguments

    p = sub.add_parser("serve", help="run the service: Kafka in, anomalies and metrics out")
    add_arguments(p)
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
    p.add_argument("--png", default="tsguard-demo.png", help="where to draw the run at its end")
    p.set_defaults(handler=demo, log_level_default="WARNING")


def _settings(args: argparse.Namespace, bootstrap: str):
    """serve's Settings from its options (stream/settings.py declares them) and what they imply."""
    from stream.settings import Settings, from_args

    values = from_args(args)
    heads = values["heads"]
    if set(heads) - {"metrics", "logs"} or not heads:
        raise UserError(f"--heads takes metrics and/or logs, got {','.join(heads)!r}")
    if args.kafka_client == "confluent":
        from stream import confluent_io

        confluent_io.require()  # before the model loads
    stop_timeout = args.stop_timeout
    if stop_timeout is not None and not args.stop_at_end:
        raise UserError("--stop-timeout needs --stop-at-end")
    if stop_timeout is not None and not stop_timeout > 0:
        raise UserError(f"--stop-timeout must be a positive number of seconds, got {stop_timeout}")
    if values["rules"]:
        from stream.rules import load_rules

        if "metrics" not in heads:
            raise UserError("--rules applies to the metrics head; add it to --heads")
        load_rules(values["rules"])  # a bad file: one line now, before the model loads
    return Settings(**values | {"bootstrap": bootstrap}, security=_security(args))


def _security(args: argparse.Namespace):
    """Kafka security from flags; secrets only from the environment (never on a command line)."""
    import os

    from stream.settings import KafkaSecurity, from_args

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
        **from_args(args, KafkaSecurity), sasl_username=user, sasl_password=password
    )


def build_service(settings):
    """Load the model and heads, create topics, and return a ready (not yet running) pipeline."""
    from stream.heads.metrics import MetricsHead
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
        head = MetricsHead(settings, scorer, metrics)
        # Operator rules (--rules) and verdicts (tsguard.feedback) tune the metrics head's series.
        from stream.feedback import Verdicts
        from stream.heads.feedback import FeedbackHead
        from stream.rules import RuleGate, RulesFile

        verdicts = Verdicts()
        rules = RulesFile(settings.rules, metrics) if settings.rules else None
        head.rules = RuleGate(rules, metrics, verdicts)
        heads += [head, FeedbackHead(settings, metrics, verdicts)]
    if "logs" in settings.heads:
        from stream.heads.logs import LogFeedbackHead, LogsHead

        logs_head = LogsHead(settings, metrics)
        heads += [logs_head, LogFeedbackHead(settings, metrics, logs_head)]
    ensure_topics(settings, [t for t in settings.topics.all() if t != settings.topics.feedback])
    if "metrics" in settings.heads:
        from stream.feedback import ensure_topic

        ensure_topic(settings)  # co-partitioned with the metrics topic
    pipeline = Pipeline(settings, heads, metrics)
    if settings.alertmanager:
        from stream.alertmanager import AlertmanagerSink

        pipeline.sinks.append(
            AlertmanagerSink(
                list(settings.alertmanager),
                settings.topics.anomalies,
                metrics,
                incidents_topic=settings.topics.incidents,
            )
        )
    return pipeline, metrics


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


def _on_signals(pipeline, reload: threading.Event | None) -> None:
    def handler(signum, _frame):
        log.info(
            "%s: finishing the batch in flight, flushing and committing",
            signal.Signals(signum).name,
        )
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

    def hangup(_signum, _frame):  # reload the model (the metrics head's) and the operator rules
        if reload is not None:
            reload.set()
        for head in pipeline.heads.values():
            if getattr(head, "rules", None) is not None and head.rules.source is not None:
                head.rules.source.request_reload()

    signal.signal(signal.SIGHUP, hangup)


def serve(args: argparse.Namespace) -> int:
    from stream.end_of_input import StopTimeout

    with _broker_for(args.bootstrap) as bootstrap:
        settings = _settings(args, bootstrap)
        pipeline, metrics = build_service(settings)
        metrics.serve(settings.metrics_port, settings.metrics_addr, pipeline.health)
        head = pipeline.heads.get(settings.topics.metrics)
        _on_signals(pipeline, head.reload_requested if head is not None else None)
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
