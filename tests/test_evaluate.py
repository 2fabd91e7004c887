"""`tsguard evaluate nab` end to end on a tiny corpus, and the baselines' streaming contract."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from stream.cli import main
from training import nab
from training.baselines import BASELINES
from training.evaluate import TsguardDetector
from training.synthetic import Anomaly, SeriesSpec, generate

N = 1200  # points per file: probation = 180


def _write_series(root: Path, name: str, values: np.ndarray, windows: list[tuple[int, int]]):
    ts = pd.date_range("2021-03-01", periods=len(values), freq="5min")
    path = root / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(
        path, index=False
    )
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return [[ts[a].strftime(fmt), ts[b].strftime(fmt)] for a, b in windows]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """Three synthetic files in NAB layout: two with labelled anomalies, one without."""
    root = tmp_path_factory.mktemp("nab")
    labels = {}
    spike, _ = generate(SeriesSpec(period=96, seed=1), N, [Anomaly("spike", 700, 1, 12.0)])
    labels["synth/spike.csv"] = _write_series(root, "synth/spike.csv", spike, [(650, 749)])
    shift, _ = generate(SeriesSpec(period=48, seed=2), N, [Anomaly("level_shift", 900, 1, 10.0)])
    labels["synth/shift.csv"] = _write_series(root, "synth/shift.csv", shift, [(860, 959)])
    calm, _ = generate(SeriesSpec(period=96, seed=3), N)
    labels["other/calm.csv"] = _write_series(root, "other/calm.csv", calm, [])
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["evaluate", "nab", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_baseline_end_to_end_writes_results_json_and_plots(corpus_dir, tmp_path, capsys) -> None:
    out = tmp_path / "wg.json"
    rc, stdout, _ = _run(
        capsys,
        "--corpus",
        str(corpus_dir),
        "--detector",
        "windowed-gaussian",
        "--out",
        str(out),
        "--plots",
        str(tmp_path / "plots"),
        "--n-plots",
        "2",
    )
    assert rc == 0
    printed = json.loads(stdout)
    assert set(printed) == set(nab.PROFILE_NAMES)
    assert all(isinstance(v, float) for v in printed.values())

    report = json.loads(out.read_text())
    assert report["detector"] == "windowed-gaussian" and report["files"] == 3
    assert set(report["profiles"]) == set(nab.PROFILE_NAMES)
    for name, p in report["profiles"].items():
        assert p["score"] == pytest.approx(printed[name], abs=1e-3)
        assert p["null"] == pytest.approx(-2.0 * nab.PROFILES[name].fn_weight)  # two windows
        assert p["perfect"] == pytest.approx(2.0)
    # A 12-sigma spike and a 7-sigma level shift are easy: better than never detecting.
    assert printed["standard"] > 0.0

    csv = Path(report["results_dir"]) / "synth" / "windowed-gaussian_spike.csv"
    df = pd.read_csv(csv)
    assert list(df.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(df) == N and df["label"].sum() == 100
    assert df["anomaly_score"].between(0, 1).all()

    plots = [Path(p) for p in report["plots"]]
    assert len(plots) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)

    # Re-scoring the written result CSVs reproduces the run's scores exactly.
    rc, stdout2, _ = _run(capsys, "--corpus", str(corpus_dir), "--scores", report["results_dir"])
    assert rc == 0 and json.loads(stdout2) == printed


def test_files_option_restricts_the_corpus(corpus_dir, tmp_path, capsys) -> None:
    out = tmp_path / "one.json"
    rc, _, _ = _run(
        capsys,
        "--corpus",
        str(corpus_dir),
        "--detector",
        "null",
        "--files",
        "synth/spike*",
        "--out",
        str(out),
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["files"] == 1 and list(report["per_file_raw"]) == ["synth/spike.csv"]
    assert report["profiles"]["standard"]["score"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--corpus", "/nonexistent/nab"],
        ["--corpus", "{corpus}", "--scores", "/nonexistent/results"],
        ["--corpus", "{corpus}", "--files", "nothing/*", "--detector", "null"],
    ],
)
def test_user_errors_exit_2_with_one_line(argv, corpus_dir, capsys) -> None:
    rc, stdout, stderr = _run(capsys, *[a.format(corpus=corpus_dir) for a in argv])
    assert rc == 2 and stdout == ""
    assert stderr.startswith("tsguard: error: ") and stderr.count("\n") == 1


# ----------------------------------------------------------------------------- detectors


def _series(seed: int = 0, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    values, _ = generate(SeriesSpec(period=96, seed=seed), n, [Anomaly("spike", 1200, 1, 15.0)])
    return values, np.arange(n)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_are_causal_and_in_0_1(name: str) -> None:
    values, ts = _series()
    det = BASELINES[name]()
    scores = det.score_series(values, ts)
    assert scores.shape == values.shape
    assert np.all((scores >= 0) & (scores <= 1))
    # Rewriting the future must not change any score up to the cut.
    cut = 1000
    future = values.copy()
    future[cut + 1 :] = np.random.default_rng(1).normal(0, 100, len(values) - cut - 1)
    np.testing.assert_array_equal(det.score_series(future, ts)[: cut + 1], scores[: cut + 1])


@pytest.mark.parametrize("name", ["windowed-gaussian", "isolation-forest", "pca"])
def test_baselines_rank_an_obvious_spike_near_the_top(name: str) -> None:
    values, ts = _series()
    scores = BASELINES[name]().score_series(values, ts)
    # Window-based methods keep flagging while the spike is inside their window (16 points).
    after = slice(1200, 1216)
    normal = np.r_[scores[nab.probationary_length(len(values)) : 1200], scores[1216:]]
    assert scores[after].max() > np.quantile(normal, 0.995)


class _EchoScorer:
    """A stand-in WindowScorer that records the newest points of every window it scores, so
    the windowing of Detector.run_series can be checked exactly."""

    window_length = 8
    max_new = 4
    version = "echo"
    device = "cpu"

    def __init__(self, min_points: int = 8) -> None:
        from detector.detector import DetectorConfig

        self.min_points = min_points
        # Signals whose queries fit an 8-point window.
        self.calibration = DetectorConfig(warmup=5, novelty_length=2, novelty_history=8,
                                          spread_short=2)  # fmt: skip
        self.seen: list[np.ndarray] = []

    def score(self, windows: np.ndarray, n_new: int):
        assert windows.ndim == 3 and windows.shape[1] == self.window_length
        errors = windows[:, -n_new:, :1].astype(np.float32)  # [B, n_new, 1]
        self.seen.append(errors.reshape(-1).copy())
        return SimpleNamespace(errors=errors, contributions=np.ones_like(errors))


@pytest.mark.parametrize("min_points", [8, 5])
@pytest.mark.parametrize(("stride", "n"), [(1, 30), (4, 30), (3, 31), (4, 8), (2, 5), (1, 4)])
def test_run_series_scores_the_points_the_stream_scores(stride, n, min_points) -> None:
    """As stream/windows.py: the first window at the series' max(min_points, stride)-th point,
    then one every `stride` points, each scoring its newest `stride` points, in order."""
    scorer = _EchoScorer(min_points)
    det = TsguardDetector(scorer, stride=stride)
    x = np.arange(n, dtype=np.float64)
    run = det.run(x, 300.0 * x)
    first = max(min_points, stride) - 1
    ends = np.arange(first, n, stride)
    expected = np.concatenate([np.arange(e - stride + 1, e + 1) for e in ends]) if len(ends) else []
    np.testing.assert_array_equal(np.flatnonzero(run.scored), expected)
    seen = np.concatenate(scorer.seen) if scorer.seen else np.zeros(0)
    np.testing.assert_array_equal(seen, x[expected] if len(expected) else seen)
    scores = det.score_series(x, x)
    assert scores.shape == (n,) and np.all(scores[~run.scored] == 0)


def test_tsguard_detector_rejects_stride_beyond_the_horizon() -> None:
    from detector.errors import UserError

    with pytest.raises(UserError, match="stride"):
        TsguardDetector(_EchoScorer(), stride=5)


def test_tsguard_default_model_flags_a_spike_causally() -> None:
    from detector.errors import ModelLoadError

    try:
        det = TsguardDetector.from_model(None, device="cpu", stride=1)
    except ModelLoadError as exc:
        pytest.skip(f"default model not available: {exc}")
    values, ts = _series(n=900)
    values[700] += 15 * np.std(values[:600])
    scores = det.run(values, ts).scores
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores[700:712].max() >= np.quantile(scores[200:690], 0.99)
    future = values.copy()
    future[751:] = 0.0
    np.testing.assert_allclose(det.run(future, ts).scores[:751], scores[:751], atol=1e-6)
    onsets = det.score_series(values, ts)  # what NAB sees: the score at episode starts
    assert onsets[700:712].max() > 0 and np.count_nonzero(onsets) < 10
