"""Synthetic metric series: seasonality, trend and noise, with labelled injected anomalies.

Used for two things that must not touch the NAB corpus: the live stream of `tsguard demo`
and the training data of the default model (so NAB stays a fair test).

>>> values, labels = generate(SeriesSpec(seed=1), n=2000, anomalies=[Anomaly("spike", 1500, 1)])
>>> bool(labels[1500]) and not labels[:1500].any()
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

ANOMALY_KINDS = ("spike", "level_shift", "drift", "dip", "noise_burst")


@dataclass(frozen=True)
class SeriesSpec:
    """One metric's normal behaviour. `period` is the number of points in one 'day'."""

    base: float = 50.0
    daily_amplitude: float = 10.0
    period: int = 288
    weekly_amplitude: float = 0.0
    trend_per_point: float = 0.0
    noise: float = 1.0
    seed: int = 0

    @staticmethod
    def random(rng: np.random.Generator, seed: int) -> SeriesSpec:
        scale = float(10 ** rng.uniform(-1, 3))
        return SeriesSpec(
            base=scale * rng.uniform(0.5, 2.0),
            daily_amplitude=scale * rng.uniform(0.0, 0.5),
            period=int(rng.choice([48, 96, 144, 288])),
            weekly_amplitude=scale * rng.uniform(0.0, 0.1),
            trend_per_point=scale * rng.normal(0, 2e-5),
            noise=scale * rng.uniform(0.01, 0.1),
            seed=seed,
        )


@dataclass(frozen=True)
class Anomaly:
    kind: str
    start: int
    length: int
    magnitude: float = 6.0  # in units of the series' noise + daily amplitude


def _normal(spec: SeriesSpec, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    day = spec.daily_amplitude * np.sin(2 * np.pi * t / spec.period)
    week = spec.weekly_amplitude * np.sin(2 * np.pi * t / (7 * spec.period))
    # AR(1) noise looks more like real metrics than white noise.
    eps = rng.normal(0.0, spec.noise, size=len(t))
    ar = lfilter([1.0], [1.0, -0.6], eps)
    return spec.base + spec.trend_per_point * t + day + week + 0.8 * ar


def _apply(values: np.ndarray, a: Anomaly, unit: float, rng: np.random.Generator) -> None:
    end = min(len(values), a.start + a.length)
    span = slice(a.start, end)
    n = end - a.start
    if n <= 0:
        return
    if a.kind == "spike":
        values[span] += a.magnitude * unit * rng.choice([-1.0, 1.0]) * np.ones(n)
    elif a.kind == "dip":
        values[span] -= a.magnitude * unit
    elif a.kind == "level_shift":
        values[a.start :] += 0.7 * a.magnitude * unit
    elif a.kind == "drift":
        values[span] += np.linspace(0, a.magnitude * unit, n)
        values[end:] += a.magnitude * unit
    elif a.kind == "noise_burst":
        values[span] += rng.normal(0, 0.6 * a.magnitude * unit, n)
    else:
        raise ValueError(f"unknown anomaly kind {a.kind!r}; expected one of {ANOMALY_KINDS}")


def generate(
    spec: SeriesSpec, n: int, anomalies: list[Anomaly] | None = None, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (values float64 [n], labels bool [n]) for points start..start+n of the series."""
    rng = np.random.default_rng(spec.seed)
    t = np.arange(start, start + n, dtype=np.float64)
    values = _normal(spec, t, rng)
    labels = np.zeros(n, dtype=bool)
    unit = spec.noise + 0.25 * spec.daily_amplitude
    for a in anomalies or []:
        _apply(values, a, unit, rng)
        labels[a.start : a.start + max(a.length, 1)] = True
    return values, labels


def random_anomalies(rng: np.random.Generator, n: int, count: int, min_start: int) -> list[Anomaly]:
    """`count` anomalies of random kinds, spread over [min_start, n)."""
    starts = np.sort(rng.choice(np.arange(min_start, n - 10), size=count, replace=False))
    out = []
    for s in starts:
        kind = str(rng.choice(ANOMALY_KINDS))
        length = 1 if kind == "spike" else int(rng.integers(5, 40))
        out.append(Anomaly(kind, int(s), length, float(rng.uniform(4.0, 10.0))))
    return out
