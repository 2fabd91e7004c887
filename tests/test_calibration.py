"""The online calibrator: scores in 0..1, warm-up, big errors after calm score ~1, no lookahead,
and a bank of many series scoring exactly as each series alone."""

from __future__ import annotations

import copy
import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detector.calibration
import detector.episodes
from detector.calibration import (
    FORECAST,
    SEASONAL,
    CalibrationConfig,
    Calibrator,
    CalibratorBank,
    warm_keep,
)


def _calm(n: int, seed: int = 0) -> np.ndarray:
    # Forecast errors look like |noise|: half-normal around 0.8.
    return np.abs(np.random.default_rng(seed).normal(0.0, 1.0, n))


DAY = 288  # points per day at 5-minute steps


def _daily(n: int, seed: int = 0, jump: bool = True) -> np.ndarray:
    """A 5-minute series that jumps from 10 to 30 between 12:00 and 14:00 every day."""
    t = np.arange(n) % DAY
    level = np.where((t >= 144) & (t < 168), 30.0, 10.0) if jump else np.full(n, 10.0)
    return level + np.random.default_rng(seed).normal(0.0, 0.5, n)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1e30),
            st.just(float("nan")),
            st.just(float("inf")),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_scores_are_always_in_0_1(errors: list[float]) -> None:
    cal = Calibrator(CalibrationConfig(warmup=5, short_window=3))
    out = cal.update(np.array(errors))
    assert out.shape == (len(errors),)
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_warm_up_scores_zero_then_warms_up() -> None:
    cfg = CalibrationConfig(warmup=100)
    cal = Calibrator(cfg)
    errs = _calm(99)
    errs[50] = 1e6  # even a huge error scores 0 while warming up
    assert (cal.update(errs) == 0).all()
    assert not cal.warmed_up
    cal.update(_calm(1, seed=1))
    assert cal.warmed_up


def test_default_warm_up_fits_the_live_demo() -> None:
    # The demo has a few hundred points per series; the scorer needs one window first.
    assert CalibrationConfig().warmup <= 300 - 128
    cal = Calibrator()
    cal.update(_calm(300 - 128))
    assert cal.warmed_up


def test_big_error_after_calm_scores_near_one() -> None:
    cfg = CalibrationConfig()
    cal = Calibrator(cfg)
    calm = cal.update(_calm(1000))
    assert calm[cfg.warmup :].max() < cfg.threshold, "calm data must not open episodes"
    spike = cal.update(np.array([30.0]))[0]
    assert spike > 0.95


def test_few_false_alarms_right_after_warm_up() -> None:
    # The tail fitted on the warm-up errors must not be too tight: the live demo starts scoring
    # right after it. Series (of 400 calm points after warm-up) with any alarm: well under 5%.
    cfg = CalibrationConfig()
    alarms = [
        (Calibrator(cfg).update(_calm(cfg.warmup + 400, seed=100 + i)) >= cfg.threshold).any()
        for i in range(200)
    ]
    assert np.mean(alarms) < 0.05


def test_a_flat_series_that_moves_scores_one() -> None:
    cal = Calibrator()
    scores = cal.update(np.r_[np.zeros(300), 1e-3])
    assert (scores[:300] == 0).all() and scores[300] == 1.0


def test_calm_false_alarm_rate_is_low() -> None:
    cfg = CalibrationConfig()
    cal = Calibrator(cfg)
    scores = cal.update(_calm(20000, seed=3))[cfg.warmup :]
    # threshold 0.4 means a tail probability of 1e-4 per point; suppression only lowers it.
    assert (scores >= cfg.threshold).mean() < 1e-3


def test_sustained_shift_is_flagged_then_absorbed() -> None:
    cfg = CalibrationConfig(long_window=500)
    cal = Calibrator(cfg)
    cal.update(_calm(1000))
    shifted = cal.update(_calm(4000, seed=5) + 3.0)
    assert shifted[:20].max() >= cfg.threshold  # the change is flagged quickly
    assert shifted[-200:].max() < cfg.threshold  # and becomes the new normal


