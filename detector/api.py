"""The contract between the stream (which builds windows) and the detector (which scores them).

The stream hands over a batch of windows from many series at once; the scorer returns a raw
anomaly error for the newest points of each window plus how much each dimension contributed.
The `Detector` (detector/detector.py) takes it from there: the error is one of its signals, each
calibrated per series (detector/calibration.py), fused into a score in 0..1 and tracked into
start/end episodes (detector/episodes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.errors import ModelLoadError

__all__ = ["TS_MAX", "TS_MIN", "ModelLoadError", "WindowScorer", "WindowScores"]

# Timestamps (epoch seconds) both heads accept: outside 1970..2100 they are almost always unit
# mistakes (ms or us since the epoch) or garbage.
TS_MIN, TS_MAX = 0.0, 4102444800.0


@dataclass(frozen=True)
class WindowScores:
    """Raw scores for a batch of B windows, each scored on its newest `n_new` points.

    errors:        float32 [B, n_new, D], each dimension's error in the series' units,
                   non-negative; larger = more anomalous. NaN where the value was missing.
    contributions: float32 [B, n_new, D]; each row sums to 1 (share of the error per dimension).
    """

    errors: np.ndarray
    contributions: np.ndarray


class WindowScorer(Protocol):
    """Scores windows of shape [B, L, D] (float32, NaN = missing value).

    The model is channel-independent, so any number of dimensions D works with one set of
    weights; `window_length` L is fixed by the model.
    """

    window_length: int
    min_points: int  # observed points before a series is scored (older slots NaN until full)
    version: str
    device: str

    def score(self, windows: np.ndarray, n_new: int) -> WindowScores: ...
