"""Spread shift: the distance between how much the newest points vary and how much the series
usually varies, which stays large for as long as a change of variance lasts.

The level signals see a series leave its usual level or range; a burst of spikes inside the
usual range, a denser rhythm of spikes, or a series gone flat changes none of those, but it
changes the dispersion. Tests for a change of variance compare a recent dispersion with a
long-run one (Inclan & Tiao, "Use of cumulative sums of squares for retrospective detection of
changes of variance", JASA 1994; Basseville & Nikiforov, "Detection of Abrupt Changes", 1993).
Here the recent dispersion is the mean absolute deviation of the last `short` points about
their own mean (so a level shift alone does not count: that is detector/signals/shift.py's
business); the raw value is its distance from its own running mean, in series units, which is
cumulative for the first `long_window` points, then exponential. Several dimensions combine as
every signal's do (detector/signals/units.py).

>>> import numpy as np
>>> sig = SpreadShift(dims=1, short=8, long_window=100)
>>> sig.reset(0)
>>> x = np.sin(np.arange(300) * 2 * np.pi / 10)
>>> x[250:] *= 4.0  # the same rhythm, four times as wide
>>> w = np.lib.stride_tricks.sliding_window_view(x, 16)[:, :, None]
>>> raw = np.concatenate([sig.raw(np.array([0]), w[i : i + 1], None, 1) for i in range(len(w))])
>>> bool(raw[200, 0] < 0.1), bool(raw[-1, 0] > 1.0)
(True, True)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.shift import recent_sum
from detector.signals.units import combine_dims


class SpreadShift(Signal):
    def __init__(self, dims: int, short: int = 32, long_window: int = 500,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims, self.short, self.long_window = dims, short, long_window
        self.reach = short
        self.rows = SlotRows(
            capacity,
            spread=((dims,), np.float64, 0.0),  # running mean of the recent dispersion
            n=((dims,), np.float64, 0.0),
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        r = self.rows
        _spread(slots, windows, n_new, self.short, float(self.long_window), r.spread, r.n,
                r.scale, r.learned, out)  # fmt: skip


@njit(cache=True)
def _spread(slots, windows, n_new, short, long_window, spread, n, scale, learned, out):
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
                if not math.isfinite(windows[i, j, d]):
                    continue
                total, count = recent_sum(windows, i, j, d, short)
                if 2 * count < short:  # too few of the recent points are known
                    continue
                mean = total / count
                dev = 0.0
                for k in range(j - short + 1, j + 1):
                    v = windows[i, k, d]
                    if math.isfinite(v):
                        dev += abs(v - mean)
                dev /= count
                if n[s, d] >= short:
                    answered[n_answered] = d
                    gaps[n_answered] = abs(dev - spread[s, d])
                    n_answered += 1
                n[s, d] += 1.0
                spread[s, d] += (dev - spread[s, d]) / min(n[s, d], long_window)
            out[i, j - (length - n_new)] = combine_dims(
                answered, gaps, n_answered, scale[s], learned, s, long_window
            )
