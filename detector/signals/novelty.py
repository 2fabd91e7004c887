"""Pattern novelty: how far the newest subsequence lies from every similar-length stretch of the
series' own recent past (its nearest-neighbour distance, a left matrix profile).

The matrix profile (Yeh et al., "Matrix Profile I", ICDM 2016) scores a subsequence by the
distance to its nearest neighbour elsewhere in the series; a discord, a subsequence far from
everything else, is an anomaly. Streaming, only the past is known: the left matrix profile
(Zhu et al., "Matrix Profile II", ICDM 2016, its incremental variant). Memory-bank detectors
(PaAno, ICLR 2026, patches against a bank of past patch embeddings) and ARTime (novelty
against known categories, NAB 74.85) use the same idea: a repeat of something seen is not news.

Here each series keeps a ring of its last `history` points per dimension (4 KiB at 1,024
float32 points); the query is the newest `length` points with their mean removed (a level
change is the level signals' business, a changed shape or amplitude is this one's), and the
candidates are every stretch of the ring that does not overlap the query. The raw value is
the root mean square distance to the nearest candidate, in series units; several dimensions
combine as every signal's do (detector/signals/units.py).

Two searches give the same values. "loop": a compiled sliding dot product per point (history x
length multiply-adds). "matmul": every query of a batch against every stretch of its series'
ring in one batched matrix product (the form GPU matrix-profile codes take, e.g. SCAMP: Zimmerman
et al., SoCC 2019), with masks for the stretches a point may not see. The signal searches on its
scorer's device: "matmul" on a GPU, "loop" on the CPU, where it is the faster one
(benchmarks/README.md, "Novelty on CPU and GPU").

>>> import numpy as np
>>> sig = PatternNovelty(dims=1, length=4, history=64)
>>> sig.reset(0)
>>> x = np.sin(np.arange(200) * 2 * np.pi / 10)
>>> x[150:154] += [0.0, 3.0, -3.0, 0.0]  # a shape the series never had
>>> w = np.lib.stride_tricks.sliding_window_view(x, 8)[:, :, None]  # windows of 8 points
>>> raw = np.concatenate([sig.raw(np.array([0]), w[i : i + 1], None, 1) for i in range(len(w))])
>>> bool(np.nanargmax(raw[:, 0]) + 7 in range(150, 158)), round(float(np.nanmedian(raw[100:140])), 6)
(True, 0.0)
>>> mm = PatternNovelty(dims=1, length=4, history=64, search="matmul")  # the same, batched
>>> mm.reset(0)
>>> calls = [w[i : i + 4] for i in range(0, len(w), 4)]  # 4 windows of the series per call
>>> raw_mm = np.concatenate([mm.raw(np.zeros(len(c), int), c, None, 1) for c in calls])
>>> bool(np.allclose(raw_mm, raw, atol=1e-6, equal_nan=True))  # an exact repeat: 0 +- rounding
True
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detector.rows import SlotRows
from detector.signals.base import Signal
from detector.signals.units import combine_dims, combine_rows

SEARCHES = ("loop", "matmul")
# Bytes of distances (float64, history x new points per row and dimension) and candidate stretches
# per matrix product: bounds memory for large batches; a GPU wants larger products than a CPU.
BYTES_PER_PASS = {"cpu": 64 << 20, "cuda": 1 << 30}


class PatternNovelty(Signal):
    """`device`: where the scorer runs (cpu or cuda); `search`: "loop" or "matmul" (see the
    module docstring), None for the device's faster one."""

    def __init__(self, dims: int, length: int = 16, history: int = 1024, long_window: int = 500,
                 capacity: int = 64, device: str = "cpu",
                 search: str | None = None) -> None:  # fmt: skip
        if search not in (None, *SEARCHES):
            raise ValueError(f"search must be one of {list(SEARCHES)} or None, got {search!r}")
        self.dims, self.length = dims, length
        self.reach = length  # the query: the newest `length` points
        # Past points kept per dimension: the whole budget for one dimension, a quarter of it
        # (at least 4 query lengths) per dimension for wide series, so cost grows slower than D.
        self.history = max(4 * length, history // max(1, int(math.sqrt(dims))))
        self.long_window = long_window
        self.device, self.search = device, search
        # The rows stay on the host for either search, with every other signal's: a batch sends
        # the device only its rows' rings (history x D floats each), not every series' state.
        self.rows = SlotRows(
            capacity,
            ring=((self.history, dims), np.float32, np.nan),
            pos=((), np.int64, 0),  # points written so far; the next goes to pos % history
            scale=((dims if dims > 1 else 0,), np.float64, 0.0),
            learned=((), np.float64, 0.0),
        )

    def _fill(self, slots, windows, times, n_new, out) -> None:
        """Nearest-neighbour distance of the subsequence ending at each new point; then the
        ring learns those points."""
        r = self.rows
        if (self.search or ("loop" if self.device == "cpu" else "matmul")) == "loop":
            _novelty(slots, windows, n_new, self.length, float(self.long_window), r.ring, r.pos,
                     r.scale, r.learned, out)  # fmt: skip
            return
        past = np.empty((len(slots), self.history + n_new - 1, self.dims), np.float32)
        _gather_and_learn(slots, windows, n_new, r.ring, r.pos, past)
        query = windows[:, windows.shape[1] - n_new - self.length + 1 :]
        dist = nearest_distances(past, query, self.length, self.device)
        # Combining the dimensions updates per-series units point by point: the compiled loop's.
        combine_rows(slots, dist, float(self.long_window), r.scale, r.learned, out)


def nearest_distances(past: np.ndarray, query: np.ndarray, m: int, device: str) -> np.ndarray:
    """The "matmul" search: distances [B, K, D] (float64; inf where no candidate) of the K
    newest length-m subsequences of each row and dimension to their nearest candidate.

    past [B, h + K - 1, D]: row i's ring as the row finds it, oldest first (NaN where not yet
    filled), then the row's first K - 1 new points, which the ring learns before the later ones
    are scored; query [B, K + m - 1, D]: the newest K + m - 1 points of each window. New point
    k sees stretches t of `past` from k (the k oldest were evicted by then) to h + k - 2m + 1
    (the last that ends before its query begins), the loop's candidates exactly.
    """
    import torch  # only here: the loop search, and `tsguard --help`, do without loading torch
    from torch.nn.functional import pad

    b, n_past, dims = past.shape
    k = query.shape[1] - m + 1
    h, n = n_past - k + 1, n_past - m + 1  # ring length, stretches of past
    out = np.empty((b, k, dims))
    rows = max(1, BYTES_PER_PASS[torch.device(device).type] // (8 * dims * n * (m + 2 * k)))
    with torch.inference_mode():
        t = torch.arange(n, device=device)
        kk = torch.arange(k, device=device)[:, None]
        seen = (t >= kk) & (t <= h + kk - 2 * m + 1)  # [K, n]
        for lo in range(0, b, rows):
            hi = min(b, lo + rows)
            x = torch.from_numpy(past[lo:hi]).to(device).double()
            x = x.transpose(1, 2).reshape(-1, n_past)  # [R*D, h + K - 1]
            ok = torch.isfinite(x)
            # Centred on the row's mean: the variances keep their digits at any level.
            n_ok = ok.sum(1, keepdim=True).clamp(min=1)
            centre = torch.where(ok, x, 0.0).sum(1, keepdim=True) / n_ok
            x = torch.where(ok, x - centre, 0.0)
            sums = [pad(v.cumsum(1), (1, 0)) for v in (x, x * x, (~ok).double())]
            s1, s2, missing = (c[:, m:] - c[:, :-m] for c in sums)  # [R*D, n] per stretch
            var = s2 - s1 * s1 / m
            q = torch.from_numpy(np.array(query[lo:hi])).to(device).double()  # a writable copy
            q = q.transpose(1, 2).reshape(-1, k + m - 1).unfold(1, m, 1)  # [R*D, K, m]
            q_ok = torch.isfinite(q).all(-1)
            q = torch.where(q_ok[..., None], q - q.mean(-1, keepdim=True), 0.0)
            stretches = x.unfold(1, m, 1).transpose(1, 2)  # [R*D, m, n], a view
            dot = torch.bmm(q, stretches)  # [R*D, K, n]: the one product
            d2 = (q * q).sum(-1)[..., None] + var[:, None, :] - 2.0 * dot
            valid = seen[None] & (missing == 0)[:, None, :] & q_ok[..., None]
            best = torch.where(valid, d2, math.inf).amin(-1)  # [R*D, K]
            dist = (best.clamp(min=0.0) / m).sqrt().reshape(hi - lo, dims, k).transpose(1, 2)
            out[lo:hi] = dist.cpu().numpy()
    return out


@njit(cache=True)
def _novelty(slots, windows, n_new, m, long_window, ring, pos, scale, learned, out):
    length, dims = windows.shape[1], windows.shape[2]
    h = ring.shape[1]
    chron = np.empty(h, dtype=np.float64)  # one dimension's ring, oldest first, NaN -> 0
    p1 = np.empty(h + 1, dtype=np.float64)  # prefix sums of chron and chron^2, NaN counts
    p2 = np.empty(h + 1, dtype=np.float64)
    p0 = np.empty(h + 1, dtype=np.int64)
    q = np.empty(m, dtype=np.float64)
    answered = np.empty(dims, dtype=np.int64)
    dist = np.empty(dims, dtype=np.float64)
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        for j in range(length - n_new, length):
            n_answered = 0
            filled = min(pos[s], h)
            start = pos[s] - filled  # the oldest point still in the ring
            for d in range(dims):
                ok = True
                qm = 0.0
                for k in range(m):
                    v = windows[i, j - m + 1 + k, d]
                    if not math.isfinite(v):
                        ok = False
                        break
                    q[k] = v
                    qm += v
                n_cand = filled - 2 * m + 2  # stretches that end before the query begins
                if not ok or n_cand <= 0:
                    continue
                qm /= m
                qn = 0.0
                for k in range(m):
                    q[k] -= qm
                    qn += q[k] * q[k]
                p1[0], p2[0], p0[0] = 0.0, 0.0, 0
                for c in range(filled):
                    v = ring[s, (start + c) % h, d]
                    bad = not math.isfinite(v)
                    chron[c] = 0.0 if bad else v
                    p1[c + 1] = p1[c] + chron[c]
                    p2[c + 1] = p2[c] + chron[c] * chron[c]
                    p0[c + 1] = p0[c] + (1 if bad else 0)
                best = math.inf
                for c in range(n_cand):
                    if p0[c + m] - p0[c] > 0:
                        continue
                    s1 = p1[c + m] - p1[c]
                    var = (p2[c + m] - p2[c]) - s1 * s1 / m
                    dot = 0.0
                    for k in range(m):
                        dot += q[k] * chron[c + k]
                    d2 = qn + var - 2.0 * dot
                    if d2 < best:
                        best = d2
                if best < math.inf:
                    answered[n_answered] = d
                    dist[n_answered] = math.sqrt(max(best, 0.0) / m)
                    n_answered += 1
            out[i, j - (length - n_new)] = combine_dims(
                answered, dist, n_answered, scale[s], learned, s, long_window
            )
            _learn(ring, pos, s, windows[i, j])


@njit(cache=True)
def _learn(ring, pos, s, point):
    """Series s's ring learns one point (every dimension)."""
    ring[s, pos[s] % ring.shape[1]] = point
    pos[s] += 1


@njit(cache=True)
def _gather_and_learn(slots, windows, n_new, ring, pos, past):
    """past[i] <- nearest_distances' `past` of row i; then the ring learns the row's new
    points, in row order, so a series' later rows find its earlier rows' points (NaN rows for
    slot -1)."""
    length = windows.shape[1]
    h = ring.shape[1]
    for i in range(windows.shape[0]):
        s = slots[i]
        if s < 0:
            past[i] = np.nan
            continue
        oldest = pos[s] % h
        past[i, : h - oldest] = ring[s, oldest:]
        past[i, h - oldest : h] = ring[s, :oldest]
        for k in range(n_new - 1):
            past[i, h + k] = windows[i, length - n_new + k]
        for j in range(length - n_new, length):
            _learn(ring, pos, s, windows[i, j])
