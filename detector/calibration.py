"""Online calibration of raw anomaly errors into scores in 0..1, per series.

Implements streaming peaks-over-threshold (SPOT) from Siffer, Fouque, Termier and Largouet,
"Anomaly Detection in Streams with Extreme Value Theory", KDD 2017: above a high quantile u of
the errors, the excesses y = x - u follow a generalised Pareto distribution (GPD), so the tail
probability of an error x is P(X > x) = (1 - q) * P(Y > x - u).

Changes from the paper, so that a tail's state is a few fixed-size numbers (under 200 bytes):

- the paper's initial batch is the warm-up: its errors give the first u and tail scale, fitted
  by the same exponential tail through the 80% quantile (more stable than the 99% quantile of a
  hundred points). The fit needs only the errors above that quantile and the sum of all of them,
  so a tail keeps the largest 21 of its first 100 errors (in float32), not all of them. After
  that, u is a running q-quantile (stochastic approximation, step proportional to the running
  mean error);
- the GPD shape is fixed at 0, the exponential tail the paper lists as the light-tail case, so
  P(Y > y) = exp(-y / m) with m the running mean excess (no stored peaks, no Grimshaw fit). A
  method-of-moments shape estimate from the few peaks a short memory sees was tried: it is
  noisy, and NAB standard dropped from 54.2 to 51.0 with it in our runs. Means are cumulative for the first
  `long_window` points, then exponential, so the model follows slow changes (the paper's DSPOT);
- x is the mean of the last `short_window` errors, which damps single-point noise;
- the score is the tail probability on a log scale, score = clip(-log10 P / tail_decades, 0, 1)
  (as Numenta's log-likelihood does), so the threshold reads as a probability: score 0.4 with
  tail_decades=10 is P = 1e-4;
- repeated alerts are suppressed: within `suppress` points after a score, a new score that does
  not exceed it is multiplied by `suppress_factor`. One anomaly then opens one alert, not one per
  point (what NAB and on-call people reward).

A second, independent signal covers what a 128-point window cannot see: a time-of-day profile
of the series' own values (`SeasonalProfile`: per half-hour bin, a slow running mean). The
residual |value - profile| goes through its own tail (the same SPOT as above), and a point's raw
score is the larger of the two tail scores; suppression then acts on that one stream, so the two
signals do not page twice for one anomaly. On NAB (corpus-optimised threshold, standard profile,
the previous default model) the forecast signal alone scores 58.2, the profile residual alone
58.6, the two together 64.8 (65.2 with series scored from their 32nd point, detector/scorer.py
MIN_POINTS; 65.15 with the current, smaller model): they miss different anomalies (a daily jump that does not come looks normal to a forecaster that
sees 9 hours at 5-minute steps; a spike inside the usual daily range looks normal to the
profile). Timestamps are read as UTC seconds. The profile learns at most one point per
`seasonal_learn_every_s` (5 minutes), so its memory is about 1/alpha learned points per bin
(three days at 5-minute sampling) whatever the input rate, and a bin scores only after
`seasonal_min_count` learned points: the profile is silent for a series' first day (and after
a restart, until the rebuild has read back that much history; a model reload keeps it).

The service keeps up to millions of series, a few new points each per batch, so the state of
every series lives in one `CalibratorBank` per dimensionality: a row per series in a handful of
numpy arrays (about 620 bytes per one-dimensional series with the profile), scored by one
compiled loop (numba) over a whole batch. `Calibrator` is the same bank with a single row, for
one series at a time (evaluation, tests).

Raw errors must be >= 0 and in a unit that is stable for the series (tsguard's scorer reports
|observed - forecast| in the series' own units). The calibrator is scale-free: multiplying every
error of a series by c leaves the scores unchanged.

Scores are causal: `update` scores each error against state built from earlier errors only, then
folds it in. A NaN (or inf) error, i.e. a missing point, scores 0 and leaves the state untouched.
The first `warmup` observed errors only build state and score 0 (each signal warms up on its
own).

>>> import numpy as np
>>> cal = Calibrator(CalibrationConfig(warmup=50))
>>> calm = cal.update(np.abs(np.random.default_rng(0).normal(0, 1, 500)))
>>> cal.warmed_up, float(calm[:50].max())
(True, 0.0)
>>> bool(cal.update(np.array([40.0]))[0] > 0.9)
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from numba import njit

_LN10 = math.log(10.0)
_REL_EPS = 1e-9
_INIT_QUANTILE = 0.8

FORECAST, SEASONAL = 0, 1  # the two tails of a series (CalibratorBank.tails[:, signal])
# A tail's state row: observed errors, running quantile u, running mean |x - u| (the quantile
# step's scale), peaks seen, running mean excess over u (the exponential tail's scale),
# short-window write index and fill, sum of the warm-up errors, then the short-window buffer.
_N, _U, _MEAN_ERR, _N_PEAKS, _PEAK_MEAN, _POS, _FILLED, _WARM_SUM, _BUF = range(9)
_ALERT, _SINCE = 0, 1  # CalibratorBank.suppress columns
_LEARNED, _LAST_SLOT = 0, 1  # CalibratorBank.profile_meta columns
# CalibrationConfig.constants(): the per-point arithmetic's numbers, by index, for the kernel.
(_Q, _ONE_MQ, _MINUS_LOG10_1MQ, _INV_DECADES, _STEP_SCALE, _PEAK_MEMORY, _WARMUP, _LONG,
 _SHORT, _SUPPRESS, _SUPPRESS_FACTOR, _BINS, _PERIOD, _S_ALPHA, _S_MIN, _LEARN_EVERY,
 _INIT_STRETCH) = range(17)  # fmt: skip


def warm_keep(warmup: int) -> int:
    """Warm-up errors a tail keeps: those at or above the 80% quantile's lower neighbour (np.quantile's
    linear interpolation reads sorted positions floor(0.8 (warmup - 1)) and the next)."""
    return max(1, warmup - math.floor(_INIT_QUANTILE * (warmup - 1)))


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of the calibration; stored under "calibration" in a model's config.json."""

    q: float = 0.99  # quantile above which errors are peaks (paper: 0.98 .. 0.995)
    short_window: int = 3  # errors averaged before scoring
    long_window: int = 500  # horizon (points) of the running statistics
    warmup: int = 100  # observed errors before scores leave 0
    tail_decades: float = 10.0  # -log10(tail probability) that maps to score 1
    quantile_rate: float = 0.2  # step of the running quantile, in running mean errors
    suppress: int = 100  # points after a score during which lower scores are damped
    suppress_factor: float = 0.5
    threshold: float = 0.4  # score >= threshold opens an anomaly episode (P <= 1e-4 per point)
    # Time-of-day profile (0 bins = off): bins per period, running-mean weight per visit of a
    # bin (0.05: about three weeks of memory at one visit a day), visits before a bin scores.
    seasonal_bins: int = 48
    seasonal_period_s: float = 86400.0
    seasonal_alpha: float = 0.05
    seasonal_min_count: int = 5
    # The profile learns at most one point per this many seconds (the 5-minute sampling it was
    # tuned on), so its memory is counted in days whatever the input rate: a 1-second metric
    # does not turn it into a 20-second moving average.
    seasonal_learn_every_s: float = 300.0

    def validate(self) -> None:
        # q below the warm-up fit's 80% quantile would put the first u under the fitted tail.
        if not _INIT_QUANTILE <= self.q < 1.0:
            raise ValueError("calibration: q must be in [0.8, 1)")
        if self.short_window < 1 or self.long_window < 2 or self.warmup < 0 or self.suppress < 0:
            raise ValueError(
                "calibration: need short_window >= 1, long_window >= 2, warmup >= 0, suppress >= 0"
            )
        if not (self.tail_decades > 0 and 0.0 <= self.suppress_factor <= 1.0):
            raise ValueError("calibration: need tail_decades > 0 and 0 <= suppress_factor <= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("calibration: threshold must be in (0, 1]")
        if not 0.0 < self.quantile_rate <= 1.0:
            raise ValueError("calibration: quantile_rate must be in (0, 1]")
        if not (0 <= self.seasonal_bins <= 10_000 and self.seasonal_period_s > 0):
            raise ValueError("calibration: need 0 <= seasonal_bins <= 10000, seasonal_period_s > 0")
        if not self.seasonal_learn_every_s >= 0:
            raise ValueError("calibration: need seasonal_learn_every_s >= 0")
        if not (0.0 < self.seasonal_alpha <= 1.0 and 1 <= self.seasonal_min_count <= 255):
            raise ValueError(
                "calibration: need 0 < seasonal_alpha <= 1 and 1 <= seasonal_min_count <= 255"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def constants(self) -> np.ndarray:
        """The kernel's view of the config: float64 [17], indexed by the _Q.. constants."""
        one_mq = 1.0 - self.q
        return np.array([
            self.q, one_mq, -math.log10(one_mq), 1.0 / self.tail_decades,
            self.quantile_rate / one_mq,
            # Memory of the tail: about long_window * (1 - q) peaks, and at least 5.
            max(5.0, self.long_window * one_mq + 1.0),
            self.warmup, self.long_window, self.short_window, self.suppress,
            self.suppress_factor, self.seasonal_bins, self.seasonal_period_s,
            self.seasonal_alpha, self.seasonal_min_count, self.seasonal_learn_every_s,
            # The warm-up fit puts u where its exponential tail through the 80% quantile
            # reaches 1 - q: u = u0 + m ln(0.2 / (1 - q)).
            math.log((1.0 - _INIT_QUANTILE) / one_mq),
        ], dtype=np.float64)  # fmt: skip

    @staticmethod
    def from_dict(d: dict) -> CalibrationConfig:
        names = {f.name for f in fields(CalibrationConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"calibration: unknown keys {sorted(unknown)}")
        cfg = CalibrationConfig(**d)
        cfg.validate()
        return cfg


class CalibratorBank:
    """The calibration state of many series of D dimensions, one row (slot) per series, and the
    compiled loop that scores a batch of them (see the module docstring).

    Rows per slot: `tails` [2, 8 + short_window] float64 (forecast and seasonal tail), `warm`
    [2, warm_keep] float32 (each tail's largest warm-up errors, a min-heap), `suppress` [2]
    (last kept score, points since), `profile_mean` / `profile_count` [bins * D] float32 / uint8,
    `profile_scale` [D] (D > 1 only) and `profile_meta` [2] (points that updated the scales, last
    learned slot of seasonal_learn_every_s).
    """

    _ROWS = ("tails", "warm", "suppress", "profile_mean", "profile_count", "profile_scale",
             "profile_meta")  # fmt: skip

    def __init__(self, cfg: CalibrationConfig, dims: int = 1, capacity: int = 64) -> None:
        self.cfg, self.dims = cfg, dims
        self._k = cfg.constants()
        bins = cfg.seasonal_bins
        self.tails = np.zeros((capacity, 2, _BUF + cfg.short_window), dtype=np.float64)
        self.warm = np.zeros((capacity, 2, warm_keep(cfg.warmup)), dtype=np.float32)
        self.suppress = np.zeros((capacity, 2), dtype=np.float64)
        self.profile_mean = np.zeros((capacity, bins * dims), dtype=np.float32)
        self.profile_count = np.zeros((capacity, bins * dims), dtype=np.uint8)
        self.profile_scale = np.zeros((capacity, dims if dims > 1 else 0), dtype=np.float64)
        self.profile_meta = np.zeros((capacity, 2), dtype=np.float64)
        self._free: list[int] = []
        self._unused = 0  # slots from here on were never taken

    @property
    def capacity(self) -> int:
        return len(self.tails)

    @property
    def bytes_per_series(self) -> int:
        return sum(getattr(self, name)[0].nbytes for name in self._ROWS)

    def allocate(self) -> int:
        """A slot in its initial state (nothing learned)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._unused == self.capacity:
                self._grow()
            slot = self._unused
            self._unused += 1
        for name in self._ROWS:
            getattr(self, name)[slot] = 0
        self.profile_meta[slot, _LAST_SLOT] = -np.inf
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def restart_forecast(self) -> None:
        """Forget what the model's errors looked like (a new model's errors live on another
        scale) and keep the seasonal profile and its tail (days of the series' own values)."""
        self.tails[:, FORECAST] = 0.0
        self.warm[:, FORECAST] = 0.0
        self.suppress[:] = 0.0

    def warmed_up(self, slot: int) -> bool:
        return bool(self.tails[slot, FORECAST, _N] >= self.cfg.warmup)

    def tail(self, slot: int, signal: int = FORECAST) -> dict[str, float]:
        """A tail's learned statistics (for tests and inspection)."""
        row = self.tails[slot, signal]
        return {"n": row[_N], "u": row[_U], "mean_err": row[_MEAN_ERR],
                "n_peaks": row[_N_PEAKS], "peak_mean": row[_PEAK_MEAN]}  # fmt: skip

    def score(
        self,
        slots: np.ndarray,
        errors: np.ndarray,
        values: np.ndarray | None = None,
        times: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score rows of points in order, each row one series' points (in time order); returns
        float64 scores [B, K] in 0..1.

        slots: int [B], the row of each series (-1: skip the row, its scores are 0).
        errors: the model's raw errors [B, K] (>= 0, NaN = missing point).
        values, times: the points themselves, [B, K, D] and [B, K] UTC seconds; without them
        only the forecast signal scores. A point with neither a finite error nor a finite value
        scores 0 and changes nothing. A series may have several rows in one call (in order).
        """
        errs = np.ascontiguousarray(errors, dtype=np.float64)
        b, k = errs.shape
        out = np.zeros((b, k), dtype=np.float64)
        if b == 0 or k == 0:
            return out
        use_profile = values is not None and times is not None and self.cfg.seasonal_bins > 0
        if use_profile:
            vals = np.ascontiguousarray(values, dtype=np.float64).reshape(b, k, -1)
            if vals.shape[2] != self.dims:
                raise ValueError(
                    f"calibration: points have {vals.shape[2]} dimensions, the bank {self.dims}"
                )
            ts = np.ascontiguousarray(times, dtype=np.float64).reshape(b, k)
        else:
            vals, ts = np.zeros((b, k, self.dims)), np.zeros((b, k))
        _score_rows(
            np.ascontiguousarray(slots, dtype=np.int64), errs, vals, ts, use_profile, self._k,
            self.tails, self.warm, self.suppress, self.profile_mean, self.profile_count,
            self.profile_scale, self.profile_meta, out,
        )  # fmt: skip
        return out

    def _grow(self) -> None:
        old = self.capacity
        for name in self._ROWS:
            a = getattr(self, name)
            # Unwritten rows cost address space, not resident memory (allocate() fills a row).
            grown = np.empty((2 * old, *a.shape[1:]), dtype=a.dtype)
            grown[:old] = a
            setattr(self, name, grown)


class Calibrator:
    """One series' calibration: a `CalibratorBank` of one slot. D (the points' dimensions when
    values are given) is fixed when the calibrator is made."""

    __slots__ = ("cfg", "bank")

    def __init__(self, cfg: CalibrationConfig | None = None, dims: int = 1) -> None:
        self.cfg = cfg or CalibrationConfig()
        self.bank = CalibratorBank(self.cfg, dims, capacity=1)
        self.bank.allocate()

    @property
    def warmed_up(self) -> bool:
        return self.bank.warmed_up(0)

    def update(
        self,
        errors: np.ndarray,
        values: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score points in order; returns float64 scores [n] in 0..1.

        errors: the model's raw errors [n] (>= 0, NaN = missing point).
        values, timestamps: the points themselves, [n] or [n, D] and [n] UTC seconds; without
        them only the forecast signal scores.
        """
        errs = np.asarray(errors, dtype=np.float64).reshape(1, -1)
        n = errs.shape[1]
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        if values is not None and timestamps is not None:
            values = np.asarray(values, dtype=np.float64).reshape(1, n, -1)
            timestamps = np.asarray(timestamps, dtype=np.float64).reshape(1, n)
        return self.bank.score(np.zeros(1, dtype=np.int64), errs, values, timestamps)[0]


# ----------------------------------------------------------------------------- the kernel
# Compiled by numba on first use and cached beside this file (__pycache__), so a process pays
# the compile (seconds) once per machine. The loops below are the module docstring's procedure
# point by point; NUMBA_DISABLE_JIT=1 runs them as plain Python for debugging.


@njit(cache=True)
def _score_rows(slots, errors, values, times, use_profile, k, tails, warm, suppress,
                profile_mean, profile_count, profile_scale, profile_meta, out):  # fmt: skip
    dims = values.shape[2]
    answered = np.empty(dims, dtype=np.int64)  # scratch of _residual
    residuals = np.empty(dims, dtype=np.float64)
    for i in range(errors.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(errors.shape[1]):
            r = math.nan
            if use_profile:
                r = _residual(
                    values[i, j], times[i, j], k, profile_mean[s], profile_count[s],
                    profile_scale[s], profile_meta[s], answered, residuals,
                )  # fmt: skip
            # A missing point (NaN; inf only comes from broken input) teaches nothing and
            # flags nothing: each signal learns only from what it observed.
            e = errors[i, j]
            has_f, has_s = math.isfinite(e), math.isfinite(r)
            if not (has_f or has_s):
                continue
            raw = 0.0
            if has_f:
                raw = _tail_step(tails[s, FORECAST], warm[s, FORECAST], e, k)
            if has_s:
                raw = max(raw, _tail_step(tails[s, SEASONAL], warm[s, SEASONAL], r, k))
            out[i, j] = _suppress(suppress[s], raw, k)


@njit(cache=True)
def _suppress(st, raw, k):
    """Keep a score that beats the last kept one (or comes `suppress` points later); damp others."""
    if raw > st[_ALERT] or st[_SINCE] >= k[_SUPPRESS]:
        st[_ALERT], st[_SINCE] = raw, 0.0
        return raw
    st[_SINCE] += 1.0
    return raw * k[_SUPPRESS_FACTOR]


@njit(cache=True)
def _tail_step(st, heap, e, k):
    """Tail score of finite error e >= 0 in 0..1 (before suppression), then learn from it."""
    w = int(k[_SHORT])
    pos = int(st[_POS])
    filled = min(st[_FILLED] + 1.0, k[_SHORT])
    st[_FILLED] = filled
    st[_BUF + pos] = e if e > 0.0 else 0.0
    st[_POS] = pos + 1 if pos + 1 < w else 0
    total = 0.0
    for i in range(_BUF, _BUF + w):  # unfilled slots are still 0.0
        total += st[i]
    x = total / filled
    n = st[_N]
    if n < k[_WARMUP]:
        _warm_up(st, heap, x, k)
        return 0.0
    raw = _tail_score(st, x, k) if n >= 2 else 0.0
    # Learn x, after it was scored (no lookahead).
    u, mean_err, n_peaks, peak_mean = st[_U], st[_MEAN_ERR], st[_N_PEAKS], st[_PEAK_MEAN]
    n += 1.0
    st[_N] = n
    if n == 1.0:  # no warm-up at all: the first error is the first quantile estimate
        u = x
    alpha = 1.0 / min(n, k[_LONG])
    mean_err += alpha * (abs(x - u) - mean_err)
    # Robbins-Monro quantile step: up by (1-q)-weighted steps when x exceeds u, down otherwise,
    # so u settles where P(x > u) = 1 - q. The step follows the error scale, so this works for
    # errors of any unit.
    u += k[_STEP_SCALE] * mean_err * alpha * ((1.0 if x > u else 0.0) - k[_ONE_MQ])
    if u < 0.0:
        u = 0.0
    if x > u:
        n_peaks += 1.0
        peak_mean += ((x - u) - peak_mean) / min(n_peaks, k[_PEAK_MEMORY])
    st[_U], st[_MEAN_ERR], st[_N_PEAKS], st[_PEAK_MEAN] = u, mean_err, n_peaks, peak_mean
    return raw


@njit(cache=True)
def _tail_score(st, x, k):
    """-log10 P(X > x) / tail_decades, clipped to 0..1; 0 at or below the quantile u."""
    u = st[_U]
    if x <= u or st[_N_PEAKS] == 0.0:
        return 0.0
    # Floor relative to x: a series whose errors were all equal (mean excess 0) flags any
    # larger error as certain, without dividing by zero and without a unit-dependent epsilon.
    m = max(st[_PEAK_MEAN], _REL_EPS * x)
    raw = (k[_MINUS_LOG10_1MQ] + (x - u) / m / _LN10) * k[_INV_DECADES]
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
    if n + 1 < k[_WARMUP]:
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
    u = u0 + m * k[_INIT_STRETCH]
    # mean |a - u| over every warm-up error: u >= u0, so the errors above u are all kept ones.
    above, n_above = 0.0, 0
    for v in top:
        if v > u:
            above += v
            n_above += 1
    spread = (above - n_above * u) + ((count - n_above) * u - (st[_WARM_SUM] - above))
    st[_U], st[_PEAK_MEAN] = u, m
    # A flat warm-up (no excess at all) keeps one pseudo-peak of size 0: any later error above u
    # then scores 1, which is right for a series that never moved.
    st[_N_PEAKS] = max(1, peaks)
    st[_MEAN_ERR] = max(0.0, spread / count)
    heap[:] = 0.0


@njit(cache=True)
def _residual(x, t, k, mean, count, scale, meta, answered, residuals):
    """|x - profile| of one point x [D] at UTC time t (seconds), NaN until the point's bin has
    learned seasonal_min_count points; then the profile learns the point (the first of each
    seasonal_learn_every_s slot).

    With several dimensions, each dimension's residual is divided by its own running mean
    residual and the root mean square of those is converted back by their geometric mean, so
    one dimension gives exactly |x - profile| and a dimension in large units does not drown the
    others."""
    if not math.isfinite(t):
        return math.nan
    dims = x.shape[0]
    if dims == 1 and not math.isfinite(x[0]):
        return math.nan
    period, bins = k[_PERIOD], int(k[_BINS])
    b = min(int((t % period) * bins // period), bins - 1)
    every = k[_LEARN_EVERY]
    learn_slot = t // every if every > 0 else t
    learn = learn_slot > meta[_LAST_SLOT]
    if learn:
        meta[_LAST_SLOT] = learn_slot
    n_answered = 0
    for d in range(dims):
        if not math.isfinite(x[d]):
            continue
        cell = b * dims + d
        c = count[cell]
        r = abs(x[d] - mean[cell]) if c >= k[_S_MIN] else math.nan
        if learn:
            # The visits before a cell scores average plainly (it starts at the first days'
            # mean); later ones weigh alpha, so the profile follows slow change.
            step = 1.0 / (c + 1) if c < k[_S_MIN] else k[_S_ALPHA]
            mean[cell] = mean[cell] + (x[d] - mean[cell]) * step  # in float64, stored float32
            if c < 255:
                count[cell] = c + 1
        if r == r:  # not NaN: the cell has seen enough points to answer
            answered[n_answered] = d
            residuals[n_answered] = r
            n_answered += 1
    if n_answered == 0:
        return math.nan
    if dims == 1:
        return residuals[0]
    # Each dimension's residual in units of its own running mean residual; the scales learn
    # this point only after it was used (no lookahead).
    meta[_LEARNED] += 1.0
    alpha = 1.0 / min(meta[_LEARNED], k[_LONG])
    sq, log_unit = 0.0, 0.0
    for a in range(n_answered):
        d, r = answered[a], residuals[a]
        sd = scale[d] if scale[d] > 0 else r
        if sd > 0:
            sq += (r / sd) ** 2
            log_unit += math.log(sd)
        scale[d] = sd + alpha * (r - sd)
    return math.sqrt(sq / n_answered) * math.exp(log_unit / n_answered)
