"""Level shift: the distance between the mean of the newest points and the series' long-run
mean, which stays large for as long as a shifted level lasts.

A forecaster catches up with a new level within a few points, so its residual marks only the
onset of a level shift; a change-point statistic that compares a short recent mean with a
long-run one keeps saying "this is not the usual level" until the long-run mean has absorbed
it (the two-window mean-shift test behind CUSUM-style detectors: Page, "Continuous Inspection
Schemes", Biometrika 1954; Basseville & Nikiforov, "Detection of Abrupt Changes", 1993, 2.1).
The raw value is |mean of the last `short` points - running mean|, in series units; the running
mean is cumulative for the first `long_window` points, then exponential. Several dimensions
combine as every signal's do (detector/signals/units.py).

The running mean learns each point's step clipped to `clip` times the running mean absolute
step (once `short` points are in), the bounded-influence update of robust exponential smoothing
(Gelper, Fried & Croux, "Robust forecasting with exponential and Holt-Winters smoothing",
J. Forecasting 2010): a burst of extreme values moves the baseline by a few usual steps, so the
level it returns to does not read as a shift for the next `long_window` points; a lasting shift
is still absorbed, the unit growing with it. `clip` 0 learns every step whole.

>>> import numpy as np
>>> x = np.r_[np.zeros(200), np.full(50, 5.0)]
>>> w = np.lib.stride_tricks.sliding_window_view(x, 8)[:, :, None]
>>> def raws(sig):
...     sig.reset(0)
...     return np.concatenate([sig.raw(np.array([0]), w[i : i + 1], None, 1) for i in range(len(w))])
>>> raw = raws(LevelShift(dims=1, short=4, long_window=100))
>>> float(raw[150, 0]), bool(raw[-1, 0] > 2.0)
(0.0, True)
>>> x = np.r_[np.sin(np.arange(300)), [1e6, 1e6], np.sin(np.arange(100))]  # a burst, then back
>>> w = np.lib.stride_tricks.sliding_window_view(x, 8)[:, :, None]
>>> after = (slice(310, None), 0)  # once the burst has left the recent mean
>>> bool(raws(LevelShift(1, 4, 100, clip=5.0))[after].max() < 1.0)
True
>>> bool(raws(LevelShift(1, 4, 100, clip=0.0))[after].min() > 1000.0)
True
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.units import combine_dims


class LevelShift(Signal):
    def __init__(self, dims: int, short: int = 8, long_window: int = 500, clip: float = 0.0,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims, self.short, self.long_window, self.clip = dims, short, long_window, clip
        self.rows = SlotRows(
            capacity,
            mean=((dims,), np.float64, 0.0),
            dev=((dims,), np.float64, 0.0),  # running mean absolute step: the clip's unit
            n=((dims,), np.float64, 0.0),
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        r = self.rows
        _shift(slots, windows, n_new, self.short, float(self.long_window), self.clip, r.mean,
               r.dev, r.n, r.scale, r.learned, out)  # fmt: skip


@njit(cache=True)
def recent_sum(windows, i, j, d, short):
    """Sum and count of the known values among the `short` points of windows[i, :, d] ending at
    j (shift.py's recent mean, spread.py's recent dispersion)."""
    total, count = 0.0, 0
    for k in range(max(0, j - short + 1), j + 1):
        v = windows[i, k, d]
        if math.isfinite(v):
            total += v
            count += 1
    return total, count


@njit(cache=True)
def _shift(slots, windows, n_new, short, long_window, clip, mean, dev, n, scale, learned, out):
    length, dims = windows.shape[1], windows.shape[2]
    answered = np.empty(dims, dtype=np.int64)
    gaps = np.empty(dims, dtype=np.float64)
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(length - n_new, length):
            n_answered = 0
            for d in range(dims):
                x = windows[i, j, d]
                if not math.isfinite(x):
                    continue
                total, count = recent_sum(windows, i, j, d, short)
                if n[s, d] >= short:
                    answered[n_answered] = d
                    gaps[n_answered] = abs(total / count - mean[s, d])
                    n_answered += 1
                step = x - mean[s, d]
                if clip > 0.0 and n[s, d] >= short and dev[s, d] > 0.0:
                    step = min(max(step, -clip * dev[s, d]), clip * dev[s, d])
                n[s, d] += 1.0
                a = 1.0 / min(n[s, d], long_window)
                mean[s, d] += a * step
                dev[s, d] += a * (abs(step) - dev[s, d])
            out[i, j - (length - n_new)] = combine_dims(
                answered, gaps, n_answered, scale[s], learned, s, long_window
            )
