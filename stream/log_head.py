"""tsguard.logs -> zero-shot classification + window summaries -> tsguard.log-classes / -summaries.

The compute lives in detector/logs (no Kafka there); this adapter decodes records, dead-letters
the malformed ones, and turns results into outputs and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from stream.codec import InvalidMessage, dumps
from stream.heads import Output, dead_letter
from stream.metrics import Metrics
from stream.settings import Settings

ADVANCE_EVERY_S = 1.0
LATE_GRACE_S = 5.0  # lines may arrive this late and still join their window


class LogsHead:
    # Re-reading lines would publish their classifications again; summaries of windows open at
    # a crash are lost instead (README: delivery).
    rebuilds_state = False

    def __init__(self, settings: Settings, metrics: Metrics):
        from detector.logs.head import LogHead, LogHeadConfig, parse_log_value

        self.settings = settings
        self.topic = settings.topics.logs
        self.metrics = metrics
        self.head = LogHead(LogHeadConfig(window_s=settings.log_window_s))
        self._parse = parse_log_value
        # Load the embedding model and embed the labels now, not inside the first poll.
        self.head.prepare()
        self._last_advance = time.monotonic()

    def handle(self, records: list, now: float) -> list[Output]:
        out: list[Output] = []
        parsed = []
        keys = []
        wall = time.time()
        for rec in records:
            try:
                parsed.append(self._parse(rec.value, rec.key, wall))
                keys.append(rec.key)
            except ValueError as exc:
                out.append(
                    dead_letter(
                        self.settings, self.metrics, rec, InvalidMessage("invalid_log", str(exc))
                    )
                )
        if not parsed:
            return out
        topics = self.settings.topics
        classes, summaries = self.head.process(parsed)
        for record, key, result in zip(parsed, keys, classes, strict=True):
            self.metrics.log_lines.labels(result["label"]).inc()
            out.append(Output(topics.log_classes, key or record.source.encode(), dumps(result)))
        out.extend(self._summaries(summaries))
        return out

    def _summaries(self, summaries: list[dict]) -> list[Output]:
        self.metrics.log_summaries.inc(len(summaries))
        topic = self.settings.topics.log_summaries
        return [Output(topic, s["source"].encode(), dumps(s)) for s in summaries]

    # Classification is synchronous; summaries wait for their window to close, which is state,
    # not pending output (see the README's note on log windows and at-least-once).
    def has_pending(self) -> bool:
        return False

    def due(self, now: float) -> bool:
        return now - self._last_advance >= ADVANCE_EVERY_S

    def drain_in_parts(self, now: float) -> Iterator[list[Output]]:
        """Close windows of sources that went quiet (by wall clock, after a grace period)."""
        self._last_advance = now
        yield self._summaries(self.head.advance(time.time() - LATE_GRACE_S))

    def discard_pending(self) -> None:
        """Nothing to drop: open log windows are not rebuilt from the topic."""

    def finish(self) -> list[Output]:
        """Shutdown: close every open window so its summary is published."""
        return self._summaries(self.head.flush())

    def forget_partitions(self, partitions: set[int]) -> None:
        pass
