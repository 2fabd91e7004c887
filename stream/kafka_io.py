"""kafka-python behind tsguard's `Consumer` and `Producer` (stream/clients.py), and the admin
client that creates topics and reads the group's committed offsets, whichever client consumes.

kafka-python's records already carry the fields of `clients.Record` and its TopicPartition is a
(topic, partition) tuple, so polled records are handed over as they come: no object per record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import kafka
import kafka.errors as kerr
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from detector.errors import UserError
from stream.clients import (
    ConsumerConfig,
    KafkaError,
    ProducerConfig,
    Rebalance,
    Record,
    TopicPartition,
)
from stream.settings import KafkaSecurity, Settings

log = logging.getLogger(__name__)


def _common(bootstrap: str, security: KafkaSecurity) -> dict:
    return {"bootstrap_servers": bootstrap.split(","), **security.client_kwargs()}


def consumer_kwargs(config: ConsumerConfig) -> dict:
    return dict(
        group_id=config.group_id if config.joins_group else None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_records=config.max_poll_records,
        # kafka-python's 500 ms default is most of the end-to-end latency at low rates.
        fetch_max_wait_ms=config.fetch_max_wait_ms,
        fetch_max_bytes=config.fetch_max_bytes,
        max_partition_fetch_bytes=config.max_partition_fetch_bytes,
        **_common(config.bootstrap, config.security),
    )


def producer_kwargs(config: ProducerConfig) -> dict:
    return dict(
        acks="all",
        linger_ms=config.linger_ms,
        enable_idempotence=False,
        retries=10,
        max_request_size=config.max_request_bytes,
        **_common(config.bootstrap, config.security),
    )


def _error(exc: Exception) -> KafkaError:
    return KafkaError(f"kafka-python: {exc}")


class _Errors:
    """`with _errors:` raises kafka-python's errors as tsguard's KafkaError."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, kerr.KafkaError):
            raise _error(exc) from None


_errors = _Errors()


def _tp(tp: TopicPartition) -> kafka.TopicPartition:
    return kafka.TopicPartition(tp.topic, tp.partition)


def _tps(partitions) -> list[kafka.TopicPartition]:
    return [_tp(tp) for tp in partitions]


class _Listener(kafka.ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread."""

    def __init__(self, listener: Rebalance):
        self.listener = listener

    def on_partitions_revoked(self, revoked):
        self.listener.on_revoked({TopicPartition(*tp) for tp in revoked})

    def on_partitions_assigned(self, assigned):
        self.listener.on_assigned({TopicPartition(*tp) for tp in assigned})


class KafkaPythonConsumer:
    def __init__(self, config: ConsumerConfig):
        try:
            self._c = kafka.KafkaConsumer(**consumer_kwargs(config))
        except kerr.KafkaTimeoutError:
            raise UserError(f"no Kafka broker reachable at {config.bootstrap}") from None

    def subscribe(self, topics: list[str], listener: Rebalance) -> None:
        self._c.subscribe(topics, listener=_Listener(listener))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._c.assign(_tps(partitions))

    def poll(self, timeout_s: float) -> dict[TopicPartition, list[Record]]:
        with _errors:
            polled = self._c.poll(timeout_ms=int(timeout_s * 1000))
        return {TopicPartition(*tp): records for tp, records in polled.items()}

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._c.pause(*_tps(partitions))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._c.resume(*_tps(partitions))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._c.seek(_tp(tp), offset)

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self._c.seek_to_beginning(_tp(tp))

    def position(self, tp: TopicPartition) -> int:
        with _errors:
            return self._c.position(_tp(tp))

    def committed(self, tp: TopicPartition) -> int | None:
        with _errors:
            return self._c.committed(_tp(tp))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        meta = {_tp(tp): kafka.OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
        with _errors:
            self._c.commit(meta)

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        with _errors:
            got = self._c.beginning_offsets(_tps(partitions))
        return {TopicPartition(*tp): off for tp, off in got.items()}

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float | None = None
    ) -> dict[TopicPartition, int]:
        timeout = {} if timeout_s is None else {"timeout_ms": int(timeout_s * 1000)}
        with _errors:
            got = self._c.end_offsets(_tps(partitions), **timeout)
        return {TopicPartition(*tp): off for tp, off in got.items()}

    def partitions_for(self, topic: str) -> set[int]:
        with _errors:
            return self._c.partitions_for_topic(topic) or set()

    def close(self) -> None:
        with _errors:
            self._c.close(autocommit=False)


class KafkaPythonProducer:
    def __init__(self, config: ProducerConfig):
        try:
            self._p = kafka.KafkaProducer(**producer_kwargs(config))
        except kerr.KafkaTimeoutError:
            raise UserError(f"no Kafka broker reachable at {config.bootstrap}") from None

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        with _errors:  # e.g. no metadata while the broker is away
            future = self._p.send(topic, key=key, value=value)
        if on_error is not None:
            future.add_errback(lambda exc: on_error(_error(exc)))

    def flush(self, timeout_s: float | None = None) -> None:
        with _errors:
            self._p.flush(timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        with _errors:
            self._p.close(timeout=timeout_s)


def read_to_end(settings: Settings, topic: str, timeout_s: float) -> Iterator[list]:
    """Batches of the records of `topic` present now, up to its exact end (probed, as serve
    does: some brokers report a batch's base offset), read by kafka-python's own consumer joining
    no group: what an outside reader (`tsguard feedback`, `tsguard promote`) needs. A missing or
    empty topic yields nothing; UserError past `timeout_s`."""
    from stream.clients import end_offsets

    consumer = kafka.KafkaConsumer(**consumer_kwargs(ConsumerConfig.of(settings, group=False)))
    try:
        parts = sorted(
            kafka.TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
        )
        ends = end_offsets(consumer, parts, settings) if parts else {}
        parts = [tp for tp in parts if ends[tp] > 0]
        if not parts:
            return
        consumer.assign(parts)
        for tp in parts:
            consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise UserError(f"could not read {topic} to its end within {timeout_s:g}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                yield [r for r in records if r.offset < ends[tp]]
    finally:
        consumer.close()


def make_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(
        request_timeout_ms=5000, **_common(settings.bootstrap, settings.security)
    )


def ensure_topics(settings: Settings, topics: list[str], timeout_s: float = 20.0) -> None:
    """Create the topics tsguard reads and writes when they are missing (auto-creation may be
    off on a production cluster)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = make_admin(settings)
            break
        except (kerr.KafkaError, OSError):
            if time.monotonic() > deadline:
                raise UserError(f"no Kafka broker reachable at {settings.bootstrap}") from None
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, settings.partitions, 1) for t in missing], timeout_ms=10000
                )
                log.info("created topics %s", ", ".join(missing))
            except kerr.TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class GroupOffsets:
    """The consumer group's committed offset of each partition (0 where none), whichever member
    committed it: one offset fetch from the group coordinator, over the admin client's own
    connection, whichever client the service consumes with. (Asked through a kafka-python
    consumer that is joining the group, the fetch held its join back on the embedded broker.)"""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._admin: KafkaAdminClient | None = None

    def read(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        group = self.settings.group_id
        with _errors:
            if self._admin is None:
                self._admin = make_admin(self.settings)
            got = self._admin.list_group_offsets({group: _tps(partitions)}).get(group, {})
        return {tp: max(0, got[tp].offset) if tp in got else 0 for tp in partitions}

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(kerr.KafkaError):
                self._admin.close()
