"""Anomaly episodes: turn a per-point score in 0..1 into start/end transitions with hysteresis
and repeat damping.

An episode starts at the first point whose score reaches `threshold`; it ends once the score has
stayed below `threshold - hysteresis` for `end_after` consecutive points. One alert per episode,
however long it lasts, is what keeps a pager quiet during a sustained incident. Within `repeat`
points of an episode's start, a new episode needs a score above the last one's peak: a noisy
anomaly that dips and returns is one page, not several (ARTime masks repeats the same way, and
NAB counts only the first detection in a window).

The state of a series is a row in an `EpisodeBank` (open flag, calm points, points since the
last start, the last episode's peak), updated for a whole batch of scores by one compiled loop.

>>> bank = EpisodeBank(EpisodeConfig(threshold=0.9, end_after=2, repeat=0))
>>> bank.reset(0)
>>> bank.update(np.array([0]), np.array([[0.1, 0.95, 0.97, 0.2, 0.1, 0.1]])).tolist()
[[0, 1, 0, 0, 2, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from detector.rows import SlotRows

START, END = 1, 2  # EpisodeBank.update's transition codes (0: none)
KINDS = {START: "start", END: "end"}


@dataclass(frozen=True)
class EpisodeConfig:
    threshold: float = 0.9
    hysteresis: float = 0.05
    end_after: int = 10
    repeat: int = 100  # points after a start during which only a higher peak starts another


class EpisodeBank:
    """Episode state of many series, one slot each (the caller's numbering)."""

    def __init__(self, config: EpisodeConfig, capacity: int = 64) -> None:
        self.config = config
        self.rows = SlotRows(
            capacity,
            open=((), np.int32, 0),
            calm=((), np.int32, 0),
            since=((), np.float64, np.inf),  # points since the last start
            peak=((), np.float64, 0.0),  # highest score of the last (or open) episode
            # this series' thresholds relative to the config's (an operator's sensitivity rule)
            scale=((), np.float64, 1.0),
        )

    @property
    def bytes_per_series(self) -> int:
        return self.rows.bytes_per_row

    def reset(self, slot: int) -> None:
        """Slot `slot` starts with no episode open (the bank grows to hold it)."""
        self.rows.reset(slot)

    def close_all(self) -> None:
        """Every series back to no episode and no damping (a new model starts afresh)."""
        for name in ("open", "calm", "since", "peak"):
            self.rows.reset_field(name)

    def set_scale(self, slot: int, scale: float) -> None:
        """Multiply this series' start and calm thresholds by `scale` (1: the config's; below 1
        alerts on smaller surprises). A threshold above 1 is never reached."""
        self.rows.scale[slot] = scale

    def is_open(self, slot: int) -> bool:
        return bool(self.rows.open[slot])

    def update(self, slots: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Feed rows of scores [B, K] in order, row i to series slots[i] (-1: skip the row; NaN
        counts as calm). Returns int8 [B, K]: START, END or 0 per point."""
        c, r = self.config, self.rows
        kinds = np.zeros(scores.shape, dtype=np.int8)
        _track(np.ascontiguousarray(slots, dtype=np.int64),
               np.ascontiguousarray(scores, dtype=np.float64), c.threshold,
               c.threshold - c.hysteresis, c.end_after, float(c.repeat), r.open, r.calm,
               r.since, r.peak, r.scale, kinds)  # fmt: skip
        return kinds


@njit(cache=True)
def _track(slots, scores, threshold, calm_below, end_after, repeat, is_open, calm, since, peak,
           scale, kinds):  # fmt: skip
    for i in range(scores.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        start_at, calm_at = threshold * scale[s], calm_below * scale[s]
        for j in range(scores.shape[1]):
            score = scores[i, j]
            since[s] += 1.0
            if is_open[s] == 0:
                if score >= start_at and (since[s] > repeat or score > peak[s]):
                    is_open[s], calm[s], since[s], peak[s] = 1, 0, 0.0, score
                    kinds[i, j] = START
            elif score >= calm_at:
                calm[s] = 0
                peak[s] = max(peak[s], score)
            else:
                calm[s] += 1
                if calm[s] >= end_after:
                    is_open[s] = 0
                    kinds[i, j] = END
