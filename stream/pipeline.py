"""The pipeline, declared in one place: Kafka source -> heads -> Kafka sink, with commits.

One turn of the loop (`step`): poll the input topics; hand each topic's records to its head
(stream/heads/); emit what the heads have ready; commit the offsets whose outputs are all out.

Delivery is at-least-once: offsets are committed only after every output produced from the
records before them has been flushed to Kafka, and never past a head's `holds` (the metrics
head's pending windows, the logs head's open summary windows). A crash replays from the last
commit; events carry deterministic ids, so consumers de-duplicate. Per-series state lives with
the partition: on assignment a head that rebuilds its state is handed up to `rebuild_messages`
records from before the committed offset, to rebuild only.

Scoring stays on this thread (a scoring thread made serve slower on 2 cores: benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from bisect import bisect_left
from operator import attrgetter

from stream.clients import (
    KafkaError,
    TopicPartition,
    end_offsets,
    input_partitions,
    make_consumer,
    make_producer,
)
from stream.end_of_input import EndOfInput, StopTimeout
from stream.heads.base import Head, Output
from stream.health import Health
from stream.kafka_io import GroupOffsets
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
FLUSH_TIMEOUT_S = 30.0
# Flush + commit is a blocking round trip on this thread; events do not wait for it (the
# producer sends them within its linger), only the committed offset does.
COMMIT_EVERY_S = 0.2
# --stop-at-end: how often to ask whether this member's partitions, then the group's, are done.
END_CHECK_EVERY_S = 0.5

_offset = attrgetter("offset")


def split_replayed(records: list, floor: int) -> tuple[list, list]:
    """One partition's records, in offset order: those read back from before `floor` (the
    committed offset on assignment) to rebuild state, and those from it on."""
    if not records or records[0].offset >= floor:
        return [], records
    cut = bisect_left(records, floor, key=_offset)
    return records[:cut], records[cut:]


class Pipeline:
    def __init__(self, settings: Settings, heads: list[Head], metrics: Metrics):
        self.settings = settings
        self.heads = {h.topic: h for h in heads}
        self.sinks: list = []  # see every output sent (e.g. stream/alertmanager.py); closed last
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.health = Health()  # what /healthz and /readyz answer (stream/health.py)
        self.health.model_loaded = True  # the heads, the model among them, are built
        self.assigned: set[TopicPartition] = set()
        self.end: EndOfInput | None = None  # --stop-at-end: set when run() starts
        self._group_offsets = GroupOffsets(settings)  # --stop-at-end: is the group done?
        self._last_end_check = 0.0
        self._to_forget: set[TopicPartition] = set()
        self._to_rebuild: set[TopicPartition] = set()
        self._send_failed: Exception | None = None
        self._last_lag = 0.0
        self._consumed: dict[TopicPartition, int] = {}  # next offset after the last handled
        self._committed: dict[TopicPartition, int] = {}
        # The committed offset on assignment: records before it only rebuild state, and the
        # commit never moves back behind it.
        self._floor: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self.consumer = make_consumer(settings)
        self.producer = make_producer(settings)
        log.info("kafka client: %s", settings.kafka_client)
        self.consumer.subscribe(list(self.heads), listener=self)

    def stop(self) -> None:
        self.stop_event.set()

    # -- the loop: source -> heads -> sink ---------------------------------------------------
    def run(self) -> int:
        """Consume until stopped, or with stop_at_end until the group has committed the end
        offsets recorded here of every input partition (raises StopTimeout past stop_timeout_s,
        after the final commit)."""
        try:
            if self.settings.stop_at_end:
                self.end = self._record_end_offsets()
            timed_out = None
            while not self.stop_event.is_set():
                self.step()
                if self.end is not None:
                    done, timed_out = self._end_reached()
                    if done or timed_out is not None:
                        break
            self._publish_all()
            log.info("final checkpoint: outputs flushed, offsets committed")
            if timed_out is not None:
                raise timed_out
            return 0
        finally:
            self.health.stopped = True
            self.close()

    def step(self) -> None:
        self.health.loop_turned()
        try:  # never longer than a pending window may wait (max_wait_ms)
            polled = self.consumer.poll(min(self.settings.max_wait_ms, 200) / 1000)
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("poll").inc()
            log.warning("poll failed, retrying: %s", exc)
            time.sleep(1.0)
            return
        if polled:
            self.health.broker_answered()
        if self._to_forget or self._to_rebuild:
            self._apply_assignment()
        now = time.monotonic()
        self._handle(polled, now)
        self._emit(now)
        self._commit(force=False)
        if now - self._last_lag > LAG_EVERY_S:
            self._update_lag()
            self._last_lag = now

    def _handle(self, polled: dict[TopicPartition, list], now: float) -> None:
        """Each topic's records to its head, in one call per topic, not per partition: a live
        stream's poll brings a few dozen records per partition, and each call has a fixed cost.
        Records read back from before the committed offset go to `rebuild` first."""
        fresh: dict[str, list] = {}
        replayed: dict[str, list] = {}
        for tp, records in polled.items():
            consumed = records[-1].offset + 1
            if self.end is not None:
                # A job handles its input up to the end offsets recorded at start, no further.
                records, consumed = self.end.clip(tp, records)
            self._consumed[tp] = consumed
            again, records = split_replayed(records, self._floor.get(tp, 0))
            if again:
                replayed.setdefault(tp.topic, []).extend(again)
            if records:
                fresh.setdefault(tp.topic, []).extend(records)
        for topic, records in replayed.items():
            self.metrics.messages.labels(topic).inc(len(records))
            self.heads[topic].rebuild(records, now)
        for topic, records in fresh.items():
            self.metrics.messages.labels(topic).inc(len(records))
            self._send(self.heads[topic].handle(records, now))

    def _emit(self, now: float, flush: bool = False) -> None:
        """Send what the heads have ready (everything they hold back, with flush), one part at
        a time: the first events do not wait for the rest to be scored."""
        for head in self.heads.values():
            for part in head.ready(now, flush):
                self._send(part)

    def _send(self, outputs: list[Output]) -> None:
        for sink in self.sinks:
            sink.take(outputs)
        for out in outputs:
            try:
                self.producer.send(out.topic, out.key, out.value, self._on_send_error)
            except KafkaError as exc:  # e.g. no metadata while the broker is away
                self._on_send_error(exc)

    def _on_send_error(self, exc: Exception) -> None:
        self._send_failed = exc  # may run on the producer's IO thread

    def _commit(self, force: bool) -> None:
        """Flush, then commit the offsets whose outputs are all sent (at most every
        COMMIT_EVERY_S unless forced). An output that could not be delivered rewinds instead."""
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return  # before asking the heads for holds: this runs after every poll
        done = self._committable()
        advance = done != self._committed
        if not force and not advance:
            return
        self._last_commit = now
        try:
            self.producer.flush(FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("flush").inc()
            log.warning("flush did not complete, offsets stay uncommitted: %s", exc)
            return
        if self._send_failed is not None:
            self.metrics.kafka_errors.labels("produce").inc()
            log.warning(
                "an output could not be delivered (%s); re-consuming from the last commit",
                self._send_failed,
            )
            self._rewind()
            return
        if not advance:
            return
        # Never move a partition's commit back while its state is rebuilt from before it.
        offsets = {tp: off for tp, off in done.items()
                   if tp in self.assigned and off >= self._floor.get(tp, 0)}  # fmt: skip
        try:
            if offsets:
                self.consumer.commit(offsets)
            self._committed = done
        except KafkaError as exc:
            # Not fatal: the records are re-delivered and their outputs de-duplicated downstream.
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("commit failed (will retry at the next checkpoint): %s", exc)

    def _committable(self) -> dict[TopicPartition, int]:
        """The consumed positions, each held back to the first record whose outputs a head has
        not sent yet."""
        done = dict(self._consumed)
        for head in self.heads.values():
            for partition, offset in head.holds().items():
                tp = TopicPartition(head.topic, partition)
                if tp in done and offset < done[tp]:
                    done[tp] = offset
        return done

    def _publish_all(self) -> None:
        """End of input or shutdown: every head publishes what it holds; flush and commit."""
        for head in self.heads.values():
            self._send(head.close())
        self._emit(time.monotonic(), flush=True)
        self._commit(force=True)

    # -- assignment: state lives with the partition ------------------------------------------
    # The consumer calls these from inside poll or from its own thread, where blocking client
    # calls are not allowed: they record the change (and pause new partitions); the loop does
    # the work after poll (_apply_assignment).
    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        # No commit here. Whatever we consumed past the last commit is consumed again by the
        # next owner; event ids make that harmless.
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        lost, gained = self.assigned - assigned, assigned - self.assigned
        self.assigned = assigned
        self.health.partitions = len(assigned)
        self.health.broker_answered()  # the group coordinator just did
        self._to_forget |= lost
        self._to_forget -= assigned
        self._to_rebuild = (self._to_rebuild | gained) & assigned
        if gained:
            # Held back until their state is rebuilt from the log (see _apply_assignment).
            self.consumer.pause(sorted(gained))
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def _apply_assignment(self) -> None:
        """Drop the state of what moved away, and rebuild what arrived by reading back up to
        `rebuild_messages` before the committed offset."""
        lost, self._to_forget = self._to_forget, set()
        self._revoke(lost)
        for tp in lost:
            self._consumed.pop(tp, None)
        gained, self._to_rebuild = sorted(self._to_rebuild), set()
        self._rebuild({tp: self.consumer.committed(tp) for tp in gained})
        if gained:
            self.consumer.resume(gained)

    def _revoke(self, partitions: set[TopicPartition]) -> None:
        for head in self.heads.values():
            mine = {tp.partition for tp in partitions if tp.topic == head.topic}
            if mine:
                head.revoked(mine)

    def _rebuild(self, commits: dict[TopicPartition, int | None]) -> None:
        """`commits`: each partition taken on and its group's committed offset (None: none)."""
        if not commits:  # an assignment that only took partitions away: nothing to ask the broker
            return
        depth = self.settings.rebuild_messages
        unread = self._unread(commits)
        now = time.monotonic()
        for head in self.heads.values():
            mine = {tp.partition for tp in unread if tp.topic == head.topic}
            if mine:
                head.assigned(mine, now)
        for tp, committed in commits.items():
            if committed:
                self._floor[tp] = committed
            if not committed or depth <= 0 or not self.heads[tp.topic].rebuilds_state:
                continue
            begin = self.consumer.beginning_offsets([tp])[tp]
            start = max(begin, committed - depth)
            if start < committed:
                self.consumer.seek(tp, start)
                log.info(
                    "%s[%d]: rebuilding state from offset %d (committed %d)",
                    tp.topic,
                    tp.partition,
                    start,
                    committed,
                )

    def _unread(self, commits: dict[TopicPartition, int | None]) -> list[TopicPartition]:
        """The partitions with records past the group's committed offset (all, if the broker
        does not answer)."""
        try:
            ends = self.consumer.end_offsets(list(commits), timeout_s=2.0)
        except KafkaError as exc:
            log.warning("cannot read end offsets on assignment: %s", exc)
            return list(commits)
        return [tp for tp, c in commits.items() if ends.get(tp, 1) > (c or 0)]

    def _rewind(self) -> None:
        """An output could not be delivered: forget everything since the last commit and consume
        it again, exactly as a restarted process would."""
        self._revoke(self.assigned)
        commits = {tp: self.consumer.committed(tp) for tp in sorted(self.assigned)}
        for tp, committed in commits.items():
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self._consumed.clear()
        self._rebuild(commits)
        self._send_failed = None

    # -- --stop-at-end -----------------------------------------------------------------------
    def _record_end_offsets(self) -> EndOfInput:
        """--stop-at-end: the end offset of every partition of every input topic, now."""
        started = time.monotonic()
        partitions = input_partitions(self.consumer, list(self.heads))
        targets = end_offsets(self.consumer, partitions, self.settings)
        return EndOfInput(targets, self.settings.stop_timeout_s, started)

    def _end_reached(self) -> tuple[bool, StopTimeout | None]:
        """--stop-at-end, at most every END_CHECK_EVERY_S: (done, timeout error). Done once the
        group's committed offset of every input partition has reached its end offset, whoever
        committed it; until this member's own partitions are consumed to theirs, not asked."""
        now = time.monotonic()
        if now - self._last_end_check < END_CHECK_EVERY_S:
            return False, None
        self._last_end_check = now
        end = self.end
        own_done = all(self._consumed_to_end(tp) for tp in sorted(self.assigned))
        left = None
        if own_done:
            try:
                left = end.left(self._group_committed())
            except KafkaError as exc:
                self.metrics.kafka_errors.labels("committed").inc()
                log.warning("cannot read the group's committed offsets (will retry): %s", exc)
        if left == {}:
            log.info("reached the end of every input partition: the group committed them all")
            return True, None
        if left is not None:
            if any(tp in self.assigned for tp in left):
                # Consumed to the end but not committed: a head may hold the commit for state it
                # publishes later (an open log summary window); publish it now, then commit.
                self._publish_all()
            else:
                end.waiting(left, now)
        if end.timed_out(now):
            if left is None:  # name only what is not done, as the group sees it
                with contextlib.suppress(KafkaError):
                    left = end.left(self._group_committed())
            if left == {}:
                return True, None
            return False, end.timeout_error(left)
        return False, None

    def _group_committed(self) -> dict[TopicPartition, int]:
        return self._group_offsets.read(sorted(self.end.targets))

    def _consumed_to_end(self, tp: TopicPartition) -> bool:
        target = self.end.targets.get(tp, 0)
        if max(self._consumed.get(tp, 0), self._floor.get(tp, 0)) >= target:
            return True
        if tp in self._consumed and self.consumer.position(tp) >= target:
            # Only offsets without records (transaction markers) lay between: nothing to handle.
            self._consumed[tp] = target
            return True
        return False

    # -- lag and shutdown --------------------------------------------------------------------
    def _update_lag(self) -> None:
        if not self.assigned:
            return
        try:
            ends = self.consumer.end_offsets(list(self.assigned), timeout_s=2.0)
            for tp, end in ends.items():
                pos = self.consumer.position(tp)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - pos))
            self.health.broker_answered()
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("lag").inc()
            log.warning("cannot reach Kafka to update consumer lag (will retry): %s", exc)

    def close(self) -> None:
        """Bounded, whatever the broker's state: outputs not flushed by now were never committed,
        so they are produced again by whoever consumes these offsets next."""
        try:
            self.producer.close(timeout_s=10)
        except KafkaError as exc:
            log.warning("closing the producer: %s", exc)
        try:
            self.consumer.close()
        except KafkaError as exc:
            log.warning("closing the consumer: %s", exc)
        self._group_offsets.close()
        for sink in self.sinks:
            sink.close()
