"""The optional librdkafka client (`--kafka-client confluent`) behind tsguard's `Consumer` and
`Producer` (stream/clients.py).

kafka-python stays the default; librdkafka fetches on its own C threads and hands over whole
batches, which costs serve less Python per record (benchmarks/README.md).

Where librdkafka differs, and what is done about it:
- Rebalance callbacks run inside `consume()` on the polling thread (kafka-python: its IO thread).
  The new assignment is applied before the listener runs, so the listener may pause partitions.
- A seek right after an assignment is refused by librdkafka until the partition's fetcher runs;
  it is owed and retried around every poll, and nothing fetched before it is handed over.
  (Pausing needs no such care: librdkafka drops what it fetched ahead and refetches on resume.)
- librdkafka knows a partition's position only once it delivered a record (a seek makes it
  unknown again): until then `position()` reports the last seek, else the committed offset (or
  the partition's start).
- Delivery reports arrive only when the producer is polled: every `send` polls it without
  waiting, and `flush` waits for all of them.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Callable

from detector.errors import UserError
from stream.clients import (
    ConsumerConfig,
    KafkaError,
    ProducerConfig,
    Rebalance,
    Record,
    TopicPartition,
)
from stream.settings import KafkaSecurity

log = logging.getLogger(__name__)

try:
    import confluent_kafka as ck
except ImportError:  # optional dependency
    ck = None

_Record = namedtuple("_Record", "topic partition offset timestamp key value")

REQUEST_TIMEOUT_S = 10.0


def require() -> None:
    """UserError unless confluent-kafka is installed."""
    if ck is None:
        raise UserError(
            "--kafka-client confluent needs confluent-kafka: pip install 'tsguard[confluent]'"
        )


def fetch_config(fetch_wait_ms: int) -> dict:
    """The consumer's fetch settings; the benchmarks' bare librdkafka readers use them too."""
    return {
        "fetch.wait.max.ms": fetch_wait_ms,
        # Fetch a partition again only once what was fetched has been handed over, as
        # kafka-python does: librdkafka's fetch-ahead sends a caught-up consumer's fetches one
        # per round trip, which overloads the embedded broker.
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": 1,
    }


def take(consumer, timeout_s: float, limit: int = 5000) -> list:
    """Up to `limit` messages from a librdkafka consumer, waiting up to timeout_s for the first.

    `consume(n, timeout)` waits until n records or the whole timeout: at live rates every poll
    would take the timeout. This waits for the first record only, then takes what is already
    fetched, as kafka-python's poll does."""
    first = consumer.poll(timeout_s)
    return [] if first is None else [first, *consumer.consume(limit - 1, 0)]


def _common(bootstrap: str, security: KafkaSecurity) -> dict:
    # librdkafka logs a line per dropped connection at level 6 (info); keep warnings and above.
    return {"bootstrap.servers": bootstrap, **security.librdkafka_config(), "log_level": 4}


def consumer_conf(config: ConsumerConfig) -> dict:
    return {
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # The Python client wants a group id even for a consumer that only assigns partitions;
        # one that never subscribes or commits never joins that group.
        "group.id": config.group_id if config.joins_group else f"{config.group_id}.probe",
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": config.heartbeat_interval_ms,
        "fetch.max.bytes": config.fetch_max_bytes,
        "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
        "receive.message.max.bytes": config.fetch_max_bytes + 1_000_000,
        **fetch_config(config.fetch_max_wait_ms),
        **_common(config.bootstrap, config.security),
    }


def producer_conf(config: ProducerConfig) -> dict:
    return {
        "acks": "all",
        "linger.ms": config.linger_ms,
        "enable.idempotence": False,
        "message.max.bytes": config.max_request_bytes,
        **_common(config.bootstrap, config.security),
    }


def _error(exc: Exception) -> KafkaError:
    err = exc.args[0] if exc.args else exc
    text = err.str() if hasattr(err, "str") else str(err)
    return KafkaError(f"librdkafka: {text}")


def _tp(tp: TopicPartition, offset: int | None = None) -> ck.TopicPartition:
    if offset is None:
        return ck.TopicPartition(tp.topic, tp.partition)
    return ck.TopicPartition(tp.topic, tp.partition, offset)


