"""Read a bounded time slice of the metrics topic into a `History` (training/history.py).

The broker's time index bounds the read: per partition, from the first offset whose record
timestamp is at or after the slice's start (`offsets_for_times`) to the first at or after its
end, or to the end of the partition when no record is that late. Record timestamps are the
producer's (or the broker's append time), not the point's `ts`, so the index is asked with a
margin of `LATENESS_S` on both sides and each point's own `ts` decides whether it is in the
slice. Messages are decoded by the codec `tsguard serve` uses (stream/codec.py); a message it
rejects is skipped and counted by its reason.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from detector.errors import UserError
from training.history import History, Source, group_points

log = logging.getLogger(__name__)

# How far a record's timestamp may trail or lead its points' ts and still be found by the index.
LATENESS_S = 3600.0
MAX_IDLE_POLLS = 30  # one-second polls with nothing new before the read gives up on the rest


def read_topic_slice(source: Source, progress: bool = True) -> History:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from stream.clients import ConsumerConfig, end_offsets
    from stream.codec import decode_batch
    from stream.kafka_io import consumer_kwargs
    from stream.settings import Settings, Topics

    assert source.start is not None and source.end is not None and source.topic
    settings = Settings(bootstrap=source.bootstrap, topics=Topics(metrics=source.topic))
    if not _reachable(source.bootstrap):
        raise UserError(f"no Kafka broker reachable at {source.bootstrap}")
    try:
        # An offline reader: kafka-python's own consumer (offsets_for_times, max_records).
        config = ConsumerConfig.of(settings, group=False, fetch_max_wait_ms=100)
        consumer = KafkaConsumer(**consumer_kwargs(config))
    except KafkaError:
        raise UserError(f"no Kafka broker reachable at {source.bootstrap}") from None
    try:
        found = consumer.partitions_for_topic(source.topic)
        if not found:
            raise UserError(f"topic {source.topic!r} does not exist on {source.bootstrap}")
        parts = sorted(TopicPartition(source.topic, p) for p in found)
        first = consumer.offsets_for_times({tp: _ms(source.start - LATENESS_S) for tp in parts})
        after = consumer.offsets_for_times({tp: _ms(source.end + LATENESS_S) for tp in parts})
        ends = end_offsets(consumer, parts, settings)
        bounds = {}
        for tp in parts:
            lo = first[tp].offset if first[tp] is not None else ends[tp]
            hi = after[tp].offset if after[tp] is not None and after[tp].offset > lo else ends[tp]
            if hi > lo:
                bounds[tp] = (lo, hi)
        total = sum(hi - lo for lo, hi in bounds.values())
        log.info("reading %d records of %s from %d partitions", total, source.topic, len(bounds))

        names: list[str] = []
        ts_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        invalid: dict[str, int] = {}
        records = outside = 0
        bar = tqdm(total=total, unit="rec", desc=f"reading {source.topic}", file=sys.stderr,
                   disable=None if progress else True)  # fmt: skip
        if bounds:
            consumer.assign(list(bounds))
            for tp, (lo, _) in bounds.items():
                consumer.seek(tp, lo)
        pending = dict(bounds)
        idle = 0
        while pending and idle < MAX_IDLE_POLLS:
            polled = consumer.poll(timeout_ms=1000, max_records=50_000)
            idle = 0 if polled else idle + 1
            for tp, batch in polled.items():
                if tp not in pending:
                    continue
                hi = pending[tp][1]
                batch = [r for r in batch if r.offset < hi]
                records += len(batch)
                bar.update(len(batch))
                cols = decode_batch([r.value for r in batch])
                for _, exc in cols.errors:
                    invalid[exc.reason.value] = invalid.get(exc.reason.value, 0) + 1
                keep = source.range.mask(cols.ts)
                outside += int((~keep).sum())
                for row in np.flatnonzero(keep):
                    p = cols.multi.get(int(row))
                    if p is None:
                        continue
                    for dim, v in zip(p.dims, p.values, strict=True):
                        names.append(f"{p.series}[{dim}]")
                        ts_parts.append(np.array([p.ts]))
                        value_parts.append(np.array([v]))
                plain = keep.copy()
                if cols.multi:
                    plain[list(cols.multi)] = False
                idx = np.flatnonzero(plain)
                names.extend(cols.series[i] for i in idx)
                ts_parts.append(cols.ts[idx])
                value_parts.append(cols.value[idx])
                if consumer.position(tp) >= hi or (batch and batch[-1].offset >= hi - 1):
                    del pending[tp]
                    consumer.pause(tp)
            if not polled and _stalled(consumer, pending):
                break
        bar.close()
        if pending and idle >= MAX_IDLE_POLLS:
            log.warning("gave up waiting for records of %s after %d s", sorted(pending), idle)
    except KafkaError as exc:
        raise UserError(f"reading {source.topic} from {source.bootstrap} failed: {exc}") from None
    finally:
        consumer.close()
    ts_all = np.concatenate(ts_parts) if ts_parts else np.zeros(0)
    values_all = np.concatenate(value_parts) if value_parts else np.zeros(0)
    series, stamps = group_points(names, ts_all, values_all)
    if invalid:
        log.warning("skipped %d invalid messages: %s", sum(invalid.values()), invalid)
    return History(series, stamps, source, records=records, invalid=invalid, outside=outside)


def _reachable(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether any bootstrap server accepts a TCP connection: one line for a missing broker,
    instead of the client's half minute of retries."""
    import socket

    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection(
                (host.strip("[]") or "localhost", int(port)), timeout_s
            ).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _stalled(consumer, pending: dict) -> bool:
    """True when every pending partition's position already reached its bound (records deleted
    by retention or compaction can leave offsets that never arrive)."""
    return all(consumer.position(tp) >= hi for tp, (_, hi) in pending.items())
