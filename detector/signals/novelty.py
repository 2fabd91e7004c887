"""Pattern novelty: how far the newest subsequence lies from every similar-length stretch of the
series' own recent past (its nearest-neighbour distance, a left matrix profile).

The matrix profile (Yeh et al., "Matrix Profile I", ICDM 2016) scores a subsequence by the
distance to its nearest neighbour elsewhere in the series; a discord, a subsequence far from
everything else, is an anomaly. Streaming, only the past is known: the left matrix profile
(Zhu et al., "Matrix Profile II", ICDM 2016, its incremental variant). Memory-bank detectors
(PaAno, ICLR 2026, patches against a bank of past patch embeddings) and ARTime (novelty
against known categories, NAB 74.85) use the same idea: a repeat of something seen is not news.

Here each series keeps a ring of its last `history` points per dimension (4 KiB at 1,024
float32 points); the query is the newest `length` points with their mean removed (a level
change is the level signals' business, a changed shape or amplitude is this one's), and the
candidates are every stretch of the ring that does not overlap the query. The raw value is
the root mean square distance to the nearest candidate, in series units. The search is a
sliding dot product per point (history x length multiply-adds); several dimensions combine as
every signal's do (detector/signals/units.py).

>>> import numpy as np
>>> sig = PatternNovelty(dims=1, length=4, history=64)
>>> sig.reset(0)
>>> x = np.sin(np.arange(200) * 2 * np.pi / 10)
>>> x[150:154] += [0.0, 3.0, -3.0, 0.0]  # a shape the series never had
>>> w = np.lib.stride_tricks.sliding_window_view(x, 8)[:, :, None]  # windows of 8 points
>>> raw = np.concatenate([sig.raw(np.array([0]), w[i : i + 1], None, 1) for i in range(len(w))])
>>> bool(np.nanargmax(raw[:, 0]) + 7 in range(150, 158)), round(float(np.nanmedian(raw[100:140])), 6)
(True, 0.0)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.units import combine_dims


class PatternNovelty(Signal):
    def __init__(self, dims: int, length: int = 16, history: int = 1024, long_window: int = 500,
                 capacity: int = 64) -> None:  # fmt: skip
        self.dims, self.length = dims, length
        # Past points kept per dimension: the whole budget for one dimension, a quarter of it
        # (at least 4 query lengths) per dimension for wide series, so cost grows slower than D.
        self.history = max(4 * length, history // max(1, int(math.sqrt(dims))))
        self.long_window = long_window
        self.rows = SlotRows(
            capacity,
            ring=((self.history, dims), np.float32, np.nan),
            pos=((), np.int64, 0),  # points written so far; the next goes to pos % history
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def raw(self, slots: np.ndarray, windows: np.ndarray, times, n_new: int) -> np.ndarray:
        if np.shape(windows)[1] < self.length + n_new - 1:
            raise ValueError(
                f"windows of {np.shape(windows)[1]} points are too short for length {self.length}"
            )
        return super().raw(slots, windows, times, n_new)

    def _fill(self, slots, windows, times, n_new, out) -> None:
        """Nearest-neighbour distance of the subsequence ending at each new point; then the
        ring learns those points."""
        r = self.rows
        _novelty(slots, windows, n_new, self.length, float(self.long_window), r.ring, r.pos,
                 r.scale, r.learned, out)  # fmt: skip


@njit(cache=True)
def _novelty(slots, windows, n_new, m, long_window, ring, pos, scale, learned, out):
    length, dims = windows.shape[1], windows.shape[2]
    h = ring.shape[1]
    chron = np.empty(h, dtype=np.float64)  # one dimension's ring, oldest first, NaN -> 0
    p1 = np.empty(h + 1, dtype=np.float64)  # prefix sums of chron and chron^2, NaN counts
    p2 = np.empty(h + 1, dtype=np.float64)
    p0 = np.empty(h + 1, dtype=np.int64)
    q = np.empty(m, dtype=np.float64)
    answered = np.empty(dims, dtype=np.int64)
    dist = np.empty(dims, dtype=np.float64)
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(length - n_new, length):
            n_answered = 0
            filled = min(pos[s], h)
            start = pos[s] - filled  # the oldest point still in the ring
            for d in range(dims):
                ok = True
                qm = 0.0
                for k in range(m):
                    v = windows[i, j - m + 1 + k, d]
                    if not math.isfinite(v):
                        ok = False
                        break
                    q[k] = v
                    qm += v
                n_cand = filled - 2 * m + 2  # stretches that end before the query begins
                if not ok or n_cand <= 0:
                    continue
                qm /= m
                qn = 0.0
                for k in range(m):
                    q[k] -= qm
                    qn += q[k] * q[k]
                p1[0], p2[0], p0[0] = 0.0, 0.0, 0
                for c in range(filled):
                    v = ring[s, (start + c) % h, d]
                    bad = not math.isfinite(v)
                    chron[c] = 0.0 if bad else v
                    p1[c + 1] = p1[c] + chron[c]
                    p2[c + 1] = p2[c] + chron[c] * chron[c]
                    p0[c + 1] = p0[c] + (1 if bad else 0)
                best = math.inf
                for c in range(n_cand):
                    if p0[c + m] - p0[c] > 0:
                        continue
                    s1 = p1[c + m] - p1[c]
                    var = (p2[c + m] - p2[c]) - s1 * s1 / m
                    dot = 0.0
                    for k in range(m):
                        dot += q[k] * chron[c + k]
                    d2 = qn + var - 2.0 * dot
                    if d2 < best:
                        best = d2
                if best < math.inf:
                    answered[n_answered] = d
                    dist[n_answered] = math.sqrt(max(best, 0.0) / m)
                    n_answered += 1
            out[i, j - (length - n_new)] = combine_dims(
                answered, dist, n_answered, scale[s], learned, s, long_window
            )
            slot = pos[s] % h
            for d in range(dims):
                ring[s, slot, d] = windows[i, j, d]
            pos[s] += 1
