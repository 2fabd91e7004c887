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
from stream.broker import free_port
from tests.conftest import point, produce, read_topic, tsguard
from training.evaluate import TsguardDetector

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(None, "cpu")


def _series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 50 + 10 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 0.5, n)
    x[700] += 25.0  # a spike
    x[1000:1200] += 12.0  # a level shift that lasts
    return x


@pytest.mark.integration
def test_serve_on_the_broker_and_evaluate_give_the_same_scores_and_events(broker, scorer):
    n = 1400
    values = _series(n)
    ts = T0 + 60.0 * np.arange(n)
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
    assert any(k == "start" and 700 <= index[t] <= 702 for t, k, _ in got)  # the spike
    assert any(k == "start" and 1000 <= index[t] <= 1010 for t, k, _ in got)  # the shift


def test_fusion_is_fishers_method(scorer):
    det = Detector(scorer)
    cfg = det.config
    rng = np.random.default_rng(0)
    tails = rng.uniform(0, 0.6, (200, len(SIGNALS)))
    tails[:20, 2] = np.nan  # a signal without an opinion is left out, not counted as calm
    got = det.fuse(tails)
    for row, score in zip(tails, got, strict=True):
        p = 10.0 ** (-cfg.tail_decades * row[np.isfinite(row)])
        want = -math.log10(combine_pvalues(p, method="fisher").pvalue) / cfg.fused_decades
        assert score == pytest.approx(min(1.0, want), abs=1e-9)
    assert det.fuse(np.full((1, len(SIGNALS)), np.nan))[0] == 0.0


def test_the_score_stays_high_while_a_level_shift_lasts_and_alerts_once(scorer):
    x = _series(1400)
    run = Detector(scorer).run_series(x, T0 + 60.0 * np.arange(len(x)))
    threshold = scorer.calibration.threshold
    assert np.median(run.scores[1005:1100]) >= threshold  # the gauge keeps saying so
    assert np.median(run.scores[400:690]) < threshold / 2
    starts = np.flatnonzero(run.kinds[1000:1200] == START)
    assert len(starts) == 1 and starts[0] < 10  # one page for the whole shift


def test_each_signal_alone_and_any_subset_runs(scorer):
    x = _series(1400)
    t = T0 + 60.0 * np.arange(len(x))
    for name in SIGNALS:
        run = Detector(scorer, replace(scorer.calibration, signals=(name,))).run_series(x, t)
        assert np.isfinite(run.scores).all() and (run.scores >= 0).all()
        others = [g for g in SIGNALS if g != name]
        assert np.isnan(run.signals[:, [SIGNALS.index(g) for g in others]]).all()


def test_state_per_series_is_bounded(scorer):
    det = Detector(scorer)
    # The budget: 8 KiB per univariate series beyond its window.
    assert det.bytes_per_series(1) <= 8 * 1024
    x = _series(3000)
    before = det.bytes_per_series(1)
    det.run_series(x, T0 + 60.0 * np.arange(len(x)))
    assert det.bytes_per_series(1) == before  # fixed-size rows, whatever the points seen


def test_multivariate_series_score_and_name_their_dimensions(scorer):
    rng = np.random.default_rng(1)
    x = np.stack([_series(1400), rng.normal(0, 1, 1400), 1000 + rng.normal(0, 10, 1400)], -1)
    x[900, 1] += 12.0  # the small dimension's spike is heard
    run = Detector(scorer).run_series(x, T0 + 60.0 * np.arange(1400))
    assert run.scores[900:903].max() >= scorer.calibration.threshold


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
