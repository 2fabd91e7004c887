"""The NAB scorer (training/nab.py) against the NAB definition and the published scoreboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detector.errors import UserError
from training import nab

NAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
needs_nab = pytest.mark.skipif(
    not (NAB_DIR / "labels" / "combined_windows.json").is_file(),
    reason=f"NAB corpus not found at {NAB_DIR} (../shared/data is absent)",
)

STD = nab.PROFILES["standard"]
LOW_FN = nab.PROFILES["reward_low_FN_rate"]
S = nab.scaled_sigmoid


def one_file(n: int = 200, windows=((100, 119),), name: str = "cat/f.csv") -> nab.LabelledFile:
    ts = np.datetime64("2020-01-01T00:00") + np.arange(n) * np.timedelta64(5, "m")
    return nab.label_file(name, ts, [(ts[a], ts[b]) for a, b in windows])


def raw(scores: np.ndarray, f: nab.LabelledFile, profile=STD, threshold: float = 0.5) -> float:
    return nab.score_corpus({f.name: scores}, [f], profile, threshold=threshold).raw


def test_scaled_sigmoid_matches_the_definition() -> None:
    assert float(S(-1.0)) == pytest.approx(0.98661, abs=1e-5)  # left edge of a window
    assert float(S(-0.5)) == pytest.approx(0.84828, abs=1e-5)
    assert float(S(0.0)) == pytest.approx(0.0, abs=1e-12)  # right edge
    assert float(S(1.0)) == pytest.approx(-0.98661, abs=1e-5)
    assert float(S(3.0)) == -1.0 and float(S(50.0)) == -1.0


def test_probationary_period_is_15_percent_capped_at_750() -> None:
    assert nab.probationary_length(200) == 30
    assert nab.probationary_length(4032) == 604
    assert nab.probationary_length(22695) == 750


def test_detection_at_window_start_earns_the_full_tp_weight() -> None:
    f = one_file()
    s = np.zeros(200)
    s[100] = 1.0
    assert raw(s, f) == pytest.approx(STD.tp_weight)


def test_late_detection_earns_less_and_only_the_first_detection_counts() -> None:
    f = one_file()
    late = np.zeros(200)
    late[119] = 1.0  # last point of a 20-point window: position -1/20
    assert raw(late, f) == pytest.approx(float(S(-1 / 20) / S(-1.0)))
    assert 0.0 < raw(late, f) < 0.2
    both = late.copy()
    both[105] = 1.0  # an earlier detection in the same window replaces the late one
    assert raw(both, f) == pytest.approx(float(S(-15 / 20) / S(-1.0)))


def test_missed_window_costs_fn_weight() -> None:
    f = one_file()
    assert raw(np.zeros(200), f) == pytest.approx(-STD.fn_weight)
    assert raw(np.zeros(200), f, LOW_FN) == pytest.approx(-2.0)


def test_false_positives_cost_fp_weight_and_less_right_after_a_window() -> None:
    f = one_file()
    before = np.zeros(200)
    before[[60, 100]] = 1.0  # a false positive before any window, and the window hit at its start
    assert raw(before, f) == pytest.approx(STD.tp_weight - STD.fp_weight)
    far = np.zeros(200)
    far[[100, 190]] = 1.0  # 71 points past a 20-point window: position >= 3 -> a full -fp
    assert raw(far, f) == pytest.approx(STD.tp_weight - STD.fp_weight)
    near = np.zeros(200)
    near[[100, 121]] = 1.0  # 2 points past the window: position 2/19
    assert raw(near, f) == pytest.approx(STD.tp_weight + STD.fp_weight * float(S(2 / 19)))
    assert STD.tp_weight - STD.fp_weight < raw(near, f) < STD.tp_weight


def test_probationary_points_are_not_scored() -> None:
    f = one_file()
    s = np.zeros(200)
    s[[5, 29, 100]] = 1.0  # 5 and 29 are inside the 30-point probationary period
    assert raw(s, f) == pytest.approx(STD.tp_weight)
    s[30] = 1.0  # the first scored point
    assert raw(s, f) == pytest.approx(STD.tp_weight - STD.fp_weight)


def test_window_inside_probation_is_not_counted_in_the_null_score() -> None:
    f = one_file(windows=((5, 10), (100, 119)))
    r = nab.score_corpus({f.name: np.zeros(200)}, [f], STD)
    assert r.null == pytest.approx(-1.0)  # only the window after probation can be missed
    assert r.perfect == pytest.approx(2.0)  # NAB's perfect counts every labelled window


@pytest.mark.parametrize("profile", list(nab.PROFILES.values()), ids=list(nab.PROFILES))
def test_null_detector_normalises_to_0_and_perfect_detector_to_100(profile) -> None:
    files = [one_file(name="a/x.csv"), one_file(300, ((50, 69), (200, 239)), name="b/y.csv")]
    null = {f.name: np.full(f.n_points, 0.5) for f in files}  # constant: detects all or nothing
    perfect = {f.name: np.zeros(f.n_points) for f in files}
    for f in files:
        for first, _ in f.windows:
            perfect[f.name][first] = 1.0
    assert nab.score_corpus(null, files, profile).normalised == pytest.approx(0.0)
    assert nab.score_corpus(perfect, files, profile).normalised == pytest.approx(100.0)


def test_threshold_sweep_equals_brute_force_scoring_at_every_threshold() -> None:
    rng = np.random.default_rng(3)
    files = [
        one_file(400, ((120, 159), (300, 309)), name="a/x.csv"),
        one_file(250, ((60, 60),), name="a/y.csv"),  # one-point window
        one_file(150, (), name="b/z.csv"),  # no windows at all
    ]
    # Coarse scores make many ties, which is where a sweep can go wrong.
    scores = {f.name: np.round(rng.random(f.n_points) ** 3, 2) for f in files}
    for profile in nab.PROFILES.values():
        weights, wids, _ = nab._point_weights(files, profile)
        flat = np.concatenate([scores[f.name][f.window_of != -2] for f in files])
        thresholds, totals = nab.sweep_thresholds(flat, weights, wids, profile.fn_weight)
        assert np.all(np.diff(thresholds) < 0)
        for t, total in zip(thresholds, totals, strict=True):
            brute = nab.score_corpus(scores, files, profile, threshold=float(t)).raw
            assert total == pytest.approx(brute, abs=1e-9)
        best = nab.score_corpus(scores, files, profile)
        assert best.raw == pytest.approx(totals.max(), abs=1e-9)


def test_ties_keep_the_highest_threshold() -> None:
    f = one_file()
    s = np.zeros(200)
    s[100] = 0.9  # the window start
    s[105:110] = 0.5  # later hits in the same window: threshold 0.5 scores exactly as 0.9 does
    thresholds, totals = nab.sweep_thresholds(
        s[f.window_of != -2], *nab._point_weights([f], STD)[:2], STD.fn_weight
    )
    assert totals[list(thresholds).index(0.5)] == pytest.approx(totals.max())
    r = nab.score_corpus({f.name: s}, [f], STD)
    assert r.threshold == pytest.approx(0.9)
    assert r.raw == pytest.approx(1.0)


def test_duplicate_timestamps_window_edges_match_first_occurrence() -> None:
    # NAB's machine_temperature file repeats an hour; windows still start at their exact stamp.
    ts = np.datetime64("2020-01-01T00:00") + np.arange(100) * np.timedelta64(5, "m")
    ts[60:] -= np.timedelta64(60, "m")
    f = nab.label_file("x.csv", ts, [(ts[90], ts[95])])
    assert f.windows == ((90, 95),)
    # ts[70] repeats ts[58]: like NAB, the window opens at the stamp's first occurrence.
    f = nab.label_file("x.csv", ts, [(ts[70], ts[80])])
    assert f.windows == ((58, 80),)


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    f = one_file()
    with pytest.raises(UserError, match="200 data points"):
        nab.score_corpus({f.name: np.zeros(10)}, [f], STD)
    with pytest.raises(UserError, match="no anomaly scores"):
        nab.score_corpus({}, [f], STD)
    with pytest.raises(UserError, match="not a NAB corpus"):
        nab.read_corpus(tmp_path)


def _published(detector: str) -> dict[str, float]:
    return json.loads((NAB_DIR / "results" / "final_results.json").read_text())[detector]


@needs_nab
@pytest.mark.parametrize(("detector", "standard"), [("numenta", 70.1), ("windowedGaussian", 39.6)])
def test_reproduces_the_published_scoreboard(detector: str, standard: float) -> None:
    corpus = nab.read_corpus(NAB_DIR)
    scores = nab.read_result_scores(NAB_DIR / "results" / detector, corpus)
    results = nab.score_all_profiles(scores, corpus.files, corpus.profiles)
    assert results["standard"].normalised == pytest.approx(standard, abs=0.5)
    published = _published(detector)
    for profile, r in results.items():
        assert r.normalised == pytest.approx(published[profile], abs=0.5), profile
    assert results["standard"].null == pytest.approx(-116.0)  # NAB's null row


@needs_nab
@pytest.mark.parametrize("detector", ["numenta", "windowedGaussian"])
def test_scoring_at_the_published_thresholds_matches_the_scoreboard_exactly(detector) -> None:
    # NAB's own optimiser searched thresholds less exhaustively than our full sweep (ours can
    # find a slightly better one); at NAB's chosen thresholds the scores must agree closely.
    corpus = nab.read_corpus(NAB_DIR)
    scores = nab.read_result_scores(NAB_DIR / "results" / detector, corpus)
    thresholds = json.loads((NAB_DIR / "config" / "thresholds.json").read_text())[detector]
    published = _published(detector)
    for name, profile in corpus.profiles.items():
        r = nab.score_corpus(scores, corpus.files, profile, threshold=thresholds[name]["threshold"])
        assert r.normalised == pytest.approx(published[name], abs=0.01), name


@needs_nab
def test_cli_scores_published_results(capsys) -> None:
    from stream.cli import main

    rc = main(
        [
            "evaluate",
            "nab",
            "--corpus",
            str(NAB_DIR),
            "--scores",
            str(NAB_DIR / "results" / "numenta"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(nab.PROFILE_NAMES)
    assert out["standard"] == pytest.approx(70.1, abs=0.5)


@needs_nab
def test_detector_dev_nab_scores_match_the_scorer():
    """benchmarks/detector_dev's NAB line scores onsets keyed by series name exactly as
    `tsguard evaluate nab` does: the published HTM scores give HTM's standard score."""
    from benchmarks.detector_dev import nab_scores

    corpus = nab.read_corpus(NAB_DIR)
    scores = nab.read_result_scores(NAB_DIR / "results" / "numenta", corpus)
    by_series = {name.removesuffix(".csv"): s for name, s in scores.items()}
    expected = nab.score_all_profiles(scores, corpus.files, corpus.profiles)
    got = nab_scores(by_series, NAB_DIR)
    parts = got.pop("standard_breakdown")
    assert got == {k: round(r.normalised, 4) for k, r in expected.items()}
    assert got["standard"] == pytest.approx(70.10, abs=0.01)
    # The breakdown adds up to the standard profile's raw score over every scored window.
    standard = expected["standard"]
    assert parts["windows_hit"] + parts["windows_missed"] == -standard.null
    total = parts["hit_credit"] + parts["false_cost"] - parts["windows_missed"]
    assert total == pytest.approx(standard.raw, abs=0.02)
