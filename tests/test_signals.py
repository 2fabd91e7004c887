"""The detector's signals: each is causal (a prefix's raw values do not depend on what follows),
gives the same values however the stream is cut into windows, keeps fixed-size state, and
notices what it is for."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import detector.signals.forecast
import detector.signals.novelty
import detector.signals.range
import detector.signals.seasonal
import detector.signals.shift
import detector.signals.spread
from detector.signals import (
    ForecastResidual,
    LevelShift,
    PatternNovelty,
    RangeExcess,
    SeasonalProfile,
    SpreadShift,  # fmt: skip
)

L = 64  # window length fed to the signals here
DAY = 288  # 5-minute points


def _make(name: str, dims: int = 1):
    return {
        "seasonal": lambda: SeasonalProfile(dims),
        "novelty": lambda: PatternNovelty(dims, length=8, history=256),
        "range": lambda: RangeExcess(dims),
        "shift": lambda: LevelShift(dims),
        "spread": lambda: SpreadShift(dims, short=32),
    }[name]()


def _stream(n: int, dims: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 10 + 5 * np.sin(2 * np.pi * t / DAY)[:, None] + rng.normal(0, 0.3, (n, dims))
    x[rng.random((n, dims)) < 0.02] = np.nan
    return x.astype(np.float32), 1.7e9 + 300.0 * t


def _feed(sig, x: np.ndarray, ts: np.ndarray, stride: int, slot: int = 0) -> np.ndarray:
    """Windows as the stream takes them: one every `stride` points, scoring the newest."""
    n = len(x)
    pad_x = np.concatenate([np.full((L - 1, x.shape[1]), np.nan, np.float32), x])
    pad_t = np.concatenate([np.full(L - 1, np.nan), ts])
    out = np.full(n, np.nan)
    for end in range(stride - 1, n, stride):
        w = pad_x[end : end + L][None]
        raw = sig.raw(np.array([slot]), w, pad_t[end : end + L][None], stride)
        out[end - stride + 1 : end + 1] = raw[0]
    return out


@pytest.mark.parametrize("name", ["seasonal", "novelty", "range", "shift", "spread"])
@pytest.mark.parametrize("dims", [1, 3])
def test_causal_and_the_same_whatever_the_stride(name: str, dims: int) -> None:
    x, ts = _stream(4 * DAY, dims)
    n = 4 * DAY - (4 * DAY) % 8
    base = _make(name, dims)
    base.reset(0)
    full = _feed(base, x[:n], ts[:n], 1)
    assert np.isfinite(full).sum() > n // 2 and (full[np.isfinite(full)] >= 0).all()
    for stride in (2, 8):
        sig = _make(name, dims)
        sig.reset(0)
        np.testing.assert_allclose(_feed(sig, x[:n], ts[:n], stride), full, rtol=1e-9)
    cut = n // 2
    sig = _make(name, dims)
    sig.reset(0)
    np.testing.assert_allclose(_feed(sig, x[:cut], ts[:cut], 1), full[:cut], rtol=1e-9)


@pytest.mark.parametrize("name", ["seasonal", "novelty", "range", "shift", "spread"])
def test_rows_are_fixed_size_and_a_skipped_row_changes_nothing(name: str) -> None:
    sig = _make(name)
    sig.reset(0)
    sig.reset(3)  # grows
    before = {k: getattr(sig.rows, k).copy() for k in sig.rows._init}
    x, ts = _stream(200)
    sig.raw(np.array([-1]), x[None, :L], ts[None, :L], 1)
    for k, a in before.items():
        np.testing.assert_array_equal(getattr(sig.rows, k), a)
    assert sig.rows.bytes_per_row < 8 * 1024


def test_seasonal_profile_flags_a_daily_jump_that_does_not_come() -> None:
    """A series that jumps from 10 to 30 between 12:00 and 14:00 every day; on the last day
    it does not: only a profile of the time of day can tell."""
    n = 6 * DAY
    t = np.arange(n) % DAY
    level = np.where((t >= 144) & (t < 168), 30.0, 10.0)
    level[5 * DAY + 144 : 5 * DAY + 168] = 10.0  # the jump that does not come
    x = (level + np.random.default_rng(0).normal(0, 0.5, n)).astype(np.float32)[:, None]
    sig = SeasonalProfile(1)
    sig.reset(0)
    raw = _feed(sig, x, 1.7e9 - 1.7e9 % 86400 + 300.0 * np.arange(n), 1)
    missed = raw[5 * DAY + 144 : 5 * DAY + 168]
    usual = raw[4 * DAY : 5 * DAY]
    assert np.nanmin(missed) > 5 * np.nanquantile(usual, 0.99)


def test_seasonal_profile_memory_is_in_days_whatever_the_sampling_rate() -> None:
    """A 1-second metric: the profile learns one point per 5 minutes, so a level that has held
    for ten minutes is not yet 'what this series reads at this hour'."""
    sig = SeasonalProfile(1)
    sig.reset(0)
    seconds = 1800.0 * 944_444 + np.arange(3600.0)  # an hour from a bin boundary
    x = np.where(np.arange(3600) < 3000, 10.0, 50.0).astype(np.float32)[:, None]
    for lo in range(0, 3600, L):
        w = x[lo : lo + L][None]
        sig.raw(np.array([0]), w, seconds[lo : lo + L][None], w.shape[1])
    assert sig.rows.count[0].sum() == 12  # one learned point per 300 s
    assert sig.rows.mean[0].max() < 25.0


def test_novelty_a_repeat_is_not_news() -> None:
    """A burst shape the series never had is novel; the same shape again soon after is not."""
    rng = np.random.default_rng(1)
    x = np.sin(2 * np.pi * np.arange(1200) / 40) + rng.normal(0, 0.05, 1200)
    burst = np.array([0.0, 2.0, -2.0, 2.0, -2.0, 0.0])
    x[600:606] += burst
    x[800:806] += burst
    sig = PatternNovelty(1, length=8, history=512)
    sig.reset(0)
    raw = _feed(sig, x.astype(np.float32)[:, None], np.arange(1200.0), 1)
    first, again, usual = raw[600:614].max(), raw[800:814].max(), np.nanquantile(raw[300:590], 0.99)
    assert first > 5 * usual
    assert again < first / 3


def novelty_searches_agree(device: str, dims: int, n_new: int, seed: int = 0) -> None:
    """The same calls to the loop search and to the matmul search on `device` give the same raw
    values (float64 rounding apart) and leave the same rows. Random calls of 1..11 windows, with
    missing points, skipped rows (slot -1) and several rows of one series; a short ring, so it
    wraps; a slot reset half-way, so young series (too few candidates: NaN) come back."""
    rng = np.random.default_rng(seed)
    loop = PatternNovelty(dims, length=8, history=40, search="loop")
    matmul = PatternNovelty(dims, length=8, history=40, device=device, search="matmul")
    n_series = 4
    for sig in (loop, matmul):
        for s in range(n_series):
            sig.reset(s)
    answers = []
    for call in range(120):
        if call == 60:
            loop.reset(0)
            matmul.reset(0)
        b = int(rng.integers(1, 12))
        slots = rng.integers(-1, n_series, b)
        level, amp = rng.uniform(-50, 50, (b, 1, dims)), rng.uniform(0.1, 10, (b, 1, dims))
        w = (level + amp * rng.normal(size=(b, L, dims))).astype(np.float32)
        w[rng.random(w.shape) < 0.03] = np.nan
        a, m = loop.raw(slots, w, None, n_new), matmul.raw(slots, w, None, n_new)
        np.testing.assert_allclose(m, a, rtol=1e-5, atol=1e-9)
        for name in ("ring", "pos", "learned"):
            np.testing.assert_array_equal(
                getattr(matmul.rows, name)[:n_series], getattr(loop.rows, name)[:n_series]
            )
        np.testing.assert_allclose(matmul.rows.scale[:n_series], loop.rows.scale[:n_series],
                                   rtol=1e-9)  # fmt: skip
        answers.append(a[slots >= 0])
    answers = np.concatenate(answers)
    assert np.isnan(answers).any() and np.isfinite(answers).mean() > 0.5
    assert loop.rows.pos[:n_series].max() > 2 * loop.history


@pytest.mark.parametrize(("dims", "n_new"), [(1, 1), (1, 5), (3, 1), (3, 5)])
def test_novelty_matmul_search_on_the_cpu_matches_the_loop(dims: int, n_new: int) -> None:
    novelty_searches_agree("cpu", dims, n_new)


def test_novelty_matmul_search_in_several_passes(monkeypatch) -> None:
    monkeypatch.setitem(detector.signals.novelty.BYTES_PER_PASS, "cpu", 1)  # a row per pass
    novelty_searches_agree("cpu", 2, 3, seed=1)


def test_a_new_level_leaves_the_range_and_the_shift_keeps_hearing_it() -> None:
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, 1000), rng.normal(8, 1, 200)].astype(np.float32)[:, None]
    t = np.arange(1200.0)
    rng_sig, shift = RangeExcess(1), LevelShift(1)
    rng_sig.reset(0)
    shift.reset(0)
    excess = _feed(rng_sig, x, t, 1)
    assert excess[1000] > 0.5 and (excess[500:1000] < 0.1).all()  # the range's new edge
    gap = _feed(shift, x, t, 1)
    assert np.median(gap[1010:1200]) > 3 * np.quantile(gap[500:1000], 0.99)  # lasts


def test_a_burst_does_not_leave_the_clipped_shift_baseline_in_alarm() -> None:
    """Ten points a thousand times the usual size, then the usual series: with the clip the
    baseline moves a few usual steps and the level it returns to reads as usual; learning whole
    steps, it reads as a shift until the baseline forgets (NAB's ec2_network_in_257a54)."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 1500)
    x[1000:1010] = 1000.0
    x, t = x.astype(np.float32)[:, None], np.arange(1500.0)
    gaps = {}
    for clip in (0.0, 5.0):
        sig = LevelShift(1, short=8, long_window=500, clip=clip)
        sig.reset(0)
        gaps[clip] = _feed(sig, x, t, 1)
    usual = np.quantile(gaps[5.0][500:1000], 0.99)
    assert gaps[5.0][1010] > 10 * usual  # the burst itself is heard
    assert np.median(gaps[5.0][1030:1500]) < usual
    assert np.median(gaps[0.0][1030:1500]) > 5 * usual


def test_a_lasting_shift_is_absorbed_by_the_clipped_baseline_too() -> None:
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(0, 1, 1000), rng.normal(10, 1, 1500)].astype(np.float32)[:, None]
    sig = LevelShift(1, short=8, long_window=200, clip=5.0)
    sig.reset(0)
    gap = _feed(sig, x, np.arange(2500.0), 1)
    usual = np.quantile(gap[500:1000], 0.99)
    assert np.median(gap[1010:1050]) > 3 * usual  # heard while new
    assert np.median(gap[2000:2500]) < usual  # absorbed: the new level is the usual one


