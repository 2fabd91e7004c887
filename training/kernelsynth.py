"""KernelSynth: synthetic metric series drawn from Gaussian processes with random composite kernels.

Method: Ansari et al., "Chronos: Learning the Language of Time Series" (TMLR 2024), Sec. 4.2 and
Algorithm 2, itself the inverse of the Automatic Statistician's kernel search (Duvenaud et al.,
2013). Draw j ~ U{1..J} kernels with replacement from a bank (constant, linear, RBF, rational
quadratic, periodic, white noise), fold them together with random + and *, and sample a path of
the GP with that covariance. Ours differs from the paper in three ways, all for operators'
metrics: lengths, length scales and periods are in points (periods of 1-min, 5-min, 10-min,
15-min, 30-min and hourly metrics), long paths are drawn in exact conditional chunks
(`sample_paths`), and a path may get a metric transform (positive, floored at zero, counts,
quantised). Level shifts and spikes are never added: they are what the detector must flag, and
the forecaster is trained on normal behaviour only.

>>> rng = np.random.default_rng(0)
>>> kernel = Periodic(24) * RBF(256) + White(0.01)
>>> str(kernel)
'((Periodic(24) * RBF(256)) + White(0.01))'
>>> paths = sample_paths(kernel, 3000, rng, count=2)
>>> paths.shape, bool(np.isfinite(paths).all())
((2, 3000), True)
>>> values, name = kernelsynth_path(4000, np.random.default_rng(7))
>>> values.shape, bool(np.isfinite(values).all()), name == kernelsynth_path(4000, np.random.default_rng(7))[1]
((4000,), True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular, toeplitz

MAX_KERNELS = 5  # J in Algorithm 2
# Periods in points: hour and day of 10-min (6, 144), 5-min (12, 288), 1-min (60, 1440),
# 15-min (96) and 30-min (48) metrics; day and week of hourly ones (24, 168).
PERIODS = (6, 12, 24, 48, 60, 96, 144, 168, 288, 1440)
RBF_LENGTHS = (4, 16, 64, 256, 1024)
RQ_ALPHAS = (0.1, 1.0, 10.0)
LINEAR_OFFSETS = (0.0, 1.0, 10.0)
WHITE_LEVELS = (0.01, 0.1, 1.0)
# Chunked sampling: each chunk is drawn jointly with the last OVERLAP points before it, so every
# stretch of up to OVERLAP + 1 points (the model sees 128) is an exact draw of the GP.
SPAN = 1024
OVERLAP = 256
METRIC_TRANSFORMS = ("positive", "floor", "counts", "quantize")


class Kernel:
    """A covariance function over time points (in points, floats); `+` and `*` compose kernels."""

    stationary = True  # k(t, t') depends on t - t' only: one Cholesky serves every chunk

    def matrix(self, t: np.ndarray, length: int) -> np.ndarray:
        """Covariance [len(t), len(t)] at the evenly spaced points `t` of a `length`-point path."""
        # Evenly spaced points: a stationary covariance is Toeplitz, so evaluate one row only.
        return toeplitz(self.of_lag(t - t[0]))

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        """k(t, t + lag) of a stationary kernel."""
        raise NotImplementedError

    def __add__(self, other: Kernel) -> Kernel:
        return Sum(self, other)

    def __mul__(self, other: Kernel) -> Kernel:
        return Product(self, other)


@dataclass(frozen=True, eq=False)
class Constant(Kernel):
    value: float = 1.0

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        return np.full(len(lag), self.value)

    def __str__(self) -> str:
        return f"Constant({self.value:g})"


@dataclass(frozen=True, eq=False)
class Linear(Kernel):
    """offset^2 + x x' with x = t / length in [0, 1]: trends across the whole path."""

    offset: float = 0.0
    stationary = False

    def matrix(self, t: np.ndarray, length: int) -> np.ndarray:
        x = t / length
        return self.offset**2 + np.outer(x, x)

    def __str__(self) -> str:
        return f"Linear({self.offset:g})"


