"""The Detector: the one object behind `tsguard serve` and `tsguard evaluate`. Serve on the real
broker and the evaluation path give the same scores and events; the fusion is Fisher's method;
the score stays high while an anomaly lasts; state per series stays bounded."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import combine_pvalues

from detector.detector import SIGNALS, START, Detector, DetectorConfig, load_kernels
from detector.scorer import detector_config, load_scorer
from detector.signals import reasons
from stream.broker import free_port
from tests.conftest import point, produce, read_topic, tsguard
from training.evaluate import TsguardDetector

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(None, "cpu")


STEP = 300.0  # 5-minute points: a day is 288 of them
N, SPIKE, SHIFT = 3000, 2000, slice(2400, 2600)


def _series(n: int = N, seed: int = 0) -> np.ndarray:
    """Ten days of a daily cycle with noise, a spike and a level shift that lasts 200 points."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 50 + 10 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.5, n)
    x[SPIKE] += 25.0
    x[SHIFT] += 12.0
    return x


def _times(n: int = N) -> np.ndarray:
    return T0 + STEP * np.arange(n)


@pytest.mark.integration
def test_serve_on_the_broker_and_evaluate_give_the_same_scores_and_events(broker, scorer):
    values, ts = _series(), _times()
    produce(broker.bootstrap, "tsguard.metrics",
            [point("s1", float(t), float(v)) for t, v in zip(ts, values, strict=True)])  # fmt: skip
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--stop-at-end", "--metrics-port",
                   str(free_port()), "--group-id", "same", "--session-timeout-ms", "6000")  # fmt: skip
    assert proc.wait(timeout=180) == 0
    served = read_topic(broker.bootstrap, "tsguard.anomalies")
    run = TsguardDetector(scorer).run(values, ts)
    index = {float(t): i for i, t in enumerate(ts)}
    expected = [(ts[i], "start" if run.kinds[i] == START else "end",
                 round(float(run.scores[i]), 6)) for i in np.flatnonzero(run.kinds)]  # fmt: skip
    got = sorted((e["ts"], e["kind"], e["score"]) for e in served)
    assert got == [(float(t), k, s) for t, k, s in expected]
    assert any(k == "start" and index[t] == SPIKE for t, k, _ in got)
    assert any(k == "start" and SHIFT.start <= index[t] <= SHIFT.start + 5 for t, k, _ in got)
    # Each event names every signal's tail score at its point, as the evaluation path has them.
    for e in served:
        row = run.signals[index[e["ts"]]]
        assert e["signals"] == {
            name: round(float(v), 4) for name, v in zip(SIGNALS, row, strict=True) if np.isfinite(v)
        }
    spike = next(e for e in served if e["kind"] == "start" and index[e["ts"]] == SPIKE)
    assert "off the forecast" in reasons(spike["signals"])  # a spike no forecast saw coming


def test_fusion_is_the_better_of_bonferroni_and_fisher(scorer):
    det = Detector(scorer)
    cfg = det.config
    rng = np.random.default_rng(0)
    tails = rng.uniform(0, 0.6, (300, len(SIGNALS)))
    tails[:100:3, 1:] = 0.0  # one sure signal alone: Bonferroni wins
    tails[:20, 2] = np.nan  # a signal without an opinion is left out, not counted as calm
    tails[20:30, 1:] = np.nan  # one signal answering: its own probability
    got = det.fuse(tails)
    for row, score in zip(tails, got, strict=True):
        p = 10.0 ** (-cfg.tail_decades * row[np.isfinite(row)])
        fisher = combine_pvalues(p, method="fisher").pvalue
        fused = min(1.0, 2 * min(len(p) * p.min(), fisher)) if len(p) > 1 else p[0]
        want = -math.log10(fused) / cfg.fused_decades
        assert score == pytest.approx(min(1.0, max(0.0, want)), abs=1e-9)
    assert det.fuse(np.full((1, len(SIGNALS)), np.nan))[0] == 0.0
    # Several signals that agree a little outweigh one that is a little surer alone.
    agree, alone = np.full((1, len(SIGNALS)), 0.2), np.zeros((1, len(SIGNALS)))
    alone[0, 0] = 0.3
    assert det.fuse(agree)[0] > det.fuse(alone)[0]


def test_the_score_stays_high_while_a_level_shift_lasts_and_alerts_once(scorer):
    run = Detector(scorer).run_series(_series(), _times())
    threshold = scorer.calibration.threshold
    assert np.median(run.scores[SHIFT.start + 5 : SHIFT.stop]) >= threshold  # the gauge says so
    assert np.median(run.scores[1500:1990]) < threshold / 2
    starts = np.flatnonzero(run.kinds[SHIFT] == START)
    assert len(starts) == 1 and starts[0] < 5  # one page for the whole shift


def test_a_steady_pulse_train_does_not_page(scorer):
    """A heartbeat-like series (a sharp pulse every 300 points, as in ECG) keeps the same
    shape for 150,000 points: nothing to page. Before the tails' scale had a floor, the level
    shift's tail learned a mean excess near 0 (its values have a bounded top) and paged on about
    every pulse from point 80,000 on (455 starts)."""
    n = 150_000
    t = np.arange(n)
    x = np.sin(2 * np.pi * t / 300) ** 15 + np.random.default_rng(0).normal(0, 0.02, n)
    run = Detector(scorer).run_series(x[:, None], 60.0 * t)
    assert not (run.kinds == START).any()


def test_each_signal_alone_and_any_subset_runs(scorer):
    x, t = _series(), _times()
    for name in SIGNALS:
        run = Detector(scorer, replace(scorer.calibration, signals=(name,))).run_series(x, t)
        assert np.isfinite(run.scores).all() and (run.scores >= 0).all()
        others = [g for g in SIGNALS if g != name]
        assert np.isnan(run.signals[:, [SIGNALS.index(g) for g in others]]).all()


def test_state_per_series_is_bounded(scorer):
    det = Detector(scorer)
    # The budget: 8 KiB per univariate series beyond its window.
    assert det.bytes_per_series(1) <= 8 * 1024
    before = det.bytes_per_series(1)
    det.run_series(_series(), _times())
    assert det.bytes_per_series(1) == before  # fixed-size rows, whatever the points seen


def test_multivariate_series_score_and_name_their_dimensions(scorer):
    rng = np.random.default_rng(1)
    x = np.stack([_series(), rng.normal(0, 1, N), 1000 + rng.normal(0, 10, N)], -1)
    x[1500, 1] += 12.0  # the small dimension's spike is heard
    run = Detector(scorer).run_series(x, _times())
    assert run.scores[1500] >= scorer.calibration.threshold


def test_config_round_trips_and_rejects_bad_settings():
    cfg = DetectorConfig(signals=("forecast", "novelty"), threshold=0.5)
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"threshold": 1.5}, {"signals": ["nope"]}, {"nonsense": 1}, {"q": 0.2}):
        with pytest.raises(ValueError):
            DetectorConfig.from_dict(bad)
    # A model directory written before alert damping moved to the episodes still loads.
    assert detector_config({"suppress": 100, "suppress_factor": 0.5}) == DetectorConfig()


def test_load_kernels_runs():
    load_kernels()
