"""Anomaly episodes: turn a per-point score in 0..1 into start/end transitions with hysteresis.

An episode starts at the first point whose score reaches `threshold`; it ends once the score has
stayed below `threshold - hysteresis` for `end_after` consecutive points. One alert per episode,
however long it lasts, is what keeps a pager quiet during a sustained incident.

The state of a series is two numbers (open, calm points), one row per series in an
`EpisodeBank`, updated for a whole batch of scores by one compiled loop, as the calibration is.

>>> bank = EpisodeBank(EpisodeConfig(threshold=0.9, end_after=2))
>>> bank.reset(0)
>>> bank.update(np.array([0]), np.array([[0.1, 0.95, 0.97, 0.2, 0.1, 0.1]])).tolist()
[[0, 1, 0, 0, 2, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

START, END = 1, 2  # EpisodeBank.update's transition codes (0: none)
KINDS = {START: "start", END: "end"}


@dataclass(frozen=True)
class EpisodeConfig:
    threshold: float = 0.9
    hysteresis: float = 0.05
    end_after: int = 10


class EpisodeBank:
    """Episode state of many series, one slot each (the caller's numbering): whether an episode
    is open, and for how many points the score has been calm."""

    def __init__(self, config: EpisodeConfig, capacity: int = 64) -> None:
        self.config = config
        self.state = np.zeros((capacity, 2), dtype=np.int32)  # [open, calm]

    def reset(self, slot: int) -> None:
        """Slot `slot` starts with no episode open (the bank grows to hold it)."""
        if slot >= len(self.state):
            grown = np.zeros((max(slot + 1, 2 * len(self.state)), 2), dtype=np.int32)
            grown[: len(self.state)] = self.state
            self.state = grown
        self.state[slot] = 0

    def close_all(self) -> None:
        self.state[:] = 0

    def update(self, slots: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Feed rows of scores [B, K] in order, row i to series slots[i] (-1: skip the row; NaN
        counts as calm). Returns int8 [B, K]: START, END or 0 per point."""
        c = self.config
        kinds = np.zeros(scores.shape, dtype=np.int8)
        _track(np.ascontiguousarray(slots, dtype=np.int64),
               np.ascontiguousarray(scores, dtype=np.float64), c.threshold,
               c.threshold - c.hysteresis, c.end_after, self.state, kinds)  # fmt: skip
        return kinds


@njit(cache=True)
def _track(slots, scores, threshold, calm_below, end_after, state, kinds):
    for i in range(scores.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(scores.shape[1]):
            score = scores[i, j]
            if state[s, 0] == 0:
                if score >= threshold:
                    state[s, 0], state[s, 1] = 1, 0
                    kinds[i, j] = START
            elif score >= calm_below:
                state[s, 1] = 0
            else:
                state[s, 1] += 1
                if state[s, 1] >= end_after:
                    state[s, 0] = 0
                    kinds[i, j] = END