def test_no_lookahead() -> None:
    """Scores of a prefix do not depend on what follows it."""
    errs = _calm(600, seed=7)
    errs[400] = 25.0
    full = Calibrator().update(errs)
    for cut in (200, 401, 450):
        np.testing.assert_array_equal(Calibrator().update(errs[:cut]), full[:cut])
    # Feeding point by point gives exactly the same scores as one batch.
    cal = Calibrator()
    one_by_one = np.concatenate([cal.update(errs[i : i + 1]) for i in range(len(errs))])
    np.testing.assert_array_equal(one_by_one, full)


def test_nan_scores_zero_and_leaves_state_unchanged() -> None:
    errs = _calm(400, seed=8)
    a, b = Calibrator(), Calibrator()
    a.update(errs)
    b.update(errs[:200])
    assert (b.update(np.array([np.nan, np.nan])) == 0).all()
    b.update(errs[200:])
    for name in CalibratorBank._ROWS:
        np.testing.assert_array_equal(getattr(a.bank, name), getattr(b.bank, name))
    np.testing.assert_array_equal(a.update(np.array([9.0])), b.update(np.array([9.0])))


def test_state_is_small() -> None:
    # With the seasonal profile (48 bins, one dimension) a series' calibration stays well within
    # the 2 KiB per series that the service budgets beyond the window; it is fixed-size arrays,
    # so it does not grow with the points seen.
    bank = CalibratorBank(CalibrationConfig(), dims=1)
    assert bank.bytes_per_series < 700
    assert CalibratorBank(CalibrationConfig(), dims=4).bytes_per_series < 1500


@pytest.mark.parametrize("c", [1e-6, 3.0, 1e9])
def test_scores_do_not_depend_on_the_error_unit(c: float) -> None:
    errs = _calm(3000, seed=9)
    errs[[1000, 2000, 2500]] = [12.0, 30.0, 7.0]
    np.testing.assert_allclose(Calibrator().update(c * errs), Calibrator().update(errs), atol=1e-6)


def test_repeated_alerts_are_suppressed() -> None:
    cfg = CalibrationConfig()
    cal = Calibrator(cfg)
    cal.update(_calm(1000))
    burst = cal.update(np.full(30, 25.0))
    assert burst[:3].max() >= cfg.threshold
    # The first alert stands; the points after it that are no higher are damped.
    assert (burst[5:] < cfg.threshold).all() or (np.diff(burst[5:]) > 0).all()
    plain = Calibrator(CalibrationConfig(suppress=0))
    plain.update(_calm(1000))
    assert (plain.update(np.full(30, 25.0))[:10] >= cfg.threshold).sum() > (
        burst[:10] >= cfg.threshold
    ).sum()


def test_score_is_the_exponential_tail_above_the_quantile() -> None:
    cfg = CalibrationConfig(short_window=1, suppress=0)
    cal = Calibrator(cfg)
    cal.update(_calm(2000, seed=11))
    tail = cal.bank.tail(0, FORECAST)
    u, m = tail["u"], tail["peak_mean"]
    assert 1.5 < u < 4.0 and 0 < m < 2.0  # near the 99% quantile of |N(0, 1)| (2.58)
    for y in (0.5, 2.0, 6.0):
        probe = copy.deepcopy(cal)
        expected = (2.0 + y / m / np.log(10)) / cfg.tail_decades  # -log10(0.01 * exp(-y / m))
        assert probe.update(np.array([u + y]))[0] == pytest.approx(min(1.0, expected), rel=1e-9)
    assert Calibrator(cfg).update(np.array([0.0]))[0] == 0.0


def test_config_round_trip_and_validation() -> None:
    cfg = CalibrationConfig(warmup=20, threshold=0.7)
    assert CalibrationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        CalibrationConfig.from_dict({"threshold": 1.5})
    with pytest.raises(ValueError):
        CalibrationConfig.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="q must be"):  # below the warm-up fit's 80% quantile
        CalibrationConfig.from_dict({"q": 0.7})


def test_seasonal_profile_flags_a_daily_jump_that_does_not_come() -> None:
    """A forecaster that sees a few hours cannot know that 12:00 should jump; the profile can.
    The forecast errors here stay calm throughout, as a short-context model's would."""
    n = 12 * DAY
    values, errors, seconds = _daily(n), _calm(n, seed=3), 300.0 * np.arange(n)
    values[11 * DAY + 144 : 11 * DAY + 168] = 10.0 + np.random.default_rng(4).normal(0, 0.5, 24)
    cfg = CalibrationConfig()
    with_profile = Calibrator(cfg).update(errors, values, seconds)
    forecast_only = Calibrator(cfg).update(errors)
    missing = slice(11 * DAY + 144, 11 * DAY + 168)
    assert with_profile[missing].max() >= cfg.threshold
    assert forecast_only[missing].max() < cfg.threshold
    # Ordinary days after the profile has learned (5 visits per bin) raise no alarm.
    normal_days = slice(6 * DAY, 11 * DAY)
    assert with_profile[normal_days].max() < cfg.threshold


