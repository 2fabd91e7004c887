"""`tsguard promote` on the real embedded broker: history produced to the metrics topic, a tiny
model trained from it, promoted into a directory a running `tsguard serve` watches (it reloads,
`tsguard_model_info` names the new version), and worse candidates refused."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from stream.cli import main
from tests.conftest import stop, tsguard
from tests.test_retrain import QUICK, TINY, produce_history
from tests.test_serve_integration import free_port, scrape


def model_info(port: int) -> set[str]:
    """Versions `tsguard_model_info` reports as serving now."""
    try:
        samples = scrape(port)
    except OSError:
        return set()
    return {
        k.split('version="')[1].split('"')[0]
        for k, v in samples.items()
        if k.startswith("tsguard_model_info{") and v == 1
    }


def wait_for_version(port: int, version: str, proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if model_info(port) == {version}:
            return
        time.sleep(0.3)
    raise AssertionError(f"serve reports {model_info(port)}, expected {version}")


def zeroed(src: Path, dst: Path, version: str) -> Path:
    """A copy of a model directory with every weight zeroed (forecast: the context's median)."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    save_file({k: v * 0 for k, v in state.items()}, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config | {"version": version}))
    return dst


def promote(candidate: Path, serving: Path, *args: str) -> int:
    return main(["promote", str(candidate), "--serving", str(serving), *args])


def train_from(bootstrap: str, out: Path, version: str, *args: str) -> None:
    argv = ["train", "--from-kafka", "--bootstrap", bootstrap, "--since", "1d", "--out", str(out),
            "--version", version, *QUICK, *args]  # fmt: skip
    assert main(argv) == 0


def test_promote_swaps_a_better_model_into_a_running_serve_and_refuses_worse(
    broker, tmp_path, capsys
):
    produce_history(broker.bootstrap, series=3, n=500, end=time.time())
    serving = tmp_path / "current"
    train_from(broker.bootstrap, tmp_path / "v1", "v1", *TINY)
    assert promote(tmp_path / "v1", serving) == 0  # nothing served yet: installed as is
    assert (
        serving.is_symlink()
        and json.loads((serving / "config.json").read_text())["version"] == "v1"
    )

    port = free_port()
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--model", str(serving),
                   "--metrics-port", str(port), "--group-id", "it-promote",
                   "--session-timeout-ms", "6000")  # fmt: skip
    try:
        wait_for_version(port, "v1", proc)
        # Fine-tuned from the serving model on the same history: better on the held-back tail.
        train_from(broker.bootstrap, tmp_path / "v2", "v2", "--init", str(serving),
                   "--epochs", "4", "--lr", "2e-3")  # fmt: skip
        capsys.readouterr()
        assert promote(tmp_path / "v2", serving) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["decision"] == "promoted" and summary["swapped"]
        (check,) = summary["checks"]
        assert check["metric"] == "held_back.nll" and check["candidate"] < check["serving"]
        wait_for_version(port, "v2", proc)

        report = json.loads((tmp_path / "v2" / "promotion" / "promotion.json").read_text())
        assert report["held_back"]["series"] == 3 and report["held_back"]["windows"] > 0
        assert {r["series"] for r in report["disagreements"]} == {f"host-{s}/cpu" for s in range(3)}
        assert (tmp_path / "v2" / "promotion" / "promotion.png").stat().st_size > 0
        served = serving.resolve()

        # Worse: every weight zeroed, and a model trained for a single step.
        train_from(broker.bootstrap, tmp_path / "one-step", "one-step", *TINY,
                   "--batch-size", "100000")  # fmt: skip
        for worse in (
            zeroed(tmp_path / "v2", tmp_path / "zeroed", "zeroed"),
            tmp_path / "one-step",
        ):
            capsys.readouterr()
            assert promote(worse, serving) == 1
            out, err = capsys.readouterr()
            assert json.loads(out)["decision"] == "refused"
            assert (
                err.startswith("tsguard: candidate refused: held_back.nll") and err.count("\n") == 1
            )
            assert serving.resolve() == served
        assert model_info(port) == {"v2"}
    finally:
        stop(proc)


def test_dry_run_reports_without_swapping_and_a_plain_directory_swaps_per_file(
    broker, tmp_path, capsys
):
    end = time.time()
    produce_history(broker.bootstrap, series=2, n=400, end=end)
    judge_two_events(broker.bootstrap, end, n=400)
    train_from(broker.bootstrap, tmp_path / "v1", "v1", *TINY)
    train_from(broker.bootstrap, tmp_path / "v2", "v2", "--init", str(tmp_path / "v1"),
               "--epochs", "3", "--lr", "2e-3")  # fmt: skip
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tmp_path / "v1" / name, plain / name)
    capsys.readouterr()
    assert promote(tmp_path / "v2", plain, "--dry-run", "--report", str(tmp_path / "r")) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "dry run: would promote"
    assert json.loads((plain / "config.json").read_text())["version"] == "v1"
    report = json.loads((tmp_path / "r" / "promotion.json").read_text())
    # Both models still alert on the spike judged a true positive and stay quiet where the
    # false positive was; the verdict on an event not on tsguard.anomalies is counted apart.
    judged = {"true_positives": 1, "tp_alerted": 1, "false_positives": 1, "fp_alerted": 0,
              "not_in_history": 0}  # fmt: skip
    verdicts = report["metrics"]["verdicts"]
    assert verdicts == {"candidate": judged, "serving": judged, "unmatched": 1}
    checks = {c["metric"]: c["ok"] for c in report["checks"]}
    assert checks["verdicts.tp_alerted"] and checks["verdicts.fp_alerted"]
    assert promote(tmp_path / "v2", plain) == 0
    assert not plain.is_symlink()
    assert json.loads((plain / "config.json").read_text())["version"] == "v2"
    assert (plain / "model.safetensors").read_bytes() == (
        tmp_path / "v2" / "model.safetensors"
    ).read_bytes()
    assert not list(plain.glob(".*.tmp"))


