"""What a head is to the pipeline: records of one input topic in, outputs (topic, key, value) out.

The pipeline drives every head the same way, and knows none by name:

    handle(records, now)   records consumed now -> the outputs they give at once
    rebuild(records, now)  records read back from before the committed offset (state only)
    ready(now, flush)      outputs of work held back until now (all of it with flush), in parts
    holds()                where each partition's commit must stop: outputs not yet sent
    assigned(partitions)   partitions newly this process's that have records left to read
    revoked(partitions)    state of partitions given away, or about to be re-consumed
    close()                end of input or shutdown: outputs of every state still held

Delivery is at-least-once: the pipeline commits a record's offset only once every output of it
is flushed, and never past `holds()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from detector.messages import DeadLetter, InvalidMessage
from stream.metrics import Metrics
from stream.settings import Settings


class Output(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes


class Head:
    """The defaults are those of a head that answers every record at once and keeps nothing."""

    topic: str
    # On assignment, read back up to Settings.rebuild_messages records before the committed
    # offset and hand them to `rebuild`: this head's state is rebuilt from the log.
    rebuilds_state: bool = False

    def handle(self, records: list, now: float) -> list[Output]:
        raise NotImplementedError

    def rebuild(self, records: list, now: float) -> None:
        """Their outputs were published by whoever read them first: rebuild state, say nothing."""
        raise NotImplementedError

    def ready(self, now: float, flush: bool = False) -> Iterator[list[Output]]:
        return iter(())

    def holds(self) -> dict[int, int]:
        """{partition: offset} the commit must not pass: the first record whose outputs are not
        sent yet (pending work, or state kept to publish later). {}: commit what was consumed."""
        return {}

    def assigned(self, partitions: set[int], now: float) -> None:
        """These partitions, newly this process's, have records left to read (called before
        their state is rebuilt)."""

    def revoked(self, partitions: set[int]) -> None:
        """Forget the state of these partitions; whoever reads them next rebuilds it."""

    def close(self) -> list[Output]:
        return []


class StateHead(Head):
    """A topic that carries state, not data (verdicts, log corrections): every record is applied,
    whether it is new or read back on assignment, so the state survives restarts and rebalances.
    A record that is not one is dead-lettered when new (read back, its letter went out already).
    Subclasses set `settings` and `metrics` and write `apply`."""

    rebuilds_state = True
    settings: Settings
    metrics: Metrics

    def apply(self, record, new: bool) -> None:
        """Apply one record; InvalidMessage when it is not one."""
        raise NotImplementedError

    def handle(self, records: list, now: float) -> list[Output]:
        return [dead_letter(self.settings, self.metrics, rec, exc)
                for rec, exc in self._apply(records, new=True)]  # fmt: skip

    def rebuild(self, records: list, now: float) -> None:
        self._apply(records, new=False)

    def _apply(self, records: list, new: bool) -> list[tuple[object, InvalidMessage]]:
        bad = []
        for rec in records:
            try:
                self.apply(rec, new)
            except InvalidMessage as exc:
                bad.append((rec, exc))
        return bad


def dead_letter(settings: Settings, metrics: Metrics, record, error: InvalidMessage) -> Output:
    metrics.reject(error)
    metrics.dead_letter.labels(error.reason).inc()
    letter = DeadLetter.of(error, record.topic, record.partition, record.offset, record.value)
    return Output(settings.topics.dead_letter, record.key, letter.encode())