def test_seasonal_profile_is_causal_and_batch_independent() -> None:
    n = 8 * DAY
    values, errors, seconds = _daily(n, seed=5), _calm(n, seed=6), 300.0 * np.arange(n)
    values[7 * DAY + 50] += 40.0
    full = Calibrator().update(errors, values, seconds)
    for cut in (DAY, 7 * DAY + 51):
        np.testing.assert_array_equal(
            Calibrator().update(errors[:cut], values[:cut], seconds[:cut]), full[:cut]
        )
    cal = Calibrator()
    pieces = [
        cal.update(errors[i : i + 37], values[i : i + 37], seconds[i : i + 37])
        for i in range(0, n, 37)
    ]
    np.testing.assert_array_equal(np.concatenate(pieces), full)


def test_seasonal_profile_keeps_a_small_dimension_audible() -> None:
    """Two dimensions in very different units: a shift in the small one is still flagged."""
    n = 10 * DAY
    small, big = _daily(n, seed=7), 1e6 * _daily(n, seed=8)
    values = np.stack([small, big], axis=1)
    values[9 * DAY + 100 : 9 * DAY + 110, 0] += 15.0
    errors = _calm(n, seed=9)
    scores = Calibrator(dims=2).update(errors, values, 300.0 * np.arange(n))
    assert scores[9 * DAY + 100 : 9 * DAY + 110].max() >= CalibrationConfig().threshold
    assert scores[6 * DAY : 9 * DAY].max() < CalibrationConfig().threshold


def test_missing_values_and_the_wrong_dimensions_are_handled() -> None:
    n = 2 * DAY
    values, errors, seconds = _daily(n), _calm(n), 300.0 * np.arange(n)
    values[10:20] = np.nan  # value missing but the model still gave an error: forecast scores
    cal = Calibrator()
    out = cal.update(errors, values, seconds)
    assert np.isfinite(out).all()
    before = copy.deepcopy(cal.bank.tails)
    both_missing = cal.update(np.array([np.nan]), np.array([np.nan]), np.array([seconds[-1] + 300]))
    assert both_missing[0] == 0.0
    np.testing.assert_array_equal(cal.bank.tails, before)
    # A series' dimensions are fixed (the stream dead-letters points with new ones).
    with pytest.raises(ValueError, match="3 dimensions"):
        cal.update(_calm(5), np.ones((5, 3)), seconds[-1] + 300.0 * np.arange(1, 6))
    wide = Calibrator(dims=3).update(_calm(5), np.ones((5, 3)), 300.0 * np.arange(5))
    assert wide.shape == (5,)


def test_seasonal_profile_can_be_switched_off() -> None:
    n = 12 * DAY
    values, errors, seconds = _daily(n), _calm(n, seed=3), 300.0 * np.arange(n)
    cfg = CalibrationConfig(seasonal_bins=0)
    np.testing.assert_array_equal(
        Calibrator(cfg).update(errors, values, seconds), Calibrator(cfg).update(errors)
    )
    with pytest.raises(ValueError):
        CalibrationConfig.from_dict({"seasonal_alpha": 0.0})


def test_profile_memory_is_in_days_whatever_the_sampling_rate() -> None:
    """A 1-second metric: the profile learns one point per 5 minutes, so a level that has held
    for ten minutes is not yet 'what this series reads at this hour'."""
    cal = Calibrator()
    seconds = 1800.0 * 944_444 + np.arange(3600.0)  # an hour from a bin boundary
    values = np.where(np.arange(3600) < 3000, 10.0, 50.0)
    cal.update(_calm(3600), values, seconds)
    assert cal.bank.profile_count[0].sum() == 12  # one learned point per 300 s
    # 600 points at 50 are 2 of the 6 learned points of their bin: learning every point
    # (alpha 0.05 per point) would have moved that bin's mean to ~50.
    assert cal.bank.profile_mean[0].max() < 25.0


