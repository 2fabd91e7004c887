"""Anomaly episodes: turn a per-point score in 0..1 into start/end transitions with hysteresis.

An episode starts at the first point whose score reaches `threshold`; it ends once the score has
stayed below `threshold - hysteresis` for `end_after` consecutive points. One alert per episode,
however long it lasts, is what keeps a pager quiet during a sustained incident.

>>> t = EpisodeTracker(EpisodeConfig(threshold=0.9, end_after=2))
>>> [t.update(s) for s in [0.1, 0.95, 0.97, 0.2, 0.1, 0.1]]
[None, 'start', None, None, 'end', None]
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpisodeConfig:
    threshold: float = 0.9
    hysteresis: float = 0.05
    end_after: int = 10


class EpisodeTracker:
    __slots__ = ("config", "open", "calm", "started_ts")

    def __init__(self, config: EpisodeConfig):
        self.config = config
        self.open = False
        self.calm = 0
        self.started_ts = 0.0

    def update(self, score: float, ts: float = 0.0) -> str | None:
        """Feed one score (NaN counts as calm). Returns 'start', 'end' or None."""
        c = self.config
        if not self.open:
            if score >= c.threshold:
                self.open, self.calm, self.started_ts = True, 0, ts
                return "start"
            return None
        if score >= c.threshold - c.hysteresis:
            self.calm = 0
            return None
        self.calm += 1
        if self.calm >= c.end_after:
            self.open = False
            return "end"
        return None
