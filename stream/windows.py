"""Per-series sliding windows in numpy ring buffers, and the batch of windows waiting to be scored.

Series are grouped in banks by dimensionality D; a bank holds every series of that D in one
[capacity, L, D] float32 array, so a series costs one slot, not a Python object per point. Each
time a series has `stride` new points (and a full window), a snapshot of its window is copied
into the bank's pending batch; snapshots make the batch a pure function of the input order,
which keeps scores (and so event ids) deterministic however the batches are cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stream.codec import Point

ACCEPTED, DUPLICATE, OUT_OF_ORDER, DIMENSION_MISMATCH = (
    "accepted",
    "duplicate",
    "out_of_order",
    "dimension_mismatch",
)


@dataclass
class Pending:
    """Snapshots waiting to be scored: windows [n, L, D], timestamps [n, L], and who they belong to."""

    windows: np.ndarray
    ts: np.ndarray
    series: list[str] = field(default_factory=list)
    first_at: float = math.inf  # monotonic time the oldest snapshot was taken

    def __len__(self) -> int:
        return len(self.series)


@dataclass
class _Series:
    bank: int  # dimensionality D
    slot: int
    dims: tuple[str, ...]


class _Bank:
    def __init__(self, dims: int, length: int, max_batch: int, capacity: int = 64):
        self.d = dims
        self.length = length
        self.values = np.full((capacity, length, dims), np.nan, dtype=np.float32)
        self.ts = np.zeros((capacity, length), dtype=np.float64)
        self.pos = np.zeros(capacity, dtype=np.int32)  # next write index = oldest point once full
        self.filled = np.zeros(capacity, dtype=np.int32)
        self.new = np.zeros(capacity, dtype=np.int32)
        self.last_ts = np.full(capacity, -np.inf, dtype=np.float64)
        self.free: list[int] = list(range(capacity - 1, -1, -1))
        # order[p] lists ring indices oldest -> newest when the next write index is p.
        self.order = (np.arange(length)[None, :] + np.arange(length)[:, None]) % length
        self.pending = Pending(
            windows=np.empty((max_batch, length, dims), dtype=np.float32),
            ts=np.empty((max_batch, length), dtype=np.float64),
        )

    def allocate(self) -> int:
        if not self.free:
            self._grow()
        slot = self.free.pop()
        self.values[slot] = np.nan
        self.pos[slot] = self.filled[slot] = self.new[slot] = 0
        self.last_ts[slot] = -np.inf
        return slot

    def _grow(self) -> None:
        old = len(self.pos)
        new = old * 2

        def grow(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            out[:old] = a
            return out

        self.values = grow(self.values, np.nan)
        self.ts = grow(self.ts, 0.0)
        self.pos, self.filled, self.new = grow(self.pos, 0), grow(self.filled, 0), grow(self.new, 0)
        self.last_ts = grow(self.last_ts, -np.inf)
        self.free.extend(range(new - 1, old - 1, -1))


class WindowStore:
    """Sliding windows for any number of series.

    >>> store = WindowStore(length=4, stride=2, max_batch=8)
    >>> for t in range(6):
    ...     _ = store.add(Point("s", float(t), ("value",), (float(t),)), now=0.0)
    >>> [(d, len(p)) for d, p in store.pending_batches()]
    [(1, 2)]
    """

    def __init__(
        self, length: int, stride: int = 1, max_batch: int = 1024, max_series: int = 100_000
    ):
        if length < 2 or stride < 1 or max_batch < 1:
            raise ValueError("need length >= 2, stride >= 1, max_batch >= 1")
        self.length = length
        self.stride = stride
        self.max_batch = max_batch
        self.max_series = max_series
        self._banks: dict[int, _Bank] = {}
        self._series: dict[str, _Series] = {}  # insertion order = least recently seen first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, series: str) -> bool:
        return series in self._series

    def dims(self, series: str) -> tuple[str, ...]:
        return self._series[series].dims

    def add(self, p: Point, now: float) -> str:
        """Append one point. Returns ACCEPTED, DUPLICATE (same ts: the newer value replaces the
        older), OUT_OF_ORDER (older than the newest point: dropped) or DIMENSION_MISMATCH."""
        s = self._series.pop(p.series, None)
        if s is None:
            s = self._track(p)
        self._series[p.series] = s  # move to the end: most recently seen
        if s.dims != p.dims:
            values = self._align(s.dims, p)
            if values is None:
                return DIMENSION_MISMATCH
        else:
            values = p.values
        bank = self._banks[s.bank]
        slot = s.slot
        last = bank.last_ts[slot]
        if p.ts < last:
            return OUT_OF_ORDER
        if p.ts == last:
            bank.values[slot, (bank.pos[slot] - 1) % self.length] = values
            return DUPLICATE
        i = bank.pos[slot]
        bank.values[slot, i] = values
        bank.ts[slot, i] = p.ts
        bank.pos[slot] = (i + 1) % self.length
        bank.last_ts[slot] = p.ts
        if bank.filled[slot] < self.length:
            bank.filled[slot] += 1
        bank.new[slot] += 1
        if bank.filled[slot] == self.length and bank.new[slot] >= self.stride:
            self._snapshot(bank, slot, p.series, now)
        return ACCEPTED

    def _align(self, dims: tuple[str, ...], p: Point) -> tuple[float, ...] | None:
        """A point may omit dimensions (missing = NaN) but never bring new ones."""
        given = dict(zip(p.dims, p.values, strict=True))
        if not given.keys() <= set(dims):
            return None
        return tuple(given.get(d, math.nan) for d in dims)

    def _track(self, p: Point) -> _Series:
        if len(self._series) >= self.max_series:
            self._evict(max(1, self.max_series // 100))
        d = len(p.dims)
        bank = self._banks.get(d)
        if bank is None:
            bank = self._banks[d] = _Bank(d, self.length, self.max_batch)
        return _Series(d, bank.allocate(), p.dims)

    def _evict(self, n: int) -> None:
        """Forget the n least recently seen series (their slots are reused)."""
        for name in list(self._series)[:n]:
            s = self._series.pop(name)
            self._banks[s.bank].free.append(s.slot)
            self.evicted += 1

    def _snapshot(self, bank: _Bank, slot: int, series: str, now: float) -> None:
        pend = bank.pending
        n = len(pend.series)
        if n == len(
            pend.windows
        ):  # the pipeline scores in chunks of max_batch; never drop a window
            pend.windows = np.concatenate([pend.windows, np.empty_like(pend.windows)])
            pend.ts = np.concatenate([pend.ts, np.empty_like(pend.ts)])
        idx = bank.order[bank.pos[slot]]
        pend.windows[n] = bank.values[slot, idx]
        pend.ts[n] = bank.ts[slot, idx]
        pend.series.append(series)
        if n == 0:
            pend.first_at = now
        bank.new[slot] = 0

    def oldest_pending(self) -> float:
        return min((b.pending.first_at for b in self._banks.values()), default=math.inf)

    def pending_count(self) -> int:
        return sum(len(b.pending) for b in self._banks.values())

    def pending_batches(self) -> list[tuple[int, Pending]]:
        """Every non-empty pending batch, by dimensionality. The caller scores them, then calls
        `clear_pending`."""
        return [(d, b.pending) for d, b in self._banks.items() if len(b.pending)]

    def clear_pending(self, dims: int) -> None:
        pend = self._banks[dims].pending
        pend.series.clear()
        pend.first_at = math.inf

    def drop(self, series: str) -> None:
        s = self._series.pop(series, None)
        if s is not None:
            self._banks[s.bank].free.append(s.slot)
