"""Online calibration of raw anomaly errors into scores in 0..1, one `Calibrator` per series.

Implements streaming peaks-over-threshold (SPOT) from Siffer, Fouque, Termier and Largouet,
"Anomaly Detection in Streams with Extreme Value Theory", KDD 2017: above a high quantile u of
the errors, the excesses y = x - u follow a generalised Pareto distribution (GPD), so the tail
probability of an error x is P(X > x) = (1 - q) * P(Y > x - u).

Changes from the paper, so that per-series state is a handful of floats (about 200 bytes):

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

Raw errors must be >= 0 and in a unit that is stable for the series (tsguard's scorer reports
|observed - forecast| in the series' own units). The calibrator is scale-free: multiplying every
error of a series by c leaves the scores unchanged.

Scores are causal: `update` scores each error against state built from earlier errors only, then
folds it in. A NaN (or inf) error, i.e. a missing point, scores 0 and leaves the state untouched.
The first `warmup` observed errors only build state and score 0.

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
from dataclasses import asdict, dataclass, fields

import numpy as np

_LN10 = math.log(10.0)
_REL_EPS = 1e-9
_INIT_QUANTILE = 0.8


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

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> CalibrationConfig:
        names = {f.name for f in fields(CalibrationConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"calibration: unknown keys {sorted(unknown)}")
        cfg = CalibrationConfig(**d)
        cfg.validate()
        return cfg


class Calibrator:
    """Per-series streaming peaks-over-threshold scores (see the module docstring)."""

    __slots__ = (
        "cfg",
        "n",
        "u",
        "mean_err",
        "n_peaks",
        "peak_mean",
        "_buf",
        "_pos",
        "_filled",
        "_alert",
        "_since",
        "_init",
    )

    def __init__(self, cfg: CalibrationConfig | None = None) -> None:
        self.cfg = cfg or CalibrationConfig()
        self.n = 0  # observed errors so far
        self.u = 0.0  # running q-quantile of the (short-window mean) errors
        self.mean_err = 0.0  # running mean of |x - u|: the step size of the quantile tracker
        self.n_peaks = 0
        self.peak_mean = 0.0  # running mean of excesses over u (the exponential tail's scale)
        self._buf = [0.0] * self.cfg.short_window
        self._pos = 0
        self._filled = 0
        self._alert = 0.0  # the score that suppression compares against
        self._since = 0  # points since that score
        self._init: array | None = array("d")  # warm-up errors, dropped once the tail is fitted

    @property
    def warmed_up(self) -> bool:
        return self.n >= self.cfg.warmup

    def update(self, errors: np.ndarray) -> np.ndarray:
        """Score `errors` [n] (raw, >= 0, NaN = missing) in order; returns float64 scores [n] in 0..1."""
        errs = np.asarray(errors, dtype=np.float64).reshape(-1)
        out = np.zeros(errs.shape[0], dtype=np.float64)
        for i, e in enumerate(errs.tolist()):
            out[i] = self._update_one(e)
        return out

    def _update_one(self, e: float) -> float:
        if not math.isfinite(e):
            # A missing point: nothing to learn and nothing to flag. Inf is treated the same, as
            # it can only come from broken input.
            return 0.0
        cfg = self.cfg
        buf = self._buf
        buf[self._pos] = max(e, 0.0)
        self._pos = (self._pos + 1) % cfg.short_window
        self._filled = min(self._filled + 1, cfg.short_window)
        x = sum(buf) / self._filled  # unfilled slots are still 0.0

        raw = self._tail_score(x) if self.n >= max(cfg.warmup, 2) else 0.0
        score = self._suppress(raw)
        self._learn(x)
        return score

    def _tail_score(self, x: float) -> float:
        """-log10 P(X > x) / tail_decades, clipped to 0..1; 0 at or below the quantile u."""
        cfg = self.cfg
        if x <= self.u or self.n_peaks == 0:
            return 0.0
        # Floor relative to x: a series whose errors were all equal (mean excess 0) flags any
        # larger error as certain, without dividing by zero and without a unit-dependent epsilon.
        m = max(self.peak_mean, _REL_EPS * x)
        log10_p = math.log10(1.0 - cfg.q) - (x - self.u) / m / _LN10
        return min(1.0, max(0.0, -log10_p / cfg.tail_decades))

    def _fit_initial_tail(self) -> None:
        """Initial u and tail scale from the warm-up errors (the paper's calibration batch).

        With a hundred points the 99% quantile is little more than the maximum, so fit the
        exponential tail above the 80% quantile u0 (mean excess m) and extrapolate:
        P(X > u0 + y) = 0.2 exp(-y / m) equals 1 - q at y = m ln(0.2 / (1 - q)).
        """
        cfg = self.cfg
        a = np.frombuffer(self._init, dtype=np.float64)
        self._init = None
        u0 = float(np.quantile(a, _INIT_QUANTILE))
        excess = a[a > u0] - u0
        m = float(excess.mean()) if excess.size else 0.0
        self.u = u0 + m * math.log((1.0 - _INIT_QUANTILE) / (1.0 - cfg.q))
        self.peak_mean = m
        # A flat warm-up (no excess at all) keeps one pseudo-peak of size 0: any later error
        # above u then scores 1, which is right for a series that never moved.
        self.n_peaks = max(1, int(excess.size))
        self.mean_err = float(np.mean(np.abs(a - self.u)))

    def _suppress(self, raw: float) -> float:
        """Keep a score that beats the last kept one (or comes `suppress` points later); damp others."""
        cfg = self.cfg
        if raw > self._alert or self._since >= cfg.suppress:
            self._alert, self._since = raw, 0
            return raw
        self._since += 1
        return raw * cfg.suppress_factor

    def _learn(self, x: float) -> None:
        """Fold x into the quantile and tail statistics (after it was scored: no lookahead)."""
        cfg = self.cfg
        if self._init is not None and self.n < cfg.warmup:
            self._init.append(x)
            self.n += 1
            if self.n == cfg.warmup:
                self._fit_initial_tail()
            return
        self._init = None
        self.n += 1
        alpha = 1.0 / min(self.n, cfg.long_window)
        if self.n == 1:
            self.u = x
        self.mean_err += alpha * (abs(x - self.u) - self.mean_err)
        # Robbins-Monro quantile step: up by (1-q)-weighted steps when x exceeds u, down
        # otherwise, so u settles where P(x > u) = 1 - q. The step follows the error scale, so
        # this works for errors of any unit.
        step = cfg.quantile_rate * self.mean_err * alpha / (1.0 - cfg.q)
        self.u += step * ((1.0 if x > self.u else 0.0) - (1.0 - cfg.q))
        self.u = max(self.u, 0.0)
        if x > self.u:
            self.n_peaks += 1
            # Memory of the tail: about long_window * (1 - q) peaks, and at least 5.
            a = 1.0 / min(self.n_peaks, max(5.0, cfg.long_window * (1.0 - cfg.q) + 1.0))
            self.peak_mean += a * ((x - self.u) - self.peak_mean)
