"""The one settings object of the service, and the one place that knows topic names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Topics:
    metrics: str = "tsguard.metrics"
    anomalies: str = "tsguard.anomalies"
    dead_letter: str = "tsguard.dead-letter"
    logs: str = "tsguard.logs"
    log_classes: str = "tsguard.log-classes"
    log_summaries: str = "tsguard.log-summaries"
    log_feedback: str = "tsguard.log-feedback"  # label corrections, keyed by source

    def all(self) -> list[str]:
        return [
            self.metrics,
            self.anomalies,
            self.dead_letter,
            self.logs,
            self.log_classes,
            self.log_summaries,
            self.log_feedback,
        ]


@dataclass(frozen=True)
class KafkaSecurity:
    """Passed through to the Kafka client unchanged; credentials come from env, never from
    flags. One mapping per client, side by side, so a new field reaches both."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

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
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "tsguard"
    topics: Topics = field(default_factory=Topics)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    partitions: int = 4  # used only when tsguard creates a missing topic
    session_timeout_ms: int = 10000
    fetch_max_wait_ms: int = 10
    kafka_client: str = "kafka-python"  # or "confluent" (librdkafka, stream/confluent_io.py)

    model_dir: str | None = None  # None: the model shipped in the package
    device: str = "auto"
    torch_threads: int = 0  # 0: half the cores, at most 4 (see commands.torch_threads)
    compile: bool = False  # torch.compile the network at load (Scorer.compile)
    heads: tuple[str, ...] = ("metrics",)

    stride: int = 1  # score every `stride` new points of a series
    max_batch: int = 1024  # windows per scoring call
    max_wait_ms: float = 50.0  # longest a ready window waits for a fuller batch
    max_series: int = 100_000  # tracked series cap; the idlest are evicted beyond it
    max_message_bytes: int = 1_000_000
    max_points_per_message: int = 10_000
    max_dimensions: int = 64
    max_series_gauges: int = 1000

    metrics_port: int = 9109
    metrics_addr: str = "0.0.0.0"
    stop_at_end: bool = False
    stop_timeout_s: float | None = None  # --stop-at-end: fail when not done within this
    rebuild_messages: int = 50_000  # per partition, read back on assignment to rebuild windows
    log_window_s: float = 60.0
    log_corrections: str | None = None  # JSON lines {"source", "message", "label"} (serve)
