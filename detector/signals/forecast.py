"""Forecast residual: the model's errors (detector/scorer.py), one raw value per point.

The model forecasts each dimension on its own (channel independence) and hands over each one's
|observed - forecast| in the series' units. One dimension's error is the raw value as it is;
several combine by the rule every signal follows (detector/signals/units.py): each in units of
its own running mean error, so a dimension that sat flat, whose every twitch is large against its
window's spread, counts by how unusual its error is for it, not by that window's spread.

>>> import numpy as np
>>> res = ForecastResidual(dims=2, long_window=100)
>>> res.reset(0)
>>> quiet = np.array([[[1.0, 100.0]]])  # [B, n_new, D]: dimension 1 is in larger units
>>> _ = [res.raw(np.array([0]), quiet) for _ in range(50)]
>>> round(float(res.raw(np.array([0]), quiet)[0, 0]), 2)  # both as usual: the geometric unit
10.0
>>> round(float(res.raw(np.array([0]), np.array([[[5.0, 100.0]]]))[0, 0]), 2)  # dim 0 at 5x
36.06
"""

from __future__ import annotations

import numpy as np

from detector.rows import SlotRows
from detector.signals.units import combine_rows


class ForecastResidual:
    def __init__(self, dims: int, long_window: int = 500, capacity: int = 64) -> None:
        self.dims, self.long_window = dims, long_window
        self.rows = SlotRows(
            capacity,
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def reset(self, slot: int) -> None:
        self.rows.reset(slot)

    def raw(self, slots: np.ndarray, errors: np.ndarray) -> np.ndarray:
        """errors [B, n_new, D] in series units (NaN: missing) -> raw values [B, n_new]; rows
        with slot -1 are skipped (NaN) and change nothing."""
        e = np.asarray(errors, dtype=np.float64)
        out = np.full(e.shape[:2], np.nan)
        r = self.rows
        combine_rows(np.ascontiguousarray(slots, np.int64), e, float(self.long_window), r.scale,
                     r.learned, out)  # fmt: skip
        return out
