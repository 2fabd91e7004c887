"""Per-series sliding windows in numpy ring buffers, and the batch of windows waiting to be scored.

Series are grouped in banks by dimensionality D; a bank holds every series of that D in one
[capacity, L, D] float32 array, a row per slot of the series table (stream/series.py), so a
series costs one slot, not a Python object per point. Each time a series has `stride` new points
(and a full window), a snapshot of its window is copied into the bank's pending batch; snapshots
make the batch a pure function of the input order, which keeps scores (and so event ids)
deterministic however the batches are cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detector.rows import SlotRows
from stream.codec import UNIVARIATE, Point, PointColumns
from stream.series import Series, SeriesTable

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
class BatchResult:
    """What `WindowStore.add_batch` did with a batch of points, in the terms a head reports."""

    accepted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # DUPLICATE / OUT_OF_ORDER -> points
    mismatched: dict[int, int] = field(default_factory=dict)  # message -> points with new dims
    touched: set[str] = field(default_factory=set)  # series with an accepted point

    def count(self, status: str, series: str, message: int) -> None:
        if status is ACCEPTED:
            self.accepted += 1
            self.touched.add(series)
        elif status is DIMENSION_MISMATCH:
            self.mismatched[message] = self.mismatched.get(message, 0) + 1
        else:
            self.skipped[status] = self.skipped.get(status, 0) + 1


class _Bank(SlotRows):
    """The window rings of every series of one dimensionality, a row per slot."""

    def __init__(self, dims: int, length: int, max_batch: int, capacity: int = 64):
        super().__init__(
            capacity,
            values=((length, dims), np.float32, np.nan),
            # Not yet written = missing, in a partial window too.
            ts=((length,), np.float64, np.nan),
            pos=((), np.int32, 0),  # next write index = oldest point once full
            filled=((), np.int32, 0),
            new=((), np.int32, 0),
            last_ts=((), np.float64, -np.inf),
        )
        self.d = dims
        # order[p] lists ring indices oldest -> newest when the next write index is p.
        self.order = (np.arange(length)[None, :] + np.arange(length)[:, None]) % length
        self.pending = Pending(
            windows=np.empty((max_batch, length, dims), dtype=np.float32),
            ts=np.empty((max_batch, length), dtype=np.float64),
        )


class WindowStore:
    """Sliding windows for any number of series.

    >>> store = WindowStore(length=4, stride=2, max_batch=8)
    >>> for t in range(6):
    ...     _ = store.add(Point("s", float(t), ("value",), (float(t),)), now=0.0)
    >>> [(d, len(p)) for d, p in store.pending_batches()]
    [(1, 2)]
    """

    # Runs shorter than this take the per-point path: the vectorised one's fixed cost (a few
    # dozen numpy calls) is more than a live poll's dozen records cost point by point
    # (benchmarks/README.md, "Where the time goes").
    min_vector_run = 32

    def __init__(
        self,
        length: int,
        stride: int = 1,
        max_batch: int = 1024,
        max_series: int = 100_000,
        min_points: int | None = None,
        series: SeriesTable | None = None,
    ):
        if length < 2 or stride < 1 or max_batch < 1:
            raise ValueError("need length >= 2, stride >= 1, max_batch >= 1")
        self.length = length
        self.stride = stride
        # A series' first window is taken once it has min_points points (default: a full
        # window); until the ring is full, its older slots are NaN values with NaN timestamps.
        self.min_points = length if min_points is None else max(1, min(min_points, length))
        self.max_batch = max_batch
        # The series table hands out the slots (max_series applies to a table made here).
        self.series = series if series is not None else SeriesTable(max_series)
        self.series.on_taken.append(self._taken)
        self._banks: dict[int, _Bank] = {}

    def __len__(self) -> int:
        return len(self.series)

    def __contains__(self, series: str) -> bool:
        return series in self.series

    def last_ts(self, series: str) -> float:
        """Timestamp of the newest point of a tracked series."""
        s = self.series.get(series)
        return float(self._banks[len(s.dims)].last_ts[s.slot])

    def _taken(self, s: Series) -> None:
        d = len(s.dims)
        bank = self._banks.get(d)
        if bank is None:
            bank = self._banks[d] = _Bank(d, self.length, self.max_batch)
        bank.reset(s.slot)

    def add(self, p: Point, now: float, partition: int = 0) -> str:
        """Append one point (of a record from `partition`). Returns ACCEPTED, DUPLICATE (same
        ts: the newer value replaces the older), OUT_OF_ORDER (older than the newest point:
        dropped) or DIMENSION_MISMATCH."""
        s = self.series.touch(p.series)  # now the most recently seen
        if s is None:
            s = self.series.track(p.series, p.dims, partition)
        if s.dims != p.dims:
            values = self._align(s.dims, p)
            if values is None:
                return DIMENSION_MISMATCH
        else:
            values = p.values
        bank = self._banks[len(s.dims)]
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
        if bank.filled[slot] >= self.min_points and bank.new[slot] >= self.stride:
            self._snapshot(bank, slot, p.series, now)
        return ACCEPTED

    def add_batch(
        self, cols: PointColumns, now: float, partitions: Sequence[int] | None = None
    ) -> BatchResult:
        """Append many points at once: exactly what `add` on each row in order would do (same
        windows, timestamps, pending order and evictions), without a Python object per point.
        `partitions[m]` is the partition of message m (a new series is tracked there).

        Runs of univariate points go through numpy in one go when they are in order for their
        series (each point newer than the one before) and need no eviction: the steady state of
        a live stream. Anything else (a multivariate point, a duplicate or late point, a store at
        its series cap) takes the per-point path for that run.
        """
        res = BatchResult()
        part = partitions if partitions is not None else _Zeros()
        start = 0
        for row in sorted(cols.multi):
            if start < row:
                self._add_run(cols, start, row, now, part, res)
            p, m = cols.multi[row], int(cols.message[row])
            res.count(self.add(p, now, part[m]), p.series, m)
            start = row + 1
        if start < len(cols):
            self._add_run(cols, start, len(cols), now, part, res)
        return res

    def _add_run(self, cols: PointColumns, a: int, b: int, now: float, part: Sequence[int],
                 res: BatchResult) -> None:  # fmt: skip
        if b - a < self.min_vector_run or not self._add_vectorised(cols, a, b, now, part, res):
            message = cols.message
            for row in range(a, b):
                p, m = cols.point(row), int(message[row])
                res.count(self.add(p, now, part[m]), p.series, m)

    def _add_vectorised(self, cols: PointColumns, a: int, b: int, now: float,
                        part: Sequence[int], res: BatchResult) -> bool:  # fmt: skip
        """Rows a..b of univariate points in one numpy pass; False (nothing changed) when the
        run needs the per-point path."""
        names = cols.series[a:b]
        table = self.series
        lookup = table.get
        length, stride = self.length, self.stride
        first = dict.fromkeys(names)  # unique series, first-seen order
        new = [name for name in first if name not in table]
        new_set = set(new)
        if len(table) + len(new) > table.max_series:
            return False  # evictions would interleave with the run: keep add()'s exact order
        for name in first:
            s = lookup(name)
            if s is not None and s.dims != UNIVARIATE:
                return False  # a "value" point for a multivariate series: add() aligns it
        # Group the rows by series (stable sort: arrival order within a series). New series get
        # negative keys for now; their slots are allocated only once the run is known to fit.
        key_of = {name: (lookup(name).slot if name not in new_set else -1 - k)
                  for k, name in enumerate(first)}  # fmt: skip
        keys = np.fromiter(map(key_of.__getitem__, names), np.int64, b - a)
        order = np.argsort(keys, kind="stable")
        k_sorted = keys[order]
        t_sorted = cols.ts[a:b][order]
        head = np.empty(len(order), dtype=bool)
        head[0] = True
        np.not_equal(k_sorted[1:], k_sorted[:-1], out=head[1:])
        starts = np.flatnonzero(head)
        bank = self._banks.get(1)
        prev = np.empty_like(t_sorted)
        prev[1:] = t_sorted[:-1]
        head_keys = k_sorted[starts]
        prev[starts] = -np.inf
        if bank is not None:
            old = head_keys >= 0
            prev[starts[old]] = bank.last_ts[head_keys[old]]
        if not np.all(t_sorted > prev):
            return False  # a duplicate or late point: add() decides row by row

        if new:
            first_rows = order[starts].tolist()  # each series' first row in the run
            first_names = [names[i] for i in first_rows]
            message = dict(zip(first_names, cols.message[a:b][first_rows].tolist(), strict=True))
            for name in new:  # first-seen order, the slots add() would give them
                table.track(name, UNIVARIATE, part[message[name]])
            gslot = np.array([lookup(name).slot for name in first_names], dtype=np.int64)
        else:
            gslot = head_keys
        bank = self._banks[1]
        # Least recently seen first: the run's series move to the end, by their last point.
        table.touch_all(reversed(dict.fromkeys(reversed(names))))

        v_sorted = cols.value[a:b][order]
        n = len(order)
        counts = np.diff(np.append(starts, n))
        gid = np.repeat(np.arange(len(starts)), counts)
        rank = np.arange(n) - starts[gid]
        s_sorted = gslot[gid]
        pos0 = bank.pos[gslot].astype(np.int64)
        filled0 = bank.filled[gslot].astype(np.int64)
        new0 = bank.new[gslot].astype(np.int64)
        # A series snapshots at the first point where its window has min_points points and
        # `stride` points are new, then every `stride` points (see add()).
        r1 = np.maximum(np.maximum(self.min_points - filled0 - 1, stride - new0 - 1), 0)
        since = rank - r1[gid]
        snap = np.flatnonzero((since >= 0) & (since % stride == 0))
        if len(snap):
            snap = snap[np.argsort(order[snap], kind="stable")]  # pending keeps arrival order
            if len(starts) == n:
                windows, wts = self._one_point_windows(bank, gslot[gid[snap]], pos0[gid[snap]],
                                                       v_sorted[snap], t_sorted[snap])  # fmt: skip
            else:
                windows, wts = self._run_windows(bank, starts, pos0, gslot, gid, rank, snap,
                                                 v_sorted, t_sorted)  # fmt: skip
            self._append_pending(bank, windows[:, :, None], wts, names, order[snap], now)
        # Write the newest L points of each series into its ring.
        keep = rank >= (counts - length)[gid]
        ring = (pos0[gid] + rank) % length
        bank.values[s_sorted[keep], ring[keep], 0] = v_sorted[keep]
        bank.ts[s_sorted[keep], ring[keep]] = t_sorted[keep]
        bank.pos[gslot] = (pos0 + counts) % length
        bank.filled[gslot] = np.minimum(filled0 + counts, length)
        bank.last_ts[gslot] = t_sorted[starts + counts - 1]
        last_r = counts - 1
        n_snaps = np.where(last_r >= r1, (last_r - r1) // stride + 1, 0)
        bank.new[gslot] = np.where(
            n_snaps > 0, last_r - (r1 + (n_snaps - 1) * stride), new0 + counts
        )

        res.accepted += n
        res.touched.update(first)
        return True

    def _one_point_windows(
        self, bank: _Bank, slots: np.ndarray, pos: np.ndarray, values: np.ndarray, ts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows [k, L] (values, timestamps) of series that get one new point each (a live
        stream's poll): the ring's newest L - 1 points, then the new one, gathered from the rings
        directly, which is cheaper than the general layout's copy of every ring whole."""
        older = bank.order[pos][:, 1:]  # ring indices, oldest first, without the oldest point
        windows = np.empty((len(slots), self.length), dtype=np.float32)
        wts = np.empty((len(slots), self.length), dtype=np.float64)
        windows[:, :-1] = bank.values[slots[:, None], older, 0]
        windows[:, -1] = values
        wts[:, :-1] = bank.ts[slots[:, None], older]
        wts[:, -1] = ts
        return windows, wts

    def _run_windows(
        self, bank: _Bank, starts: np.ndarray, pos0: np.ndarray, gslot: np.ndarray,
        gid: np.ndarray, rank: np.ndarray, snap: np.ndarray, v_sorted: np.ndarray,
        t_sorted: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Windows [k, L] of the snapshot rows `snap` of a run grouped by series (several points
        per series). Per series, lay out its ring (oldest first) followed by the run's points,
        all series end to end; the window of the point at rank r of a series is then the L
        values after position r of its segment: one row of a sliding view, no per-window index
        arithmetic."""
        length, n = self.length, len(gid)
        seg = starts + np.arange(len(starts)) * length  # segment starts: rings + points
        total = n + len(starts) * length
        ring_at = (seg[:, None] + np.arange(length)).ravel()
        ring_idx = (pos0[:, None] + np.arange(length)) % length
        flat_v = np.empty(total, dtype=np.float32)
        flat_t = np.empty(total, dtype=np.float64)
        flat_v[ring_at] = bank.values[gslot[:, None], ring_idx, 0].ravel()
        flat_t[ring_at] = bank.ts[gslot[:, None], ring_idx].ravel()
        new_at = seg[gid] + length + rank
        flat_v[new_at] = v_sorted
        flat_t[new_at] = t_sorted
        win_at = seg[gid[snap]] + rank[snap] + 1
        windows = sliding_window_view(flat_v, length)[win_at]
        return windows, sliding_window_view(flat_t, length)[win_at]

    def _append_pending(
        self,
        bank: _Bank,
        windows: np.ndarray,
        ts: np.ndarray,
        names: list[str],
        rows: np.ndarray,
        now: float,
    ) -> None:
        pend = bank.pending
        n0, k = len(pend.series), len(rows)
        while n0 + k > len(pend.windows):  # never drop a window (see _snapshot)
            pend.windows = np.concatenate([pend.windows, np.empty_like(pend.windows)])
            pend.ts = np.concatenate([pend.ts, np.empty_like(pend.ts)])
        pend.windows[n0 : n0 + k] = windows
        pend.ts[n0 : n0 + k] = ts
        pend.series.extend([names[i] for i in rows.tolist()])
        if n0 == 0:
            pend.first_at = now

    def _align(self, dims: tuple[str, ...], p: Point) -> tuple[float, ...] | None:
        """A point may omit dimensions (missing = NaN) but never bring new ones."""
        given = dict(zip(p.dims, p.values, strict=True))
        if not given.keys() <= set(dims):
            return None
        return tuple(given.get(d, math.nan) for d in dims)

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

    def keep_pending(self, keep: Callable[[str], bool]) -> None:
        """Drop the snapshots waiting to be scored whose series fails `keep` (its state is gone,
        or about to be rebuilt), keeping the order of the others."""
        for bank in self._banks.values():
            pend = bank.pending
            rows = [i for i, name in enumerate(pend.series) if keep(name)]
            if len(rows) == len(pend):
                continue
            n = len(rows)
            pend.windows[:n] = pend.windows[rows]
            pend.ts[:n] = pend.ts[rows]
            pend.series[:] = [pend.series[i] for i in rows]
            if n == 0:
                pend.first_at = math.inf


class _Zeros:
    """Partition 0 for every message (a store fed without partitions)."""

    def __getitem__(self, message: int) -> int:
        return 0
