"""Every Prometheus metric of tsguard, declared once, each with the question it answers.

Names follow the Prometheus naming guide: `_total` counters, `_seconds` histograms, base units,
bounded label sets (reasons are a fixed vocabulary; per-series gauges are capped).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from detector.messages import InvalidMessage, InvalidReason

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_series_gauges: int = 1000):
        r = self.registry = registry or CollectorRegistry()
        # Is data flowing in?
        self.points = Counter("tsguard_points", "Metric points accepted into windows", registry=r)
        self.messages = Counter(
            "tsguard_messages", "Kafka messages consumed", ["topic"], registry=r
        )
        self.points_replayed = Counter(
            "tsguard_points_replayed",
            "Points re-read to rebuild state after a restart or rebalance",
            registry=r,
        )
        self.points_skipped = Counter(
            "tsguard_points_skipped", "Points not added to a window", ["reason"], registry=r
        )
        # Is bad input arriving, and is it kept?
        self.invalid = Counter(
            "tsguard_messages_invalid", "Messages that could not be used", ["reason"], registry=r
        )
        self.dead_letter = Counter(
            "tsguard_dead_letter",
            "Records written to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        # Is the detector keeping up?
        self.windows_scored = Counter("tsguard_windows_scored", "Windows scored", registry=r)
        self.scoring_seconds = Histogram(
            "tsguard_scoring_seconds",
            "Model time per scored batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tsguard_batch_size", "Windows per scoring call", buckets=BATCH_BUCKETS, registry=r
        )
        self.end_to_end = Histogram(
            "tsguard_end_to_end_seconds",
            "Consume to publish, per scored batch (oldest window in it)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "tsguard_consumer_lag",
            "Messages behind the partition end",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_errors = Counter(
            "tsguard_kafka_errors", "Kafka client errors (retried)", ["op"], registry=r
        )
        # What is it finding?
        self.anomalies = Counter("tsguard_anomalies", "Anomaly episodes started", registry=r)
        self.anomaly_events = Counter(
            "tsguard_anomaly_events", "Anomaly events published", ["kind"], registry=r
        )
        self.anomaly_causes = Counter(
            "tsguard_anomaly_causes",
            "Anomaly episodes started, by the signal that was loudest at the start",
            ["signal"],
            registry=r,
        )
        self.score = Gauge(
            "tsguard_anomaly_score",
            "Latest calibrated score per series (0..1)",
            ["series"],
            registry=r,
        )
        self.threshold = Gauge(
            "tsguard_anomaly_threshold", "Score at which an anomaly episode starts", registry=r
        )
        self.incidents_open = Gauge(
            "tsguard_incidents_open",
            "Incidents open: overlapping episodes of one group (tsguard.incidents)",
            registry=r,
        )
        self.series_tracked = Gauge(
            "tsguard_series_tracked", "Series with a live window", registry=r
        )
        self.model_info = Gauge(
            "tsguard_model_info",
            "The model being served (value 1)",
            ["version", "device"],
            registry=r,
        )
        self.model_reloads = Counter(
            "tsguard_model_reloads", "Model reload attempts", ["result"], registry=r
        )
        # What do the operator rules (--rules; stream/rules.py) hold back?
        self.events_held = Counter(
            "tsguard_events_held",
            "Anomaly episodes held by an operator rule (no events, no alert)",
            ["reason"],
            registry=r,
        )
        self.rules_loads = Counter(
            "tsguard_rules_loads",
            "Rules file loads, ok or refused (invalid)",
            ["result"],
            registry=r,
        )
        self.rules_refused = Gauge(
            "tsguard_rules_file_refused",
            "1 while the rules file's last load was refused (the rules before it in force)",
            registry=r,
        )
        self.feedback_verdicts = Counter(
            "tsguard_feedback_verdicts",
            "Operator verdicts on anomaly events read from tsguard.feedback (tsguard feedback)",
            ["verdict"],
            registry=r,
        )
        # Are alerts reaching Alertmanager (--alertmanager; stream/alertmanager.py)?
        self.alerts_sent = Counter(
            "tsguard_alerts_sent", "Alerts posted to Alertmanager, per URL", ["state"], registry=r
        )
        self.alerts_failed = Counter(
            "tsguard_alerts_failed",
            "Alert posts that failed, and events dropped for a full alert queue",
            ["reason"],
            registry=r,
        )
        # The log heads.
        self.log_lines = Counter("tsguard_log_lines", "Log lines classified", ["label"], registry=r)
        self.log_summaries = Counter(
            "tsguard_log_summaries", "Log window summaries published", registry=r
        )
        self.log_corrections = Gauge(
            "tsguard_log_corrections", "Log label corrections in force", registry=r
        )
        self.log_corrected_lines = Counter(
            "tsguard_log_corrected_lines", "Log lines labelled by a correction", registry=r
        )
        for reason in InvalidReason:  # every reason shows, at 0, before it first happens
            self.invalid.labels(reason)
            self.dead_letter.labels(reason)
        for kind in ("start", "end"):
            self.anomaly_events.labels(kind)
        for reason in ("mute", "direction", "min_delta"):
            self.events_held.labels(reason)
        for verdict in ("false_positive", "true_positive"):
            self.feedback_verdicts.labels(verdict)
        for state in ("firing", "resolved"):
            self.alerts_sent.labels(state)
        for reason in ("http_error", "unreachable", "queue_full"):
            self.alerts_failed.labels(reason)
        self._max_gauges = max_series_gauges
        # series -> its labelled gauge (labels() costs a lock and a dict lookup per call).
        self._gauged: OrderedDict[str, Any] = OrderedDict()

    def reject(self, error: InvalidMessage) -> None:
        self.invalid.labels(error.reason).inc()

    def set_score(self, series: str, score: float) -> None:
        """Per-series gauge, capped: past the cap the least recently updated series' gauge is
        removed, so cardinality stays bounded whatever arrives."""
        gauge = self._gauged.get(series)
        if gauge is not None:
            self._gauged.move_to_end(series)
        else:
            gauge = self._gauged[series] = self.score.labels(series)
            if len(self._gauged) > self._max_gauges:
                old, _ = self._gauged.popitem(last=False)
                self.score.remove(old)
        gauge.set(score)

    def set_model(self, version: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version, device).set(1)

    def serve(self, port: int, addr: str = "0.0.0.0", health=None) -> None:
        """/metrics (and /healthz, /readyz from a stream.health.Health) on addr:port."""
        from detector.errors import UserError
        from stream.health import serve_http

        try:
            serve_http(self.registry, port, addr, health)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from None
        log.info("metrics on http://%s:%d/metrics", addr, port)