@pytest.mark.parametrize("warmup", [1, 2, 5, 30, 137])
def test_tail_follows_the_spot_formulas(warmup: int) -> None:
    """The compiled tail keeps only the largest warm-up errors and writes its arithmetic out; a
    plain transcription of the module docstring's procedure, fitting the warm-up with
    np.quantile over all of its errors, must give the same scores and the same state."""
    cfg = CalibrationConfig(warmup=warmup, suppress=0, seasonal_bins=0)  # raw tail scores
    cal = Calibrator(cfg)
    errs = _calm(2000, seed=12)
    errs[[500, 1200, 1201]] = [15.0, 30.0, 8.0]
    errs[[3, 50]] = 40.0  # large warm-up errors: among the kept ones, not the smallest
    got = cal.update(errs)
    recent: list[float] = []
    warm: list[float] = []
    n = n_peaks = 0
    u = mean_err = peak_mean = 0.0
    for i, e in enumerate(errs.tolist()):
        recent = (recent + [e])[-cfg.short_window :]
        x = sum(recent) / len(recent)
        if n < cfg.warmup:  # warm-up: collect, then fit the tail through the 80% quantile
            want = 0.0
            warm.append(float(np.float32(x)))
            n += 1
            if n == cfg.warmup:
                a = np.array(warm)
                u0 = float(np.quantile(a, 0.8))
                excess = a[a > u0] - u0
                peak_mean = float(excess.mean()) if excess.size else 0.0
                u = u0 + peak_mean * np.log(0.2 / (1 - cfg.q))
                n_peaks = max(1, excess.size)
                mean_err = float(np.mean(np.abs(a - u)))
        else:
            want = 0.0
            if x > u and n_peaks and n >= 2:  # a tail scores once it has learned two errors
                log10_p = np.log10(1 - cfg.q) - (x - u) / peak_mean / np.log(10)
                want = min(1.0, max(0.0, -log10_p / cfg.tail_decades))
            n += 1
            alpha = 1 / min(n, cfg.long_window)
            mean_err += alpha * (abs(x - u) - mean_err)
            u += cfg.quantile_rate * mean_err * alpha / (1 - cfg.q) * ((x > u) - (1 - cfg.q))
            u = max(u, 0.0)
            if x > u:
                n_peaks += 1
                peak_mean += ((x - u) - peak_mean) / min(
                    n_peaks, max(5.0, cfg.long_window * (1 - cfg.q) + 1)
                )
        assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-15)
    tail = cal.bank.tail(0, FORECAST)
    state = {"n": n, "u": u, "mean_err": mean_err, "n_peaks": n_peaks, "peak_mean": peak_mean}
    assert tail == pytest.approx(state, rel=1e-12)


def test_warm_keep_holds_the_quantiles_neighbours() -> None:
    for warmup in range(1, 300):
        h = 0.8 * (warmup - 1)  # np.quantile's position, linear interpolation
        assert warmup - warm_keep(warmup) == math.floor(h)


