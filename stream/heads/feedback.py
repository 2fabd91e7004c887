"""tsguard.feedback -> the verdicts in force (stream/feedback.py's `Verdicts`); no outputs but
dead letters.

Verdicts are state: on assignment the pipeline reads a partition back (`rebuild`), so they
survive restarts and rebalances; they stay when a partition is revoked (still right if it comes
back, harmless if it does not). tsguard.feedback is co-partitioned with tsguard.metrics, so the
member that scores a series reads its verdicts."""

from __future__ import annotations

from detector.messages import InvalidMessage, InvalidReason
from stream.feedback import Verdict, Verdicts
from stream.heads.base import StateHead
from stream.metrics import Metrics
from stream.settings import Settings


class FeedbackHead(StateHead):
    def __init__(self, settings: Settings, metrics: Metrics, verdicts: Verdicts):
        self.settings = settings
        self.topic = settings.topics.feedback
        self.metrics = metrics
        self.verdicts = verdicts

    def apply(self, record, new: bool) -> None:
        try:
            verdict = Verdict.decode(record.value, record.key)
        except ValueError as exc:
            raise InvalidMessage(InvalidReason.INVALID_FEEDBACK, f"feedback: {exc}") from None
        self.verdicts.add(verdict)
        if new:
            self.metrics.feedback_verdicts.labels(verdict.verdict).inc()
