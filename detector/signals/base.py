"""What every signal shares: its per-series rows, their reset, and the shape of `raw`."""

from __future__ import annotations

import numpy as np

from detector.rows import SlotRows


class Signal:
    """A signal keeps `rows` (one per series slot) and fills raw values for a batch in `_fill`,
    a compiled loop that also learns the points it scored."""

    rows: SlotRows
    reach: int = 1  # points of the window each new point's value reads (itself and earlier ones)

    def reset(self, slot: int) -> None:
        self.rows.reset(slot)

    def raw(self, slots: np.ndarray, windows: np.ndarray, times, n_new: int) -> np.ndarray:
        """Raw values [B, n_new] (>= 0, NaN = no opinion) of the newest n_new points of windows
        [B, L, D] at times [B, L] (UTC seconds; None for signals that do not read them); rows
        with slot -1 are skipped (NaN) and change nothing."""
        w = np.asarray(windows)
        if w.shape[1] < self.reach + n_new - 1:
            raise ValueError(
                f"windows of {w.shape[1]} points are too short for {type(self).__name__}, "
                f"which reads {self.reach} points back from each of the newest {n_new}"
            )
        out = np.full((w.shape[0], n_new), np.nan)
        if w.shape[0]:
            self._fill(np.ascontiguousarray(slots, np.int64), w, times, n_new, out)
        return out

    def _fill(self, slots: np.ndarray, windows: np.ndarray, times, n_new: int,
              out: np.ndarray) -> None:  # fmt: skip
        raise NotImplementedError
