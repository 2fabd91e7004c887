"""The SPOT tails: scores in 0..1, warm-up, big values after calm score ~1, the ramp below the
quantile, no lookahead, and a bank of many series (and signals) scoring each as it would alone."""

from __future__ import annotations

import copy
import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detector.calibration
from detector.calibration import TailBank, TailConfig, warm_keep
from detector.detector import DetectorConfig

THRESHOLD = 0.4  # the shipped alert threshold: a tail probability of 1e-4


class Tail:
    """One series' single tail, fed point by point or in pieces."""

    def __init__(self, cfg: TailConfig | None = None) -> None:
        self.cfg = cfg or TailConfig()
        self.bank = TailBank(self.cfg, signals=1, capacity=1)
        self.bank.reset(0)

    def update(self, raw) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float64).reshape(1, -1, 1)
        return self.bank.score(np.array([0]), x)[0, :, 0]

    @property
    def warmed_up(self) -> bool:
        return self.bank.warmed_up(0, 0)


def _calm(n: int, seed: int = 0) -> np.ndarray:
    # Forecast errors look like |noise|: half-normal around 0.8.
    return np.abs(np.random.default_rng(seed).normal(0.0, 1.0, n))


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
def test_scores_are_in_0_1_and_nan_only_without_an_opinion(values: list[float]) -> None:
    x = np.array(values)
    out = Tail(TailConfig(warmup=5, short_window=3)).update(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.isnan(out), ~np.isfinite(x))
    ok = out[np.isfinite(x)]
    assert (ok >= 0).all() and (ok <= 1).all()


def test_warm_up_scores_zero_then_warms_up() -> None:
    tail = Tail(TailConfig(warmup=100))
    errs = _calm(99)
    errs[50] = 1e6  # even a huge value scores 0 while warming up
    assert (tail.update(errs) == 0).all()
    assert not tail.warmed_up
    tail.update(_calm(1, seed=1))
    assert tail.warmed_up


def test_default_warm_up_fits_the_live_demo() -> None:
    # The demo has a few hundred points per series; the scorer needs one window first.
    assert TailConfig().warmup <= 300 - 128


def test_big_value_after_calm_scores_near_one() -> None:
    tail = Tail()
    calm = tail.update(_calm(1000))
    assert calm[TailConfig().warmup :].max() < THRESHOLD
    assert tail.update(np.array([30.0]))[0] > 0.95


def test_few_false_alarms_right_after_warm_up() -> None:
    # The tail fitted on the warm-up values must not be too tight: the live demo starts scoring
    # right after it. Series (of 400 calm points after warm-up) with any alarm: well under 5%.
    cfg = TailConfig()
    alarms = [(Tail(cfg).update(_calm(cfg.warmup + 400, seed=100 + i)) >= THRESHOLD).any()
              for i in range(200)]  # fmt: skip
    assert np.mean(alarms) < 0.05


def test_a_flat_series_that_moves_scores_one() -> None:
    scores = Tail().update(np.r_[np.zeros(300), 1e-3])
    assert (scores[:300] == 0).all() and scores[300] == 1.0


def test_a_flat_series_that_starts_moving_does_not_alarm_forever() -> None:
    """A metric that sat at 0 through the warm-up, then varies as usual: its first excess gives
    the tail its scale (before, every later excess scored 1 and no alarm was learned: stuck)."""
    tail = Tail()
    tail.update(np.zeros(300))
    moving = tail.update(_calm(3000, seed=11))
    assert moving[0] == 1.0  # the first move after a flat warm-up is still certain
    assert (moving[-1000:] >= THRESHOLD).mean() < 0.01


def test_calm_false_alarm_rate_is_low() -> None:
    scores = Tail().update(_calm(20000, seed=3))[100:]
    assert (scores >= THRESHOLD).mean() < 1e-3  # P = 1e-4 per point


@pytest.mark.parametrize("seed", [0, 1])
def test_values_with_a_bounded_top_do_not_alarm_on_their_ordinary_maxima(seed: int) -> None:
    """Beta(5, 1) values never pass 1, so their excesses over the 99% quantile shrink toward 0;
    a tail that took that mean excess as its scale would alarm on ordinary maxima (6 per 1,000
    values before the scale's floor, against 0.1 per 1,000 at P = 1e-4)."""
    cfg = DetectorConfig().tails  # the shipped tails: one value at a time, memory 2,000
    values = np.random.default_rng(seed).beta(5.0, 1.0, 100_000)
    scores = Tail(cfg).update(values)[1000:]
    assert (scores >= THRESHOLD).mean() < 1e-3
    assert Tail(cfg).update(np.r_[values, 5.0])[-1] >= THRESHOLD  # a real excess still alarms