def test_denser_spikes_inside_the_range_are_heard_by_the_spread_alone() -> None:
    """Spikes to the same height every 50 points, then every 5 for a while: no new extreme and
    little change of the short mean, but the recent dispersion doubles and stays up."""
    n = 3000
    x = np.random.default_rng(3).normal(0, 0.1, n)
    x[::50] += 10.0
    x[2001:2300:5] += 10.0  # between the usual spikes
    x, t = x.astype(np.float32)[:, None], np.arange(float(n))
    sig, rng_sig = SpreadShift(1, short=32), RangeExcess(1)
    sig.reset(0)
    rng_sig.reset(0)
    raw = _feed(sig, x, t, 1)
    assert np.median(raw[2040:2300]) > 3 * np.nanquantile(raw[1000:2000], 0.99)  # it lasts
    assert np.nanmax(_feed(rng_sig, x, t, 1)[2000:2300]) == 0.0  # nothing beyond the range


def test_a_level_shift_alone_does_not_move_the_spread() -> None:
    rng = np.random.default_rng(4)
    x = np.r_[rng.normal(0, 1, 1000), rng.normal(8, 1, 300)].astype(np.float32)[:, None]
    sig = SpreadShift(1, short=32)
    sig.reset(0)
    raw = _feed(sig, x, np.arange(1300.0), 1)
    usual = np.nanquantile(raw[300:1000], 0.99)
    assert np.median(raw[1040:1300]) < usual  # once the step has left the recent points


