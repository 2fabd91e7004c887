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
# What each says when it is loud, for the people an alert goes to.
SIGNAL_WORDS = {
    "forecast": "off the forecast",
    "seasonal": "unusual for the time of day",
    "novelty": "a shape not seen recently",
    "range": "outside the usual range",
    "shift": "level shift",
    "spread": "change in variability",
}
# A signal "speaks" in an alert's reasons from this tail score (P 1e-3 at 10 decades) on.
LOUD = 0.3


def loudest_first(signals: dict[str, float]) -> list[str]:
    """The signals with an opinion, loudest first, ties in the order of SIGNALS.

    >>> loudest_first({"spread": 0.2, "forecast": 0.9, "seasonal": 0.9})
    ['forecast', 'seasonal', 'spread']
    """
    return sorted((k for k in SIGNALS if k in signals), key=lambda k: -signals[k])


def reasons(signals: dict[str, float], loud: float = LOUD) -> list[str]:
    """The signals at or above `loud`, loudest first (ties in the order of SIGNALS), in words;
    the loudest alone when none is (several a little surprised at once can make an anomaly).

    >>> reasons({"forecast": 0.35, "shift": 0.9, "spread": 0.1})
    ['level shift', 'off the forecast']
    >>> reasons({"seasonal": 1.0, "forecast": 1.0})
    ['off the forecast', 'unusual for the time of day']
    >>> reasons({"novelty": 0.25, "spread": 0.28}), reasons({"range": 0.0}), reasons({})
    (['change in variability'], [], [])
    """
    ranked = [k for k in loudest_first(signals) if signals[k] > 0.0]
    return [SIGNAL_WORDS[k] for k in ranked if signals[k] >= loud] or [
        SIGNAL_WORDS[k] for k in ranked[:1]
    ]


__all__ = [
    "LOUD",
    "SIGNALS",
    "SIGNAL_WORDS",
    "ForecastResidual",
    "LevelShift",
    "PatternNovelty",
    "RangeExcess",
    "SeasonalProfile",
    "SpreadShift",
    "loudest_first",
    "reasons",
]
