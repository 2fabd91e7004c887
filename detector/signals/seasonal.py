"""Time-of-day profile residual: |value - the series' usual value at this time of day|.

A forecaster that sees a 128-point window cannot know that a series jumps every day at 09:00,
nor that the jump did not come today; a profile of the series' own values per time-of-day bin
can (the "seasonal naive" baseline of Hyndman & Athanasopoulos, "Forecasting: Principles and
Practice", 3rd ed., 5.2, with a running mean per bin instead of last period's value, so one
odd day does not become tomorrow's normal).

Per half-hour bin of UTC time (48 bins of a 1-day period by default) the profile keeps a
running mean of the series' values: plain mean for its first `seasonal_min_count` visits, then
exponential with weight `seasonal_alpha`. A bin scores only once it has that many visits, so
the signal is silent for a series' first days. It learns at most one point per
`seasonal_learn_every_s` seconds, so its memory is counted in days whatever the sampling rate.
Several dimensions combine as every signal's do (detector/signals/units.py).

>>> import numpy as np
>>> sig = SeasonalProfile(dims=1, bins=4, period_s=400.0, min_count=2, learn_every_s=0.0)
>>> sig.reset(0)
>>> t = np.arange(12, dtype=float)[None, :] * 100.0  # three periods of four bins
>>> x = np.tile([1.0, 2.0, 3.0, 4.0], 3)[None, :, None]
>>> np.round(sig.raw(np.array([0]), x, t, n_new=12), 3).tolist()
[[nan, nan, nan, nan, nan, nan, nan, nan, 0.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.units import combine_dims


class SeasonalProfile(Signal):
    def __init__(self, dims: int, bins: int = 48, period_s: float = 86400.0, alpha: float = 0.05,
                 min_count: int = 5, learn_every_s: float = 300.0, long_window: int = 500,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims = dims
        self._k = np.array([bins, period_s, alpha, min_count, learn_every_s, long_window], float)
        self.rows = SlotRows(
            capacity,
            mean=((bins * dims,), np.float32, 0.0),
            count=((bins * dims,), np.uint8, 0),
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),  # points that updated the scales (D > 1)
            last_slot=((), np.float64, -np.inf),  # last learned slot of learn_every_s
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        """|x - profile| of the newest n_new points; then the profile learns them."""
        r = self.rows
        _residuals(slots, windows, np.asarray(times, np.float64), windows.shape[1] - n_new,
                   self._k, r.mean, r.count, r.scale, r.learned, r.last_slot, out)  # fmt: skip


@njit(cache=True)
def _residuals(slots, windows, times, first, k, mean, count, scale, learned, last_slot, out):
    dims = windows.shape[2]
    answered = np.empty(dims, dtype=np.int64)
    residuals = np.empty(dims, dtype=np.float64)
    x = np.empty(dims, dtype=np.float64)
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(first, windows.shape[1]):
            for d in range(dims):
                x[d] = windows[i, j, d]
            out[i, j - first] = _residual(x, times[i, j], k, mean[s], count[s], scale[s],
                                          learned, last_slot, s, answered, residuals)  # fmt: skip


@njit(cache=True)
def _residual(x, t, k, mean, count, scale, learned, last_slot, s, answered, residuals):
    """|x - profile| of one point x [D] at UTC time t (seconds), NaN until the point's bin has
    learned min_count points; then the profile learns the point (the first of its slot)."""
    if not math.isfinite(t):
        return math.nan
    dims = x.shape[0]
    if dims == 1 and not math.isfinite(x[0]):
        return math.nan
    bins, period, alpha, min_count, every, long_window = k[0], k[1], k[2], k[3], k[4], k[5]
    nb = int(bins)
    b = min(int((t % period) * nb // period), nb - 1)
    learn_slot = t // every if every > 0 else t
    learn = learn_slot > last_slot[s]
    if learn:
        last_slot[s] = learn_slot
    n_answered = 0
    for d in range(dims):
        if not math.isfinite(x[d]):
            continue
        cell = b * dims + d
        c = count[cell]
        r = abs(x[d] - mean[cell]) if c >= min_count else math.nan
        if learn:
            # The visits before a cell scores average plainly (it starts at the first days'
            # mean); later ones weigh alpha, so the profile follows slow change.
            step = 1.0 / (c + 1) if c < min_count else alpha
            mean[cell] = mean[cell] + (x[d] - mean[cell]) * step  # in float64, stored float32
            if c < 255:
                count[cell] = c + 1
        if r == r:  # not NaN: the cell has seen enough points to answer
            answered[n_answered] = d
            residuals[n_answered] = r
            n_answered += 1
    return combine_dims(answered, residuals, n_answered, scale, learned, s, long_window)
