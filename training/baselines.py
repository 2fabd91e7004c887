"""Baseline detectors for the NAB harness, behind the same tiny interface as the tsguard detector.

Every detector is one class with `name` and `score_series(values, timestamps) -> scores`: a float
array in 0..1, one score per point, where the score of point t depends only on values[: t + 1]
(the stream so far). Detectors that learn do so from the series' own past only; the ones that fit
a model fit it on the NAB probationary period (the first 15% of the series, which NAB does not
score and intends as the learning period; knowing its length presumes knowing the series length,
as every NAB detector does).

>>> import numpy as np
>>> x = np.r_[np.zeros(500) + np.random.default_rng(0).normal(0, 1, 500), 40.0]
>>> s = WindowedGaussian().score_series(x, np.arange(501))
>>> bool(s[-1] > 0.999 and s[-1] == s.max())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import erfc

from training.nab import probationary_length


class SeriesDetector(Protocol):
    """What the NAB harness runs: one score in 0..1 per point, causal (uses only the past)."""

    name: str

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray: ...


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Carry the last seen value over NaNs (0 before the first value): detectors need numbers."""
    x = np.asarray(values, dtype=np.float64).copy()
    bad = ~np.isfinite(x)
    if bad.any():
        idx = np.where(bad, 0, np.arange(len(x)))
        np.maximum.accumulate(idx, out=idx)
        x = x[idx]
        x[~np.isfinite(x)] = 0.0
    return x


@dataclass
class WindowedGaussian:
    """NAB's reference "windowedGaussian" detector (Numenta, NAB v1.1 detectors/gaussian).

    The score of a point is 1 - Q(|z|), Q the upper tail probability of a standard normal and z
    the point's distance from the mean of a reference window in standard deviations. The reference
    window grows with the stream up to `window` points, then slides forward `step` points at a
    time; the point itself is never part of its own reference. A near-constant window uses a tiny
    standard deviation, so any change there scores ~1.
    """

    window: int = 6400
    step: int = 100
    min_std: float = 1e-6
    name: str = "windowed-gaussian"

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        x = _fill_missing(values)
        n = len(x)
        if n == 0:
            return np.zeros(0)
        i = np.arange(n)
        # Reference window [lo, hi) of point i: the first i points while the window fills, then
        # the window as of the last completed step.
        steps_done = np.maximum(i - self.window, 0) // self.step
        lo = np.where(i <= self.window, 0, steps_done * self.step)
        hi = np.where(i <= self.window, i, self.window + steps_done * self.step)
        # Prefix sums (shifted by the first value, which keeps the variance numerically sane).
        c = x - x[0]
        s1 = np.r_[0.0, np.cumsum(c)]
        s2 = np.r_[0.0, np.cumsum(c * c)]
        count = np.maximum(hi - lo, 1)
        mean = (s1[hi] - s1[lo]) / count
        var = np.maximum((s2[hi] - s2[lo]) / count - mean * mean, 0.0)
        std = np.sqrt(var)
        std = np.where(std == 0.0, self.min_std, std)
        z = np.abs(c - mean) / std
        scores = 1.0 - 0.5 * erfc(z / np.sqrt(2.0))
        scores[hi - lo == 0] = 0.0  # nothing seen yet
        return scores


def _lagged(x: np.ndarray, k: int) -> np.ndarray:
    """Rows t = k-1 .. n-1 of [x[t-k+1], ..., x[t]] (each row ends at its own point)."""
    return np.lib.stride_tricks.sliding_window_view(x, k)


