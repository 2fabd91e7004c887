"""`--stop-at-end`: when a backfill or replay job is done, judged by the group, not the process.

A job is done when the consumer group's committed offset of every partition of every input topic
has reached the end offset recorded when the job started, whoever committed it. Partitions this
process is not assigned count as done only once their owner has committed them: a partition held
by nobody, or by a member that died and has not been dropped from the group yet, keeps the job
waiting for the rebalance that hands it over. So the exit status does not depend on how the
broker's group coordinator treats dead members (the embedded broker completes a rebalance with a
member killed during its join; Apache Kafka waits for that member's session to expire).
"""

from __future__ import annotations

import logging

from stream.clients import TopicPartition

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 30.0


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


class StopTimeout(Exception):
    """--stop-timeout passed with partitions not done; the message names them."""


class EndOfInput:
    """The end offsets recorded at start, and the bookkeeping of waiting for the group."""

    def __init__(self, targets: dict[TopicPartition, int], timeout_s: float | None, started: float):
        self.targets = targets
        self.timeout_s = timeout_s
        self.started = started  # time.monotonic() when the job started
        self._waited: set[TopicPartition] = set()  # as last logged
        self._last_wait_log = 0.0
        log.info("stop-at-end targets: %s", {_name(tp): end for tp, end in sorted(targets.items())})

    def clip(self, tp: TopicPartition, records: list) -> tuple[list, int]:
        """The records below the partition's end offset, and the offset consumed up to: the end
        offset itself once a record at or past it came (everything before it was handed over)."""
        end = self.targets.get(tp)
        if end is None or records[-1].offset < end:
            return records, records[-1].offset + 1
        return [r for r in records if r.offset < end], end

    def left(self, committed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """{partition: committed offset} of the partitions whose commit is short of the end."""
        return {
            tp: committed.get(tp, 0)
            for tp, end in self.targets.items()
            if committed.get(tp, 0) < end
        }

    def describe(self, left: dict[TopicPartition, int]) -> str:
        return ", ".join(
            f"{_name(tp)} (committed {off} of {self.targets[tp]})"
            for tp, off in sorted(left.items())
        )

    def waiting(self, left: dict[TopicPartition, int], now: float) -> None:
        """Say which partitions the job waits for: when they change (the first time included),
        and every WAIT_LOG_EVERY_S while they do not."""
        waited = set(left)
        if waited != self._waited or now - self._last_wait_log >= WAIT_LOG_EVERY_S:
            self._waited, self._last_wait_log = waited, now
            log.info("stop-at-end: waiting for the group to commit %s", self.describe(left))

    def timed_out(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.started >= self.timeout_s

    def timeout_error(self, left: dict[TopicPartition, int] | None) -> StopTimeout:
        """`left` None: the group's offsets could not be read; every partition is named."""
        if left is None:
            what = ", ".join(map(_name, sorted(self.targets))) + " (group offsets unreadable)"
        else:
            what = self.describe(left)
        return StopTimeout(
            f"--stop-timeout {self.timeout_s:g}s passed, partitions not done: {what}"
        )
