"""Online calibration of raw anomaly errors into scores in 0..1, one `Calibrator` per series.

Implements the anomaly likelihood of Ahmad, Lavin, Purdy and Agha, "Unsupervised real-time anomaly
detection for streaming data", Neurocomputing 262 (2017), section 4.3 (the Numenta HTM detector of
the NAB benchmark), with small changes so the per-series state is a few hundred bytes:

1. Each raw error e (forecast error in units of the window's robust scale, >= 0) is compressed to
   x = log(1 + e): forecast errors are heavy-tailed and the Gaussian tail below fits them better
   after the log.
2. The short-term mean m of the last `short_window` x values is compared with the long-term
   distribution of such short-term means, N(mu, sigma^2). The paper keeps a long window of
   history; we keep mu and sigma^2 as running moments that are cumulative for the first
   `long_window` points and then exponential with alpha = 1 / long_window (so old behaviour fades
   and the state stays O(1)).
3. The likelihood that m is anomalous is 1 - Q((m - mu) / sigma), Q the Gaussian tail. The
   10-point mean reacts slowly to a single spike, so the same test is also run on the point
   itself, x against running moments of single x values, and the larger tail wins: spikes score
   at once, small sustained shifts score through the mean. Like the
   paper's `computeLogLikelihood`, the score is that tail on a log scale,
   score = clip(-log10(Q) / tail_decades, 0, 1), so score 0.5 with the default tail_decades=10
   means "a tail probability of 1e-5", and score 1 means 1e-10 or rarer.
4. Warm-up: the first `warmup` observed errors only feed the statistics and score 0.

Scores are causal: `update` scores each error against statistics built from earlier errors only,
then folds it in. A NaN error (the point was missing) scores 0 and leaves the state untouched.

>>> import numpy as np
>>> cal = Calibrator(CalibrationConfig(warmup=50))
>>> calm = cal.update(np.abs(np.random.default_rng(0).normal(0, 1, 300)))
>>> cal.warmed_up, float(calm[:50].max())
(True, 0.0)
>>> bool(cal.update(np.array([40.0]))[0] > 0.9)
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of `Calibrator`; stored under "calibration" in a model's config.json."""

    short_window: int = 10  # points averaged into the short-term mean (paper: W' = 10)
    long_window: int = 2000  # horizon of the long-term running moments
    warmup: int = 150  # observed errors before scores leave 0
    min_std: float = 0.02  # floor on sigma (log1p units): a flat series must not divide by ~0
    tail_decades: float = 10.0  # -log10(tail probability) that maps to score 1
    threshold: float = 0.5  # score >= threshold opens an anomaly episode

    def validate(self) -> None:
        if self.short_window < 1 or self.long_window < 2 or self.warmup < 0:
            raise ValueError("calibration: need short_window >= 1, long_window >= 2, warmup >= 0")
        if not (self.min_std > 0 and self.tail_decades > 0 and 0.0 < self.threshold <= 1.0):
            raise ValueError("calibration: need min_std > 0, tail_decades > 0, 0 < threshold <= 1")

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


def tail_score(z: float, tail_decades: float) -> float:
    """clip(-log10(Q(z)) / tail_decades, 0, 1), Q the standard normal upper tail."""
    if z <= 0.0:
        q = 0.5 * math.erfc(z / _SQRT2)  # >= 0.5, never underflows
        return min(1.0, max(0.0, -math.log10(q) / tail_decades))
    q = 0.5 * math.erfc(z / _SQRT2)
    if q > 0.0:
        return min(1.0, -math.log10(q) / tail_decades)
    # erfc underflowed (z > ~38): use the asymptotic log tail, ln Q ~ -z^2/2 - ln(z sqrt(2 pi)).
    log_q = -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi))
    return min(1.0, -log_q / _LN10 / tail_decades)


class Calibrator:
    """Per-series online anomaly likelihood (see the module docstring). State: a few hundred bytes."""

    __slots__ = ("cfg", "n", "mu", "var", "mu1", "var1", "_buf", "_pos", "_filled")

    def __init__(self, cfg: CalibrationConfig | None = None) -> None:
        self.cfg = cfg or CalibrationConfig()
        self.n = 0  # observed errors seen so far
        self.mu = 0.0  # long-term mean of short-term means
        self.var = 0.0  # long-term variance of short-term means
        self.mu1 = 0.0  # long-term mean of single compressed errors
        self.var1 = 0.0  # long-term variance of single compressed errors
        # Ring buffer of the last short_window compressed errors.
        self._buf = [0.0] * self.cfg.short_window
        self._pos = 0
        self._filled = 0

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
            # Missing point: nothing to learn and nothing to flag. Inf is treated like NaN too, as
            # it can only come from a broken input, never from a real observation.
            return 0.0
        cfg = self.cfg
        x = math.log1p(max(e, 0.0))
        buf = self._buf
        buf[self._pos] = x
        self._pos = (self._pos + 1) % cfg.short_window
        self._filled = min(self._filled + 1, cfg.short_window)
        m = sum(buf) / self._filled  # unfilled slots are still 0.0

        score = 0.0
        if self.n >= cfg.warmup and self.n >= 2:
            sigma = max(math.sqrt(self.var), cfg.min_std)
            sigma1 = max(math.sqrt(self.var1), cfg.min_std)
            z = max((m - self.mu) / sigma, (x - self.mu1) / sigma1)
            score = tail_score(z, cfg.tail_decades)

        # Fold m into the long-term moments only after scoring it (no lookahead): cumulative
        # average while n < long_window, exponential afterwards.
        self.n += 1
        alpha = 1.0 / min(self.n, cfg.long_window)
        d = m - self.mu
        self.mu += alpha * d
        self.var = (1.0 - alpha) * (self.var + alpha * d * d)
        d1 = x - self.mu1
        self.mu1 += alpha * d1
        self.var1 = (1.0 - alpha) * (self.var1 + alpha * d1 * d1)
        return score
