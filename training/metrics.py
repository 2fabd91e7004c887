"""Detection-quality metrics for labelled series: VUS-PR, AUC-PR, event F1, false alerts, UCR.

All functions take one series' test part: `labels` (0/1 per point) and `scores` (higher = more
anomalous), and are pure numpy / scikit-learn.

- VUS-PR: the volume under the range-based precision-recall surface (Paparrizos, Boniol,
  Palpanas, Tsay, Elmore, Franklin, "Volume Under the Surface", VLDB 2022), as TSB-AD computes
  it (Liu & Paparrizos, NeurIPS 2024; `TSB_AD.evaluation.metrics.get_metrics`, version "opt",
  250 thresholds): for every buffer length w in 0..L the labels get soft margins of w // 2 points
  on each side, a range-aware recall (weighted overlap times the fraction of buffered events hit)
  and precision are computed at 250 thresholds at evenly spaced ranks of the sorted scores, the
  step-wise area under that PR curve is taken, and the areas are averaged over w. L is the
  series' period estimate (`period_length`). Here the per-threshold sums are cumulative sums
  over the score order, so a 150k-point series takes well under a second.
- AUC-PR: scikit-learn's average precision on point labels.
- Event F1 without point-adjust: labelled events are maximal runs of label 1; at a threshold,
  predicted events are maximal runs of score >= threshold, each counted at its onset (first
  point), which is when a page would go out. A predicted event is true when its onset lies
  inside a labelled event; a labelled event is detected when an onset lies inside it. (Counting
  any overlap instead lets one run over the whole series, threshold = min score, reach F1 = 1.)
  At the shipped threshold the detector's alerts (episode onsets) are the onsets.
- UCR accuracy: 1 when the argmax of the score lies within 100 points of the labelled event.

>>> labels = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
>>> scores = np.array([0, 0, 0.9, 0.2, 0, 0.8, 0, 0, 0, 0.1])
>>> event_f1_at(labels, scores >= 0.5)  # events: 1 of 2 found; predicted: 1 of 2 true
(0.5, 0.5, 0.5)
>>> false_alerts_per_1k(labels, np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 1], bool))
200.0
"""

from __future__ import annotations

import numpy as np

VUS_THRESHOLDS = 250  # TSB-AD's `thre`
DEFAULT_PERIOD = 125  # TSB-AD's window when no period is found
UCR_TOLERANCE = 100


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of True in `mask`, ends inclusive.

    >>> runs(np.array([1, 1, 0, 1, 0, 0, 1], bool))
    (array([0, 3, 6]), array([1, 3, 6]))
    """
    m = np.r_[False, np.asarray(mask, dtype=bool), False]
    d = np.diff(m.astype(np.int8))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def period_length(values: np.ndarray, max_points: int = 20000) -> int:
    """Sliding-window length from the autocorrelation, as TSB-AD's `find_length_rank(rank=1)`.

    The lag (>= 3) of the highest local maximum of the autocorrelation over lags 3..403 of the
    first `max_points` values; 125 when there is none or it is outside 6..303.

    >>> t = np.arange(3000)
    >>> period_length(np.sin(2 * np.pi * t / 50))
    50
    """
    x = np.asarray(values, dtype=np.float64).ravel()[:max_points]
    x = x[np.isfinite(x)]
    base, nlags = 3, 400
    if len(x) < base + 3:
        return DEFAULT_PERIOD
    xo = x - x.mean()
    n = len(xo)
    size = 1 << int(np.ceil(np.log2(2 * n - 1)))
    f = np.fft.rfft(xo, size)
    acov = np.fft.irfft(f * np.conj(f), size)[: nlags + 1] / n
    if acov[0] <= 0:
        return DEFAULT_PERIOD
    ac = (acov / acov[0])[base:]
    inner = ac[1:-1]
    local = np.flatnonzero((inner > ac[:-2]) & (inner > ac[2:])) + 1
    if len(local) == 0:
        return DEFAULT_PERIOD
    best = int(local[np.argsort(ac[local], kind="stable")[::-1][0]])
    if best < 3 or best > 300:
        return DEFAULT_PERIOD
    return best + base


def _buffered(
    starts: np.ndarray, ends: np.ndarray, half: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Events widened by `half` points each side and merged where they meet (TSB-AD's
    `new_sequence`: only the first start and the last end are clipped to the series)."""
    apart = ends[:-1] + half < starts[1:] - half
    first = np.r_[0, np.flatnonzero(apart) + 1]
    last = np.r_[np.flatnonzero(apart), len(starts) - 1]
    lo, hi = starts[first] - half, ends[last] + half
    lo[0], hi[-1] = max(lo[0], 0), min(hi[-1], n - 1)
    return lo, hi


