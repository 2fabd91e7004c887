"""Online calibration of raw surprise values into tail scores in 0..1, per series and signal.

Implements streaming peaks-over-threshold (SPOT) from Siffer, Fouque, Termier and Largouet,
"Anomaly Detection in Streams with Extreme Value Theory", KDD 2017: above a high quantile u of
a signal's raw values, the excesses y = x - u follow a generalised Pareto distribution (GPD), so
the tail probability of a value x is P(X > x) = (1 - q) * P(Y > x - u).

Changes from the paper, so that a tail's state is a few fixed-size numbers (under 200 bytes):

- the paper's initial batch is the warm-up: its values give the first u and tail scale, fitted
  by the same exponential tail through the 80% quantile (more stable than the 99% quantile of a
  hundred points). The fit needs only the values above that quantile and the sum of all of
  them, so a tail keeps the largest 21 of its first 100 values (float32). After that, u is a
  running q-quantile (stochastic approximation, step proportional to the running mean);
- the GPD shape is fixed at 0, the exponential tail the paper lists as the light-tail case, so
  P(Y > y) = exp(-y / m) with m the running mean excess (no stored peaks, no Grimshaw fit).
  Means are cumulative for the first `long_window` points, then exponential, so the tail follows
  slow changes (the paper's DSPOT);
- x is the mean of the last `short_window` raw values, which damps single-point noise;
- the tail's scale m is at least one up-step of the running quantile, so excesses within u's
  own jitter claim little: values with a bounded top (Beta-like) would otherwise learn m near 0
  and alarm on their ordinary maxima;
- as in the paper's Algorithm 1, a value that raises an alarm (score >= `alarm`) is not
  learned as a peak; it moves the running quantile ten times slower than an ordinary value,
  so an anomaly's score stays high while it lasts and a lasting new regime is still absorbed;
- the score is the tail probability on a log scale, score = clip(-log10 P / tail_decades, 0, 1)
  (as Numenta's log-likelihood does), so a threshold reads as a probability: 0.4 with
  tail_decades=10 is P = 1e-4. Below u the score rises linearly from 0 to u's score
  (-log10(1 - q) / tail_decades), so ordinary points keep their order instead of all scoring 0
  (a ranking metric such as VUS-PR sees that order).

Each of a series' signals (detector/signals/) has its own tail: `TailBank` holds S tails per
series, one row per series, and scores a whole batch in one compiled loop (numba).

Raw values must be >= 0 in a unit that is stable for the series. A tail is scale-free:
multiplying every raw value of a signal by c leaves its scores unchanged. Scores are causal:
each value is scored against state built from earlier values only, then folded in. A NaN raw
value (the signal has no opinion, e.g. a missing point) scores NaN and leaves the tail as it
was. The first `warmup` values only build state and score 0.

>>> import numpy as np
>>> bank = TailBank(TailConfig(warmup=50), signals=1)
>>> bank.reset(0)
>>> calm = bank.score(np.array([0]), np.abs(np.random.default_rng(0).normal(0, 1, (1, 500, 1))))
>>> float(calm[0, :50].max()), bool(calm[0, 50:].max() < 0.4)
(0.0, True)
>>> bool(bank.score(np.array([0]), np.array([[[40.0]]]))[0, 0, 0] > 0.9)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from detector.rows import SlotRows

_LN10 = math.log(10.0)
_REL_EPS = 1e-9
_INIT_QUANTILE = 0.8

# A tail's state row: values seen, running quantile u, running mean |x - u| (the quantile
# step's scale), peaks seen, running mean excess over u (the exponential tail's scale),
# short-window write index and fill, sum of the warm-up values, then the short-window buffer.
_N, _U, _MEAN_ERR, _N_PEAKS, _PEAK_MEAN, _POS, _FILLED, _WARM_SUM, _BUF = range(9)


def warm_keep(warmup: int) -> int:
    """Warm-up values a tail keeps: those at or above the 80% quantile's lower neighbour
    (np.quantile's linear interpolation reads sorted positions floor(0.8 (warmup - 1)) and the
    next)."""
    return max(1, warmup - math.floor(_INIT_QUANTILE * (warmup - 1)))


@dataclass(frozen=True)
class TailConfig:
    """The SPOT settings every tail of a detector shares."""

    q: float = 0.99  # quantile above which values are peaks (paper: 0.98 .. 0.995)
    short_window: int = 3  # raw values averaged before scoring
    long_window: int = 500  # horizon (points) of the running statistics
    warmup: int = 100  # values before scores leave 0
    tail_decades: float = 10.0  # -log10(tail probability) that maps to score 1
    quantile_rate: float = 0.2  # step of the running quantile, in running mean values
    alarm: float = 0.4  # a value scoring this (P <= 1e-4) is an alarm: not learned as a peak

    def validate(self) -> None:
        # q below the warm-up fit's 80% quantile would put the first u under the fitted tail.
        if not _INIT_QUANTILE <= self.q < 1.0:
            raise ValueError("q must be in [0.8, 1)")
        if self.short_window < 1 or self.long_window < 2 or self.warmup < 0:
            raise ValueError("need short_window >= 1, long_window >= 2, warmup >= 0")
        if not self.tail_decades > 0:
            raise ValueError("need tail_decades > 0")
        if not 0.0 < self.quantile_rate <= 1.0:
            raise ValueError("quantile_rate must be in (0, 1]")

    def constants(self) -> np.ndarray:
        """The kernel's view of the config: float64 [10], indexed by the _K* constants."""
        one_mq = 1.0 - self.q
        return np.array([
            one_mq, -math.log10(one_mq), 1.0 / self.tail_decades,
            self.quantile_rate / one_mq,
            # Memory of the tail: about long_window * (1 - q) peaks, and at least 5.
            max(5.0, self.long_window * one_mq + 1.0),
            self.warmup, self.long_window, self.short_window,
            # The warm-up fit puts u where its exponential tail through the 80% quantile
            # reaches 1 - q: u = u0 + m ln(0.2 / (1 - q)).
            math.log((1.0 - _INIT_QUANTILE) / one_mq),
            self.alarm,
        ], dtype=np.float64)  # fmt: skip