@pytest.mark.parametrize(
    "module",
    [detector.signals, detector.signals.forecast, detector.signals.seasonal,
     detector.signals.novelty, detector.signals.range, detector.signals.shift,
     detector.signals.spread],
)  # fmt: skip
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_forecast_residual_of_one_dimension_is_the_error_itself() -> None:
    res = ForecastResidual(dims=1, long_window=100)
    res.reset(0)
    errors = np.array([[[2.0], [np.nan], [0.5]], [[9.0], [9.0], [9.0]]])
    out = res.raw(np.array([0, -1]), errors)
    np.testing.assert_array_equal(out[0], [2.0, np.nan, 0.5])
    assert np.isnan(out[1]).all()  # slot -1: skipped


def test_forecast_residual_weighs_a_flat_dimension_by_its_own_usual_error() -> None:
    """Dimension 0 usually errs by 0.01, dimension 1 by 10. A 0.1 error on dimension 0 is ten
    times its usual and must move the combined value as much as a 100 error on dimension 1."""

    def combined(last: list[float]) -> float:
        res = ForecastResidual(dims=2, long_window=1000)
        res.reset(0)
        usual = np.tile([[[0.01, 10.0]]], (1, 200, 1))
        res.raw(np.array([0]), usual)
        return float(res.raw(np.array([0]), np.array([[last]]))[0, 0])

    np.testing.assert_allclose(combined([0.1, 10.0]), combined([0.01, 100.0]), rtol=1e-6)
    assert combined([0.1, 10.0]) > 3 * combined([0.01, 10.0])