@dataclass(frozen=True, eq=False)
class RBF(Kernel):
    length_scale: float

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (lag / self.length_scale) ** 2)

    def __str__(self) -> str:
        return f"RBF({self.length_scale:g})"


@dataclass(frozen=True, eq=False)
class RationalQuadratic(Kernel):
    alpha: float
    length_scale: float = 64.0

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        d2 = (lag / self.length_scale) ** 2
        return (1.0 + d2 / (2.0 * self.alpha)) ** -self.alpha

    def __str__(self) -> str:
        return f"RationalQuadratic({self.alpha:g})"


@dataclass(frozen=True, eq=False)
class Periodic(Kernel):
    """exp(-2 sin^2(pi |t - t'| / period) / length_scale^2) (sklearn's ExpSineSquared)."""

    period: float
    length_scale: float = 1.0

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        s = np.sin(np.pi * lag / self.period)
        return np.exp(-2.0 * s**2 / self.length_scale**2)

    def __str__(self) -> str:
        return f"Periodic({self.period:g})"


@dataclass(frozen=True, eq=False)
class White(Kernel):
    level: float

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        return np.where(lag == 0, self.level, 0.0)

    def __str__(self) -> str:
        return f"White({self.level:g})"


@dataclass(frozen=True, eq=False)
class Sum(Kernel):
    a: Kernel
    b: Kernel

    @property
    def stationary(self) -> bool:  # type: ignore[override]
        return self.a.stationary and self.b.stationary

    def matrix(self, t: np.ndarray, length: int) -> np.ndarray:
        if self.stationary:
            return super().matrix(t, length)
        return self.a.matrix(t, length) + self.b.matrix(t, length)

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        return self.a.of_lag(lag) + self.b.of_lag(lag)

    def __str__(self) -> str:
        return f"({self.a} + {self.b})"


@dataclass(frozen=True, eq=False)
class Product(Kernel):
    a: Kernel
    b: Kernel

    @property
    def stationary(self) -> bool:  # type: ignore[override]
        return self.a.stationary and self.b.stationary

    def matrix(self, t: np.ndarray, length: int) -> np.ndarray:
        if self.stationary:
            return super().matrix(t, length)
        return self.a.matrix(t, length) * self.b.matrix(t, length)

    def of_lag(self, lag: np.ndarray) -> np.ndarray:
        return self.a.of_lag(lag) * self.b.of_lag(lag)

    def __str__(self) -> str:
        return f"({self.a} * {self.b})"


def kernel_bank() -> list[Kernel]:
    """The bank Algorithm 2 draws from; each entry is equally likely."""
    return [
        *(Constant(1.0),),
        *(Linear(c) for c in LINEAR_OFFSETS),
        *(RBF(length) for length in RBF_LENGTHS),
        *(RationalQuadratic(a) for a in RQ_ALPHAS),
        *(Periodic(p) for p in PERIODS),
        *(White(level) for level in WHITE_LEVELS),
    ]


def _varies(kernel: Kernel) -> bool:
    """False for a composite of constants only (a flat path teaches the forecaster nothing)."""
    if isinstance(kernel, (Sum, Product)):
        return _varies(kernel.a) or _varies(kernel.b)
    return not isinstance(kernel, Constant)


def random_kernel(rng: np.random.Generator, max_kernels: int = MAX_KERNELS) -> Kernel:
    """Algorithm 2, lines 1-6: j ~ U{1..J} bank kernels, folded left with random + or *."""
    bank = kernel_bank()
    while True:
        j = int(rng.integers(1, max_kernels + 1))
        picks = [bank[i] for i in rng.integers(0, len(bank), size=j)]
        kernel = picks[0]
        for other in picks[1:]:
            kernel = kernel + other if rng.random() < 0.5 else kernel * other
        if _varies(kernel):
            return kernel


JITTERS = (1e-6, 1e-4, 1e-2)  # tried in turn, relative to the mean variance


