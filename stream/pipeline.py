"""The pipeline, declared in one place: Kafka source -> heads -> Kafka sink, with commits.

Delivery is at-least-once: offsets are committed only after every output produced from the
records before them has been flushed to Kafka. A crash replays from the last commit; events
carry deterministic ids, so consumers de-duplicate.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from stream.heads import Head, Output
from stream.kafka_io import end_offsets, make_consumer, make_producer
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def on_partitions_revoked(self, revoked):
        # Finish and commit what we consumed before the partitions move to another process.
        self.pipeline.checkpoint(force=True)
        for head in self.pipeline.heads.values():
            head.forget_partitions({tp.partition for tp in revoked if tp.topic == head.topic})

    def on_partitions_assigned(self, assigned):
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        self.pipeline.assigned = set(assigned)
        self.pipeline.end_targets = None


class Pipeline:
    def __init__(self, settings: Settings, heads: list[Head], metrics: Metrics):
        self.settings = settings
        self.heads = {h.topic: h for h in heads}
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.assigned: set[TopicPartition] = set()
        self.end_targets: dict[TopicPartition, int] | None = None
        self._unflushed = False
        self._last_lag = 0.0
        self.consumer = make_consumer(settings)
        self.producer = make_producer(settings)
        self.consumer.subscribe(list(self.heads), listener=_Rebalance(self))

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Consume until stopped (or, with stop_at_end, until the end offsets seen at start)."""
        try:
            while not self.stop_event.is_set():
                self.step()
                if self.settings.stop_at_end and self._reached_end():
                    log.info("reached the end of every assigned partition")
                    break
            for head in self.heads.values():
                finish = getattr(head, "finish", None)
                if finish is not None:
                    self._send(finish())
                    self._unflushed = True
            self.checkpoint(force=True)
            return 0
        finally:
            self.close()

    def step(self) -> None:
        wait_ms = int(min(self.settings.max_wait_ms, 200)) if self._any_pending() else 200
        try:
            polled = self.consumer.poll(timeout_ms=wait_ms)
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("poll").inc()
            log.warning("poll failed, retrying: %s", exc)
            time.sleep(1.0)
            return
        now = time.monotonic()
        outputs: list[Output] = []
        for tp, records in polled.items():
            self.metrics.messages.labels(tp.topic).inc(len(records))
            outputs.extend(self.heads[tp.topic].handle(records, now))
        self._send(outputs)
        if polled:
            self._unflushed = True
        self.checkpoint(force=False)
        if now - self._last_lag > LAG_EVERY_S:
            self._update_lag()
            self._last_lag = now

    def checkpoint(self, force: bool) -> None:
        """Score what is due (all pending when forced), flush, then commit consumed offsets."""
        now = time.monotonic()
        for head in self.heads.values():
            if force or head.due(now):
                self._send(head.drain(now))
        if self._any_pending() or not self._unflushed:
            return
        self.producer.flush()
        try:
            self.consumer.commit()
            self._unflushed = False
        except KafkaError as exc:
            # Not fatal: the records are re-delivered and their outputs de-duplicated downstream.
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("commit failed (will retry at the next checkpoint): %s", exc)

    def _any_pending(self) -> bool:
        return any(h.has_pending() for h in self.heads.values())

    def _send(self, outputs: list[Output]) -> None:
        for out in outputs:
            self.producer.send(out.topic, key=out.key, value=out.value)

    def _reached_end(self) -> bool:
        if not self.assigned:
            return False
        if self.end_targets is None:
            self.end_targets = end_offsets(self.consumer, sorted(self.assigned))
            log.info(
                "stop-at-end targets: %s",
                {f"{t.topic}[{t.partition}]": o for t, o in self.end_targets.items()},
            )
        return all(self.consumer.position(tp) >= end for tp, end in self.end_targets.items())

    def _update_lag(self) -> None:
        if not self.assigned:
            return
        try:
            ends = self.consumer.end_offsets(list(self.assigned))
            for tp, end in ends.items():
                pos = self.consumer.position(tp)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - pos))
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("lag").inc()
            log.debug("lag update failed: %s", exc)

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        finally:
            self.producer.close(timeout=5)
            self.consumer.close()
