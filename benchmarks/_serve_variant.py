"""`tsguard` with the changes this benchmark suite proposes for files it does not own, so each
benchmark can run the current service and the proposal side by side (A/B), on the same data.

    python -m benchmarks._serve_variant serve --bootstrap ...   # same arguments as `tsguard`

Environment (each optional; unset = today's behaviour):
- TSGUARD_BENCH_HEAD=proposed: MetricsHead -> benchmarks._batch_head.BatchMetricsHead
  (batch fast path in handle, leaner scoring loop) [proposal for stream/heads.py];
- TSGUARD_BENCH_FETCH_MAX_WAIT_MS=N: the consumer's fetch.max.wait.ms (kafka-python default
  500), the longest the broker may hold a fetch when no data is there [proposal for
  stream/kafka_io.py make_consumer].
"""

from __future__ import annotations

import os
import sys


def install(env: dict[str, str] | None = None):
    """Patch the proposals in (from `env`, default os.environ); returns a function that undoes it."""
    env = os.environ if env is None else env
    import stream.heads
    import stream.pipeline
    from stream import kafka_io

    saved = (kafka_io.make_consumer, stream.pipeline.make_consumer, stream.heads.MetricsHead)
    fetch_wait = env.get("TSGUARD_BENCH_FETCH_MAX_WAIT_MS")
    if fetch_wait:
        original = kafka_io.make_consumer

        def make_consumer(settings, group: bool = True, **overrides):
            overrides.setdefault("fetch_max_wait_ms", int(fetch_wait))
            return original(settings, group, **overrides)

        kafka_io.make_consumer = make_consumer
        stream.pipeline.make_consumer = make_consumer  # imported by name there
    if env.get("TSGUARD_BENCH_HEAD") == "proposed":
        from benchmarks._batch_head import BatchMetricsHead

        stream.heads.MetricsHead = BatchMetricsHead  # build_service imports it at call time

    def restore() -> None:
        kafka_io.make_consumer, stream.pipeline.make_consumer, stream.heads.MetricsHead = saved

    return restore


if __name__ == "__main__":
    install()
    from stream.cli import main

    sys.exit(main())
