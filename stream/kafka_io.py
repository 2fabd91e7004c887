"""Kafka clients, built in one place so every part of tsguard uses the same settings.

kafka-python by default; `Settings.kafka_client = "confluent"` gives the service (consumer and
producer) the librdkafka client of stream/confluent_io.py behind the same interface. Topic
creation and the demo's own clients always use kafka-python."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from detector.errors import UserError
from stream.settings import Settings

log = logging.getLogger(__name__)


def _common(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.bootstrap.split(","), **settings.security.client_kwargs()}


def make_producer(settings: Settings) -> KafkaProducer:
    if settings.kafka_client == "confluent":
        from stream.confluent_io import ConfluentProducer

        return ConfluentProducer(settings)
    try:
        return KafkaProducer(
            acks="all",
            linger_ms=5,
            # Duplicates are harmless (deterministic event ids), and idempotent producers cannot
            # recover when a broker comes back without their producer state.
            enable_idempotence=False,
            retries=10,
            max_request_size=max(1_048_576, settings.max_message_bytes * 2),
            **_common(settings),
        )
    except KafkaTimeoutError:
        raise UserError(f"no Kafka broker reachable at {settings.bootstrap}") from None


def make_consumer(settings: Settings, group: bool = True, **overrides) -> KafkaConsumer:
    if settings.kafka_client == "confluent":
        from stream.confluent_io import ConfluentConsumer

        return ConfluentConsumer(settings, group, overrides.get("fetch_max_wait_ms"))
    kwargs = dict(
        group_id=settings.group_id if group else None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.session_timeout_ms // 5),
        max_poll_records=5000,
        # How long the broker may hold an empty fetch: kafka-python's 500 ms default is most of
        # the end-to-end latency at low rates.
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes * 2),
        **_common(settings),
    )
    kwargs.update(overrides)
    try:
        return KafkaConsumer(**kwargs)
    except KafkaTimeoutError:
        raise UserError(f"no Kafka broker reachable at {settings.bootstrap}") from None


def ensure_topics(settings: Settings, topics: list[str], timeout_s: float = 20.0) -> None:
    """Create the topics tsguard reads and writes when they are missing (auto-creation may be
    off on a production cluster)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = make_admin(settings)
            break
        except (KafkaError, OSError):
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
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def end_offsets(
    consumer: KafkaConsumer, partitions: list[TopicPartition], settings: Settings
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
            for tp, records in probe.poll(timeout_ms=100).items():
                result[tp] = max(result[tp], records[-1].offset + 1)
                waiting.discard(tp)
        return result
    finally:
        probe.close()


def input_partitions(consumer: KafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the given topics, from the cluster's metadata."""
    return sorted(
        TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic)
    )


def make_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(request_timeout_ms=5000, **_common(settings))


def group_committed(
    admin: KafkaAdminClient, group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The consumer group's committed offset of each partition (0 where none), whichever member
    committed it: one offset fetch from the group coordinator, over the admin client's own
    connection, whichever client the service consumes with. (Asked through a kafka-python
    consumer that is joining the group, the fetch held its join back on the embedded broker.)"""
    got = admin.list_group_offsets({group_id: partitions}).get(group_id, {})
    return {tp: max(0, got[tp].offset) if tp in got else 0 for tp in partitions}
