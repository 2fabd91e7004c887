"""The Detector: windows of many series in, a calibrated score and episodes per point out.

One object owns per-series detection, for `tsguard serve` (stream/heads/metrics.py) and for every
`tsguard evaluate` command alike, so what is measured is what serves:

    windows [B, L, D] --scorer--> forecast residual ---------\
                     --signals--> seasonal, novelty, range, shift --> one SPOT tail each
    tail scores [B, K, S] --fusion--> score [B, K] --episodes--> start / end per point

- each signal (detector/signals/) turns the newest points of a window into a raw surprise value;
- each signal's values go through its own peaks-over-threshold tail (detector/calibration.py),
  so every signal speaks the same language: -log10 of a tail probability, scaled to 0..1;
- fusion combines the signals' tail probabilities into one (`fuse`: the better of Bonferroni's
  min-P and Fisher's method), so the score still reads as a probability: one sure signal is
  enough, and several that agree a little add up;
- the score is the gauge and the ranking: the largest fused score of the last `hold` points,
  never damped after an alert, so it stays high while the anomaly lasts;
  episodes (detector/episodes.py) are the alerts, with hysteresis and repeat damping.

State lives in banks, one per dimensionality D: a row per series (a slot) in the tail bank,
each signal's rows and the episode bank. The caller owns the slot numbers (the stream's series
table, stream/series.py) and says when one starts afresh (`reset`); it hands out nothing but
windows and slots.

>>> import numpy as np
>>> from detector.scorer import load_scorer
>>> det = Detector(load_scorer(device="cpu"))
>>> x = np.sin(np.arange(3000) * 2 * np.pi / 144) + np.random.default_rng(0).normal(0, 0.05, 3000)
>>> x[2500] += 3.0
>>> run = det.run_series(x[:, None], 300.0 * np.arange(3000))
>>> int(np.argmax(run.scores)), int(np.flatnonzero(run.kinds == START)[0])
(2500, 2500)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from detector.calibration import TailBank, TailConfig
from detector.episodes import END, KINDS, START, EpisodeBank, EpisodeConfig
from detector.rows import SlotRows
from detector.signals import (
    SIGNALS,
    ForecastResidual,
    LevelShift,
    PatternNovelty,
    RangeExcess,
    SeasonalProfile,
    SpreadShift,  # fmt: skip
)

__all__ = ["END", "KINDS", "SIGNALS", "START", "Detection", "Detector", "DetectorConfig",
           "SeriesRun"]  # fmt: skip


@dataclass(frozen=True)
class DetectorConfig:
    """Every setting of detection; stored under "calibration" in a model's config.json. One
    default configuration serves every collection (README: what was tuned on which data)."""

    signals: tuple[str, ...] = SIGNALS  # which signals take part (an ablation drops some)
    # The tails (detector/calibration.py).
    q: float = 0.99
    short_window: int = 1  # 3 averaged a lone spike away
    long_window: int = 2000  # memory of the tails and running means; 500 forgot too fast
    warmup: int = 100
    tail_decades: float = 10.0
    quantile_rate: float = 0.2
    # Time-of-day profile (detector/signals/seasonal.py).
    seasonal_bins: int = 48
    seasonal_period_s: float = 86400.0
    seasonal_alpha: float = 0.05
    seasonal_min_count: int = 5
    seasonal_learn_every_s: float = 300.0
    # Pattern novelty (detector/signals/novelty.py): query length, past points kept.
    novelty_length: int = 16
    novelty_history: int = 1024
    # Range excess (detector/signals/range.py): points over which the bounds relax.
    range_forget: float = 20000.0
    # Level shift (detector/signals/shift.py): points in the recent mean.
    shift_short: int = 8
    # Its running mean learns a step of at most 5 usual steps (0: whole steps); 2 and 3 scored
    # lower on kpi/train, and the same clip on the spread baseline lowered smd.
    shift_clip: float = 5.0
    # Spread shift (detector/signals/spread.py): points in the recent dispersion.
    spread_short: int = 64
    # Episodes (detector/episodes.py): threshold 0.4 is a fused probability of 1e-8 (one signal
    # alone at about 1e-9, or several that agree). Higher raised kpi/train's event F1 further
    # but let a lasting level shift's score settle below the threshold (the rule stops firing).
    threshold: float = 0.4
    # An episode ends once the score stays under 0.3: a lasting shift whose score settles near
    # the threshold stays one episode instead of flickering into several.
    hysteresis: float = 0.1
    end_after: int = 10
    repeat: int = 100
    # The score is the largest fused score of the last `hold` points: an anomaly a few points
    # long reads as one, not as isolated spikes.
    hold: int = 4
    fused_decades: float = 20.0  # -log10 of the fused probability that maps to score 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "signals", tuple(self.signals))

    def validate(self) -> None:
        unknown = set(self.signals) - set(SIGNALS)
        if unknown or not self.signals:
            raise ValueError(f"signals must be a non-empty subset of {list(SIGNALS)}")
        self.tails.validate()
        if not 0.0 < self.threshold <= 1.0 or not 0.0 <= self.hysteresis < self.threshold:
            raise ValueError("need 0 < threshold <= 1 and 0 <= hysteresis < threshold")
        if self.end_after < 1 or self.repeat < 0 or not 1 <= self.hold <= 1024:
            raise ValueError("need end_after >= 1, repeat >= 0 and 1 <= hold <= 1024")
        if not (0 <= self.seasonal_bins <= 10_000 and self.seasonal_period_s > 0):
            raise ValueError("need 0 <= seasonal_bins <= 10000 and seasonal_period_s > 0")
        if not (0.0 < self.seasonal_alpha <= 1.0 and 1 <= self.seasonal_min_count <= 255):
            raise ValueError("need 0 < seasonal_alpha <= 1 and 1 <= seasonal_min_count <= 255")
        if self.seasonal_learn_every_s < 0:
            raise ValueError("need seasonal_learn_every_s >= 0")
        if not 2 <= self.novelty_length <= 64 or self.novelty_history < 4 * self.novelty_length:
            raise ValueError("need 2 <= novelty_length <= 64, novelty_history >= 4 * length")
        if self.range_forget < 1 or self.shift_short < 1 or not 2 <= self.spread_short <= 112:
            raise ValueError("need range_forget >= 1, shift_short >= 1, 2 <= spread_short <= 112")
        if not self.shift_clip >= 0:
            raise ValueError("need shift_clip >= 0")

    @property
    def tails(self) -> TailConfig:
        return TailConfig(self.q, self.short_window, self.long_window, self.warmup,
                          self.tail_decades, self.quantile_rate)  # fmt: skip

    @property
    def episodes(self) -> EpisodeConfig:
        return EpisodeConfig(self.threshold, self.hysteresis, self.end_after, self.repeat)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["signals"] = list(self.signals)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DetectorConfig:
        names = {f.name for f in fields(DetectorConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"calibration: unknown keys {sorted(unknown)}")
        try:
            cfg = DetectorConfig(**d)
            cfg.validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration: {exc}") from None
        return cfg


class Detection(NamedTuple):
    """What `Detector.score` returns for B windows, each scored on its newest K points."""

    scores: np.ndarray  # float64 [B, K], 0..1
    kinds: np.ndarray  # int8 [B, K]: START, END or 0
    contributions: np.ndarray  # float32 [B, K, D], the model's per-dimension shares
    signals: np.ndarray  # float64 [B, K, S]: each signal's tail score (NaN: no opinion)


class SeriesRun(NamedTuple):
    """`Detector.run_series` of one series of n points."""

    scores: np.ndarray  # float64 [n]; 0 where the stream scores nothing (a young series)
    kinds: np.ndarray  # int8 [n]
    signals: np.ndarray  # float64 [n, S]
    scored: np.ndarray  # bool [n]: the point was scored


@dataclass
class _Bank:
    """Every series of one dimensionality: a slot each in the tails, signals and episodes."""

    tails: TailBank
    forecast: ForecastResidual  # the model's per-dimension errors as one raw value
    signals: dict[str, Any]  # every other signal
    recent: SlotRows  # the last `hold` fused scores, a ring
    episodes: EpisodeBank

    def reset(self, slot: int) -> None:
        self.tails.reset(slot)
        self.forecast.reset(slot)
        self.recent.reset(slot)
        for sig in self.signals.values():
            sig.reset(slot)
        self.episodes.reset(slot)

    @property
    def bytes_per_series(self) -> int:
        rows = [self.tails.rows, self.forecast.rows, self.recent, self.episodes.rows,
                *(s.rows for s in self.signals.values())]  # fmt: skip
        return sum(r.bytes_per_row for r in rows)


class Detector:
    """Per-series detection for many series at once (see the module docstring).

    `scorer` is a detector.api.WindowScorer; `config` defaults to the model's own (its
    config.json "calibration")."""

    def __init__(self, scorer, config: DetectorConfig | None = None) -> None:
        self.config = config if config is not None else scorer.calibration
        self.config.validate()
        self.columns = [SIGNALS.index(name) for name in self.config.signals]
        self.banks: dict[int, _Bank] = {}
        self.scorer = scorer

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def window_length(self) -> int:
        return self.scorer.window_length

    @property
    def min_points(self) -> int:
        return self.scorer.min_points

    def set_scorer(self, scorer) -> None:
        """A new model (hot reload): its errors live on another scale, so the forecast tails
        restart; every other signal is the series' own history and carries over. Open episodes
        are closed without an end event."""
        if scorer.window_length != self.scorer.window_length:
            raise ValueError(
                f"new model window {scorer.window_length} != running {self.scorer.window_length}"
            )
        self.scorer = scorer
        for bank in self.banks.values():
            bank.tails.restart(SIGNALS.index("forecast"))
            bank.episodes.close_all()
            if "novelty" in bank.signals:  # it searches where the model runs
                bank.signals["novelty"].device = scorer.device

    # -- series ------------------------------------------------------------------------------
    def reset(self, dims: int, slot: int) -> None:
        """Slot `slot` of the bank of `dims` dimensions starts afresh: a new series took it."""
        bank = self.banks.get(dims)
        if bank is None:
            bank = self.banks[dims] = self._new_bank(dims)
        bank.reset(slot)

    def set_threshold_scale(self, dims: int, slot: int, scale: float) -> None:
        """This series' episode thresholds times `scale` (see EpisodeBank.set_scale)."""
        self.banks[dims].episodes.set_scale(slot, scale)

    def bytes_per_series(self, dims: int = 1) -> int:
        bank = self.banks.get(dims) or self._new_bank(dims)
        return bank.bytes_per_series

    def _new_bank(self, dims: int) -> _Bank:
        c = self.config
        made = {
            "seasonal": lambda: SeasonalProfile(
                dims, c.seasonal_bins, c.seasonal_period_s, c.seasonal_alpha,
                c.seasonal_min_count, c.seasonal_learn_every_s, c.long_window),
            "novelty": lambda: PatternNovelty(dims, c.novelty_length, c.novelty_history,
                                              c.long_window, device=self.scorer.device),
            "range": lambda: RangeExcess(dims, c.range_forget),
            "shift": lambda: LevelShift(dims, c.shift_short, c.long_window, c.shift_clip),
            "spread": lambda: SpreadShift(dims, c.spread_short, c.long_window),
        }  # fmt: skip
        if c.seasonal_bins == 0:
            made.pop("seasonal")
        signals = {name: made[name]() for name in c.signals if name in made}
        recent = SlotRows(64, scores=((c.hold,), np.float64, 0.0), pos=((), np.int64, 0))
        forecast = ForecastResidual(dims, c.long_window)
        return _Bank(TailBank(c.tails, len(SIGNALS)), forecast, signals, recent,
                     EpisodeBank(c.episodes))  # fmt: skip

    # -- scoring -----------------------------------------------------------------------------
    def score(self, dims: int, slots: np.ndarray, windows: np.ndarray, times: np.ndarray,
              n_new: int) -> Detection:  # fmt: skip
        """Score the newest n_new points of windows [B, L, D] (float32, NaN = missing) at
        times [B, L] (UTC seconds), row i belonging to series slots[i] of the D bank (-1: skip
        the row; it scores 0 and changes nothing). Rows of one series come in time order."""
        b = len(slots)
        if "forecast" in self.config.signals:
            result = self.scorer.score(windows, n_new)
            errors, contributions = result.errors, result.contributions
        else:
            errors = np.full((b, n_new, dims), np.nan)
            contributions = np.full((b, n_new, dims), 1.0 / dims, np.float32)
        return self.detect(dims, slots, windows, times, errors, contributions)

    def detect(self, dims: int, slots: np.ndarray, windows: np.ndarray, times: np.ndarray,
               errors: np.ndarray, contributions: np.ndarray) -> Detection:  # fmt: skip
        """`score` after the model: its errors [B, n_new, D] (NaN: no opinion) and contributions
        given, every other signal, the tails, the fusion and the episodes."""
        bank = self.banks[dims]
        slots = np.asarray(slots, dtype=np.int64)
        b, n_new = errors.shape[:2]
        raw = np.full((b, n_new, len(SIGNALS)), np.nan)
        raw[:, :, 0] = bank.forecast.raw(slots, errors)
        for name, sig in bank.signals.items():
            raw[:, :, SIGNALS.index(name)] = sig.raw(slots, windows, times, n_new)
        tails = bank.tails.score(slots, raw)
        scores = self.fuse(tails)
        if self.config.hold > 1:
            r = bank.recent
            _hold(slots, scores, r.scores, r.pos)
        kinds = bank.episodes.update(slots, scores)
        return Detection(scores, kinds, contributions, tails)

    def fuse(self, tails: np.ndarray) -> np.ndarray:
        """One score per point from the signals' tail scores [..., S] (see the module
        docstring); 0 where no signal answers."""
        return fuse(tails[..., self.columns], self.config.tail_decades, self.config.fused_decades)

    # -- one series, as the stream feeds it ------------------------------------------------
    def run_series(self, values: np.ndarray, timestamps: np.ndarray, stride: int = 1,
                   batch: int = 2048, slot: int = 0) -> SeriesRun:  # fmt: skip
        """Feed one series [n] or [n, D] (NaN = missing) at UTC seconds [n] through `slot`,
        reset first, exactly as `tsguard serve` does (stream/windows.py): a window of the last
        L points (missing slots before the series' first point) is taken at the series'
        min_points-th point and then every `stride` points, and its newest `stride` points are
        scored. Points no window scores (a young series, the tail of the series after the last
        full stride) score 0."""
        x = np.asarray(values, dtype=np.float32)
        x = x[:, None] if x.ndim == 1 else x
        n, dims = x.shape
        ts = np.asarray(timestamps, dtype=np.float64)
        length = self.window_length
        out = SeriesRun(np.zeros(n), np.zeros(n, np.int8), np.full((n, len(SIGNALS)), np.nan),
                        np.zeros(n, bool))  # fmt: skip
        first = max(self.min_points, stride) - 1
        if n <= first:
            return out
        self.reset(dims, slot)
        pad_x = np.concatenate([np.full((length - 1, dims), np.nan, np.float32), x])
        pad_t = np.concatenate([np.full(length - 1, np.nan), ts])
        view_x = np.lib.stride_tricks.sliding_window_view(pad_x, length, axis=0)
        view_t = np.lib.stride_tricks.sliding_window_view(pad_t, length)
        ends = np.arange(first, n, stride)  # window i ends at point ends[i]
        for lo in range(0, len(ends), batch):
            e = ends[lo : lo + batch]
            # A series' windows come in time order; rows of one call are scored in order.
            w = np.ascontiguousarray(view_x[e].transpose(0, 2, 1))
            det = self.score(dims, np.full(len(e), slot), w, view_t[e], stride)
            idx = (e[:, None] - np.arange(stride - 1, -1, -1)[None, :]).reshape(-1)
            out.scores[idx] = det.scores.reshape(-1)
            out.kinds[idx] = det.kinds.reshape(-1)
            out.signals[idx] = det.signals.reshape(-1, len(SIGNALS))
            out.scored[idx] = True
        return out


