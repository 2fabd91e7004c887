"""Range excess: how far a value lies beyond the range the series has covered so far.

Numenta's HTM detector for NAB adds a spatial rule to its learned model: a value beyond the
running minimum or maximum by more than a few percent of the range is anomalous whatever the
model says (Ahmad et al., "Unsupervised real-time anomaly detection for streaming data",
Neurocomputing 2017; NAB's numenta detector, spatial tolerance 5%). Here the excess is
continuous: max(0, x - hi, lo - x) / (hi - lo) less the 5% tolerance, in units of the range, so a tail can learn how
often a series leaves its range. The bounds widen at once to take a new extreme and drift back
toward the running mean by 1/`forget` of the gap per point, so one old outlier does not blind
the rule forever. Several dimensions: the largest excess (each is already unit-free).

>>> import numpy as np
>>> sig = RangeExcess(dims=1)
>>> sig.reset(0)
>>> x = np.r_[np.tile([0.0, 1.0], 20), 3.0][None, :, None]
>>> raw = sig.raw(np.array([0]), x, None, n_new=41)
>>> round(float(raw[0, 10]), 3), round(float(raw[0, -1]), 3)
(0.0, 1.95)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal


class RangeExcess(Signal):
    def __init__(self, dims: int, forget: float = 20000.0, tolerance: float = 0.05,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims, self.forget, self.tolerance = dims, forget, tolerance
        self.rows = SlotRows(
            capacity,
            lo=((dims,), np.float64, np.inf),
            hi=((dims,), np.float64, -np.inf),
            mean=((dims,), np.float64, 0.0),
            n=((dims,), np.float64, 0.0),
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        r = self.rows
        _excess(slots, windows, n_new, 1.0 / self.forget, self.tolerance, r.lo, r.hi, r.mean,
                r.n, out)  # fmt: skip


@njit(cache=True)
def _excess(slots, windows, n_new, rate, tolerance, lo, hi, mean, n, out):
    length, dims = windows.shape[1], windows.shape[2]
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(length - n_new, length):
            best = math.nan
            for d in range(dims):
                x = windows[i, j, d]
                if not math.isfinite(x):
                    continue
                a, b = lo[s, d], hi[s, d]
                if b > a:
                    e = max(0.0, max(x - b, a - x) / (b - a) - tolerance)
                    best = e if not best >= e else best
                # Learn: the bounds take the value, then relax toward the mean.
                n[s, d] += 1.0
                mean[s, d] += (x - mean[s, d]) / min(n[s, d], 1.0 / rate)
                a, b = min(a, x), max(b, x)
                lo[s, d] = a + (mean[s, d] - a) * rate if a < mean[s, d] else a
                hi[s, d] = b - (b - mean[s, d]) * rate if b > mean[s, d] else b
            out[i, j - (length - n_new)] = best