(_K_ONE_MQ, _K_MINUS_LOG10_1MQ, _K_INV_DECADES, _K_STEP_SCALE, _K_PEAK_MEMORY, _K_WARMUP,
 _K_LONG, _K_SHORT, _K_INIT_STRETCH, _K_ALARM) = range(10)  # fmt: skip


class TailBank:
    """S SPOT tails per series, one row per slot: `tails` [S, 8 + short_window] float64 and
    `warm` [S, warm_keep] float32 (each tail's largest warm-up values, a min-heap)."""

    def __init__(self, cfg: TailConfig, signals: int, capacity: int = 64) -> None:
        self.cfg, self.signals = cfg, signals
        self._k = cfg.constants()
        self.rows = SlotRows(
            capacity,
            tails=((signals, _BUF + cfg.short_window), np.float64, 0.0),
            warm=((signals, warm_keep(cfg.warmup)), np.float32, 0.0),
        )

    @property
    def bytes_per_series(self) -> int:
        return self.rows.bytes_per_row

    def reset(self, slot: int) -> None:
        self.rows.reset(slot)

    def restart(self, signal: int) -> None:
        """Forget one signal's tail in every series (a new model's errors live on another scale)."""
        self.rows.tails[:, signal] = 0.0
        self.rows.warm[:, signal] = 0.0

    def warmed_up(self, slot: int, signal: int) -> bool:
        return bool(self.rows.tails[slot, signal, _N] >= self.cfg.warmup)

    def tail(self, slot: int, signal: int) -> dict[str, float]:
        """A tail's learned statistics (for tests and inspection)."""
        row = self.rows.tails[slot, signal]
        return {"n": row[_N], "u": row[_U], "mean_err": row[_MEAN_ERR],
                "n_peaks": row[_N_PEAKS], "peak_mean": row[_PEAK_MEAN]}  # fmt: skip

    def score(self, slots: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Tail scores [B, K, S] (float64, 0..1, NaN where raw is not finite) of raw values
        [B, K, S], row i belonging to series slots[i] (-1: skip the row, it scores NaN), points
        of a row in time order. A series may have several rows in one call (in order)."""
        x = np.ascontiguousarray(raw, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        if x.size:
            _score_rows(np.ascontiguousarray(slots, dtype=np.int64), x, self._k,
                        self.rows.tails, self.rows.warm, out)  # fmt: skip
        return out


# ----------------------------------------------------------------------------- the kernel
# Compiled by numba on first use and cached beside this file (__pycache__), so a process pays
# the compile (seconds) once per machine. NUMBA_DISABLE_JIT=1 runs it as plain Python.


@njit(cache=True)
def _score_rows(slots, raw, k, tails, warm, out):
    for i in range(raw.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(raw.shape[1]):
            for g in range(raw.shape[2]):
                e = raw[i, j, g]
                # No opinion (NaN; inf only comes from broken input) teaches nothing.
                if math.isfinite(e):
                    out[i, j, g] = _tail_step(tails[s, g], warm[s, g], e, k)


@njit(cache=True)
def _tail_step(st, heap, e, k):
    """Tail score of finite error e >= 0 in 0..1 (before suppression), then learn from it."""
    w = int(k[_K_SHORT])
    pos = int(st[_POS])
    filled = min(st[_FILLED] + 1.0, k[_K_SHORT])
    st[_FILLED] = filled
    st[_BUF + pos] = e if e > 0.0 else 0.0
    st[_POS] = pos + 1 if pos + 1 < w else 0
    total = 0.0
    for i in range(_BUF, _BUF + w):  # unfilled slots are still 0.0
        total += st[i]
    x = total / filled
    n = st[_N]
    if n < k[_K_WARMUP]:
        _warm_up(st, heap, x, k)
        return 0.0
    raw = _tail_score(st, x, k) if n >= 2 else 0.0
    # Learn x, after it was scored (no lookahead).
    u, mean_err, n_peaks, peak_mean = st[_U], st[_MEAN_ERR], st[_N_PEAKS], st[_PEAK_MEAN]
    n += 1.0
    st[_N] = n
    if n == 1.0:  # no warm-up at all: the first error is the first quantile estimate
        u = x
    alpha = 1.0 / min(n, k[_K_LONG])
    if raw >= k[_K_ALARM]:
        # An alarm moves the quantile ten times slower: a shift stays visible for a while,
        # and a lasting new regime is still absorbed in the end.
        alpha *= 0.1
    mean_err += alpha * (abs(x - u) - mean_err)
    # Robbins-Monro quantile step: up by (1-q)-weighted steps when x exceeds u, down otherwise,
    # so u settles where P(x > u) = 1 - q. The step follows the error scale, so this works for
    # errors of any unit.
    u += k[_K_STEP_SCALE] * mean_err * alpha * ((1.0 if x > u else 0.0) - k[_K_ONE_MQ])
    if u < 0.0:
        u = 0.0
    # An alarm is not a peak (SPOT, Algorithm 1): one huge anomaly would otherwise widen the
    # tail and deafen it to the next one for hundreds of points. Except in a tail that has no
    # scale yet (a flat warm-up: mean excess 0), where every excess is an alarm: its first one
    # is its scale, or the tail would alarm on every later excess forever.
    if x > u and (raw < k[_K_ALARM] or peak_mean == 0.0):
        n_peaks += 1.0
        peak_mean += ((x - u) - peak_mean) / min(n_peaks, k[_K_PEAK_MEMORY])
    st[_U], st[_MEAN_ERR], st[_N_PEAKS], st[_PEAK_MEAN] = u, mean_err, n_peaks, peak_mean
    return raw


@njit(cache=True)
def _tail_score(st, x, k):
    """-log10 P(X > x) / tail_decades, clipped to 0..1; at or below the quantile u, a linear
    ramp from 0 (x = 0) to u's score, which keeps ordinary values in order."""
    u = st[_U]
    if x <= u or st[_N_PEAKS] == 0.0:
        if u <= 0.0:
            return 0.0
        return min(x / u, 1.0) * k[_K_MINUS_LOG10_1MQ] * k[_K_INV_DECADES]
    # The scale is at least one up-step of u (an excess within u's own jitter is no evidence),
    # and relative to x, so all-equal errors (mean excess 0) flag any larger one as certain.
    step = k[_K_STEP_SCALE] * st[_MEAN_ERR] / min(st[_N], k[_K_LONG])  # n >= 2 here
    m = max(st[_PEAK_MEAN], step, _REL_EPS * x)
    raw = (k[_K_MINUS_LOG10_1MQ] + (x - u) / m / _LN10) * k[_K_INV_DECADES]
    return min(1.0, max(0.0, raw))


@njit(cache=True)
def _warm_up(st, heap, x, k):
    """Keep a warm-up error; with `warmup` of them, fit the initial tail (the paper's
    calibration batch).

    With a hundred points the 99% quantile is little more than the maximum, so fit the
    exponential tail above the 80% quantile u0 (mean excess m) and extrapolate:
    P(X > u0 + y) = 0.2 exp(-y / m) equals 1 - q at y = m ln(0.2 / (1 - q)). Only the errors at
    or above u0's lower neighbour are kept (a min-heap of the largest), and their sum.
    """
    x32 = np.float32(x)
    n = int(st[_N])
    keep = heap.shape[0]
    if n < keep:  # sift up
        i = n
        heap[i] = x32
        while i > 0 and heap[(i - 1) // 2] > heap[i]:
            p = (i - 1) // 2
            heap[i], heap[p] = heap[p], heap[i]
            i = p
    elif x32 > heap[0]:  # replace the smallest kept error, sift down
        heap[0] = x32
        i = 0
        while True:
            c = 2 * i + 1
            if c >= keep:
                break
            if c + 1 < keep and heap[c + 1] < heap[c]:
                c += 1
            if heap[i] <= heap[c]:
                break
            heap[i], heap[c] = heap[c], heap[i]
            i = c
    st[_WARM_SUM] += np.float64(x32)
    st[_N] = n + 1
    if n + 1 < k[_K_WARMUP]:
        return
    count = n + 1
    top = np.sort(heap[: min(count, keep)].astype(np.float64))  # sorted positions count-keep..
    # np.quantile(a, 0.8), linear: between sorted positions floor(h) and the next, h = 0.8 (n-1);
    # the kept errors start at position floor(h).
    h = (count - 1) * _INIT_QUANTILE
    t = h - math.floor(h)
    a, b = top[0], top[1] if len(top) > 1 else top[0]
    u0 = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t  # numpy's _lerp
    excess, peaks = 0.0, 0
    for v in top:
        if v > u0:
            excess += v - u0
            peaks += 1
    m = excess / peaks if peaks else 0.0
    u = u0 + m * k[_K_INIT_STRETCH]
    # mean |a - u| over every warm-up error: u >= u0, so the errors above u are all kept ones.
    above, n_above = 0.0, 0
    for v in top:
        if v > u:
            above += v
            n_above += 1
    spread = (above - n_above * u) + ((count - n_above) * u - (st[_WARM_SUM] - above))
    st[_U], st[_PEAK_MEAN] = u, m
    # A flat warm-up (no excess at all) keeps one pseudo-peak of size 0: the first later error
    # above u scores 1, which is right for a series that never moved, and becomes the scale.
    st[_N_PEAKS] = max(1, peaks)
    st[_MEAN_ERR] = max(0.0, spread / count)
    heap[:] = 0.0