def test_sustained_shift_is_flagged_then_absorbed() -> None:
    tail = Tail(TailConfig(long_window=500))
    tail.update(_calm(1000))
    shifted = tail.update(_calm(4000, seed=5) + 3.0)
    assert shifted[:20].max() >= THRESHOLD  # the change is flagged quickly
    assert shifted[-200:].max() < THRESHOLD  # and becomes the new normal


def test_ordinary_values_keep_their_order_below_the_quantile() -> None:
    """Below u the score ramps from 0 to u's score, so a ranking sees the order."""
    tail = Tail(TailConfig(short_window=1))
    tail.update(_calm(2000, seed=11))
    u = tail.bank.tail(0, 0)["u"]
    probes = [copy.deepcopy(tail).update([v])[0] for v in (0.0, 0.25 * u, 0.5 * u, u)]
    assert probes[0] == 0.0 and probes[1] < probes[2] < probes[3]
    assert probes[3] == pytest.approx(2.0 / 10.0)  # -log10(1 - q) / tail_decades


def test_no_lookahead_and_pieces_do_not_matter() -> None:
    errs = _calm(600, seed=7)
    errs[400] = 25.0
    full = Tail().update(errs)
    for cut in (200, 401, 450):
        np.testing.assert_array_equal(Tail().update(errs[:cut]), full[:cut])
    tail = Tail()
    one_by_one = np.concatenate([tail.update(errs[i : i + 1]) for i in range(len(errs))])
    np.testing.assert_array_equal(one_by_one, full)


def test_nan_leaves_state_unchanged() -> None:
    errs = _calm(400, seed=8)
    a, b = Tail(), Tail()
    a.update(errs)
    b.update(errs[:200])
    assert np.isnan(b.update(np.array([np.nan, np.nan]))).all()
    b.update(errs[200:])
    np.testing.assert_array_equal(a.bank.rows.tails, b.bank.rows.tails)
    np.testing.assert_array_equal(a.bank.rows.warm, b.bank.rows.warm)


def test_state_is_small() -> None:
    # Fixed-size arrays: a tail does not grow with the points seen.
    assert TailBank(TailConfig(), signals=1).bytes_per_series < 200
    assert TailBank(TailConfig(), signals=5).bytes_per_series < 1000


@pytest.mark.parametrize("c", [1e-6, 3.0, 1e9])
def test_scores_do_not_depend_on_the_unit(c: float) -> None:
    errs = _calm(3000, seed=9)
    errs[[1000, 2000, 2500]] = [12.0, 30.0, 7.0]
    np.testing.assert_allclose(Tail().update(c * errs), Tail().update(errs), atol=1e-6)


def test_score_is_the_exponential_tail_above_the_quantile() -> None:
    cfg = TailConfig(short_window=1)
    tail = Tail(cfg)
    tail.update(_calm(2000, seed=11))
    state = tail.bank.tail(0, 0)
    u, m = state["u"], state["peak_mean"]
    assert 1.5 < u < 4.0 and 0 < m < 2.0  # near the 99% quantile of |N(0, 1)| (2.58)
    step = cfg.quantile_rate / (1 - cfg.q) * state["mean_err"] / min(state["n"], cfg.long_window)
    assert step < m  # the floor on the scale does not bind on unbounded errors
    for y in (0.5, 2.0, 6.0):
        expected = (2.0 + y / m / np.log(10)) / cfg.tail_decades  # -log10(0.01 * exp(-y / m))
        got = copy.deepcopy(tail).update(np.array([u + y]))[0]
        assert got == pytest.approx(min(1.0, expected), rel=1e-9)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TailConfig(q=0.5).validate()
    with pytest.raises(ValueError):
        TailConfig(short_window=0).validate()