@dataclass
class IsolationForestDetector:
    """Isolation Forest (Liu, Ting, Zhou, ICDM 2008) on short sliding windows of the series.

    Each point is described by the last `lags` values (levels, as z-scores of the probationary
    period) and their first differences, so both odd levels and odd jumps isolate quickly. The
    forest is fitted once, on the windows that end inside the probationary period, and then
    scores every later point online. The score is the paper's s(x, n) = 2^(-E[h(x)] / c(n)) in
    0..1 (scikit-learn's `-score_samples`); points before the forest exists score 0.
    """

    lags: int = 8
    n_estimators: int = 100
    max_samples: int = 256
    seed: int = 0
    name: str = "isolation-forest"

    def _features(self, x: np.ndarray, mu: float, sd: float) -> np.ndarray:
        z = (x - mu) / sd
        win = _lagged(z, self.lags)
        return np.hstack([win, np.diff(win, axis=1)])

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        from sklearn.ensemble import IsolationForest

        x = _fill_missing(values)
        n = len(x)
        scores = np.zeros(n)
        fit_end = max(probationary_length(n), self.lags + 1)
        if n < fit_end or fit_end - self.lags + 1 < 2:
            return scores
        head = x[:fit_end]
        mu, sd = float(np.mean(head)), float(np.std(head)) or 1.0
        feats = self._features(x, mu, sd)  # row r describes point r + lags - 1
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, fit_end - self.lags + 1),
            random_state=self.seed,
        )
        forest.fit(feats[: fit_end - self.lags + 1])
        scores[self.lags - 1 :] = -forest.score_samples(feats)
        scores[:fit_end] = 0.0  # the fitting period is not scored (and would be in-sample)
        return np.clip(scores, 0.0, 1.0)


@dataclass
class PcaReconstruction:
    """PCA reconstruction error of sliding windows (a linear autoencoder).

    Each point is described by the shape of the window of the last `lags` values: the window minus
    its own mean, in units of the probationary period's standard deviation (so a slow change of
    level is not an anomaly forever, but a jump is, while it is inside the window). The principal
    components that explain `variance` of the probationary windows span "normal"; the squared
    reconstruction error r of a window, in units of the 99th percentile of the errors on the
    probationary windows, becomes the score r / (1 + r): monotone, 0.5 at the edge of normal, and
    not saturated to exactly 1.0 (so NAB's threshold sweep can still order the large errors).
    """

    lags: int = 16
    variance: float = 0.95
    name: str = "pca"

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        x = _fill_missing(values)
        n = len(x)
        scores = np.zeros(n)
        fit_end = max(probationary_length(n), self.lags + 1)
        if n < fit_end or fit_end - self.lags + 1 < 3:
            return scores
        sd = float(np.std(x[:fit_end])) or 1.0
        win = _lagged(x / sd, self.lags)
        win = win - win.mean(axis=1, keepdims=True)
        fit = win[: fit_end - self.lags + 1]
        if float(np.var(fit, axis=0).sum()) < 1e-12:
            # A flat probationary period: there are no components to fit; any shape is an error.
            err = np.sum(win**2, axis=1)
        else:
            pca = PCA(n_components=self.variance, svd_solver="full").fit(fit)
            err = np.sum((win - pca.inverse_transform(pca.transform(win))) ** 2, axis=1)
        # Floor: errors below 1% of a standard deviation per value are numerical noise, not signal.
        scale = max(float(np.quantile(err[: len(fit)], 0.99)), 1e-4 * self.lags)
        ratio = err / scale
        scores[self.lags - 1 :] = ratio / (1.0 + ratio)
        scores[:fit_end] = 0.0
        return scores