def _streams(n_series: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 100, (n_series, 1))
    errors = np.abs(rng.standard_t(3, (n_series, n))) * scale
    errors[rng.random((n_series, n)) < 0.02] = np.nan
    seconds = 1.7e9 + 300.0 * np.arange(n) + rng.integers(0, 86400, (n_series, 1))
    values = 10 + 5 * np.sin(2 * np.pi * seconds / 86400) + rng.normal(0, 1, (n_series, n))
    values[rng.random((n_series, n)) < 0.02] = np.nan
    for k in range(n_series):
        errors[k, n // 2 + 37 * k] = 1000.0 * scale[k, 0]  # an anomaly per series
    return errors, values, seconds


def test_a_bank_scores_each_series_as_it_would_alone() -> None:
    """The service scores batches of rows from many series in one call, a series' rows in
    order but interleaved with others', in pieces of any length: each series must get exactly
    the scores it gets alone."""
    n_series, n = 5, 3 * DAY
    errors, values, seconds = _streams(n_series, n, seed=21)
    alone = np.stack([
        Calibrator().update(errors[k], values[k], seconds[k]) for k in range(n_series)
    ])  # fmt: skip
    bank = CalibratorBank(CalibrationConfig(), dims=1, capacity=2)  # grows while allocating
    slots = [bank.allocate() for _ in range(n_series)]
    got = np.zeros_like(alone)
    rng = np.random.default_rng(22)
    pos = np.zeros(n_series, dtype=int)
    while (pos < n).any():
        width = int(rng.integers(1, 17))  # points per row (the stride)
        keys = rng.permutation(np.repeat(np.arange(n_series), rng.integers(0, 3, n_series)))
        rows, starts = [], []
        for k in keys.tolist():  # a series' rows come in order, between other series' rows
            if pos[k] < n:
                rows.append(k)
                starts.append(pos[k])
                pos[k] += width
        if not rows:
            continue
        idx = np.array(starts)[:, None] + np.arange(width)
        valid = idx < n
        idx = np.minimum(idx, n - 1)
        series = np.array(rows)[:, None]
        err = np.where(valid, errors[series, idx], np.nan)  # past the end: missing, no change
        val = np.where(valid, values[series, idx], np.nan)
        out = bank.score(
            np.array([slots[k] for k in rows]), err, val[:, :, None], seconds[series, idx]
        )
        for r, k in enumerate(rows):
            got[k, idx[r][valid[r]]] = out[r][valid[r]]
    np.testing.assert_array_equal(got, alone)
    assert (alone.max(axis=1) >= CalibrationConfig().threshold).all()  # the anomalies scored


def test_released_slots_start_afresh_and_skipped_rows_change_nothing() -> None:
    errors, values, seconds = _streams(2, 400, seed=23)
    bank = CalibratorBank(CalibrationConfig(), dims=1)
    a = bank.allocate()
    bank.score(np.array([a]), errors[:1], values[:1, :, None], seconds[:1])
    bank.release(a)
    b = bank.allocate()
    assert b == a  # reused, in its initial state
    fresh = Calibrator().update(errors[1], values[1], seconds[1])
    np.testing.assert_array_equal(
        bank.score(np.array([b]), errors[1:], values[1:, :, None], seconds[1:])[0], fresh
    )
    before = {name: getattr(bank, name).copy() for name in CalibratorBank._ROWS}
    skipped = bank.score(np.array([-1]), errors[:1], values[:1, :, None], seconds[:1])
    assert (skipped == 0).all()
    for name, array in before.items():
        np.testing.assert_array_equal(getattr(bank, name), array)


def test_restart_forecast_keeps_the_seasonal_profile() -> None:
    """A model reload: the forecast tail starts over, the profile and its tail carry on."""
    n = 3 * DAY
    errors, values, seconds = _streams(1, n, seed=24)
    cal = Calibrator()
    cal.update(errors[0, : 2 * DAY], values[0, : 2 * DAY], seconds[0, : 2 * DAY])
    profile = cal.bank.profile_mean.copy()
    seasonal = cal.bank.tail(0, SEASONAL)
    assert seasonal["n"] > cal.cfg.warmup and cal.warmed_up
    cal.bank.restart_forecast()
    assert not cal.warmed_up and cal.bank.tail(0, FORECAST)["n"] == 0
    np.testing.assert_array_equal(cal.bank.profile_mean, profile)
    assert cal.bank.tail(0, SEASONAL) == seasonal
    # The seasonal signal scores right away; the forecast one waits for its warm-up again.
    cal.update(errors[0, 2 * DAY :], values[0, 2 * DAY :], seconds[0, 2 * DAY :])
    assert cal.bank.tail(0, SEASONAL)["n"] > seasonal["n"]


def test_negative_and_fractional_times_fall_in_the_right_bin() -> None:
    cal = Calibrator(CalibrationConfig(seasonal_learn_every_s=0))
    # -1800.5 s is 23:29:59.5 the day before: bin 46 of 48.
    cal.update(np.array([1.0]), np.array([5.0]), np.array([-1800.5]))
    assert np.flatnonzero(cal.bank.profile_count[0]).tolist() == [46]


def test_empty_updates_change_nothing() -> None:
    cal = Calibrator()
    empty = np.zeros(0)
    assert cal.update(empty).shape == (0,)
    assert cal.update(empty, np.zeros((0, 2)), empty).shape == (0,)
    assert not cal.bank.tails.any() and not cal.bank.profile_count.any()


@pytest.mark.parametrize("module", [detector.calibration, detector.episodes])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