class ConfluentConsumer:
    def __init__(self, config: ConsumerConfig):
        require()
        try:
            self._c = ck.Consumer(consumer_conf(config))
        except ck.KafkaException as exc:
            raise UserError(f"cannot create the Kafka consumer: {_error(exc)}") from None
        self._max_records = config.max_poll_records
        self._listener: Rebalance | None = None
        # librdkafka knows a partition's position only once it delivered a record; until then
        # the last seek says where it is. `_owed`: seeks librdkafka has not taken yet.
        self._seeks: dict[TopicPartition, int] = {}
        self._owed: set[TopicPartition] = set()

    # -- group membership
    def subscribe(self, topics: list[str], listener: Rebalance) -> None:
        self._listener = listener
        self._c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, partitions) -> None:
        consumer.assign(partitions)  # before the listener, so it can pause what it was given
        self._seeks.clear()
        self._owed.clear()
        if self._listener is not None:
            self._listener.on_assigned({TopicPartition(p.topic, p.partition) for p in partitions})

    def _on_revoke(self, consumer, partitions) -> None:
        if self._listener is not None:
            self._listener.on_revoked({TopicPartition(p.topic, p.partition) for p in partitions})
        consumer.unassign()

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._c.assign([_tp(tp) for tp in partitions])

    # -- consuming
    def poll(self, timeout_s: float) -> dict[TopicPartition, list[Record]]:
        self._retry_seeks()
        try:
            messages = take(self._c, timeout_s, self._max_records)
        except ck.KafkaException as exc:
            raise _error(exc) from None
        by_partition: dict[tuple[str, int], list[Record]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaError(f"librdkafka: {err.str()}")
                log.warning("consumer: %s", err.str())
                continue
            key = (m.topic(), m.partition())
            records = by_partition.get(key)
            if records is None:
                records = by_partition[key] = []
            records.append(_Record(*key, m.offset(), m.timestamp()[1], m.key(), m.value()))
        out: dict[TopicPartition, list[Record]] = {}
        for key, records in by_partition.items():
            tp = TopicPartition(*key)
            # Not from a partition that still owes a seek: fetched from where it was before.
            if tp not in self._owed:
                out[tp] = records
                self._seeks.pop(tp, None)  # librdkafka knows the position again
        self._retry_seeks()
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._c.pause([_tp(tp) for tp in partitions])

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._c.resume([_tp(tp) for tp in partitions])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """librdkafka refuses a seek until the partition's fetcher has started (just after it
        was assigned, "Erroneous state"): the seek is then owed, retried around every poll, and
        records fetched for the partition before it succeeds are not handed over."""
        self._seeks[partition] = offset
        self._owed.add(partition)
        self._retry_seeks()

    def _retry_seeks(self) -> None:
        for tp in list(self._owed):
            try:
                self._c.seek(_tp(tp, self._seeks[tp]))
            except ck.KafkaException as exc:
                if exc.args[0].code() != ck.KafkaError._STATE:
                    self._owed.discard(tp)
                    del self._seeks[tp]
                    raise _error(exc) from None
            else:
                self._owed.discard(tp)

    def seek_to_beginning(self, partition: TopicPartition) -> None:
        self.seek(partition, ck.OFFSET_BEGINNING)

    # -- offsets
    def committed(self, partition: TopicPartition) -> int | None:
        try:
            (got,) = self._c.committed([_tp(partition)], timeout=REQUEST_TIMEOUT_S)
        except ck.KafkaException as exc:
            raise _error(exc) from None
        return got.offset if got.offset >= 0 else None

    def partitions_for(self, topic: str) -> set[int]:
        try:
            meta = self._c.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics.get(topic)
        except ck.KafkaException as exc:
            raise _error(exc) from None
        return set(meta.partitions) if meta is not None and meta.error is None else set()

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            self._c.commit(
                offsets=[_tp(tp, off) for tp, off in offsets.items()], asynchronous=False
            )
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def _watermarks(self, partitions, timeout_s: float | None) -> dict[TopicPartition, tuple]:
        timeout = REQUEST_TIMEOUT_S if timeout_s is None else timeout_s
        try:
            return {
                tp: self._c.get_watermark_offsets(_tp(tp), timeout=timeout) for tp in partitions
            }
        except ck.KafkaException as exc:
            raise _error(exc) from None

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: low for tp, (low, _) in self._watermarks(partitions, None).items()}

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        return {tp: high for tp, (_, high) in self._watermarks(partitions, timeout_s).items()}

    def position(self, partition: TopicPartition) -> int:
        sought = self._seeks.get(partition)
        if sought is not None:
            if sought >= 0:
                return sought
            return self.beginning_offsets([partition])[partition]  # seek_to_beginning
        (got,) = self._c.position([_tp(partition)])
        if got.offset >= 0:
            return got.offset
        committed = self.committed(partition)
        if committed is not None:
            return committed
        return self.beginning_offsets([partition])[partition]

    def close(self) -> None:
        try:
            self._c.close()  # auto-commit is off: nothing is committed on close
        except ck.KafkaException as exc:
            raise _error(exc) from None


def on_delivery(on_error: Callable[[KafkaError], None] | None) -> Callable:
    """librdkafka's delivery report callback, calling `on_error` when delivery failed."""

    def report(err, _msg) -> None:
        if err is not None and on_error is not None:
            on_error(KafkaError(f"librdkafka: {err.str()}"))

    return report


class ConfluentProducer:
    def __init__(self, config: ProducerConfig):
        require()
        try:
            self._p = ck.Producer(producer_conf(config))
        except ck.KafkaException as exc:
            raise UserError(f"cannot create the Kafka producer: {_error(exc)}") from None

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        report = on_delivery(on_error)
        while True:
            try:
                self._p.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:  # the local queue is full: wait for deliveries to drain it
                self._p.poll(0.1)
            except ck.KafkaException as exc:
                raise _error(exc) from None
        self._p.poll(0)  # serve delivery reports that are due; never waits

    def flush(self, timeout_s: float | None = None) -> None:
        left = self._p.flush(-1 if timeout_s is None else timeout_s)
        if left:
            raise KafkaError(f"librdkafka: {left} messages not delivered within {timeout_s} s")

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self.flush(timeout_s)
        except KafkaError as exc:
            log.warning("closing the producer: %s", exc)