def judge_two_events(bootstrap: str, end: float, n: int) -> None:
    """A spike in host-0/cpu's history (a later record of the same point replaces it) with an
    event on tsguard.anomalies judged a true positive; a quiet point of host-1/cpu with an event
    judged a false positive; and a verdict on an event that is not on the topic."""
    from kafka import KafkaProducer

    from stream.feedback import Verdict

    def ts(i: int) -> float:
        return end - 60 * (n - i)

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    spike = {"series": "host-0/cpu", "ts": ts(300), "value": 500.0}
    producer.send("tsguard.metrics", key=b"host-0/cpu", value=json.dumps(spike).encode())
    for event_id, series, i, verdict in (("tp-1", "host-0/cpu", 300, "true_positive"),
                                         ("fp-1", "host-1/cpu", 320, "false_positive"),
                                         ("gone", "host-1/cpu", 330, "false_positive")):  # fmt: skip
        if event_id != "gone":
            event = {"event_id": event_id, "kind": "start", "series": series, "ts": ts(i)}
            producer.send(
                "tsguard.anomalies", key=series.encode(), value=json.dumps(event).encode()
            )
        v = Verdict(event_id=event_id, series=series, verdict=verdict, ts=end, by="test", note="")
        producer.send("tsguard.feedback", key=series.encode(), value=v.encode())
    producer.flush()
    producer.close()


def test_labelled_collections_are_scored_by_evaluate_labelled(tmp_path, capsys):
    """No broker: a candidate trained on long-form Parquet, scored on its held-back tail and on
    a labelled CSV with `tsguard evaluate labelled`'s metrics."""
    rng = np.random.default_rng(0)
    n = 600
    t = 1_796_083_200.0 + 60.0 * np.arange(n)
    values = 10 + np.sin(np.arange(n) / 8) + rng.normal(0, 0.1, n)
    pd.DataFrame({"series": "a", "ts": t, "value": values}).to_parquet(tmp_path / "h.parquet")
    for version in ("v1", "v2"):
        assert main(["train", "--data", str(tmp_path / "h.parquet"), "--out", str(tmp_path / version),
                     "--version", version, *TINY, *QUICK]) == 0  # fmt: skip
    labels = np.zeros(n, int)
    labels[450:460] = 1
    spiked = values.copy()
    spiked[450:460] += 5
    collection = tmp_path / "ops"
    collection.mkdir()
    pd.DataFrame({"timestamp": t, "value": spiked, "label": labels}).to_csv(
        collection / "s.csv", index=False
    )
    capsys.readouterr()
    promote(tmp_path / "v2", tmp_path / "v1", "--labelled", str(collection), "--dry-run")
    report = json.loads((tmp_path / "v2" / "promotion" / "promotion.json").read_text())
    labelled = report["metrics"]["labelled"]["ops"]
    assert set(labelled) == {"candidate", "serving"}
    assert 0.0 <= labelled["candidate"]["vus_pr"] <= 1.0
    assert any(c["metric"] == "labelled.ops.vus_pr" for c in report["checks"])
    assert report["held_back"]["history"]["source"]["kind"] == "parquet"


def test_refusals_and_user_errors_are_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t = 1_796_083_200.0 + 60.0 * np.arange(500)
    pd.DataFrame({"series": "a", "ts": t, "value": rng.normal(size=500)}).to_parquet(
        tmp_path / "h.parquet"
    )
    data = ["--data", str(tmp_path / "h.parquet"), *QUICK]
    assert main(["train", *data, "--out", str(tmp_path / "w80"), *TINY]) == 0
    wide = [a if a != "80" else "96" for a in TINY]
    assert main(["train", *data, "--out", str(tmp_path / "w96"), *wide]) == 0
    capsys.readouterr()
    assert promote(tmp_path / "w96", tmp_path / "w80") == 1
    assert "window" in capsys.readouterr().err
    assert promote(tmp_path / "missing", tmp_path / "w80") == 2
    err = capsys.readouterr().err
    assert err.startswith("tsguard: error: candidate: model directory") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["promote", str(tmp_path / "w80")])  # no --serving, no TSGUARD_MODEL


def test_a_model_serve_cannot_run_is_refused_even_with_nothing_serving(tmp_path, capsys):
    """A 40-point window is shorter than the Detector's spread signal reads: serve would fail at
    its first batch, so promote refuses it instead of installing it."""
    t = 1_796_083_200.0 + 60.0 * np.arange(300)
    pd.DataFrame({"series": "a", "ts": t, "value": np.sin(np.arange(300) / 5)}).to_parquet(
        tmp_path / "h.parquet"
    )
    short = [a if a != "80" else "40" for a in TINY]
    assert main(["train", "--data", str(tmp_path / "h.parquet"), "--out", str(tmp_path / "w40"),
                 *short, *QUICK]) == 0  # fmt: skip
    capsys.readouterr()
    assert promote(tmp_path / "w40", tmp_path / "current") == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["decision"] == "refused" and not (tmp_path / "current").exists()
    assert err.startswith("tsguard: candidate refused: serve: windows of 40 points are too short")
