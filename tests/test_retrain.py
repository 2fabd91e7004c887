"""Retraining from history: `tsguard train --from-kafka` on the real embedded broker, long-form
Parquet partitioned by date, and fine-tuning with `--init`. Tiny models, one epoch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import torch
from kafka import KafkaProducer
from safetensors.torch import load_file

from detector.scorer import DEFAULT_MODEL_DIR, load_scorer
from stream.cli import main
from training.history import TimeRange, group_points, parse_duration, time_range

TINY = ["--window", "80", "--horizon", "8", "--patch", "8", "--d-model", "16", "--layers", "1"]
QUICK = ["--epochs", "1", "--device", "cpu", "--seed", "1"]


def history_values(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 60 + seed) + rng.normal(0, 0.5, n)


def produce_history(bootstrap: str, series: int, n: int, end: float) -> None:
    """`series` series of `n` 1-minute points ending at `end`, record timestamps = point ts."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for s in range(series):
        for i, v in enumerate(history_values(n, s)):
            ts = end - 60 * (n - i)
            value = orjson.dumps({"series": f"host-{s}/cpu", "ts": ts, "value": float(v)})
            producer.send("tsguard.metrics", key=f"host-{s}/cpu".encode(), value=value,
                          timestamp_ms=int(ts * 1000))  # fmt: skip
    producer.send("tsguard.metrics", key=b"bad", value=b"{not json")
    producer.send("tsguard.metrics", key=b"bad", value=b'{"series": "x", "ts": "yesterday"}')
    # A week before the slice: valid, but outside it.
    old = orjson.dumps({"series": "host-0/cpu", "ts": end - 30 * 86400, "value": 1.0})
    producer.send("tsguard.metrics", key=b"host-0/cpu", value=old)
    producer.flush()
    producer.close()


def data_summary(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    return config["training"]["data"]["real"]


def test_durations_and_ranges() -> None:
    assert parse_duration("7d") == 7 * 86400 and parse_duration("30m") == 1800
    span = time_range(None, "2026-12-01T00:00:00Z", "1796601600")
    assert span == TimeRange(1796083200.0, 1796601600.0)
    assert span.mask(np.array([1796083199.0, 1796083200.0, 1796601600.0])).tolist() == [
        False,
        True,
        False,
    ]
    with pytest.raises(Exception, match="--since"):
        parse_duration("a week")


def test_group_points_orders_by_time_and_keeps_the_last_duplicate() -> None:
    series, stamps = group_points(
        ["b", "a", "b", "b"], np.array([2.0, 1.0, 1.0, 2.0]), np.array([10.0, 5.0, 7.0, 11.0])
    )
    assert [s.name for s in series] == ["b", "a"]
    assert stamps[0].tolist() == [1.0, 2.0] and series[0].values.tolist() == [7.0, 11.0]


def test_train_from_kafka_reads_the_slice_and_counts_what_it_skipped(broker, tmp_path, capsys):
    end = time.time()
    produce_history(broker.bootstrap, series=3, n=300, end=end)
    # A multivariate series, 50 points per message: one training series per dimension.
    points = [{"series": "db/io", "ts": end - 60 * (300 - i), "values": {"r": float(i), "w": None}}
              for i in range(300)]  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(0, 300, 50):
        producer.send("tsguard.metrics", key=b"db/io", value=orjson.dumps(points[i : i + 50]))
    producer.close()
    out = tmp_path / "m"
    rc = main(["train", "--from-kafka", "--bootstrap", broker.bootstrap, "--since", "1d",
               "--out", str(out), "--version", "from-kafka", *TINY, *QUICK])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["version"] == "from-kafka"
    real = data_summary(out)
    history = real["history"]
    assert history["series"] == 5 and history["points"] == 900 + 2 * 300
    assert history["records"] == 900 + 6 + 3
    assert history["invalid"] == {"bad_ts": 1, "invalid_json": 1}
    assert history["outside_range"] == 1
    assert history["source"]["kind"] == "kafka" and history["source"]["topic"] == "tsguard.metrics"
    assert real["holdout"] == 0.1
    assert load_scorer(out, device="cpu").version == "from-kafka"


def test_missing_broker_and_empty_slice_are_one_line_errors(broker, tmp_path, capsys):
    args = ["--since", "1d", "--out", str(tmp_path / "m"), *TINY, *QUICK]
    assert main(["train", "--from-kafka", "--bootstrap", "127.0.0.1:1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tsguard: error: no Kafka broker reachable at 127.0.0.1:1"
    produce_history(broker.bootstrap, series=1, n=10, end=time.time() - 10 * 86400)
    assert main(["train", "--from-kafka", "--bootstrap", broker.bootstrap, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tsguard: error: no metric points in tsguard.metrics") and "\n" not in err
    assert main(["train", "--from-kafka", "--bootstrap", broker.bootstrap, "--topic", "nope",
                 *args]) == 2  # fmt: skip
    assert "topic 'nope' does not exist" in capsys.readouterr().err


def write_partitioned(root: Path, days: int, per_day: int, series: int) -> float:
    """Long-form Parquet in hive date partitions; returns the first timestamp."""
    start = 1_796_083_200.0  # 2026-12-01T00:00:00Z
    for d in range(days):
        rows = []
        for s in range(series):
            values = history_values(days * per_day, s)[d * per_day : (d + 1) * per_day]
            for i, v in enumerate(values):
                rows.append({"series": f"db-{s}", "ts": start + (d * per_day + i) * 60.0,
                             "value": float(v)})  # fmt: skip
        part = root / f"date=2026-12-{d + 1:02d}"
        part.mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(part / "part-0.parquet")
    return start


def test_train_from_parquet_partitioned_by_date(tmp_path: Path) -> None:
    start = write_partitioned(tmp_path / "history", days=3, per_day=120, series=2)
    out = tmp_path / "m"
    until = str(start + 2 * 120 * 60)  # the first two days
    assert main(["train", "--data", str(tmp_path / "history"), "--from-ts", str(start),
                 "--until", until, "--out", str(out), *TINY, *QUICK]) == 0  # fmt: skip
    history = data_summary(out)["history"]
    assert history["source"]["kind"] == "parquet"
    assert history["series"] == 2 and history["points"] == 2 * 240
    assert history["records"] == 2 * 360 and history["outside_range"] == 2 * 120


def test_init_fine_tunes_the_shipped_model(tmp_path: Path) -> None:
    start = write_partitioned(tmp_path / "history", days=1, per_day=400, series=2)
    out = tmp_path / "tuned"
    assert main(["train", "--data", str(tmp_path / "history"), "--from-ts", str(start),
                 "--init", "default", "--out", str(out), "--version", "tuned", "--batch-size",
                 "32", *QUICK]) == 0  # fmt: skip
    shipped = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    tuned = json.loads((out / "config.json").read_text())
    assert tuned["architecture"] == shipped["architecture"]
    assert tuned["calibration"] == shipped["calibration"]
    assert tuned["training"]["init"] == {"dir": "default", "version": shipped["version"]}
    before = load_file(str(DEFAULT_MODEL_DIR / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "fine-tuning changed no weight"
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["lr"] == 5e-4


def test_init_that_is_not_a_model_is_one_line(tmp_path: Path, capsys) -> None:
    write_partitioned(tmp_path / "history", days=1, per_day=200, series=1)
    rc = main(["train", "--data", str(tmp_path / "history"), "--init", str(tmp_path),
               "--out", str(tmp_path / "m"), *QUICK])  # fmt: skip
    assert rc == 2
    assert capsys.readouterr().err.startswith("tsguard: error: --init: model directory")