def fuse(tails: np.ndarray, tail_decades: float, fused_decades: float) -> np.ndarray:
    """Fuse tail scores [..., S] (score = -log10 P / tail_decades, NaN = no opinion) into one.

    Two combinations of the k answering signals' tail probabilities, each a valid test:
    Bonferroni's k * min P (one signal is sure: a spike only the forecaster sees) and
    Fisher's method, -2 sum ln P ~ chi2(2k) (several signals agree a little: a level shift
    that the forecast, the profile and the level all notice). The fused P is twice the
    smaller (the Bonferroni bound for taking the better of two tests), and the score is
    -log10 P / fused_decades, clipped to 0..1: larger than tail_decades, so points where many
    signals agree do not all tie at 1.
    """
    finite = np.isfinite(tails)
    k = finite.sum(axis=-1)
    t = np.where(finite, tails, 0.0)
    ln10 = math.log(10.0)
    bonferroni = t.max(axis=-1) * tail_decades - np.log10(np.maximum(k, 1))
    # Fisher's chi2(2k) survival in closed form: exp(-y) * sum_{i<k} y^i / i!, y = -sum ln P.
    y = t.sum(axis=-1) * tail_decades * ln10
    terms, term = np.zeros_like(y), np.ones_like(y)
    for i in range(1, tails.shape[-1]):
        term = term * y / i
        terms += np.where(i < k, term, 0.0)
    fisher = (y - np.log1p(terms)) / ln10
    minus_log10p = np.maximum(bonferroni, fisher) - np.where(k > 1, math.log10(2.0), 0.0)
    score = np.clip(minus_log10p / fused_decades, 0.0, 1.0)
    return np.where(k > 0, score, 0.0)


