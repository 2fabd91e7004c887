"""Shared fixtures: the real embedded broker, a way to run the CLI, and Kafka helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def broker():
    """A fresh embedded Kafka-compatible broker (Tansu, memory storage) per test."""
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


def tsguard(*args: str, **popen) -> subprocess.Popen:
    """Start the real CLI in a subprocess (as a user would), logging to the test's output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], cwd=REPO, env=env, **popen)


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> None:
    """Send and flush; `partition` None: the partition the key hashes to."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value in messages:
        producer.send(topic, key=key, value=value, partition=partition)
    producer.flush()
    producer.close()


def point(series: str, ts: float, value: float) -> tuple[bytes, bytes]:
    return series.encode(), orjson.dumps({"series": series, "ts": ts, "value": value})


def read_topic(
    bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 10.0
) -> list:
    """Everything on a topic (all partitions, from the beginning), as decoded JSON values."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    deadline = time.monotonic() + timeout_s
    parts = None
    while parts is None and time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            time.sleep(0.2)
    out: list = []
    if parts:
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        quiet = 0
        while time.monotonic() < deadline and quiet < 3:
            batch = consumer.poll(timeout_ms=300)
            if not batch:
                quiet += 1
                if expect is not None and len(out) < expect:
                    quiet = 0
                continue
            quiet = 0
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
    consumer.close()
    return out
