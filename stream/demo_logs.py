"""Log lines for `tsguard demo`: two services' logs, mostly routine, with bursts of trouble."""

from __future__ import annotations

import random
import threading
import time

from detector.messages import dumps

ROUTINE = [
    "GET /api/items/{n} 200 {ms}ms",
    "user {user} logged in from 10.0.{a}.{b}",
    "cache refresh completed in {ms} ms, {n} keys",
    "scheduled job report-{n} finished",
]
TROUBLE = [
    "ERROR connection refused to db-01:5432 after {n} retries",
    "WARN request to /api/checkout took {ms} ms (slow)",
    "ERROR java.lang.OutOfMemoryError: Java heap space in worker-{n}",
    "WARN disk /var/lib/data usage at {pct}%",
    "FATAL could not write block {n} to /dev/sdb: I/O error",
]
SOURCES = ("web-frontend", "billing-api")


def _line(rng: random.Random, templates: list[str]) -> str:
    return rng.choice(templates).format(
        n=rng.randint(1, 9999), ms=rng.randint(3, 4000), user=f"u{rng.randint(1, 500)}",
        a=rng.randint(0, 255), b=rng.randint(0, 255), pct=rng.randint(85, 99),
    )  # fmt: skip


def play_logs(producer, settings, stop: threading.Event, say, rate: float = 40.0) -> None:
    """Produce log messages at `rate` lines/s until `stop`; every ~15 s a burst of errors."""
    rng = random.Random(11)
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        troubled = int(elapsed) % 15 in (10, 11)
        source = SOURCES[n % len(SOURCES)]
        message = _line(rng, TROUBLE if troubled and rng.random() < 0.6 else ROUTINE)
        value = {"source": source, "ts": time.time(), "message": message}
        producer.send(settings.topics.logs, key=source.encode(), value=dumps(value))
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