@dataclass
class NullDetector:
    """Never detects anything: NAB's 0 point (useful to check the harness end to end)."""

    name: str = "null"

    def score_series(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        return np.zeros(len(values))


# ----------------------------------------------------------------------------- offline baselines
# TSB-AD's (Liu & Paparrizos, NeurIPS 2024) Sub-PCA, POLY and MatrixProfile, with the parameters
# of its `Optimal_Uni_algo_HP_dict` (window = period estimate of rank 1; POLY power 4; Sub-PCA all
# components). They see the whole series at once (not streaming); `raw_scores` returns their raw
# scores, which the labelled harness min-max normalises per series as TSB-AD does.


def _pad_centred(scores: np.ndarray, window: int, n: int) -> np.ndarray:
    """Scores of the n - window + 1 windows -> one per point: the first score repeated
    ceil((window - 1) / 2) times in front, the last (window - 1) // 2 times behind."""
    front, back = -(-(window - 1) // 2), (window - 1) // 2
    return np.r_[np.full(front, scores[0]), scores, np.full(back, scores[-1])][:n]


def _standard_windows(values: np.ndarray, window: int | None) -> tuple[np.ndarray | None, int]:
    """The series' sliding windows (`window` points, default its period estimate), each column
    standardised over the windows (a constant column becomes 0), and the window length; None
    instead of the windows when the series is too short for two of them."""
    from training.metrics import period_length

    x = _fill_missing(values)
    w = window or period_length(x)
    if len(x) < w + 2:
        return None, w
    win = np.lib.stride_tricks.sliding_window_view(x, w)
    sd = win.std(axis=0)
    return (win - win.mean(axis=0)) / np.where(sd == 0.0, 1.0, sd), w


@dataclass
class SubPca:
    """Sub-PCA: PCA on the sliding windows of the series (Aggarwal, "Outlier Analysis", ch. 3;
    PyOD's PCA as TSB-AD runs it on subsequences).

    Windows of the period length are standardised per column (constant columns dropped) and all
    principal components are fitted on them; a window's score is the sum over components k of
    its Euclidean distance to the unit vector of component k divided by k's explained-variance
    ratio. The score of a window is assigned to its centre point (ends padded).
    """

    window: int | None = None  # None: period_length of the series
    name: str = "sub-pca"
    streaming: bool = False

    def raw_scores(self, values: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        n = len(values)
        z, w = _standard_windows(values, self.window)
        if z is None:
            return np.zeros(n)
        z = z[:, np.any(z != 0.0, axis=0)]
        if z.shape[1] == 0:  # a constant series: nothing to decompose
            return np.zeros(n)
        pca = PCA(n_components=None, random_state=0).fit(z)
        comps, ratio = pca.components_, pca.explained_variance_ratio_
        keep = ratio > 0.0  # a zero-variance component would divide by zero
        comps, ratio = comps[keep], ratio[keep]
        # ||z - c||^2 = ||z||^2 - 2 z.c + 1 for a unit vector c.
        sq = np.sum(z * z, axis=1, keepdims=True) - 2.0 * (z @ comps.T) + 1.0
        dist = np.sqrt(np.maximum(sq, 0.0))
        return _pad_centred(dist @ (1.0 / ratio), w, n)


@dataclass
class Poly:
    """POLY: polynomial approximation of each window from its neighbourhood (Li, Boniol,
    Paparrizos et al., TSB-UAD, VLDB 2022; TSB-AD's POLY).

    The series is min-max scaled. For each block of `window` points after the first
    min(500, 10%) points, a polynomial of degree `power` is fitted (least squares, absolute
    positions) to the neighbourhood around the block (max(10 * window, 100) points, the block
    itself left out; clipped at the series' ends), and the block's score is the RMS of the
    values' difference from the polynomial (TSB-AD's Fourier distance, which by Parseval equals
    the RMS); every point of the block gets it. Quirks kept for faithfulness: blocks are evaluated
    at `linspace(start, start + window, window)` positions, and the tail after the last full
    block only gets a polynomial when n % (n // window) != 0.
    """

    window: int | None = None
    power: int = 4
    name: str = "poly"
    streaming: bool = False

    def raw_scores(self, values: np.ndarray) -> np.ndarray:
        import math
        import warnings

        from training.metrics import period_length

        x = _fill_missing(values)
        n = len(x)
        w = self.window or period_length(x)
        span = float(x.max() - x.min()) if n else 0.0
        if n < 2 * w or span == 0.0:
            return np.zeros(n)
        x = (x - x.min()) / span
        hood = min(max(10 * w, 100), n)
        half = hood // 2
        first = math.ceil(min(500, int(0.1 * n)) / w)
        blocks = n // w
        pos = np.arange(n, dtype=np.float64)

        def fit(idx: np.ndarray) -> np.poly1d:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # np.polyfit's RankWarning on far-off positions
                return np.poly1d(np.polyfit(pos[idx], x[idx], self.power))

        estimate = np.zeros(n)
        for i in range(first, blocks + 1):
            at = i * w
            if at + half < n and at - half > 0:
                idx = np.r_[at - half : at, at + w : at + half]
            elif at + half >= n and at + w < n:
                idx = np.r_[n - hood : at, at + w : n]
            elif at + w >= n:
                idx = np.arange(n - hood, at)
            else:
                idx = np.r_[0:at, at + w : hood]
            model = fit(idx)
            if i < blocks:
                estimate[at : at + w] = model(np.linspace(at, at + w, w))
            elif n % blocks != 0:
                estimate[at:] = model(pos[at:])
        scores = np.zeros(n)
        for i in range(first, blocks + 1):
            at = i * w
            d = x[at : at + w] - estimate[at : at + w]
            scores[at : at + w] = np.sqrt(np.mean(d * d)) if len(d) else 0.0
        return scores


@dataclass
class MatrixProfile:
    """Matrix profile discord score (Yeh et al., "Matrix Profile I", ICDM 2016), computed with
    stumpy.stump: each window's z-normalised distance to its nearest non-trivial neighbour, at
    the window's centre (the rest filled with the smallest distance), as TSB-AD's MatrixProfile.
    """

    window: int | None = None
    name: str = "matrix-profile"
    streaming: bool = False

    def raw_scores(self, values: np.ndarray) -> np.ndarray:
        import stumpy

        from training.metrics import period_length

        x = _fill_missing(values)
        n = len(x)
        w = self.window or period_length(x)
        if n < 2 * w + 2:
            return np.zeros(n)
        profile = np.asarray(stumpy.stump(x, m=w)[:, 0], dtype=np.float64)
        finite = np.isfinite(profile)
        if not finite.any():
            return np.zeros(n)
        profile[~finite] = profile[finite].max()  # no neighbour at all: as odd as the oddest
        out = np.full(n, profile.min())
        out[w // 2 : w // 2 + len(profile)] = profile
        return out


@dataclass
class SubIForest:
    """Sub-IForest: an isolation forest (Liu, Ting & Zhou, ICDM 2008; scikit-learn's
    IsolationForest) over the sliding windows of the series, as TSB-AD runs it with its best
    univariate settings (windows of the period length, 150 trees, each tree on one column of
    the windows, 256 windows per tree, seed 0).

    Windows are standardised per column; a window's score is minus its scikit-learn
    `score_samples` (shorter average paths score higher), assigned to its centre point (ends
    padded). The strongest simple method on telemetry in the issue's outside check.
    """

    window: int | None = None
    trees: int = 150
    name: str = "sub-iforest"
    streaming: bool = False

    def raw_scores(self, values: np.ndarray) -> np.ndarray:
        from sklearn.ensemble import IsolationForest

        n = len(values)
        z, w = _standard_windows(values, self.window)
        if z is None:
            return np.zeros(n)
        forest = IsolationForest(n_estimators=self.trees, max_features=1, random_state=0)
        return _pad_centred(-forest.fit(z).score_samples(z), w, n)


OFFLINE_BASELINES: dict[str, type] = {
    "sub-pca": SubPca,
    "sub-iforest": SubIForest,
    "poly": Poly,
    "matrix-profile": MatrixProfile,
}

BASELINES: dict[str, type] = {
    "windowed-gaussian": WindowedGaussian,
    "isolation-forest": IsolationForestDetector,
    "pca": PcaReconstruction,
    "null": NullDetector,
}
