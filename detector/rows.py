"""Per-series state as a struct of numpy arrays, one row per slot.

Every bank of per-series state (window rings, calibration tails, signals, episodes) keeps its
rows here, so growing, resetting and measuring them is written once. Slots are handed out by one
`SlotPool` per dimensionality (the stream's series table, stream/series.py); a bank only grows to
hold the slot it is given, and resets the row when the slot is taken.

>>> rows = SlotRows(2, level=((3,), np.float64, 0.0), seen=((), np.int32, 0))
>>> rows.reset(5)  # grows to hold slot 5
>>> rows.level.shape, rows.bytes_per_row
((6, 3), 28)
"""

from __future__ import annotations

import numpy as np


class SlotRows:
    """Named arrays, each [capacity, *shape], with an initial value a reset writes."""

    def __init__(self, capacity: int, **fields: tuple[tuple[int, ...], type, float]) -> None:
        self._init = {name: init for name, (_, _, init) in fields.items()}
        for name, (shape, dtype, _) in fields.items():
            setattr(self, name, np.empty((capacity, *shape), dtype=dtype))
        self._capacity = capacity
        self._rows()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def bytes_per_row(self) -> int:
        return sum(getattr(self, name)[0].nbytes for name in self._init)

    def reset(self, slot: int) -> None:
        """Slot `slot` starts afresh (the arrays grow by doubling to hold it)."""
        if slot >= self._capacity:
            self._grow(max(slot + 1, 2 * self._capacity))
        for array, init in self._resets:
            array[slot] = init

    def reset_field(self, name: str) -> None:
        """Every row's `name` back to its initial value (e.g. forget one signal's tail)."""
        getattr(self, name)[...] = self._init[name]

    def _grow(self, capacity: int) -> None:
        for name in self._init:
            a = getattr(self, name)
            # Unwritten rows cost address space, not resident memory (reset() fills a row).
            grown = np.empty((capacity, *a.shape[1:]), dtype=a.dtype)
            grown[: self._capacity] = a
            setattr(self, name, grown)
        self._capacity = capacity
        self._rows()

    def _rows(self) -> None:
        # A series' first point resets its rows (a slot taken at the cap's churn, per point).
        self._resets = [(getattr(self, name), init) for name, init in self._init.items()]


class SlotPool:
    """Slot numbers of one bank: slots given back are taken again first, so rows stay dense.

    >>> pool = SlotPool()
    >>> [pool.take(), pool.take(), pool.take()]
    [0, 1, 2]
    >>> pool.give(1)
    >>> pool.take(), pool.taken
    (1, 3)
    """

    def __init__(self) -> None:
        self.free: list[int] = []
        self.high = 0  # slots from here on were never taken

    @property
    def taken(self) -> int:
        return self.high - len(self.free)

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        self.high += 1
        return self.high - 1

    def give(self, slot: int) -> None:
        self.free.append(slot)
