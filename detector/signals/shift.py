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

>>> import numpy as np
>>> sig = LevelShift(dims=1, short=4, long_window=100)
>>> sig.reset(0)
>>> x = np.r_[np.zeros(200), np.full(50, 5.0)]
>>> w = np.lib.stride_tricks.sliding_window_view(x, 8)[:, :, None]
>>> raw = np.concatenate([sig.raw(np.array([0]), w[i : i + 1], None, 1) for i in range(len(w))])
>>> float(raw[150, 0]), bool(raw[-1, 0] > 2.0)
(0.0, True)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.units import combine_dims


class LevelShift(Signal):
    def __init__(self, dims: int, short: int = 8, long_window: int = 500,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims, self.short, self.long_window = dims, short, long_window
        self.rows = SlotRows(
            capacity,
            mean=((dims,), np.float64, 0.0),
            n=((dims,), np.float64, 0.0),
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        r = self.rows
        _shift(slots, windows, n_new, self.short, float(self.long_window), r.mean, r.n, r.scale,
               r.learned, out)  # fmt: skip


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
def _shift(slots, windows, n_new, short, long_window, mean, n, scale, learned, out):
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
                n[s, d] += 1.0
                mean[s, d] += (x - mean[s, d]) / min(n[s, d], long_window)
            out[i, j - (length - n_new)] = combine_dims(
                answered, gaps, n_answered, scale[s], learned, s, long_window
            )
