"""The optional librdkafka client (`--kafka-client confluent`) against the real embedded broker:
the consumer and producer behave as the pipeline expects of kafka-python's, and `tsguard serve`
with it publishes the same anomaly events as with the default client."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from detector.errors import UserError
from stream.clients import KafkaError, TopicPartition, end_offsets, make_consumer, make_producer
from stream.kafka_io import ensure_topics
from stream.settings import Settings
from tests.conftest import produce, read_topic, tsguard

pytest.importorskip(
    "confluent_kafka", reason="the optional confluent-kafka client is not installed"
)

pytestmark = pytest.mark.integration

TOPIC = "adapter.test"


def settings(broker, **kw) -> Settings:
    return Settings(
        bootstrap=broker.bootstrap, kafka_client="confluent", session_timeout_ms=6000, **kw
    )


def fill(broker, n_per_partition: int, partitions: int = 2) -> None:
    """n records on each partition, explicitly placed: p0-0 .. p0-(n-1) on 0, and so on."""
    import confluent_kafka as ck

    ensure_topics(Settings(bootstrap=broker.bootstrap, partitions=partitions), [TOPIC])
    producer = ck.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for p in range(partitions):
        for i in range(n_per_partition):
            value = orjson.dumps({"p": p, "i": i})
            producer.produce(TOPIC, value=value, key=f"p{p}-{i}".encode(), partition=p)
    assert producer.flush(10) == 0


def read(consumer, want: int, timeout_s: float = 15.0) -> dict[TopicPartition, list]:
    got: dict[TopicPartition, list] = {}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        for tp, records in consumer.poll(0.2).items():
            got.setdefault(tp, []).extend(records)
    return got


def test_seek_right_after_assign_is_honoured_and_position_follows(broker):
    fill(broker, 50)
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer = make_consumer(settings(broker), group=False)
    try:
        consumer.assign([tp0, tp1])
        consumer.seek(tp0, 30)  # librdkafka refuses this until the fetcher runs: owed, not lost
        assert consumer.position(tp0) == 30
        got = read(consumer, 20 + 50)
        assert [r.offset for r in got[tp0]] == list(range(30, 50))
        assert [r.offset for r in got[tp1]] == list(range(50))
        assert orjson.loads(got[tp0][0].value) == {"p": 0, "i": 30}
        assert got[tp0][0].key == b"p0-30" and got[tp0][0].timestamp > 0
        assert consumer.position(tp0) == 50 and consumer.position(tp1) == 50
        consumer.seek(tp0, 10)  # taken at once now; librdkafka forgets the position until a
        assert consumer.position(tp0) == 10  # record arrives, the adapter must not
        consumer.seek_to_beginning(tp1)
        assert consumer.position(tp1) == 0
        got = read(consumer, 40 + 50)
        assert [r.offset for r in got[tp0]] == list(range(10, 50))
        assert [r.offset for r in got[tp1]] == list(range(50))
    finally:
        consumer.close()


def test_paused_partitions_deliver_nothing_and_resume_where_they_were(broker):
    fill(broker, 40)
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer = make_consumer(settings(broker), group=False)
    try:
        consumer.assign([tp0, tp1])
        consumer.pause([tp1])
        got = read(consumer, 40)
        time.sleep(0.5)
        for tp, records in consumer.poll(0.3).items():
            got.setdefault(tp, []).extend(records)
        assert tp1 not in got and len(got[tp0]) == 40
        consumer.resume([tp1])
        assert [r.offset for r in read(consumer, 40)[tp1]] == list(range(40))
    finally:
        consumer.close()


def test_pausing_mid_stream_skips_nothing(broker):
    """librdkafka fetches ahead of what poll hands over; pausing then must neither hand over
    the prefetched records nor lose them."""
    fill(broker, 20_000, partitions=1)
    tp = TopicPartition(TOPIC, 0)
    consumer = make_consumer(settings(broker), group=False)
    try:
        consumer.assign([tp])
        first = read(consumer, 1)[tp]
        consumer.pause([tp])
        assert consumer.poll(0.5) == {}
        consumer.resume([tp])
        rest = read(consumer, 20_000 - len(first))[tp]
        assert [r.offset for r in first + rest] == list(range(20_000))
    finally:
        consumer.close()


def test_group_commit_survives_a_new_consumer_and_end_offsets_are_exact(broker):
    fill(broker, 25, partitions=1)
    tp = TopicPartition(TOPIC, 0)
    assigned: list[set] = []

    class Listener:
        def on_assigned(self, partitions):
            assigned.append(partitions)

        def on_revoked(self, partitions):
            pass

    s = settings(broker, group_id="adapter")
    consumer = make_consumer(s)
    consumer.subscribe([TOPIC], listener=Listener())
    try:
        assert [r.offset for r in read(consumer, 25)[tp]] == list(range(25))
        assert assigned == [{tp}]
        assert consumer.committed(tp) is None
        consumer.commit({tp: 10})
        assert consumer.committed(tp) == 10
        # The broker may report a partition's end as its last batch's base offset; the probe
        # in end_offsets reads past it, through this client too.
        assert end_offsets(consumer, [tp], s) == {tp: 25}
        assert consumer.beginning_offsets([tp]) == {tp: 0}
    finally:
        consumer.close()
    again = make_consumer(s)
    again.subscribe([TOPIC], listener=Listener())
    try:
        assert [r.offset for r in read(again, 15)[tp]] == list(range(10, 25))
    finally:
        again.close()


def test_producer_reports_failed_deliveries_through_errbacks(broker):
    import confluent_kafka as ck

    s = settings(broker, max_message_bytes=1000)
    ensure_topics(Settings(bootstrap=broker.bootstrap, partitions=1), [TOPIC])
    producer = make_producer(s)
    failures: list[Exception] = []
    producer.send(TOPIC, b"k", b"fine", failures.append)
    producer.flush(10)
    assert failures == []
    reader = make_consumer(settings(broker), group=False)
    reader.assign([TopicPartition(TOPIC, 0)])
    try:
        assert [r.value for r in read(reader, 1)[TopicPartition(TOPIC, 0)]] == [b"fine"]
    finally:
        reader.close()
    # Larger than message.max.bytes: refused at once, as the error type the pipeline handles.
    with pytest.raises(KafkaError, match="librdkafka"):
        producer.send(TOPIC, b"k", b"x" * 3_000_000)

    # A delivery that fails later reaches on_error as a KafkaError: librdkafka's report of the
    # very record sent is called with an error.
    class Reports:
        def __init__(self, inner) -> None:
            self.inner, self.reports = inner, []

        def produce(self, *args, on_delivery, **kwargs):
            self.reports.append(on_delivery)
            return self.inner.produce(*args, on_delivery=on_delivery, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    producer._p = Reports(producer._p)
    producer.send(TOPIC, b"k", b"late", failures.append)
    producer._p.reports[-1](ck.KafkaError(ck.KafkaError._MSG_TIMED_OUT), None)
    assert len(failures) == 1 and isinstance(failures[0], KafkaError)
    producer.close(5)


def test_security_settings_map_to_librdkafka_and_a_missing_client_is_one_line(monkeypatch):
    from stream import confluent_io
    from stream.settings import KafkaSecurity

    sec = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "svc", "secret", "/etc/ca.pem")
    assert sec.librdkafka_config() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "secret",
        "ssl.ca.location": "/etc/ca.pem",
    }
    assert KafkaSecurity().librdkafka_config() == {"security.protocol": "PLAINTEXT"}
    monkeypatch.setattr(confluent_io, "ck", None)
    with pytest.raises(UserError, match="needs confluent-kafka"):
        confluent_io.require()


@pytest.mark.slow
def test_serve_with_confluent_client_publishes_the_same_events_as_the_default():
    from stream.broker import EmbeddedBroker, free_port

    rng = np.random.default_rng(3)
    messages = []
    for k in range(4):
        v = 50 + 10 * np.sin(np.arange(600) / 9 + k) + rng.normal(0, 0.5, 600)
        v[400 + 20 * k] += 80
        messages += [(f"s{k}".encode(), orjson.dumps({"series": f"s{k}", "ts": 1.7e9 + 60 * i, "value": float(x)}))
                     for i, x in enumerate(v)]  # fmt: skip
    messages.append((b"bad", b"{not json"))
    events, dead = {}, {}
    for client in ("kafka-python", "confluent"):
        with EmbeddedBroker() as broker:  # one each: the second run must publish on its own
            ensure_topics(Settings(bootstrap=broker.bootstrap), Settings().topics.all())
            produce(broker.bootstrap, "tsguard.metrics", messages)
            proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--kafka-client", client,
                           "--session-timeout-ms", "6000", "--metrics-port", str(free_port()),
                           "--stop-at-end")  # fmt: skip
            assert proc.wait(timeout=180) == 0
            events[client] = sorted(
                e["event_id"] for e in read_topic(broker.bootstrap, "tsguard.anomalies")
            )
            dead[client] = [
                d["reason"] for d in read_topic(broker.bootstrap, "tsguard.dead-letter")
            ]
    assert len(events["kafka-python"]) >= 4  # each injected spike, at least
    assert events["confluent"] == events["kafka-python"]  # deterministic ids: the same events
    assert dead["confluent"] == dead["kafka-python"] == ["invalid_json"]
