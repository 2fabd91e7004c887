"""The one settings object of the service, and the one place that knows topic names.

Each field of `Settings` is declared once: its default, and (for those `tsguard serve` takes) its
flag, help and whether `TSGUARD_<FLAG>` sets its default. `add_arguments` builds serve's
options from these declarations and `from_args` reads them back, so a new setting is one field.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from detector.errors import UserError


@dataclass(frozen=True)
class Option:
    """How a setting is given on the command line."""

    flag: str
    help: str | None = None
    env: bool = False  # TSGUARD_<FLAG> (e.g. TSGUARD_METRICS_PORT) overrides the default
    type: Callable[[str], Any] | None = None  # default: the type of the field's default
    metavar: str | None = None
    choices: Sequence[Any] | None = None
    minimum: int | None = None  # a smaller value is a user error

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def setting(default: Any = MISSING, flag: str | None = None, *, factory: Any = MISSING,
            **option: Any) -> Any:  # fmt: skip
    """A settings field; with a `flag`, also an option of `tsguard serve` (see `Option`)."""
    metadata = {"option": Option(flag, **option)} if flag else {}
    return field(default=default, default_factory=factory, metadata=metadata)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Topics:
    metrics: str = "tsguard.metrics"
    anomalies: str = "tsguard.anomalies"
    dead_letter: str = "tsguard.dead-letter"
    logs: str = "tsguard.logs"
    log_classes: str = "tsguard.log-classes"
    log_summaries: str = "tsguard.log-summaries"
    log_feedback: str = "tsguard.log-feedback"  # label corrections, keyed by source
    feedback: str = "tsguard.feedback"  # verdicts on anomaly events, keyed by series
    incidents: str = "tsguard.incidents"  # overlapping episodes of one group, keyed by incident

    def all(self) -> list[str]:
        return [
            self.metrics,
            self.anomalies,
            self.dead_letter,
            self.logs,
            self.log_classes,
            self.log_summaries,
            self.log_feedback,
            self.feedback,
            self.incidents,
        ]


@dataclass(frozen=True)
class KafkaSecurity:
    """Passed through to the Kafka client unchanged; credentials come from env, never from
    flags. One mapping per client, side by side, so a new field reaches both."""

    protocol: str = setting(
        "PLAINTEXT", "--security-protocol", env=True,
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
    )  # fmt: skip
    sasl_mechanism: str | None = setting(
        None, "--sasl-mechanism", env=True,
        choices=[None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        help="credentials come from TSGUARD_SASL_USERNAME / TSGUARD_SASL_PASSWORD",
    )  # fmt: skip
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = setting(None, "--ssl-cafile", env=True, help="CA bundle for SSL")

    def client_kwargs(self) -> dict:
        kw: dict = {"security_protocol": self.protocol}
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            kw["ssl_cafile"] = self.ssl_cafile
        return kw

    def librdkafka_config(self) -> dict:
        conf: dict = {"security.protocol": self.protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        return conf


@dataclass(frozen=True)
class Settings:
    """Everything `tsguard serve` can be told, in the order of `tsguard serve --help`."""

    topics: Topics = setting(factory=Topics)
    bootstrap: str | None = setting(
        None, "--bootstrap", env=True,
        help="Kafka bootstrap servers H:P[,H:P] (env TSGUARD_BOOTSTRAP); none: start the embedded broker",
    )  # fmt: skip
    model_dir: str | None = setting(
        None, "--model", env=True,
        help="model directory (env TSGUARD_MODEL); default: the model shipped with tsguard",
    )  # fmt: skip
    heads: tuple[str, ...] = setting(
        ("metrics",), "--heads", env=True, type=_comma_list, help="comma list of: metrics, logs"
    )
    metrics_port: int = setting(9109, "--metrics-port", env=True)
    metrics_addr: str = setting(
        "0.0.0.0", "--metrics-addr", env=True, help="bind address of the metrics endpoint"
    )
    group_id: str = setting("tsguard", "--group-id", env=True)
    device: str = setting("auto", "--device", env=True, choices=["auto", "cpu", "cuda"])
    torch_threads: int = setting(
        0, "--torch-threads", env=True,
        help="CPU threads for the model (0: half the cores, at most 4)",
    )  # fmt: skip
    compile: bool = setting(
        False, "--compile", env=True,
        help="torch.compile the model at load: slower start; pays on a GPU (1.45x measured on "
        "an H100), not measurably on a small CPU; needs a C++ compiler on the CPU",
    )  # fmt: skip
    fetch_max_wait_ms: int = setting(
        10, "--fetch-max-wait-ms",
        help="longest the broker may hold an empty fetch (latency vs. idle requests)",
    )  # fmt: skip
    kafka_client: str = setting(
        "kafka-python", "--kafka-client", env=True, choices=["kafka-python", "confluent"],
        help="the service's Kafka client: kafka-python, or librdkafka (needs the confluent "
        "extra; less CPU per record)",
    )  # fmt: skip
    stride: int = setting(
        1, "--stride", env=True, minimum=1, help="score a series every N new points"
    )
    max_batch: int = setting(1024, "--max-batch", minimum=1, help="windows per scoring call")
    max_wait_ms: float = setting(
        50.0, "--max-wait-ms", help="longest a window waits for a fuller batch"
    )
    max_series: int = setting(
        100_000, "--max-series", minimum=1, help="tracked series cap (idlest evicted)"
    )
    max_series_gauges: int = setting(
        1000, "--max-series-gauges", help="cap on per-series score gauges"
    )
    max_message_bytes: int = setting(1_000_000, "--max-message-bytes", minimum=1)
    max_points_per_message: int = 10_000
    max_dimensions: int = 64
    partitions: int = setting(
        4, "--partitions", minimum=1, help="partitions of topics tsguard creates"
    )
    session_timeout_ms: int = setting(10000, "--session-timeout-ms")
    log_window_s: float = setting(60.0, "--log-window", help="seconds per log summary window")
    log_corrections: str | None = setting(
        None, "--log-corrections", metavar="FILE",
        help='log label corrections, JSON lines {"source", "message", "label"}: the label of '
        "that message's template in that source from then on (re-read at every start)",
    )  # fmt: skip
    rebuild_messages: int = setting(
        50_000, "--rebuild-messages",
        help="messages per partition read back on assignment to rebuild windows (0: none)",
    )  # fmt: skip
    rules: str | None = setting(
        None, "--rules", env=True, metavar="FILE",
        help="operator rules (YAML): direction, min_delta, sensitivity, labels and mutes per "
        "series glob; re-read on change and SIGHUP",
    )  # fmt: skip
    alertmanager: tuple[str, ...] = setting(
        (), "--alertmanager", env=True, type=_comma_list, metavar="URL[,URL]",
        help="push anomaly episodes and incidents to these Alertmanagers (v2 API), e.g. "
        "http://alertmanager:9093",
    )  # fmt: skip
    security: KafkaSecurity = setting(factory=KafkaSecurity)
    stop_at_end: bool = setting(
        False, "--stop-at-end",
        help="backfill/replay job: exit 0 once the group's committed offset of every partition "
        "of the input topics reaches the end offset recorded at start, whoever processed it",
    )  # fmt: skip
    stop_timeout_s: float | None = setting(
        None, "--stop-timeout", type=float, metavar="S",
        help="with --stop-at-end: exit 1 after S seconds, naming the partitions not done "
        "(default: wait as long as it takes)",
    )  # fmt: skip


def _options(cls: type, nested: bool = True) -> Iterator[tuple[Field, Option]]:
    """The command-line settings of `cls` in declaration order; with `nested`, those of nested
    settings (`Settings.security`) in their place."""
    for f in fields(cls):
        if "option" in f.metadata:
            yield f, f.metadata["option"]
        elif nested and f.default_factory is not MISSING:
            yield from _options(f.default_factory)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser, cls: type = Settings) -> None:
    """An option per command-line setting; TSGUARD_<FLAG> overrides a default where allowed."""
    from stream.cli import env_default

    for f, opt in _options(cls):
        default = f.default
        env = env_default(opt.dest) if opt.env else None
        if isinstance(default, bool):
            if env is not None:
                default = env not in ("0", "", "false", "no")
            parser.add_argument(opt.flag, action="store_true", default=default, help=opt.help)
            continue
        parser.add_argument(
            opt.flag,
            type=opt.type or (None if default is None else type(default)),
            default=default if env is None else env,  # argparse converts a string with `type`
            choices=opt.choices,
            metavar=opt.metavar,
            help=opt.help,
        )


def from_args(args: argparse.Namespace, cls: type = Settings) -> dict[str, Any]:
    """The command-line settings of `cls` (nested settings left out) as keyword arguments; a
    value below its option's minimum is a user error."""
    values = {}
    for f, opt in _options(cls, nested=False):
        value = getattr(args, opt.dest)
        if opt.minimum is not None and value < opt.minimum:
            raise UserError(f"{opt.flag} must be at least {opt.minimum}")
        values[f.name] = value
    return values
