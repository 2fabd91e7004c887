"""The training job: tiny seeded runs write a loadable model dir + report; bad input is a UserError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from detector.errors import UserError
from detector.scorer import load_scorer
from stream.cli import main
from training.datasets import cut_windows, load_series, synthetic_series
from training.train import TrainConfig, lr_at, train

TINY = dict(
    window=40, horizon=8, patch=8, d_model=16, n_heads=2, n_layers=1, d_ff=32, batch_size=64
)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out), synthetic=3, synthetic_length=400, epochs=2, stride=4, seed=3, device="cpu"
    )
    return TrainConfig(**{**base, **TINY, **kw})


def test_tiny_synthetic_run_writes_a_loadable_model_and_report(tmp_path: Path) -> None:
    out = tmp_path / "model"
    report = train(_cfg(out, version="test-train-1"))
    for name in ("config.json", "model.safetensors", "report.json", "loss.png"):
        assert (out / name).is_file(), name
    scorer = load_scorer(out, device="cpu")
    assert scorer.window_length == 40 and scorer.version == "test-train-1"
    w = np.random.default_rng(0).normal(size=(4, 40, 2)).astype(np.float32)
    assert scorer.score(w, 8).errors.shape == (4, 8, 2)

    saved = json.loads((out / "report.json").read_text())
    assert saved["epochs_run"] == report["epochs_run"] == len(saved["history"]) >= 1
    assert all(
        np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in saved["history"]
    )
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["data"]["synthetic_series"] == 3 and training["seed"] == 3
    assert "final_train_loss" in training and "best_val_loss" in training


def test_training_reduces_the_loss(tmp_path: Path) -> None:
    report = train(_cfg(tmp_path / "m", epochs=4, patience=4))
    losses = [h["train_loss"] for h in report["history"]]
    assert losses[-1] < losses[0]


def test_seeded_runs_reproduce_the_same_weights(tmp_path: Path) -> None:
    train(_cfg(tmp_path / "a"))
    train(_cfg(tmp_path / "b"))
    train(_cfg(tmp_path / "c", seed=4))
    a, b, c = (load_file(str(tmp_path / x / "model.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_reads_csv_files_folders_and_multivariate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ts = pd.date_range("2024-01-01", periods=300, freq="5min")
    nab = tmp_path / "nab" / "data" / "realKnownCause"
    nab.mkdir(parents=True)
    pd.DataFrame({"timestamp": ts, "value": rng.normal(size=300)}).to_csv(
        nab / "a.csv", index=False
    )
    multi = tmp_path / "multi.csv"
    pd.DataFrame(
        {"timestamp": ts, "cpu": rng.normal(size=300), "mem": rng.normal(size=300), "host": "x"}
    ).to_csv(multi, index=False)
    series = load_series([str(tmp_path / "nab"), str(multi)], min_length=100)
    assert sorted(s.name for s in series) == ["a.csv:value", "multi.csv:cpu", "multi.csv:mem"]
    report = train(
        _cfg(tmp_path / "m", data=[str(tmp_path / "nab"), str(multi)], synthetic=0, epochs=1)
    )
    assert report["data"]["file_series"] == 3


def test_reads_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="reading Parquet needs pyarrow")
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=200, freq="1min"),
            "v": rng.normal(size=200),
        }
    )
    frame.to_parquet(tmp_path / "a.parquet")
    (series,) = load_series([str(tmp_path)], min_length=100)
    assert series.name == "a.parquet:v"
    np.testing.assert_allclose(series.values, frame["v"].to_numpy(), rtol=1e-6)


def test_cut_windows_splits_in_time() -> None:
    s = synthetic_series(2, 500, seed=0)
    tr, va = cut_windows(s, window=40, stride=1, val_fraction=0.2)
    assert tr.shape == (2 * (400 - 40 + 1), 40) and va.shape == (2 * (100 - 40 + 1), 40)


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.2 and min(lrs[10:]) >= 0.1


def test_bad_input_is_a_user_error(tmp_path: Path) -> None:
    text = tmp_path / "text.csv"
    text.write_text("timestamp,host\n2024-01-01,a\n2024-01-02,b\n")
    short = tmp_path / "short.csv"
    short.write_text(
        "timestamp,value\n" + "".join(f"2024-01-01 00:{i:02d},{i}\n" for i in range(30))
    )
    with pytest.raises(UserError, match="no such file"):
        train(_cfg(tmp_path / "m", data=[str(tmp_path / "missing.csv")]))
    with pytest.raises(UserError, match="no numeric value column"):
        train(_cfg(tmp_path / "m", data=[str(text)]))
    with pytest.raises(UserError, match="at least"):
        train(_cfg(tmp_path / "m", data=[str(short)]))
    with pytest.raises(UserError, match="nothing to train on"):
        train(_cfg(tmp_path / "m", synthetic=0))
    with pytest.raises(UserError, match="epochs"):
        train(_cfg(tmp_path / "m", epochs=0))


def test_cli_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tsguard: error:") and "\n" not in err


def test_train_defaults_are_the_shipped_default_architecture() -> None:
    """`tsguard train` without architecture flags builds what detector/default_model holds."""
    from detector.scorer import DEFAULT_MODEL_DIR

    shipped = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["architecture"]
    defaults = TrainConfig(out="unused")
    assert {k: getattr(defaults, k) for k in shipped} == shipped