@pytest.mark.parametrize("warmup", [1, 2, 5, 30, 137])
def test_tail_follows_the_spot_formulas(warmup: int) -> None:
    """The compiled tail keeps only the largest warm-up values and writes its arithmetic out; a
    plain transcription of the module docstring's procedure, fitting the warm-up with
    np.quantile over all of its values, must give the same scores and the same state."""
    cfg = TailConfig(warmup=warmup)
    tail = Tail(cfg)
    errs = _calm(2000, seed=12)
    errs[[500, 1200, 1201]] = [15.0, 30.0, 8.0]
    errs[[3, 50]] = 40.0  # large warm-up values: among the kept ones, not the smallest
    got = tail.update(errs)
    recent: list[float] = []
    warm: list[float] = []
    n = n_peaks = 0
    u = mean_err = peak_mean = 0.0
    base = -np.log10(1 - cfg.q) / cfg.tail_decades
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
            if n >= 2:  # a tail scores once it has learned two values
                if x > u and n_peaks:
                    # the scale: at least one up-step of the running quantile
                    step = cfg.quantile_rate / (1 - cfg.q) * mean_err / min(n, cfg.long_window)
                    scale = max(peak_mean, step)
                    log10_p = np.log10(1 - cfg.q) - (x - u) / scale / np.log(10)
                    want = min(1.0, max(0.0, -log10_p / cfg.tail_decades))
                elif u > 0:
                    want = min(x / u, 1.0) * base
            n += 1
            alpha = 1 / min(n, cfg.long_window)
            if want >= cfg.alarm:  # an alarm moves the quantile ten times slower
                alpha *= 0.1
            mean_err += alpha * (abs(x - u) - mean_err)
            u += cfg.quantile_rate * mean_err * alpha / (1 - cfg.q) * ((x > u) - (1 - cfg.q))
            u = max(u, 0.0)
            # An alarm is not learned as a peak, unless the tail has no scale yet.
            if x > u and (want < cfg.alarm or peak_mean == 0.0):
                n_peaks += 1
                peak_mean += ((x - u) - peak_mean) / min(
                    n_peaks, max(5.0, cfg.long_window * (1 - cfg.q) + 1)
                )
        assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-15)
    state = {"n": n, "u": u, "mean_err": mean_err, "n_peaks": n_peaks, "peak_mean": peak_mean}
    assert tail.bank.tail(0, 0) == pytest.approx(state, rel=1e-12)


def test_warm_keep_holds_the_quantiles_neighbours() -> None:
    for warmup in range(1, 300):
        h = 0.8 * (warmup - 1)  # np.quantile's position, linear interpolation
        assert warmup - warm_keep(warmup) == math.floor(h)


def test_a_bank_scores_each_series_and_signal_as_it_would_alone() -> None:
    """The service scores batches of rows from many series in one call, a series' rows in
    order but interleaved with others', in pieces of any length: each series and each of its
    signals must get exactly the scores it gets alone."""
    n_series, n, signals = 5, 800, 3
    rng = np.random.default_rng(21)
    raw = np.abs(rng.standard_t(3, (n_series, n, signals))) * rng.uniform(0.01, 100, (1, 1, 3))
    raw[rng.random(raw.shape) < 0.02] = np.nan
    for k in range(n_series):
        raw[k, n // 2 + 37 * k] = 1e5  # an anomaly per series
    alone = np.stack([np.stack([Tail().update(raw[k, :, g]) for g in range(signals)], -1)
                      for k in range(n_series)])  # fmt: skip
    bank = TailBank(TailConfig(), signals, capacity=2)  # grows while slots are reset
    for slot in range(n_series):
        bank.reset(slot)
    got = np.full_like(alone, -1.0)
    pos = np.zeros(n_series, dtype=int)
    while (pos < n).any():
        width = int(rng.integers(1, 17))  # points per row (the stride)
        keys = rng.permutation(np.repeat(np.arange(n_series), rng.integers(0, 3, n_series)))
        rows = [k for k in keys.tolist() if pos[k] < n]
        starts = []
        for k in rows:
            starts.append(pos[k])
            pos[k] += width
        if not rows:
            continue
        idx = np.array(starts)[:, None] + np.arange(width)
        valid = idx < n
        x = np.where(valid[..., None], raw[np.array(rows)[:, None], np.minimum(idx, n - 1)], np.nan)
        out = bank.score(np.array(rows), x)  # past the end: NaN, no change
        for r, k in enumerate(rows):
            got[k, idx[r][valid[r]]] = out[r][valid[r]]
    np.testing.assert_array_equal(got, alone)
    assert (np.nanmax(alone, axis=1) > 0.9).all()  # the anomalies scored


def test_reset_and_restart_start_afresh_and_skipped_rows_change_nothing() -> None:
    errs = _calm(400, seed=23).reshape(1, -1, 1)
    bank = TailBank(TailConfig(), signals=2)
    bank.reset(0)
    bank.score(np.array([0]), np.concatenate([errs, errs], -1))
    before = bank.rows.tails.copy()
    assert np.isnan(bank.score(np.array([-1]), np.concatenate([errs, errs], -1))).all()
    np.testing.assert_array_equal(bank.rows.tails, before)
    bank.restart(1)  # one signal forgets, the other keeps its tail
    assert bank.tail(0, 1)["n"] == 0 and bank.tail(0, 0)["n"] == 400
    bank.reset(0)
    assert not bank.rows.tails[0].any()


def test_docstring_examples() -> None:
    result = doctest.testmod(detector.calibration)
    assert result.attempted > 0 and result.failed == 0
