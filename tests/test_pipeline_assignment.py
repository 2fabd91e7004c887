"""What the pipeline does when partitions arrive or an output is lost, with an in-memory consumer
(our `stream.clients.Consumer` interface): heads are told which new partitions have records left
to read, state is read back `rebuild_messages` before the committed offset, and a rewind seeks
every partition to its commit once."""

from __future__ import annotations

import pytest

import stream.pipeline as pipeline_module
from stream.clients import KafkaError, TopicPartition
from stream.heads.base import Head
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.settings import Settings

TOPIC = "tsguard.metrics"


def tp(p: int) -> TopicPartition:
    return TopicPartition(TOPIC, p)


class MemoryConsumer:
    """Offsets only: what each partition holds and what the group committed."""

    def __init__(self, ends: dict[int, int], commits: dict[int, int | None]):
        self.ends = {tp(p): e for p, e in ends.items()}
        self.commits = {tp(p): c for p, c in commits.items()}
        self.calls: list[tuple] = []
        self.end_offsets_fail = False

    def subscribe(self, topics, listener):
        self.calls.append(("subscribe", tuple(topics)))

    def committed(self, partition):
        self.calls.append(("committed", partition.partition))
        return self.commits[partition]

    def end_offsets(self, partitions, timeout_s=None):
        self.calls.append(("end_offsets", tuple(p.partition for p in partitions)))
        if self.end_offsets_fail:
            raise KafkaError("broker away")
        return {p: self.ends[p] for p in partitions}

    def beginning_offsets(self, partitions):
        return dict.fromkeys(partitions, 0)

    def seek(self, partition, offset):
        self.calls.append(("seek", partition.partition, offset))

    def seek_to_beginning(self, partition):
        self.calls.append(("seek", partition.partition, "beginning"))

    def pause(self, partitions):
        self.calls.append(("pause", tuple(p.partition for p in partitions)))

    def resume(self, partitions):
        self.calls.append(("resume", tuple(p.partition for p in partitions)))

    def close(self):
        pass


class RecordingHead(Head):
    topic = TOPIC
    rebuilds_state = True

    def __init__(self):
        self.told: list[set[int]] = []
        self.revoked_: list[set[int]] = []

    def assigned(self, partitions, now):
        self.told.append(set(partitions))

    def revoked(self, partitions):
        self.revoked_.append(set(partitions))


def make(monkeypatch, consumer: MemoryConsumer, depth: int = 100) -> tuple[Pipeline, RecordingHead]:
    monkeypatch.setattr(pipeline_module, "make_consumer", lambda settings: consumer)
    monkeypatch.setattr(pipeline_module, "make_producer", lambda settings: object())
    head = RecordingHead()
    settings = Settings(rebuild_messages=depth)
    return Pipeline(settings, [head], Metrics()), head


def test_heads_are_told_which_new_partitions_have_records_left_to_read(monkeypatch):
    # 0: records past its commit; 1: read to its end; 2: never committed, has records;
    # 3: never committed and empty.
    consumer = MemoryConsumer(ends={0: 500, 1: 300, 2: 40, 3: 0},
                              commits={0: 250, 1: 300, 2: None, 3: None})  # fmt: skip
    pipe, head = make(monkeypatch, consumer)
    pipe.on_assigned({tp(0), tp(1), tp(2), tp(3)})
    assert ("pause", (0, 1, 2, 3)) in consumer.calls  # held until their state is rebuilt
    pipe._apply_assignment()
    assert head.told == [{0, 2}]
    seeks = [c for c in consumer.calls if c[0] == "seek"]
    # Read back `rebuild_messages` before the commit where there is one; from the start otherwise.
    assert seeks == [("seek", 0, 150), ("seek", 1, 200)]
    assert pipe._floor == {tp(0): 250, tp(1): 300}
    assert consumer.calls[-1] == ("resume", (0, 1, 2, 3))
    assert [c for c in consumer.calls if c[0] == "committed"] == [
        ("committed", p) for p in range(4)
    ]

    # A later assignment that adds partition 4 and drops 1 rebuilds and tells about 4 alone.
    consumer.ends[tp(4)], consumer.commits[tp(4)] = 10, 5
    pipe.on_assigned({tp(0), tp(2), tp(3), tp(4)})
    pipe._apply_assignment()
    assert head.revoked_ == [{1}]
    assert head.told == [{0, 2}, {4}]

    # One that only takes a partition away rebuilds nothing and asks the broker nothing.
    consumer.calls.clear()
    pipe.on_assigned({tp(0), tp(2), tp(3)})
    pipe._apply_assignment()
    assert head.revoked_ == [{1}, {4}] and head.told == [{0, 2}, {4}]
    assert not [c for c in consumer.calls if c[0] in ("end_offsets", "committed", "seek")]


def test_when_end_offsets_cannot_be_read_every_new_partition_counts_as_unread(monkeypatch):
    consumer = MemoryConsumer(ends={0: 10, 1: 10}, commits={0: 10, 1: None})
    consumer.end_offsets_fail = True
    pipe, head = make(monkeypatch, consumer)
    pipe.on_assigned({tp(0), tp(1)})
    pipe._apply_assignment()
    assert head.told == [{0, 1}]  # held back for a while at worst; never published out of order


@pytest.mark.parametrize("depth", [0, 100])
def test_a_rewind_seeks_each_partition_to_its_commit_and_asks_for_it_once(monkeypatch, depth):
    consumer = MemoryConsumer(ends={0: 500, 1: 40}, commits={0: 250, 1: None})
    pipe, head = make(monkeypatch, consumer, depth)
    pipe.on_assigned({tp(0), tp(1)})
    pipe._apply_assignment()
    consumer.calls.clear()
    pipe._consumed = {tp(0): 260, tp(1): 12}
    pipe._rewind()
    assert head.revoked_ == [{0, 1}]
    assert pipe._consumed == {}
    asked = [c for c in consumer.calls if c[0] == "committed"]
    assert asked == [("committed", 0), ("committed", 1)]
    seeks = [c for c in consumer.calls if c[0] == "seek"]
    back = [("seek", 0, 150)] if depth else []
    assert seeks == [("seek", 0, 250), ("seek", 1, "beginning"), *back]
    assert head.told[-1] == {0, 1}
