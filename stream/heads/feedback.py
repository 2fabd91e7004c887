"""tsguard.feedback -> the verdicts in force (stream/feedback.py's `Verdicts`); no outputs but
dead letters.

Verdicts are state: on assignment the pipeline reads a partition back (`rebuild`), so they
survive restarts and rebalances; they stay when a partition is revoked (still right if it comes
back, harmless if it does not). tsguard.feedback is co-partitioned with tsguard.metrics, so the
member that scores a series reads its verdicts."""

from __future__ import annotations

from detector.messages import InvalidMessage, InvalidReason
from stream.feedback import Verdict, Verdicts
from stream.heads.base import Head, Output, dead_letter
from stream.metrics import Metrics
from stream.settings import Settings


class FeedbackHead(Head):
    rebuilds_state = True

    def __init__(self, settings: Settings, metrics: Metrics, verdicts: Verdicts):
        self.settings = settings
        self.topic = settings.topics.feedback
        self.metrics = metrics
        self.verdicts = verdicts

    def handle(self, records: list, now: float) -> list[Output]:
        bad = self._apply(records, counted=True)
        return [dead_letter(self.settings, self.metrics, rec, err) for rec, err in bad]

    def rebuild(self, records: list, now: float) -> None:
        self._apply(records, counted=False)  # read back: its dead letters went out the first time

    def _apply(self, records: list, counted: bool) -> list[tuple[object, InvalidMessage]]:
        """Apply each verdict; returns the records that are not one, with why."""
        bad = []
        for rec in records:
            try:
                verdict = Verdict.decode(rec.value, rec.key)
            except ValueError as exc:
                bad.append(
                    (rec, InvalidMessage(InvalidReason.INVALID_FEEDBACK, f"feedback: {exc}"))
                )
                continue
            self.verdicts.add(verdict)
            if counted:
                self.metrics.feedback_verdicts.labels(verdict.verdict).inc()
        return bad
