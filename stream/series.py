"""The series table: every metric series the metrics head tracks, by name, in one place.

An entry says where the series' state lives (its slot: the row it owns in every slot-indexed
array of its dimensionality D, the window rings of stream/windows.py and the detector's tails,
signals and episodes), which partition it came from, and what its events need (the open episode,
the replay mute). The table hands out the slots (a `SlotPool` per D), keeps the series in least
recently seen order and evicts the idlest at its cap. The owners of slot-indexed arrays listen:
`on_taken` when a slot starts a new series (reset its row), `on_gone` when a series is evicted
or dropped (forget what is kept by name).

>>> table = SeriesTable(max_series=2)
>>> gone = []
>>> table.on_gone.append(lambda name, s: gone.append(name))
>>> a = table.track("a", ("value",), partition=0)
>>> b = table.track("b", ("value",), partition=1)
>>> _ = table.touch("a")  # b is now the least recently seen
>>> c = table.track("c", ("value",), partition=0)
>>> list(table), gone, c.slot == b.slot
(['a', 'c'], ['b'], True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from detector.rows import SlotPool


@dataclass(slots=True, eq=False)
class Series:
    """One tracked series."""

    dims: tuple[str, ...]  # dimension names, fixed by its first point; D = len(dims)
    slot: int  # its row in the slot-indexed arrays of D
    partition: int  # of its first accepted point: revoking the partition forgets the series
    episode_id: str = ""  # the open episode ("" when none)
    mute_until: float = -math.inf  # points up to this ts were replayed: their events were sent


class SeriesTable:
    """Name -> `Series`, least recently seen first (see the module docstring)."""

    def __init__(self, max_series: int = 100_000) -> None:
        if max_series < 1:
            raise ValueError("need max_series >= 1")
        self.max_series = max_series
        self._series: dict[str, Series] = {}  # insertion order = least recently seen first
        self._pools: dict[int, SlotPool] = {}
        self.evicted = 0
        self.on_taken: list[Callable[[Series], None]] = []
        self.on_gone: list[Callable[[str, Series], None]] = []

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, name: str) -> bool:
        return name in self._series

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def get(self, name: str) -> Series | None:
        return self._series.get(name)

    def items(self) -> Iterable[tuple[str, Series]]:
        return self._series.items()

    def track(self, name: str, dims: tuple[str, ...], partition: int) -> Series:
        """A series the table does not hold, as the most recently seen, with a slot of its D
        (the least recently seen 1% go first when the table is full)."""
        if len(self._series) >= self.max_series:
            self._evict(max(1, self.max_series // 100))
        pool = self._pools.get(len(dims))
        if pool is None:
            pool = self._pools[len(dims)] = SlotPool()
        series = self._series[name] = Series(dims, pool.take(), partition)
        for taken in self.on_taken:
            taken(series)
        return series

    def touch(self, name: str) -> Series | None:
        """The series, now the most recently seen (None when not tracked)."""
        series = self._series.pop(name, None)
        if series is not None:
            self._series[name] = series
        return series

    def touch_all(self, names: Iterable[str]) -> None:
        """Tracked series, most recently seen last, in this order."""
        known = self._series
        for name in names:
            known[name] = known.pop(name)

    def drop(self, name: str) -> None:
        """Forget a series (its slot is given back)."""
        series = self._series.pop(name, None)
        if series is not None:
            self._gone(name, series)

    def _evict(self, n: int) -> None:
        for name in list(self._series)[:n]:
            self._gone(name, self._series.pop(name))
            self.evicted += 1

    def _gone(self, name: str, series: Series) -> None:
        self._pools[len(series.dims)].give(series.slot)
        for gone in self.on_gone:
            gone(name, series)
