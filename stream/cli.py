"""The `tsguard` command line. Each subcommand lives with the code it drives; this file wires them.

Modules listed in SUBCOMMAND_MODULES expose `register_cli(subparsers)`, which adds their parser and
sets `handler=<callable(args) -> int>`. Imports there must stay cheap: heavy imports (torch,
sentence-transformers) happen inside the handlers, so `tsguard --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from detector.errors import UserError

SUBCOMMAND_MODULES = (
    "stream.commands",  # demo, serve, broker, replay
    "training.train",  # train
    "training.promote",  # promote
    "training.evaluate",  # evaluate nab
    "stream.logs_cli",  # logs classify | summarize
    "stream.feedback",  # feedback
)


def env_default(option: str, default: str | None = None) -> str | None:
    """Default for an option, overridable by TSGUARD_<OPTION> (e.g. TSGUARD_BOOTSTRAP)."""
    return os.environ.get("TSGUARD_" + option.upper().replace("-", "_"), default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsguard",
        description="Streaming anomaly detection for metric streams on Kafka.",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("log-level"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (env TSGUARD_LOG_LEVEL; default INFO, WARNING for demo)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def drop_cancelled_refresh(record: logging.LogRecord) -> bool:
    """False for kafka-python's "Metadata refresh: failed Cancelled": a short-lived client (the
    feedback verdict's producer, a topic read) closed while a refresh was in flight. It is logged
    at ERROR though nothing failed; a refresh that fails for any other reason still shows."""
    from kafka.errors import Cancelled

    return not (
        record.msg == "Metadata refresh: failed %s"
        and isinstance(record.args, tuple)
        and len(record.args) == 1
        and isinstance(record.args[0], Cancelled)
    )


def drop_receive_after_close(record: logging.LogRecord) -> bool:
    """False for kafka-python's "Error receiving network data closing socket" from a transport
    that is already closed: its reader woke after our close took the socket away (seen as
    AttributeError on None.recv, with a traceback, when serve exits). The same error on an open
    transport still shows."""
    return not (
        record.msg == "%s: Error receiving network data closing socket"
        and isinstance(record.args, tuple)
        and len(record.args) == 1
        and getattr(record.args[0], "is_closing", lambda: False)() is True
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A subcommand may set a quieter default (the demo's printout is the point, not the logs).
    level = args.log_level or getattr(args, "log_level_default", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":  # kafka-python narrates every connection at INFO
        logging.getLogger("kafka").setLevel(logging.WARNING)
        # Its IO thread warns whenever our scoring holds the GIL for >100 ms; not actionable.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        logging.getLogger("kafka.cluster").addFilter(drop_cancelled_refresh)
        logging.getLogger("kafka.net.transport").addFilter(drop_receive_after_close)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"tsguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
