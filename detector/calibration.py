"""Online calibration of raw anomaly errors into scores in 0..1, one `Calibrator` per series.

Implements streaming peaks-over-threshold (SPOT) from Siffer, Fouque, Termier and Largouet,
"Anomaly Detection in Streams with Extreme Value Theory", KDD 2017: above a high quantile u of
the errors, the excesses y = x - u follow a generalised Pareto distribution (GPD), so the tail
probability of an error x is P(X > x) = (1 - q) * P(Y > x - u).

Changes from the paper, so that a tail's state is one small float array (about 150 bytes):

- the paper's initial batch is the warm-up: its errors (at most `warmup` floats, freed after)
  give the first u and tail scale, fitted by the same exponential tail through the 80%
  quantile (more stable than the 99% quantile of a hundred points). After that, u is a running
  q-quantile (stochastic approximation, step proportional to the running mean error);
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
a restart, until the rebuild has read back that much history; a model reload keeps it). With
the profile a calibrator holds about 1.4 KB.

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
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import NamedTuple

import numpy as np

_LN10 = math.log(10.0)
_REL_EPS = 1e-9
_INIT_QUANTILE = 0.8
_BUF = 7  # Tail.state: index of the short-window buffer, after the seven scalar fields


class _Derived(NamedTuple):
    ready: int
    minus_log10_1mq: float
    inv_decades: float
    one_mq: float
    step_scale: float
    peak_memory: float


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of `Calibrator`; stored under "calibration" in a model's config.json."""

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
        if not 0.5 <= self.q < 1.0:
            raise ValueError("calibration: q must be in [0.5, 1)")
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

    @cached_property
    def derived(self) -> _Derived:
        """Constants of the per-point arithmetic, computed once per config."""
        one_mq = 1.0 - self.q
        return _Derived(
            ready=max(self.warmup, 2),
            minus_log10_1mq=-math.log10(one_mq),
            inv_decades=1.0 / self.tail_decades,
            one_mq=one_mq,
            step_scale=self.quantile_rate / one_mq,
            # Memory of the tail: about long_window * (1 - q) peaks, and at least 5.
            peak_memory=max(5.0, self.long_window * one_mq + 1.0),
        )

    @staticmethod
    def from_dict(d: dict) -> CalibrationConfig:
        names = {f.name for f in fields(CalibrationConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"calibration: unknown keys {sorted(unknown)}")
        cfg = CalibrationConfig(**d)
        cfg.validate()
        return cfg


class Tail:
    """Streaming peaks-over-threshold of one error stream: the tail score of each error, learned
    from earlier errors only (see the module docstring).

    The state is one float array (about 150 bytes with its object) rather than a Python float per
    field, since the service keeps two tails per series for up to millions of series:
    [n, u, mean_err, n_peaks, peak_mean, pos, filled, short-window buffer...].
    """

    __slots__ = ("state", "_init")

    def __init__(self, short_window: int) -> None:
        # n: observed errors; u: running q-quantile of the short-window mean errors; mean_err:
        # running mean |x - u| (the quantile tracker's step size); peak_mean: running mean excess
        # over u (the exponential tail's scale).
        self.state = array("d", bytes(8 * (_BUF + short_window)))
        # Warm-up errors (created with the first one), dropped once the tail is fitted; float32
        # halves what a million young series hold while they warm up, and the fit needs no more.
        self._init: array | None = None

    n = property(lambda self: int(self.state[0]))
    u = property(lambda self: self.state[1])
    peak_mean = property(lambda self: self.state[4])

    def step(self, e: float, cfg: CalibrationConfig) -> float:
        """Tail score of finite error e >= 0 in 0..1 (before suppression), then learn from it.

        The hot path of the service, once per point and signal: the learning step is written out
        here with the config's derived constants rather than split into small calls.
        """
        st, w = self.state, cfg.short_window
        pos = int(st[5])
        filled = st[6] = min(st[6] + 1.0, w)
        st[_BUF + pos] = e if e > 0.0 else 0.0
        st[5] = pos + 1 if pos + 1 < w else 0
        total = 0.0
        for i in range(_BUF, _BUF + w):  # unfilled slots are still 0.0
            total += st[i]
        x = total / filled
        n = st[0]
        if n < cfg.warmup:
            self._warm_up(x, cfg)
            return 0.0
        raw = self.score(x, cfg) if n >= 2 else 0.0
        # Learn x, after it was scored (no lookahead).
        k = cfg.derived
        u, mean_err, n_peaks, peak_mean = st[1], st[2], st[3], st[4]
        n += 1
        st[0] = n
        if n == 1:  # no warm-up at all: the first error is the first quantile estimate
            u = x
        alpha = 1.0 / (n if n < cfg.long_window else cfg.long_window)
        mean_err += alpha * (abs(x - u) - mean_err)
        # Robbins-Monro quantile step: up by (1-q)-weighted steps when x exceeds u, down
        # otherwise, so u settles where P(x > u) = 1 - q. The step follows the error scale, so
        # this works for errors of any unit.
        u += k.step_scale * mean_err * alpha * ((1.0 if x > u else 0.0) - k.one_mq)
        if u < 0.0:
            u = 0.0
        if x > u:
            n_peaks += 1
            # Memory of the tail: about long_window * (1 - q) peaks, and at least 5.
            peak_mean += ((x - u) - peak_mean) / (
                n_peaks if n_peaks < k.peak_memory else k.peak_memory
            )
        st[1], st[2], st[3], st[4] = u, mean_err, n_peaks, peak_mean
        return raw

    def score(self, x: float, cfg: CalibrationConfig) -> float:
        """-log10 P(X > x) / tail_decades, clipped to 0..1; 0 at or below the quantile u."""
        st = self.state
        u, n_peaks = st[1], st[3]
        if x <= u or n_peaks == 0:
            return 0.0
        # Floor relative to x: a series whose errors were all equal (mean excess 0) flags any
        # larger error as certain, without dividing by zero and without a unit-dependent epsilon.
        m = st[4] if st[4] > _REL_EPS * x else _REL_EPS * x
        k = cfg.derived
        raw = (k.minus_log10_1mq + (x - u) / m / _LN10) * k.inv_decades
        return 1.0 if raw > 1.0 else (0.0 if raw < 0.0 else raw)

    def _warm_up(self, x: float, cfg: CalibrationConfig) -> None:
        """Keep a warm-up error; with `warmup` of them, fit the initial tail (the paper's
        calibration batch).

        With a hundred points the 99% quantile is little more than the maximum, so fit the
        exponential tail above the 80% quantile u0 (mean excess m) and extrapolate:
        P(X > u0 + y) = 0.2 exp(-y / m) equals 1 - q at y = m ln(0.2 / (1 - q)).
        """
        if self._init is None:
            self._init = array("f")
        self._init.append(x)
        st = self.state
        st[0] += 1
        if st[0] < cfg.warmup:
            return
        a = np.frombuffer(self._init, dtype=np.float32).astype(np.float64)
        self._init = None
        u0 = float(np.quantile(a, _INIT_QUANTILE))
        excess = a[a > u0] - u0
        m = float(excess.mean()) if excess.size else 0.0
        u = u0 + m * math.log((1.0 - _INIT_QUANTILE) / (1.0 - cfg.q))
        st[1], st[4] = u, m
        # A flat warm-up (no excess at all) keeps one pseudo-peak of size 0: any later error
        # above u then scores 1, which is right for a series that never moved.
        st[3] = max(1, int(excess.size))
        st[2] = float(np.mean(np.abs(a - u)))


class SeasonalProfile:
    """What a series usually reads at this time of day: per bin of the period (48 half hours of a
    day by default) and dimension, a running mean of the values seen in that bin.

    `residual` is |value - profile| for a point (before the point is learned). With several
    dimensions, each dimension's residual is divided by its own running mean residual and the
    root mean square of those is converted back by their geometric mean, so one dimension gives
    exactly |value - profile| and a dimension in large units does not drown the others. A bin
    answers NaN (no opinion) until it has learned `seasonal_min_count` points. Memory: 5 bytes
    per bin and dimension (float32 mean, uint8 visits) plus one float per dimension.
    """

    __slots__ = ("mean", "count", "scale", "n", "last_slot")

    def __init__(self, bins: int, dims: int) -> None:
        self.mean = array("f", bytes(4 * bins * dims))
        self.count = array("B", bytes(bins * dims))  # saturates at 255: only compared with min
        self.scale = array("d", bytes(8 * dims)) if dims > 1 else None
        self.n = 0  # points that updated `scale`
        self.last_slot = -math.inf  # the seasonal_learn_every_s slot of the last learned point

    def residual1(self, x: float, t: float, cfg: CalibrationConfig) -> float:
        """`residual` of a one-dimensional point (the common case, once per point)."""
        if not (math.isfinite(t) and math.isfinite(x)):
            return math.nan
        b, learn = self._locate(t, cfg)
        return self._visit(b, x, learn, cfg)

    def residual(self, values: Sequence[float], t: float, cfg: CalibrationConfig) -> float:
        """|values - profile| of one point at UTC time t (seconds), then learn the point."""
        if not math.isfinite(t):
            return math.nan
        b, learn = self._locate(t, cfg)
        dims = len(values)
        b *= dims
        answered: list[tuple[int, float]] = []  # (dimension, residual)
        for d, x in enumerate(values):
            if math.isfinite(x):
                r = self._visit(b + d, x, learn, cfg)
                if r == r:  # not NaN: the cell has seen enough points to answer
                    answered.append((d, r))
        if not answered:
            return math.nan
        if dims == 1:
            return answered[0][1]
        return self._combine(answered, cfg)

    def _locate(self, t: float, cfg: CalibrationConfig) -> tuple[int, bool]:
        """Bin of time t, and whether this point is one the profile learns (the first of its
        seasonal_learn_every_s slot)."""
        period, bins = cfg.seasonal_period_s, cfg.seasonal_bins
        b = int((t % period) * bins // period)
        every = cfg.seasonal_learn_every_s
        slot = t // every if every > 0 else t
        learn = slot > self.last_slot
        if learn:
            self.last_slot = slot
        return (b if b < bins else bins - 1), learn

    def _visit(self, k: int, x: float, learn: bool, cfg: CalibrationConfig) -> float:
        """|x - mean| of cell k (bin x dimension), NaN until the cell has learned
        seasonal_min_count points; then, if `learn`, fold x into the cell."""
        mean, c = self.mean, self.count[k]
        r = abs(x - mean[k]) if c >= cfg.seasonal_min_count else math.nan
        if learn:
            # The visits before a cell scores average plainly (it starts at the first days'
            # mean); later ones weigh alpha, so the profile follows slow change.
            mean[k] += (x - mean[k]) * (
                1.0 / (c + 1) if c < cfg.seasonal_min_count else cfg.seasonal_alpha
            )
            if c < 255:
                self.count[k] = c + 1
        return r

    def _combine(self, answered: list[tuple[int, float]], cfg: CalibrationConfig) -> float:
        # Each dimension's residual in units of its own running mean residual; the scales learn
        # this point only after it was used (no lookahead).
        scale = self.scale
        self.n += 1
        alpha = 1.0 / min(self.n, cfg.long_window)
        sq, log_unit = 0.0, 0.0
        for d, r in answered:
            s = scale[d] if scale[d] > 0 else r
            if s > 0:
                sq += (r / s) ** 2
                log_unit += math.log(s)
            scale[d] = s + alpha * (r - s)
        n = len(answered)
        return math.sqrt(sq / n) * math.exp(log_unit / n)


class Calibrator:
    """Per-series scores in 0..1 from the model's forecast errors and, when the caller gives the
    points' values and times, the seasonal profile's residuals (see the module docstring)."""

    __slots__ = ("cfg", "forecast", "seasonal", "profile", "_alert", "_since")

    def __init__(self, cfg: CalibrationConfig | None = None) -> None:
        self.cfg = cfg or CalibrationConfig()
        self.forecast = Tail(self.cfg.short_window)
        self.seasonal: Tail | None = None  # created with the profile, on the first values
        self.profile: SeasonalProfile | None = None
        self._alert = 0.0  # the score that suppression compares against
        self._since = 0  # points since that score

    @property
    def warmed_up(self) -> bool:
        return self.forecast.n >= self.cfg.warmup

    def update(
        self,
        errors: np.ndarray,
        values: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score points in order; returns float64 scores [n] in 0..1.

        errors: the model's raw errors [n] (>= 0, NaN = missing point).
        values, timestamps: the points themselves, [n] or [n, D] and [n] UTC seconds; without
        them only the forecast signal scores. A point with neither a finite error nor a finite
        value scores 0 and changes nothing.
        """
        errs = np.asarray(errors, dtype=np.float64).reshape(-1)
        n = errs.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        if values is None or timestamps is None:
            return np.array(self.update_points(errs.tolist()), dtype=np.float64)
        vals = np.asarray(values, dtype=np.float64).reshape(n, -1).tolist()
        times = np.asarray(timestamps, dtype=np.float64).reshape(-1).tolist()
        return np.array(self.update_points(errs.tolist(), vals, times), dtype=np.float64)

    def update_points(
        self,
        errors: list[float],
        values: list[list[float]] | None = None,
        times: list[float] | None = None,
    ) -> list[float]:
        """`update` on Python lists: errors [n], values [n][D], times [n]. The service converts a
        whole scored batch to lists once and calls this per series, which keeps numpy's
        per-call overhead (several microseconds) out of the per-point loop."""
        one = self._update_one
        if values is None or times is None or self.cfg.seasonal_bins == 0 or not errors:
            return [one(e, math.nan) for e in errors]
        cfg, dims = self.cfg, len(values[0])
        profile = self.profile
        if profile is None or len(profile.mean) != dims * cfg.seasonal_bins:
            # A new series, or one that changed its number of dimensions: a fresh profile.
            self.profile = profile = SeasonalProfile(cfg.seasonal_bins, dims)
            if self.seasonal is None:
                self.seasonal = Tail(cfg.short_window)
        if dims == 1:
            residual1 = profile.residual1
            return [
                one(e, residual1(v[0], t, cfg))
                for e, v, t in zip(errors, values, times, strict=True)
            ]
        residual = profile.residual
        return [one(e, residual(v, t, cfg)) for e, v, t in zip(errors, values, times, strict=True)]

    def adopt_seasonal(self, other: Calibrator) -> None:
        """Take over another calibrator's seasonal profile and its tail (same config): after a
        model reload the model's errors start over, but what the series reads at each time of
        day is still known."""
        self.profile, self.seasonal = other.profile, other.seasonal

    def _update_one(self, e: float, r: float) -> float:
        cfg = self.cfg
        # A missing point (NaN; inf can only come from broken input) teaches nothing and flags
        # nothing: each signal learns only from what it observed.
        raw_f = self.forecast.step(e, cfg) if math.isfinite(e) else None
        raw_s = self.seasonal.step(r, cfg) if math.isfinite(r) and self.seasonal else None
        if raw_f is None and raw_s is None:
            return 0.0
        return self._suppress(max(raw_f or 0.0, raw_s or 0.0))

    def _suppress(self, raw: float) -> float:
        """Keep a score that beats the last kept one (or comes `suppress` points later); damp others."""
        cfg = self.cfg
        if raw > self._alert or self._since >= cfg.suppress:
            self._alert, self._since = raw, 0
            return raw
        self._since += 1
        return raw * cfg.suppress_factor
