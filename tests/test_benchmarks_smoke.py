"""The benchmarks' code paths, run tiny: each writes its JSON with the fields the README's tables
and benchmarks.report are built from, with counts that add up. Nothing here looks at timings
(benchmarks are never timed assertions). One broker-backed test covers ingest and latency."""

from __future__ import annotations

import math

import orjson
import pytest

from detector.scorer import MIN_POINTS


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The benchmarks set torch's thread count in-process; leave it as it was for other tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_scoring_bench_smoke(tmp_path):
    from benchmarks import report, scoring_bench

    out = tmp_path / "scoring.json"
    scoring_bench.main(["--batches", "1,8", "--seconds", "0.01", "--points", "700",
                        "--series", "2", "--threads", "1", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    assert [r["batch"] for r in data["model_alone"]] == [1, 8]
    for r in data["model_alone"]:
        assert r["calls"] >= 3 and r["windows_per_s"] > 0
        assert r["points_per_s"] == pytest.approx(r["windows_per_s"])  # n_new 1
    assert data["model_best_windows_per_s"] == max(r["windows_per_s"] for r in data["model_alone"])
    (run,) = data["pipeline"]  # the service's MetricsHead, once
    assert run["stride"] == 1 and run["points"] == 700
    # 350 points per series, window 128, stride 1: one window per point from the 128th on
    assert run["windows"] == 2 * (350 - MIN_POINTS + 1)  # a series is scored from MIN_POINTS
    assert 0 < run["mean_batch"] <= 1024 and run["model_s"] > 0
    assert run["framework_overhead"] == pytest.approx((run["seconds"] - run["model_s"]) /
                                                      run["model_s"])  # fmt: skip
    assert len(data["decode_and_window"]) == 2
    assert all(r["points_per_s"] > 0 for r in data["decode_and_window"])
    assert data["config"]["threads"] == 1
    assert {"loadavg", "uptime", "torch", "git_commit"} <= set(data["environment"])
    text = report.main(["--results", str(tmp_path)])
    assert "| 8 |" in text and "Pipeline in-process (no Kafka), 700 points" in text


def test_quiet_bench_smoke(tmp_path):
    from benchmarks import quiet_bench

    out = tmp_path / "quiet.json"
    quiet_bench.main(["--kinds", "spikes,noise", "--points", "3000", "--skip", "1000",
                      "--seeds", "0,1", "--threads", "1", "--out", str(out)])  # fmt: skip
    runs = orjson.loads(out.read_bytes())["runs"]
    assert [(r["kind"], r["seed"]) for r in runs] == [
        ("spikes", 0), ("spikes", 1), ("noise", 0), ("noise", 1)
    ]  # fmt: skip
    for r in runs:
        assert r["counted_points"] == 2000 and sum(r["loudest"].values()) == r["starts"]
        assert r["starts_per_1k"] == pytest.approx(r["starts"] / 2)
        assert r["first_start"] is None or r["first_start"] >= 1000
    # A spike of 50 noise units every 500 points after 1,000 quiet ones: the first is news.
    assert all(r["starts"] >= 1 for r in runs[:2])


def test_novelty_bench_smoke(tmp_path):
    from benchmarks import novelty_bench

    out = tmp_path / "novelty.json"
    novelty_bench.main(["--batches", "1,3", "--n-new", "2", "--seconds", "0.01", "--threads", "1",
                        "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    runs = data["runs"]
    assert [(r["search"], r["batch"]) for r in runs] == [
        ("loop", 1), ("matmul", 1), ("loop", 3), ("matmul", 3)
    ]  # fmt: skip
    for r in runs:
        assert r["calls"] >= 3 and r["points_per_s"] == pytest.approx(2 * r["windows_per_s"])
    assert {"loadavg", "torch", "git_commit"} <= set(data["environment"])


def test_memory_bench_smoke(tmp_path):
    from benchmarks import memory_bench, report

    out = tmp_path / "memory.json"
    memory_bench.main(["--counts", "300", "--stream", "1000", "--caps", "200",
                       "--samples", "2", "--in-process", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    (per,) = data["per_series"]
    assert per["series"] == 300 and per["window_bytes"] == 128 * 4 + 128 * 8
    assert {"bytes_per_series_fresh", "bytes_per_series_warm", "rss_base"} <= set(per)
    assert per["breakdown"]["window_values_float32"] == 128 * 4
    (cap,) = data["caps"]
    assert cap["cap"] == 200 and cap["series_streamed"] == 1000
    assert cap["curve"][-1]["series_seen"] == 1000
    assert all(c["tracked"] <= 200 for c in cap["curve"])
    assert cap["evicted"] == 1000 - cap["curve"][-1]["tracked"]
    assert "loadavg" in data["environment"]
    text = report.main(["--results", str(tmp_path)])
    assert "| 300 |" in text and "`--max-series 200`: 1,000 distinct series streamed" in text
    assert "| <= 2 KiB per series beyond the window | " in text


# The two broker-backed benchmarks, tiny, with a short session timeout (the embedded broker lets
# a group join after about half of it); two tests so that two workers can take them at once.


@pytest.mark.integration
def test_ingest_bench_smoke(tmp_path):
    from benchmarks import ingest_bench, report

    n, series, stride = 600, 2, 4
    out = tmp_path / "ingest.json"
    ingest_bench.main(["--points", str(n), "--series", str(series), "--repeats", "1",
                       "--strides", str(stride), "--torch-threads", "1",
                       "--kafka-clients", "kafka-python,confluent",
                       "--session-timeout-ms", "2000", "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    (limit,) = data["limit_runs"]
    assert limit["messages"] == n and limit["points"] == n
    assert data["limit_points_per_s"] == limit["points_per_s"]
    (rd_limit,) = data["client_limit_runs"]["confluent"]
    assert rd_limit["messages"] == n and rd_limit["points"] == n
    assert data["client_limits_points_per_s"]["confluent"] == rd_limit["points_per_s"]
    assert [s["kafka_client"] for s in data["serve"]] == ["kafka-python", "confluent"]
    for serve in data["serve"]:
        assert serve["exit_code"] == 0 and serve["stride"] == stride and serve["torch_threads"] == 1
        assert serve["ratio_to_limit"] == pytest.approx(
            serve["points_per_s"] / limit["points_per_s"]
        )
        assert 0 < serve["startup_s"] < serve["wall_s"] and serve["model_loaded_s"] is not None
        assert serve["end_offset_probe_s"] is not None  # its log line was seen
    assert [ip["kafka_client"] for ip in data["inprocess"]] == ["kafka-python", "confluent"]
    for inproc in data["inprocess"]:
        assert inproc["stride"] == stride and inproc["torch_threads"] == 1
        # every point read; 300 per series, window 128, a window every 4 new points
        assert inproc["points"] == n
        assert inproc["windows_scored"] == series * ((n // series - MIN_POINTS) // stride + 1)
        assert inproc["model_s"] > 0 and inproc["framework_overhead"] is not None
    assert data["config"]["threads"] == [1]
    text = report.main(["--results", str(tmp_path)])
    assert "| `tsguard serve --stop-at-end` | kafka-python | 4 | 1 |" in text
    assert "| `tsguard serve --stop-at-end` | confluent | 4 | 1 |" in text


@pytest.mark.integration
def test_latency_bench_smoke(tmp_path):
    from benchmarks import latency_bench, report

    out = tmp_path / "latency.json"
    latency_bench.main(["--rates", "100", "--max-wait-ms", "20", "--fetch-max-wait-ms", "10",
                        "--series", "4", "--duration", "1.5", "--anomaly-every", "0.4",
                        "--history", "280", "--torch-threads", "1", "--drain", "20",
                        "--settle", "1", "--session-timeout-ms", "2000",
                        "--out", str(out)])  # fmt: skip
    data = orjson.loads(out.read_bytes())
    (run,) = data["runs"]
    assert run["rate"] == 100 and run["max_wait_ms"] == 20 and run["fetch_max_wait_ms"] == 10
    assert run["torch_threads"] == 1
    assert run["achieved"] > 0 and 1 <= run["spikes"] <= 3 and run["spikes_repeated"] == 0
    # events map back to the points that triggered them: every spike (each on its own series)
    # opened an episode, and the event for it came back
    assert run["spikes_found"] == run["spikes"] and run["events"] >= run["spikes_found"]
    assert not math.isnan(run["e2e_p99_ms"]) and run["e2e_p99_ms"] >= run["e2e_p50_ms"]
    assert {"publish_p50_ms", "publish_p99_ms", "serve_e2e_p99_ms", "kept_up"} <= set(run)
    # serve's own CPU (every thread) while it took the points: some, and not more than 2 s/point
    assert 0 < run["serve_cpu_us_per_point"] < 2e6 and run["serve_cores"] > 0
    assert run["floor_beside_p99_ms"] >= run["floor_beside_p50_ms"] > 0  # read beside serve
    assert {r["fetch_max_wait_ms"] for r in data["floor"]} == {500, 10}
    assert all(r["points"] > 0 for r in data["floor"])
    text = report.main(["--results", str(tmp_path)])
    assert "| 20 | 10 | 100 |" in text and "Floor (bare consumer, no tsguard)" in text


def test_run_all_skips_logs_without_loghub(tmp_path, monkeypatch, capsys):
    from benchmarks import logs_bench, run_all

    monkeypatch.setattr(logs_bench, "LOGHUB", tmp_path / "no-loghub")
    part = run_all.run_part("logs", tmp_path, quick=True, timeout_s=5)
    assert part["status"] == "skipped" and "no loghub data" in part["reason"]
    assert "logs: skipped: no loghub data" in capsys.readouterr().out
    assert not (tmp_path / "logs_bench.json").exists()


def test_report_counts_gpu_figures_only_for_the_current_default_model(tmp_path):
    from benchmarks import report
    from benchmarks.report import GPU_RESULTS, GPU_TARGET
    from detector.scorer import DEFAULT_MODEL_DIR

    current = orjson.loads((DEFAULT_MODEL_DIR / "config.json").read_bytes())["version"]
    row = "| >= 1,000,000 windows/s on an H100 |"
    for version, status in [(current, "| met |"), ("an-older-model", "| not measured (current")]:
        gpu = {"model": {"version": version, "device": "cuda", "gpu": "H100"},
               "model_best_windows_per_s": 2 * GPU_TARGET}  # fmt: skip
        (tmp_path / GPU_RESULTS).write_bytes(orjson.dumps(gpu))
        (line,) = [x for x in report.main(["--results", str(tmp_path)]).splitlines() if row in x]
        assert status in line, line


def test_retrain_bench_smoke(tmp_path):
    """Produce a little history, train --from-kafka --init default, promote: the row adds up."""
    from benchmarks import retrain_bench

    out = tmp_path / "retrain.json"
    retrain_bench.main(["--series", "3", "--days", "0.25", "--points-per-message", "30",
                        "--stride", "16", "--threads", "1", "--out", str(out)])  # fmt: skip
    row = orjson.loads(out.read_bytes())["result"]
    assert row["series"] == 3 and row["points"] == 3 * 360 and row["messages"] == 3 * 12
    assert row["epochs"] == 1 and row["windows"] > 0
    assert row["decision"] in ("promoted", "refused")
    assert row["nll_candidate"] == row["nll_candidate"]  # a number, not NaN