def _cholesky(cov: np.ndarray, first: int = 0) -> tuple[np.ndarray, int]:
    """(lower Cholesky factor, index into JITTERS used): composite kernels are often
    near-singular, so add growing jitter, from JITTERS[first] on."""
    scale = float(np.mean(np.diag(cov))) or 1.0
    for i in range(first, len(JITTERS)):
        try:
            diag = JITTERS[i] * scale * np.eye(len(cov))
            return cholesky(cov + diag, lower=True, check_finite=False), i
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("covariance is not positive definite even with 1% jitter")


def sample_paths(
    kernel: Kernel,
    length: int,
    rng: np.random.Generator,
    count: int = 1,
    span: int = SPAN,
    overlap: int = OVERLAP,
) -> np.ndarray:
    """`count` GP paths [count, length] of zero mean and covariance `kernel` at points 0..length-1.

    Exact GP sampling is O(length^3); instead each chunk of `span - overlap` new points is drawn
    from the GP conditioned on the `overlap` points before it, so any stretch of `overlap + 1`
    points has exactly the GP's law (correlations across longer gaps are only approximate).
    """
    if not 0 < overlap < span:
        raise ValueError(f"need 0 < overlap < span, got overlap={overlap} span={span}")
    first = min(span, length)
    out = np.empty((count, length))
    factor, jitter = _cholesky(kernel.matrix(np.arange(first, dtype=np.float64), length))
    out[:, :first] = (factor @ rng.standard_normal((first, count))).T
    pos = first
    while pos < length:
        new = min(span - overlap, length - pos)
        t = np.arange(pos - overlap, pos + new, dtype=np.float64)
        if not kernel.stationary or new < span - overlap:
            factor, jitter = _cholesky(kernel.matrix(t, length), jitter)
        head, tail = factor[:overlap, :overlap], factor[overlap:, :]
        # y = L z: recover the overlap's z from its values, then draw the new points' z.
        z_head = solve_triangular(
            head, out[:, pos - overlap : pos].T, lower=True, check_finite=False
        )
        z_new = rng.standard_normal((new, count))
        out[:, pos : pos + new] = (tail @ np.vstack([z_head, z_new])).T
        pos += new
    return out


def to_metric(path: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Give a standardised GP path some shapes of operators' metrics. Returns (values, names)."""
    v = (path - path.mean()) / max(float(path.std()), 1e-9)
    applied: list[str] = []
    kind = rng.choice(["none", *METRIC_TRANSFORMS], p=[0.4, 0.2, 0.15, 0.15, 0.1])
    if kind == "positive":
        # Latencies, sizes: positive and right-skewed.
        v = np.exp(rng.uniform(0.2, 1.0) * v)
    elif kind == "floor":
        # Utilisation that sits at zero part of the time.
        v = np.maximum(v - np.quantile(v, rng.uniform(0.05, 0.4)), 0.0)
    elif kind == "counts":
        # Requests per interval: Poisson around a positive rate, from low to high rates.
        rate = np.exp(rng.uniform(0.2, 1.0) * v)
        v = rng.poisson(rate / rate.mean() * rng.uniform(1.0, 50.0)).astype(np.float64)
    elif kind == "quantize":
        # Integer gauges, two-decimal percentages.
        step = rng.uniform(0.05, 0.5)
        v = np.round(v / step) * step
    if kind != "none":
        applied.append(str(kind))
    if kind == "counts":
        return v, applied
    # A random level and unit, as real metrics have (the model normalises each window anyway).
    scale = float(10 ** rng.uniform(-1, 3))
    return scale * (v + rng.uniform(0.0, 5.0)), applied


def kernelsynth_path(length: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One KernelSynth metric series of `length` points and a name that says how it was made."""
    kernel = random_kernel(rng)
    (path,) = sample_paths(kernel, length, rng)
    values, applied = to_metric(path, rng)
    return values, str(kernel) + "".join("+" + a for a in applied)
