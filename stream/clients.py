"""Kafka in tsguard's terms: records keyed by (topic, partition), and the consumer and producer
the pipeline drives, whichever client is behind them.

kafka-python by default (stream/kafka_io.py); `Settings.kafka_client = "confluent"` gives the
service the librdkafka client (stream/confluent_io.py). Each adapter maps `ConsumerConfig` and
`ProducerConfig` into its client's vocabulary once, as `KafkaSecurity` does, and raises
`KafkaError` for every failure. Topic creation and the group's committed offsets go through
kafka-python's admin client whichever client consumes (kafka_io.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from stream.settings import KafkaSecurity, Settings


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(Protocol):
    """A consumed record: what the heads read of it."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch; -1 when the record has none
    key: bytes | None
    value: bytes | None


class KafkaError(Exception):
    """A client call failed (the broker away, a timeout, a message refused); the caller retries
    or gives up, the process keeps running."""


class Rebalance(Protocol):
    """Told of the consumer group's changes; called from inside `poll` or from the client's own
    thread, so it must not call the consumer back except to pause."""

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: set[TopicPartition]) -> None: ...


class Consumer(Protocol):
    def subscribe(self, topics: list[str], listener: Rebalance) -> None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...  # no group: these, now

    def poll(self, timeout_s: float) -> dict[TopicPartition, list[Record]]: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def seek_to_beginning(self, tp: TopicPartition) -> None: ...

    def position(self, tp: TopicPartition) -> int: ...  # the offset of the next record

    def committed(self, tp: TopicPartition) -> int | None: ...  # the group's; None: none yet

    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...  # synchronous

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float | None = None
    ) -> dict[TopicPartition, int]: ...

    def partitions_for(self, topic: str) -> set[int]: ...

    def close(self) -> None: ...  # commits nothing


class Producer(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        """Queue one record; raises KafkaError if it is refused at once, and calls `on_error`
        (possibly from the client's thread) if its delivery fails later."""

    def flush(self, timeout_s: float | None = None) -> None: ...  # KafkaError: not all delivered

    def close(self, timeout_s: float | None = None) -> None: ...


@dataclass(frozen=True)
class ConsumerConfig:
    """The consumer's settings in tsguard's terms; each adapter maps them to its client once."""

    bootstrap: str
    security: KafkaSecurity
    group_id: str
    joins_group: bool  # False: a consumer that only assigns partitions (a probe)
    session_timeout_ms: int
    fetch_max_wait_ms: int  # how long the broker may hold an empty fetch
    max_partition_fetch_bytes: int
    max_poll_records: int = 5000
    fetch_max_bytes: int = 64 * 1024 * 1024

    @classmethod
    def of(cls, settings: Settings, group: bool = True, **overrides) -> ConsumerConfig:
        config = cls(
            bootstrap=settings.bootstrap,
            security=settings.security,
            group_id=settings.group_id,
            joins_group=group,
            session_timeout_ms=settings.session_timeout_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes * 2),
        )
        return replace(config, **overrides)

    @property
    def heartbeat_interval_ms(self) -> int:
        return max(500, self.session_timeout_ms // 5)


@dataclass(frozen=True)
class ProducerConfig:
    """The producer's settings in tsguard's terms. Duplicates are harmless (deterministic event
    ids), and idempotent producers cannot recover when a broker comes back without their
    producer state: acks from all replicas, no idempotence."""

    bootstrap: str
    security: KafkaSecurity
    max_request_bytes: int
    linger_ms: int = 5

    @classmethod
    def of(cls, settings: Settings) -> ProducerConfig:
        return cls(
            bootstrap=settings.bootstrap,
            security=settings.security,
            max_request_bytes=max(1_048_576, settings.max_message_bytes * 2),
        )


def make_consumer(settings: Settings, group: bool = True, **overrides) -> Consumer:
    """The service's consumer (`overrides`: fields of ConsumerConfig)."""
    config = ConsumerConfig.of(settings, group, **overrides)
    if settings.kafka_client == "confluent":
        from stream.confluent_io import ConfluentConsumer

        return ConfluentConsumer(config)
    from stream.kafka_io import KafkaPythonConsumer

    return KafkaPythonConsumer(config)


def make_producer(settings: Settings) -> Producer:
    config = ProducerConfig.of(settings)
    if settings.kafka_client == "confluent":
        from stream.confluent_io import ConfluentProducer

        return ConfluentProducer(config)
    from stream.kafka_io import KafkaPythonProducer

    return KafkaPythonProducer(config)


def input_partitions(consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the given topics, from the cluster's metadata."""
    return sorted(TopicPartition(t, p) for t in topics for p in consumer.partitions_for(t))


def end_offsets(
    consumer: Consumer, partitions: list[TopicPartition], settings: Settings
) -> dict[TopicPartition, int]:
    """One past the last record present now, per partition.

    The broker's reported end offset is trusted only as a lower bound: we read from the record
    just before it and take the last offset of what comes back, which is exact on any
    Kafka-protocol broker (some report the base offset of the last record batch instead)."""
    result = dict(consumer.end_offsets(partitions))
    probe_from = {tp: end - 1 for tp, end in result.items() if end > 0}
    if not probe_from:
        return result
    # The probe shares the service's connection and security settings; it joins no group.
    probe = make_consumer(settings, group=False, fetch_max_wait_ms=50, max_poll_records=1_000_000)
    try:
        probe.assign(list(probe_from))
        for tp, offset in probe_from.items():
            probe.seek(tp, offset)
        waiting = set(probe_from)  # partitions whose probe fetch has not answered yet
        deadline = time.monotonic() + 10.0
        while waiting and time.monotonic() < deadline:
            for tp, records in probe.poll(0.1).items():
                result[tp] = max(result[tp], records[-1].offset + 1)
                waiting.discard(tp)
        return result
    finally:
        probe.close()
