"""benchmarks/detector_dev's cache of model errors: recorded once, replayed the same, and an
ablation run that never asks the model (no forecast signal) records nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.detector_dev import CachedErrors
from detector.api import WindowScores
from detector.detector import Detector, _ProbeScorer


class CountingScorer(_ProbeScorer):
    """The probe model with errors that differ per call, so a replay of the wrong call shows."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, windows, n_new):
        self.calls += 1
        b, _, d = windows.shape
        errors = np.full((b, n_new, d), 0.1 * self.calls, np.float32)
        return WindowScores(errors, np.ones((b, n_new, d), np.float32))


def _run(scorer, signals=None):
    config = scorer.calibration if signals is None else replace(scorer.calibration, signals=signals)
    x = np.sin(np.arange(600) / 5.0)
    return Detector(scorer, config).run_series(x, 60.0 * np.arange(600), batch=128)


def test_cache_replays_what_it_recorded(tmp_path):
    path = tmp_path / "s.npz"
    first = CachedErrors(CountingScorer(), path)
    recorded = _run(first)
    first.save()
    model = CountingScorer()
    replay = CachedErrors(model, path)
    assert replay.replaying
    np.testing.assert_array_equal(_run(replay).scores, recorded.scores)
    assert model.calls == 0


def test_a_run_without_the_forecast_does_not_poison_the_cache(tmp_path):
    path = tmp_path / "s.npz"
    ablation = CachedErrors(CountingScorer(), path)
    _run(ablation, signals=("seasonal", "shift"))
    ablation.save()
    assert not path.exists()
    np.savez(path)  # an empty record, as runs before this check wrote
    full = CachedErrors(CountingScorer(), path)
    assert not full.replaying
    recorded = _run(full)
    full.save()
    np.testing.assert_array_equal(
        _run(CachedErrors(CountingScorer(), path)).scores, recorded.scores
    )


def test_tail_diagnosis_counts_quiet_points_and_starts():
    from benchmarks.detector_dev import QUIET, tail_diagnosis
    from detector.detector import SIGNALS, START, SeriesRun
    from training.labelled import LabelledSeries

    n = 400
    labels = np.zeros(n, np.int8)
    labels[300:306] = 1
    series = LabelledSeries("t", "s", np.zeros((n, 1)), np.arange(n) * 60.0, labels, 100, ["v"])
    tails = np.zeros((n, len(SIGNALS)))
    tails[150, SIGNALS.index("forecast")] = 1.0  # a quiet point at the cap: a false start
    tails[302, SIGNALS.index("seasonal")] = 0.5  # inside the labels: a true start
    tails[50, SIGNALS.index("shift")] = 1.0  # warm-up part: not counted
    kinds = np.zeros(n, np.int8)
    kinds[[50, 150, 302]] = START
    run = SeriesRun(np.zeros(n), kinds, tails, np.ones(n, bool))
    d = tail_diagnosis([(series, run)], tail_decades=10.0)
    quiet = 300 - (305 + QUIET - (300 - QUIET) + 1)  # test points 100..399 less 250..355
    assert d["quiet_points"] == quiet
    assert d["share_at_or_above"]["forecast"][-1] == 1 / quiet
    assert d["share_at_or_above"]["shift"] == [0.0] * len(d["levels"])
    assert d["claimed"][-1] == 1e-10
    assert d["starts"]["false"]["starts"] == 1
    assert d["starts"]["false"]["loudest_at_cap"]["forecast"] == 1
    assert d["starts"]["true"]["loudest"]["seasonal"] == 1
    assert d["starts"]["true"]["loudest_at_cap"]["seasonal"] == 0