def vus_pr(labels: np.ndarray, scores: np.ndarray, window: int) -> float:
    """VUS-PR over buffer lengths 0..window (see the module docstring); NaN without events.

    >>> y = np.zeros(200, int); y[100:110] = 1
    >>> vus_pr(y, y.astype(float), 20)
    1.0
    >>> round(vus_pr(y, np.r_[np.zeros(98), np.ones(12), np.zeros(90)], 20), 4)  # 2 points early
    0.9631
    """
    from scipy import sparse

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    starts, ends = runs(y)
    if len(starts) == 0 or n == 0:
        return float("nan")
    window = int(window)
    p_count = float(y.sum())
    thr = np.sort(s)[::-1][np.linspace(0, n - 1, VUS_THRESHOLDS).astype(int)]
    n_pred = n - np.searchsorted(np.sort(s), thr, side="left")

    # Points a buffer can reach (the widest buffer's region), in descending score order.
    lo, hi = _buffered(starts, ends, window // 2, n)
    pts = np.concatenate([np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)])
    order = np.argsort(-s[pts], kind="stable")
    pts = pts[order]
    s_pts = s[pts]
    # Number of region points at or above each threshold.
    hits = len(pts) - np.searchsorted(s_pts[::-1], thr, side="left")
    col = np.empty(n, dtype=np.int64)
    col[pts] = np.arange(len(pts))
    in_event = y[pts]
    tp_event = np.r_[0.0, np.cumsum(in_event)][hits]  # labelled points caught

    # Margin points: offset d = 1..window//2 before a start or after an end of each event.
    half_max = window // 2
    d = np.arange(1, half_max + 1)
    cols, dists = [], []
    for a, b in zip(starts, ends, strict=True):
        after = b + d
        before = a - d
        keep_a, keep_b = after <= n - 1, before >= 0
        cols += [col[after[keep_a]], col[before[keep_b]]]
        dists += [d[keep_a], d[keep_b]]
    cols_arr = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    dist_arr = np.concatenate(dists) if dists else np.zeros(0, np.int64)
    scatter = sparse.csr_matrix(
        (np.ones(len(cols_arr)), (cols_arr, np.arange(len(cols_arr)))),
        shape=(len(pts), len(cols_arr)),
    )

    ap = np.zeros(window + 1)
    chunk = max(1, 4_000_000 // max(len(cols_arr), len(pts), 1))
    for w0 in range(0, window + 1, chunk):
        ws = np.arange(w0, min(w0 + chunk, window + 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            table = np.where(
                dist_arr[None, :] <= (ws // 2)[:, None],
                np.sqrt(np.clip(1.0 - dist_arr[None, :] / ws[:, None], 0.0, None)),
                0.0,
            )
        margin = np.asarray((scatter @ table.T).T)  # [len(ws), len(pts)] summed margins
        margin = np.where(in_event[None, :], 0.0, np.minimum(margin, 1.0))
        extra = np.c_[np.zeros(len(ws)), np.cumsum(margin, axis=1)][:, hits]  # [ws, thr]
        tp = tp_event[None, :] + extra
        recall = np.minimum(tp / (p_count + extra / 2.0), 1.0)
        precision = tp / n_pred[None, :]
        for k, w in enumerate(ws):
            blo, bhi = _buffered(starts, ends, int(w) // 2, n)
            peak = np.maximum.reduceat(np.r_[s, -np.inf], np.c_[blo, bhi + 1].ravel())[::2]
            existence = (peak[None, :] >= thr[:, None]).sum(axis=1) / len(blo)
            tpr = recall[k] * existence
            ap[w] = float(np.dot(np.diff(np.r_[0.0, tpr]), precision[k]))
    return float(ap.mean())


def auc_pr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision on point labels (NaN without a labelled point).

    >>> auc_pr(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]))
    1.0
    """
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels).astype(bool)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64)))


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def event_counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """(labelled events, detected events, predicted events, true predicted events) for a mask of
    predicted points: its maximal runs, judged by their onsets (see `alert_counts`).

    >>> event_counts(np.array([0, 1, 1, 1, 0, 1]), np.array([1, 1, 0, 1, 1, 1], bool))
    (2, 1, 2, 1)
    """
    pred = np.asarray(predicted, dtype=bool)
    return alert_counts(labels, pred & ~np.r_[False, pred[:-1]])


def event_prf(
    events: int, detected: int, predicted: int, true_pred: int
) -> tuple[float, float, float]:
    """(F1, precision, recall) from event counts (F1 NaN without labelled events)."""
    recall = detected / events if events else float("nan")
    precision = true_pred / predicted if predicted else 0.0
    return (_f1(precision, recall) if events else float("nan")), precision, recall


def event_f1_at(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(F1, precision, recall) of events for a mask of predicted points (no point-adjust)."""
    return event_prf(*event_counts(labels, predicted))


def alert_counts(labels: np.ndarray, alerts: np.ndarray) -> tuple[int, int, int, int]:
    """(labelled events, detected events, alerts, true alerts): an alert (an episode onset) is
    true when it lies inside a labelled event; an event is detected when an alert lies in it."""
    y = np.asarray(labels).astype(bool)
    a = np.asarray(alerts, dtype=bool)
    ls, le = runs(y)
    hit_cum = np.r_[0, np.cumsum(a & y)]
    detected = int(np.count_nonzero(hit_cum[le + 1] - hit_cum[ls]))
    return len(ls), detected, int(a.sum()), int((a & y).sum())


def alert_f1(labels: np.ndarray, alerts: np.ndarray) -> tuple[float, float, float]:
    """(F1, precision, recall) of events for alert onsets (see `alert_counts`).

    >>> alert_f1(np.array([0, 1, 1, 0, 1, 0]), np.array([0, 0, 1, 0, 0, 1], bool))
    (0.5, 0.5, 0.5)
    """
    return event_prf(*alert_counts(labels, alerts))


def best_event_f1(labels: np.ndarray, scores: np.ndarray, max_thresholds: int = 512) -> dict:
    """Event F1 at the best threshold, swept over each event's peak score and score quantiles
    (ties: the highest threshold).

    >>> best_event_f1(np.array([0, 1, 1, 0, 0, 1, 0]), np.array([0, .9, .4, .1, .1, .7, .6]))
    {'f1': 1.0, 'threshold': 0.7, 'precision': 1.0, 'recall': 1.0}
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    ls, le = runs(y)
    if len(ls) == 0:
        return {
            "f1": float("nan"),
            "threshold": float("nan"),
            "precision": float("nan"),
            "recall": float("nan"),
        }
    peaks = np.maximum.reduceat(np.r_[s, -np.inf], np.c_[ls, le + 1].ravel())[::2]
    cands = np.unique(np.r_[peaks, np.quantile(s, np.linspace(0, 1, max_thresholds // 2))])
    if len(cands) > max_thresholds:
        cands = np.unique(
            np.r_[peaks, cands[np.linspace(0, len(cands) - 1, max_thresholds // 2).astype(int)]]
        )
    best = (-1.0, float("nan"), 0.0, 0.0)
    for t in cands:
        f1, precision, recall = event_f1_at(y, s >= t)
        if f1 >= best[0]:  # ties: the highest threshold
            best = (f1, float(t), precision, recall)
    return {
        "f1": round(best[0], 4),
        "threshold": round(best[1], 6),
        "precision": round(best[2], 4),
        "recall": round(best[3], 4),
    }


def false_alerts_per_1k(labels: np.ndarray, alerts: np.ndarray) -> float:
    """Alert onsets outside every labelled event, per 1,000 points."""
    y = np.asarray(labels).astype(bool)
    a = np.asarray(alerts, dtype=bool)
    if len(y) == 0:
        return float("nan")
    return 1000.0 * float((a & ~y).sum()) / len(y)


def ucr_accuracy(scores: np.ndarray, begin: int, end: int) -> int:
    """1 when argmax(scores) is within UCR_TOLERANCE points of [begin, end] (test-part indices).

    >>> ucr_accuracy(np.r_[np.zeros(500), 1.0, np.zeros(10)], 550, 560)
    1
    """
    peak = int(np.argmax(np.asarray(scores)))
    return int(begin - UCR_TOLERANCE <= peak <= end + UCR_TOLERANCE)
