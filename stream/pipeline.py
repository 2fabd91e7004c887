"""The pipeline, declared in one place: Kafka source -> heads -> Kafka sink, with commits.

Delivery is at-least-once: offsets are committed only after every output produced from the
records before them has been flushed to Kafka. A crash replays from the last commit; events
carry deterministic ids, so consumers de-duplicate. A head that keeps state to publish later (the
logs head's open summary windows) also holds its partitions' commits at the first record that
state needs (`commit_holds`), so that state is rebuilt from the records re-read after a crash.

Scoring stays on this thread. A scoring thread was measured (benchmarks/README.md): on a 2-core
machine it made serve slower, not faster, because torch takes the GIL back between operators
and waits behind the consuming thread's Python each time. Events are sent per scoring call of
at most max_batch windows, as soon as it is scored, and the blocking flush + commit runs at
most every COMMIT_EVERY_S rather than after every poll.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from stream.end_of_input import EndOfInput, StopTimeout
from stream.heads import Head, Output
from stream.health import Health
from stream.kafka_io import (
    end_offsets,
    group_committed,
    input_partitions,
    make_admin,
    make_consumer,
    make_producer,
)
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
FLUSH_TIMEOUT_S = 30.0
MODEL_CHECK_EVERY_S = 2.0
# Flush + commit is a blocking round trip on this thread; events do not wait for it (the
# producer sends them within its linger), only the committed offset does.
COMMIT_EVERY_S = 0.2
# --stop-at-end: how often to ask whether this member's partitions, then the group's, are done.
END_CHECK_EVERY_S = 0.5


class _Rebalance(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread, where blocking client calls are not allowed: it only
    records the change (and pauses new partitions); the main loop does the work after poll."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def on_partitions_revoked(self, revoked):
        # No commit here (it would block the IO thread). Whatever we consumed past the last
        # commit is consumed again by the next owner; event ids make that harmless.
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned):
        self.pipeline.note_assignment(set(assigned))


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
        self._admin = None  # --stop-at-end: reads the group's committed offsets
        self._last_end_check = 0.0
        self._to_forget: set[TopicPartition] = set()
        self._to_rebuild: set[TopicPartition] = set()
        self._send_failed: Exception | None = None
        self._last_lag = 0.0
        self.reload_requested = threading.Event()
        self._last_model_check = time.monotonic()
        self._model_stamp = self._model_head_stamp()
        self._consumed: dict[TopicPartition, int] = {}  # next offset after the last handled
        self._committed: dict[TopicPartition, int] = {}
        self._floor: dict[TopicPartition, int] = {}  # committed offset a rebuild reads up to
        self._last_commit = 0.0
        self.consumer = make_consumer(settings)
        self.producer = make_producer(settings)
        log.info("kafka client: %s", settings.kafka_client)
        self.consumer.subscribe(list(self.heads), listener=_Rebalance(self))

    def stop(self) -> None:
        self.stop_event.set()

    def note_assignment(self, assigned: set[TopicPartition]) -> None:
        lost, gained = self.assigned - assigned, assigned - self.assigned
        self.assigned = assigned
        self.health.partitions = len(assigned)
        self.health.broker_answered()  # the group coordinator just did
        self._to_forget |= lost
        self._to_forget -= assigned
        self._to_rebuild = (self._to_rebuild | gained) & assigned
        if gained:
            # Held back until their state is rebuilt from the log (see _apply_assignment).
            self.consumer.pause(*gained)
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def _apply_assignment(self) -> None:
        """Per-series state lives with the partition: drop what moved away, and rebuild what
        arrived by reading back up to `rebuild_messages` before the committed offset. Records
        before the committed offset only rebuild state; their outputs were published already."""
        lost, self._to_forget = self._to_forget, set()
        for head in self.heads.values():
            head.forget_partitions({tp.partition for tp in lost if tp.topic == head.topic})
        for tp in lost:
            self._consumed.pop(tp, None)
        gained, self._to_rebuild = sorted(self._to_rebuild), set()
        self._rebuild(gained)
        if gained:
            self.consumer.resume(*gained)

    def _rebuild(self, partitions: list[TopicPartition]) -> None:
        depth = self.settings.rebuild_messages
        for tp in partitions:
            head = self.heads[tp.topic]
            committed = self.consumer.committed(tp)
            if committed:
                self._floor[tp] = committed
            if not committed or depth <= 0 or not head.rebuilds_state:
                continue
            begin = self.consumer.beginning_offsets([tp])[tp]
            start = max(begin, committed - depth)
            if start < committed:
                head.replay_until[tp.partition] = committed
                self.consumer.seek(tp, start)
                log.info(
                    "%s[%d]: rebuilding state from offset %d (committed %d)",
                    tp.topic,
                    tp.partition,
                    start,
                    committed,
                )

    def _rewind(self) -> None:
        """An output could not be delivered: forget everything since the last commit and consume
        it again, exactly as a restarted process would."""
        for head in self.heads.values():
            head.forget_partitions({tp.partition for tp in self.assigned if tp.topic == head.topic})
            head.discard_pending()  # pending work belongs to the forgotten state
        for tp in self.assigned:
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self._consumed.clear()
        self._rebuild(sorted(self.assigned))
        self._send_failed = None

    def run(self) -> int:
        """Consume until stopped, or with stop_at_end until the group has committed the end
        offsets recorded here of every input partition (raises StopTimeout past stop_timeout_s,
        after the final checkpoint)."""
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
            for head in self.heads.values():
                self._send(head.finish())
            self.checkpoint(force=True)
            log.info("final checkpoint: outputs flushed, offsets committed")
            if timed_out is not None:
                raise timed_out
            return 0
        finally:
            self.health.stopped = True
            self.close()

    def step(self) -> None:
        self.health.loop_turned()
        wait_ms = int(min(self.settings.max_wait_ms, 200)) if self._any_pending() else 200
        try:
            polled = self.consumer.poll(timeout_ms=wait_ms)
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
        # One handle call per topic, not per partition: a live stream's poll brings a few dozen
        # records per partition, and each call has a fixed cost.
        by_topic: dict[str, list] = {}
        for tp, records in polled.items():
            consumed = records[-1].offset + 1
            if self.end is not None:
                # A job handles its input up to the end offsets recorded at start, no further.
                records, consumed = self.end.clip(tp, records)
            if records:
                by_topic.setdefault(tp.topic, []).extend(records)
            self._consumed[tp] = consumed
        outputs: list[Output] = []
        for topic, records in by_topic.items():
            self.metrics.messages.labels(topic).inc(len(records))
            outputs.extend(self.heads[topic].handle(records, now))
        self._send(outputs)
        self.checkpoint(force=False)
        if self.reload_requested.is_set() or now - self._last_model_check > MODEL_CHECK_EVERY_S:
            self._maybe_reload(now)
        if now - self._last_lag > LAG_EVERY_S:
            self._update_lag()
            self._last_lag = now

    def checkpoint(self, force: bool) -> None:
        """Score what is due (all pending when forced), flush, then commit the offsets whose
        outputs are all sent."""
        now = time.monotonic()
        for head in self.heads.values():
            if not (force or head.due(now)):
                continue
            # One part at a time: the first events do not wait for the rest to be scored.
            for part in head.drain_in_parts(now):
                self._send(part)
        if self._any_pending():
            return  # records behind pending windows are not done: commit nothing yet
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return  # before asking the heads for holds: this runs after every poll
        done = self._committable()
        advance = done != self._committed
        if not force and not advance:
            return
        self._last_commit = now
        try:
            self.producer.flush(timeout=FLUSH_TIMEOUT_S)
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
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in done.items()
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
        """The consumed positions, each held back to the first record still needed by state a
        head will publish from later (a log summary window still open)."""
        done = dict(self._consumed)
        for head in self.heads.values():
            for partition, offset in head.commit_holds().items():
                tp = TopicPartition(head.topic, partition)
                if tp in done and offset < done[tp]:
                    done[tp] = offset
        return done

    def _model_head_stamp(self):
        head = self.heads.get(self.settings.topics.metrics)
        return head.model_stamp() if head is not None else None

    def _maybe_reload(self, now: float) -> None:
        """Hot reload between batches: on SIGHUP, or when the model directory's files change."""
        self._last_model_check = now
        stamp = self._model_head_stamp()
        if stamp is None:
            return
        if not self.reload_requested.is_set() and stamp == self._model_stamp:
            return
        self.reload_requested.clear()
        self._model_stamp = stamp
        self.checkpoint(force=True)  # windows consumed so far are scored by the model they met
        self.heads[self.settings.topics.metrics].reload()

    def _any_pending(self) -> bool:
        return any(h.has_pending() for h in self.heads.values())

    def _send(self, outputs: list[Output]) -> None:
        for sink in self.sinks:
            sink.take(outputs)
        for out in outputs:
            try:
                future = self.producer.send(out.topic, key=out.key, value=out.value)
            except KafkaError as exc:  # e.g. no metadata while the broker is away
                self._on_send_error(exc)
            else:
                future.add_errback(self._on_send_error)

    def _on_send_error(self, exc: Exception) -> None:
        self._send_failed = exc  # may run on the producer's IO thread

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
                for head in self.heads.values():
                    self._send(head.finish())
                self.checkpoint(force=True)
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
        if self._admin is None:
            self._admin = make_admin(self.settings)
        return group_committed(self._admin, self.settings.group_id, sorted(self.end.targets))

    def _consumed_to_end(self, tp: TopicPartition) -> bool:
        target = self.end.targets.get(tp, 0)
        if max(self._consumed.get(tp, 0), self._floor.get(tp, 0)) >= target:
            return True
        if tp in self._consumed and self.consumer.position(tp) >= target:
            # Only offsets without records (transaction markers) lay between: nothing to handle.
            self._consumed[tp] = target
            return True
        return False

    def _update_lag(self) -> None:
        if not self.assigned:
            return
        try:
            ends = self.consumer.end_offsets(list(self.assigned), timeout_ms=2000)
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
            self.producer.close(timeout=10)
        except KafkaError as exc:
            log.warning("closing the producer: %s", exc)
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("closing the consumer: %s", exc)
        if self._admin is not None:
            with contextlib.suppress(KafkaError):
                self._admin.close()
        for sink in self.sinks:
            sink.close()