@njit(cache=True)
def _hold(slots, scores, recent, pos):
    """scores[i, j] <- the largest of the series' last `hold` fused scores (in place)."""
    hold = recent.shape[1]
    for i in range(scores.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(scores.shape[1]):
            recent[s, pos[s] % hold] = scores[i, j]
            pos[s] += 1
            best = 0.0
            for k in range(hold):
                best = max(best, recent[s, k])
            scores[i, j] = best


def onset_scores(run: SeriesRun) -> np.ndarray:
    """The score at each episode start, 0 elsewhere: what NAB sees (its scorer rewards the
    first detection in a window and penalises every other one)."""
    return np.where(run.kinds == START, run.scores, 0.0)


def tail_probability(score: float, tail_decades: float = 10.0) -> float:
    """The tail probability a score stands for (score 0.4 with 10 decades: 1e-4)."""
    return math.pow(10.0, -score * tail_decades)


class _ProbeScorer:
    """A stand-in model for load_kernels: zero errors, so only the compiled loops run."""

    window_length, min_points, max_new, version, device = 64, 1, 1, "probe", "cpu"
    calibration = DetectorConfig()

    def score(self, windows: np.ndarray, n_new: int):
        from detector.api import WindowScores

        b, _, d = windows.shape
        return WindowScores(np.zeros((b, n_new, d), np.float32), np.ones((b, n_new, d), np.float32))


def load_kernels() -> None:
    """Compile (or load from numba's cache) every loop of the detector by scoring one window of
    each signal once, univariate and multivariate."""
    det = Detector(_ProbeScorer())
    for dims in (1, 2):
        w = np.ones((1, det.window_length, dims), np.float32)
        det.reset(dims, 0)
        det.score(dims, np.array([0]), w, np.ones((1, det.window_length)), 1)
        # The novelty's matrix-product search (a GPU's) has host loops of its own.
        novelty = PatternNovelty(dims, 4, 16, search="matmul")
        novelty.reset(0)
        novelty.raw(np.array([0]), w, None, 1)
