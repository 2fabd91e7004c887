"""The benchmarks' code paths, run tiny: each writes its JSON with the fields the README's tables
are built from. Nothing here looks at timings (benchmarks are never timed assertions).

Also: the head the benchmarks propose for stream/heads.py (benchmarks/_batch_head.py) publishes
exactly what the current head publishes."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import orjson
import pytest

Record = namedtuple("Record", "topic partition offset key value")


def test_scoring_bench_smoke(tmp_path):
    from benchmarks import scoring_bench

    out = tmp_path / "scoring.json"
    scoring_bench.main(["--batches", "1,8", "--seconds", "0.01", "--points", "700",
                        "--series", "2", "--threads", "1", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    assert [r["batch"] for r in data["model_alone"]] == [1, 8]
    assert all(r["windows_per_s"] > 0 for r in data["model_alone"])
    assert [r["handle"] for r in data["pipeline"]] == ["current", "proposed"]
    for run in data["pipeline"]:
        assert run["windows"] > 0 and run["model_s"] > 0
        assert {"points_per_s", "windows_per_s", "framework_overhead"} <= set(run)
    assert [r["path"] for r in data["decode_and_window"]] == ["per-point", "batch"]
    assert {"loadavg", "uptime", "torch"} <= set(data["environment"])


def test_memory_bench_smoke(tmp_path):
    from benchmarks import memory_bench

    out = tmp_path / "memory.json"
    memory_bench.main(["--counts", "300", "--stream", "1000", "--caps", "200",
                       "--samples", "2", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    (per,) = data["per_series"]
    assert per["series"] == 300 and per["window_bytes"] == 128 * 4 + 128 * 8
    assert {"bytes_per_series_fresh", "bytes_per_series_warm", "breakdown"} <= set(per)
    (cap,) = data["caps"]
    assert cap["cap"] == 200 and cap["curve"][-1]["tracked"] <= 200
    assert cap["evicted"] > 0


@pytest.mark.integration
def test_ingest_bench_smoke(tmp_path):
    from benchmarks import ingest_bench

    out = tmp_path / "ingest.json"
    ingest_bench.main(["--points", "600", "--series", "2", "--repeats", "1", "--strides", "4",
                       "--variants", "proposed", "--threads", "1", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    assert data["limit_runs"][0]["messages"] == 600 and data["limit_points_per_s"] > 0
    (serve,) = data["serve"]
    assert serve["exit_code"] == 0 and serve["variant"] == "proposed"
    assert {"points_per_s", "ratio_to_limit", "startup_s", "processing_s"} <= set(serve)
    (inproc,) = data["inprocess"]
    assert inproc["points"] == 600 and inproc["windows_scored"] > 0
    assert {"framework_overhead", "model_s", "windows_per_s"} <= set(inproc)


@pytest.mark.integration
def test_latency_bench_smoke(tmp_path):
    from benchmarks import latency_bench

    out = tmp_path / "latency.json"
    latency_bench.main(["--rates", "100", "--max-wait-ms", "20", "--series", "2",
                        "--duration", "3", "--anomaly-every", "0.5", "--history", "280",
                        "--variants", "current", "--threads", "1", "--drain", "20",
                        "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    (run,) = data["runs"]
    assert run["variant"] == "current" and run["rate"] == 100
    assert {"e2e_p50_ms", "e2e_p99_ms", "publish_p99_ms", "kept_up", "events"} <= set(run)
    assert run["spikes"] > 0
    assert {r["fetch_max_wait_ms"] for r in data["floor"]} == {500, 10}


def _records(n_series: int, n: int) -> list[Record]:
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        for s in range(n_series):
            value = 10 * np.sin(k / 8 + s) + rng.normal(0, 0.3)
            if k in (260, 330) and s == 1:
                value += 50.0  # anomalies
            body = {"series": f"s{s}", "ts": 1e9 + 60 * k, "value": float(value)}
            out.append(Record("tsguard.metrics", s % 2, len(out), b"s", orjson.dumps(body)))
    out.insert(100, Record("tsguard.metrics", 0, 10**6, b"bad", b'{"series": "x"}'))
    return out


class _StubScorer:
    """A tiny deterministic scorer (|point - the point before it|), so this test is about the
    head, not about whichever model is the default today."""

    window_length, version, device = 16, "stub-1", "cpu"

    def __init__(self):
        from detector.calibration import CalibrationConfig

        self.calibration = CalibrationConfig()

    def score(self, windows: np.ndarray, n_new: int):
        from detector.api import WindowScores

        err = np.abs(np.diff(windows, axis=1)[:, -n_new:, :])  # [B, n_new, D]
        total = err.sum(axis=2)
        shares = err / np.where(total > 0, total, 1.0)[..., None]
        return WindowScores(total.astype(np.float32), shares.astype(np.float32))


def test_proposed_head_publishes_what_the_current_head_publishes():
    from benchmarks._batch_head import BatchMetricsHead
    from stream.heads import MetricsHead
    from stream.metrics import Metrics
    from stream.settings import Settings

    scorer = _StubScorer()
    records = _records(n_series=3, n=400)
    results = []
    for cls in (MetricsHead, BatchMetricsHead):
        metrics = Metrics()
        head = cls(Settings(stride=2, max_batch=64), scorer, metrics)
        outputs = []
        for lo in range(0, len(records), 250):
            outputs += head.handle(records[lo : lo + 250], 0.0)
            outputs += head.drain(0.0)
        values = []
        for o in outputs:
            v = orjson.loads(o.value)
            v.pop("detected_at", None)
            values.append((o.topic, o.key, v))
        sample = metrics.registry.get_sample_value
        counts = [sample(n) for n in ("tsguard_points_total", "tsguard_windows_scored_total",
                                      "tsguard_anomalies_total")]  # fmt: skip
        results.append((values, counts))
    (cur, cur_counts), (new, new_counts) = results
    assert any(topic == "tsguard.anomalies" for topic, _, _ in cur)
    assert any(topic == "tsguard.dead-letter" for topic, _, _ in cur)
    assert new == cur and new_counts == cur_counts
