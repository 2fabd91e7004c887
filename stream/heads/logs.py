"""tsguard.logs -> zero-shot classification + window summaries -> tsguard.log-classes / -summaries.

The compute lives in detector/logs/analyzer.py (no Kafka there); this head decodes records, dead-letters
the malformed ones, and turns results into outputs and metrics.

Delivery of summaries is at-least-once, the way a Kafka Streams windowed aggregation without a
changelog is: summary windows are kept per partition and source, and the offset committed for a
partition never passes the first line of a window of that partition that is still open
(`holds`). After a crash or a rebalance the lines of the open windows are consumed again,
the windows are rebuilt and their summaries published. What is consumed again is published again:
the classifications of those lines, and the summaries of windows that closed after the commit
point (a window that had lines before it comes out again with only the lines after it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from detector.api import TS_MAX
from detector.messages import InvalidMessage, InvalidReason, LogSummary, keyed_object
from stream.heads.base import Head, Output, StateHead, dead_letter
from stream.metrics import Metrics
from stream.settings import Settings

ADVANCE_EVERY_S = 1.0
LATE_GRACE_S = 5.0  # lines may arrive this late and still join their window


class LogsHead(Head):
    """Nothing is read back before the committed offset: the commit itself stays at the first
    line of the oldest open summary window (`holds`), so what a window needs is re-read."""

    def __init__(self, settings: Settings, metrics: Metrics):
        from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, parse_log_value

        self.settings = settings
        self.topic = settings.topics.logs
        self.metrics = metrics
        self.analyzer = LogAnalyzer(
            LogAnalyzerConfig(window_s=settings.log_window_s, corrections=settings.log_corrections)
        )
        metrics.log_corrections.set(self.analyzer.corrections)
        self._parse = parse_log_value
        # Load the embedding model and embed the labels now, not inside the first poll.
        self.analyzer.prepare()
        self._last_advance = time.monotonic()

    def handle(self, records: list, now: float) -> list[Output]:
        out: list[Output] = []
        parsed = []
        keys = []
        partitions = []
        offsets = []
        wall = time.time()
        for rec in records:
            try:
                parsed.append(self._parse(rec.value, rec.key, _arrival(rec, wall)))
                keys.append(rec.key)
                partitions.append(rec.partition)
                offsets.append(rec.offset)
            except ValueError as exc:
                error = InvalidMessage(InvalidReason.INVALID_LOG, str(exc))
                out.append(dead_letter(self.settings, self.metrics, rec, error))
        if not parsed:
            return out
        topics = self.settings.topics
        classes, summaries = self.analyzer.process(parsed, partitions, offsets)
        for record, key, result in zip(parsed, keys, classes, strict=True):
            self.metrics.log_lines.labels(result.label).inc()
            if result.corrected:
                self.metrics.log_corrected_lines.inc()
            out.append(Output(topics.log_classes, key or record.source.encode(), result.encode()))
        out.extend(self._summaries(summaries))
        return out

    def _summaries(self, summaries: list[LogSummary]) -> list[Output]:
        self.metrics.log_summaries.inc(len(summaries))
        topic = self.settings.topics.log_summaries
        return [Output(topic, s.source.encode(), s.encode()) for s in summaries]

    # Classification is synchronous; summaries wait for their window to close, which is state,
    # not pending output: it holds the commit back instead.
    def ready(self, now: float, flush: bool = False) -> Iterator[list[Output]]:
        """Close windows of sources that went quiet (by wall clock, after a grace period)."""
        if flush or now - self._last_advance >= ADVANCE_EVERY_S:
            self._last_advance = now
            yield self._summaries(self.analyzer.advance(time.time() - LATE_GRACE_S))

    def holds(self) -> dict[int, int]:
        """Per partition, the offset of the first line of its oldest open summary window: the
        committed offset must not pass it, so a crash re-reads the window's lines."""
        return self.analyzer.holds()

    def revoked(self, partitions: set[int]) -> None:
        """Open windows of partitions given away (or about to be re-consumed from the last
        commit) are dropped unpublished: whoever reads those partitions next re-reads their
        lines from the committed offset, which no open window's first line is below."""
        self.analyzer.drop(partitions)

    def close(self) -> list[Output]:
        """End of input or shutdown: close every open window so its summary is published."""
        return self._summaries(self.analyzer.flush())


def _arrival(record, wall: float) -> float:
    """The time a line without a timestamp of its own is filed under: the record's Kafka
    timestamp (so a line consumed again after a restart lands in the same window), else now."""
    ts = getattr(record, "timestamp", None)
    if (
        isinstance(ts, int)
        and 0 < ts <= TS_MAX * 1000
        and getattr(record, "timestamp_type", 0) >= 0
    ):
        return ts / 1000.0
    return wall


class LogFeedbackHead(StateHead):
    """tsguard.log-feedback -> corrections of the logs head (no outputs).

    A record is keyed by source, its value {"message", "label"} (or {"source", "message",
    "label"}): from then on, that message's template in that source gets that label. Keyed like
    tsguard.logs and with as many partitions, the member that owns a source's lines owns its
    corrections. A restart re-reads them: this head rebuilds its state, so on assignment the
    pipeline reads back up to `rebuild_messages` records of each partition before the committed
    offset, and a correction applies whether it is read back or new. Corrections stay when a
    partition is revoked: a source's correction is still right if its partition comes back."""

    def __init__(self, settings: Settings, metrics: Metrics, logs: LogsHead):
        self.settings = settings
        self.topic = settings.topics.log_feedback
        self.metrics = metrics
        self.logs = logs

    def apply(self, record, new: bool) -> None:
        try:
            source, message, label = _feedback(record.value, record.key)
            self.logs.analyzer.correct(source, message, label)
        except ValueError as exc:
            raise InvalidMessage(InvalidReason.INVALID_LOG, f"log feedback: {exc}") from None
        self.metrics.log_corrections.set(self.logs.analyzer.corrections)


def _feedback(value: bytes | None, key: bytes | None) -> tuple[str, str, str]:
    obj = keyed_object(value, key, "source")
    source = obj.get("source")
    message, label = obj.get("message"), obj.get("label")
    if not all(isinstance(f, str) and f.strip() for f in (source, message, label)):
        raise ValueError("needs a source (or key), a message and a label")
    return source, message, label
