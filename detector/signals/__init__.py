"""The detector's signals: each turns a series' points into one raw surprise value per point.

A signal is a small class with its own file, paper reference and doctest, built on
`base.Signal`: it keeps its per-series state in `SlotRows` (one row per series slot, handed
out by the `Detector`), and `raw(slots, windows, times, n_new)` returns raw values [B, n_new]
(>= 0, NaN = no opinion) for the newest n_new points of each window, learning from those
points afterwards. The forecast
residual is the exception: the model computes it for the whole batch (detector/scorer.py), so
its errors arrive from the scorer and `ForecastResidual.raw(slots, errors)` only combines the
dimensions. Raw values live on each signal's own scale; a
`TailBank` (detector/calibration.py) turns each into a calibrated tail score.
"""

from detector.signals.forecast import ForecastResidual
from detector.signals.novelty import PatternNovelty
from detector.signals.range import RangeExcess
from detector.signals.seasonal import SeasonalProfile
from detector.signals.shift import LevelShift
from detector.signals.spread import SpreadShift

# The order of the detector's signal columns; "forecast" is the model's residual.
SIGNALS = ("forecast", "seasonal", "novelty", "range", "shift", "spread")

__all__ = [
    "SIGNALS",
    "ForecastResidual",
    "LevelShift",
    "PatternNovelty",
    "RangeExcess",
    "SeasonalProfile",
    "SpreadShift",
]
