"""The Numenta Anomaly Benchmark (NAB v1.1) scorer, written from its published definition.

References: A. Lavin, S. Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta
Anomaly Benchmark", ICMLA 2015, and the NAB whitepaper / scoring documentation.

How a detector is scored, per data file:
- Each labelled anomaly gets a window (labels/combined_windows.json). The first 15% of a file
  (at most 750 points) is a probationary period: its points are not scored at all, and a window
  whose points all fall inside it does not count.
- The anomaly scores are thresholded; every point at or above the threshold is a detection.
- A window with at least one detection earns the weight of its earliest detection:
  tp_weight * S(p) / S(-1), where S(p) = 2 / (1 + exp(5p)) - 1 is the scaled sigmoid and p in
  [-1, 0) is the detection's position relative to the window's right edge (p = -1 at the left
  edge, so the earliest possible detection earns exactly tp_weight). Later detections in the
  same window add nothing.
- A window without a detection costs -fn_weight.
- Every detection outside a window costs fp_weight * S(p), p = distance past the end of the
  preceding window in units of (that window's width - 1); S goes from 0 just after a window to
  -1 far from it (p >= 3 -> exactly -1). A detection before the file's first window costs -fp_weight.

The threshold is chosen once per profile for the whole corpus (the value that maximises the
corpus total), and the total is normalised so that the null detector (never detects) scores 0
and the perfect detector (exactly one detection at the start of every window) scores 100:

    normalised = 100 * (raw - null) / (perfect - null),
    null = -fn_weight * (number of scored windows),  perfect = tp_weight * (number of windows).

The whole threshold sweep is one sort plus cumulative sums over every scored point of the corpus,
so scoring the full corpus (about 370k points, three profiles) takes a second or two. It tries
every distinct score as a threshold, so it can find a slightly better threshold than the one NAB
published (numenta, reward_low_FP_rate: 63.21 here vs 63.12 published); at NAB's published
thresholds the scores agree to 1e-4.

>>> import numpy as np
>>> ts = np.arange(100).astype("datetime64[m]")
>>> f = label_file("demo.csv", ts, [(ts[40], ts[49])])
>>> perfect = np.zeros(100); perfect[40] = 1.0
>>> round(score_corpus({"demo.csv": perfect}, [f], PROFILES["standard"]).normalised, 6)
100.0
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import UserError

PROBATION_FRACTION = 0.15
PROBATION_MAX_POINTS = 750  # 15% of 5000: long files do not get a longer learning period
# A "threshold" above every anomaly score in 0..1: nothing is detected (the null detector's row).
NO_DETECTION_THRESHOLD = 1.1


@dataclass(frozen=True)
class CostProfile:
    """One NAB application profile: the weights of true positives, false positives and misses."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


# NAB v1.1 config/profiles.json, used when a corpus directory has no config/profiles.json.
PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": CostProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}
PROFILE_NAMES = tuple(PROFILES)


def probationary_length(n_points: int) -> int:
    """Number of leading points of a file that NAB does not score (and detectors may learn from)."""
    return int(min(math.floor(PROBATION_FRACTION * n_points), PROBATION_MAX_POINTS))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's S(p) = 2 / (1 + exp(5p)) - 1, clamped to -1 for p >= 3 (far past a window)."""
    p = np.asarray(position, dtype=np.float64)
    # 2*sigmoid(-5p) - 1 == -tanh(2.5p); tanh avoids the overflow warning of exp for large p.
    return np.where(p >= 3.0, -1.0, -np.tanh(2.5 * p))


# ----------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class LabelledFile:
    """One data file's labels, reduced to what scoring needs (independent of the cost profile).

    name:       path relative to the corpus data/ directory, e.g. "realKnownCause/nyc_taxi.csv"
    n_points:   number of rows
    windows:    (first, last) row index of each anomaly window, inclusive, in time order
    window_of:  int [n]: the index into `windows` of the window a point lies in, -1 outside any
                window, -2 for points of the probationary period (never scored)
    tp_credit:  float [n]: S(p)/S(-1) for points inside a window (credit of a detection there)
    fp_cost:    float [n]: S(p) (<= 0) for points outside windows (multiplied by fp_weight)
    """

    name: str
    n_points: int
    windows: tuple[tuple[int, int], ...]
    window_of: np.ndarray
    tp_credit: np.ndarray
    fp_cost: np.ndarray

    @property
    def probation(self) -> int:
        return probationary_length(self.n_points)

    def label_mask(self) -> np.ndarray:
        """bool [n]: True for points inside an anomaly window (the NAB result file's label)."""
        mask = np.zeros(self.n_points, dtype=bool)
        for first, last in self.windows:
            mask[first : last + 1] = True
        return mask


def _window_indices(ts: np.ndarray, start, end, name: str) -> tuple[int, int]:
    """Row indices of a window's first and last point.

    NAB matches window edges to data timestamps exactly (first occurrence; a few NAB files repeat
    an hour, so timestamps are not always increasing). Edges that fall between data points are
    widened to the rows inside [start, end].
    """
    start, end = np.datetime64(start, "ns"), np.datetime64(end, "ns")
    exact_lo, exact_hi = np.flatnonzero(ts == start), np.flatnonzero(ts == end)
    lo = (
        int(exact_lo[0])
        if exact_lo.size
        else int(np.argmax(ts >= start))
        if (ts >= start).any()
        else -1
    )
    if lo < 0:
        raise UserError(f"{name}: anomaly window {start} .. {end} contains no data point")
    if exact_hi.size and exact_hi[exact_hi >= lo].size:
        hi = int(exact_hi[exact_hi >= lo][0])
    else:
        inside = np.flatnonzero(ts[lo:] <= end)
        hi = lo + int(inside[-1]) if inside.size else -1
    if hi < lo:
        raise UserError(f"{name}: anomaly window {start} .. {end} contains no data point")
    return lo, hi


def label_file(name: str, timestamps: np.ndarray, windows: list[tuple]) -> LabelledFile:
    """Build the scoring geometry of one file from its timestamps and (start, end) window times.

    A window covers the rows from the one stamped `start` to the one stamped `end`.
    """
    n = len(timestamps)
    if n == 0:
        raise UserError(f"{name}: no data points")
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    bounds = sorted(_window_indices(ts, s, e, name) for s, e in windows)
    for (_, prev_last), (first, _) in zip(bounds, bounds[1:], strict=False):
        if first <= prev_last:
            raise UserError(f"{name}: anomaly windows overlap")

    idx = np.arange(n)
    window_of = np.full(n, -1, dtype=np.int64)
    tp_credit = np.zeros(n)
    fp_cost = np.full(n, -1.0)  # before the first window: a full -1 (times fp_weight)
    max_tp = float(scaled_sigmoid(-1.0))
    for k, (first, last) in enumerate(bounds):
        width = last - first + 1
        inside = slice(first, last + 1)
        window_of[inside] = k
        # -1 at the left edge, -1/width at the right edge (NAB counts the edge point itself).
        tp_credit[inside] = scaled_sigmoid(-(last - idx[inside] + 1) / width) / max_tp
        fp_cost[inside] = 0.0
        nxt = bounds[k + 1][0] if k + 1 < len(bounds) else n
        after = slice(last + 1, nxt)
        if width > 1:
            fp_cost[after] = scaled_sigmoid((idx[after] - last) / (width - 1))
        else:
            # A one-point window has no scale to measure distance by; treat every later point as
            # far away (a full false positive).
            fp_cost[after] = -1.0
    window_of[: probationary_length(n)] = -2
    return LabelledFile(name, n, tuple(bounds), window_of, tp_credit, fp_cost)


# ----------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ProfileResult:
    """The corpus result of one detector under one cost profile."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    normalised: float
    per_file: dict[str, float] = field(default_factory=dict)  # raw score of each file

    def to_dict(self) -> dict:
        return {
            "score": self.normalised,
            "threshold": self.threshold,
            "raw": self.raw,
            "null": self.null,
            "perfect": self.perfect,
        }


def _point_weights(files: list[LabelledFile], profile: CostProfile) -> tuple[np.ndarray, ...]:
    """Concatenate the scored points of all files: (weight, global window id or -1, file index)."""
    weights, wids, fidx = [], [], []
    offset = 0
    for i, f in enumerate(files):
        scored = f.window_of != -2
        w_of = f.window_of[scored]
        inside = w_of >= 0
        weights.append(
            np.where(
                inside,
                f.tp_credit[scored] * profile.tp_weight,
                f.fp_cost[scored] * profile.fp_weight,
            )
        )
        wids.append(np.where(inside, w_of + offset, -1))
        fidx.append(np.full(len(w_of), i))
        offset += len(f.windows)
    return np.concatenate(weights), np.concatenate(wids), np.concatenate(fidx)


def sweep_thresholds(
    scores: np.ndarray, weights: np.ndarray, window_ids: np.ndarray, fn_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """The corpus score at every distinct threshold, in one pass.

    scores:     anomaly score of every scored point (any order)
    weights:    what a detection at that point is worth (tp credit inside a window, <= 0 outside)
    window_ids: the point's window (unique over the corpus), or -1 outside windows
    Returns (thresholds, totals), thresholds descending, starting with NO_DETECTION_THRESHOLD (or
    a value above the top score); totals[k] is the corpus score when points with score >=
    thresholds[k] are detections.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise UserError("anomaly scores contain NaN")
    n_windows = np.unique(window_ids[window_ids >= 0]).size
    base = -fn_weight * n_windows

    # Lower the threshold one point at a time, highest score first.
    order = np.argsort(-scores, kind="stable")
    s, w, g = scores[order], weights[order], window_ids[order]
    delta = np.where(g < 0, w, 0.0)  # each false positive adds its (negative) weight

    # A window is worth the best credit among its detected points (its earliest detection), or
    # -fn_weight before any. Group the window points by window, keeping the sweep order inside
    # each group, and take a running maximum per group.
    pos = np.flatnonzero(g >= 0)
    if pos.size:
        grp_order = np.argsort(g[pos], kind="stable")
        gp, wp = g[pos][grp_order], w[pos][grp_order]
        # One accumulate over all groups: lifting group k by k*span keeps every group's values
        # above all earlier groups', so the running max never leaks across a group boundary.
        span = float(np.max(wp) - min(np.min(wp), -fn_weight)) + 1.0
        rank = np.cumsum(np.r_[0, gp[1:] != gp[:-1]])
        lifted = np.maximum.accumulate(wp + rank * span) - rank * span
        best = np.maximum(lifted, -fn_weight)
        first_in_group = np.r_[True, gp[1:] != gp[:-1]]
        prev = np.where(first_in_group, -fn_weight, np.r_[-fn_weight, best[:-1]])
        delta[pos[grp_order]] = best - prev

    totals = base + np.cumsum(delta)
    # The score at threshold t counts every point with score >= t: the last of each run of equal
    # scores in the sweep.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    top = (
        NO_DETECTION_THRESHOLD
        if s.size == 0 or s[0] < NO_DETECTION_THRESHOLD
        else np.nextafter(s[0], np.inf)
    )
    thresholds = np.r_[top, s[last_of_run]]
    return thresholds, np.r_[base, totals[last_of_run]]


def file_parts(
    scores: np.ndarray, f: LabelledFile, threshold: float
) -> tuple[np.ndarray, list[float | None]]:
    """What one file's detections at `threshold` are worth before a profile's weights: the
    fp_cost of each detection outside the windows, and per scored window the credit of its
    earliest detection (None: missed)."""
    scored = f.window_of != -2
    detected = scored & (scores >= threshold)
    credits: list[float | None] = []
    for k in np.unique(f.window_of[scored & (f.window_of >= 0)]):
        hits = detected & (f.window_of == k)
        credits.append(float(np.max(f.tp_credit[hits])) if hits.any() else None)
    return f.fp_cost[detected & (f.window_of == -1)], credits


def _file_score(
    scores: np.ndarray, f: LabelledFile, profile: CostProfile, threshold: float
) -> float:
    costs, credits = file_parts(scores, f, threshold)
    total = float(np.sum(costs)) * profile.fp_weight
    for credit in credits:
        total += -profile.fn_weight if credit is None else profile.tp_weight * credit
    return total


def score_corpus(
    scores: dict[str, np.ndarray],
    files: list[LabelledFile],
    profile: CostProfile,
    threshold: float | None = None,
) -> ProfileResult:
    """Score a detector over a corpus under one profile.

    scores: anomaly score per point for each file name (same length as the file).
    threshold: None optimises it over the whole corpus (NAB's procedure); a number scores at it.
    When several thresholds tie for the best total, the highest one is kept (as NAB does).
    """
    for f in files:
        if f.name not in scores:
            raise UserError(f"no anomaly scores for {f.name}")
        if len(scores[f.name]) != f.n_points:
            raise UserError(
                f"{f.name}: {len(scores[f.name])} anomaly scores for {f.n_points} data points"
            )
    weights, wids, fidx = _point_weights(files, profile)
    all_scores = np.concatenate(
        [np.asarray(scores[f.name], dtype=np.float64)[f.window_of != -2] for f in files]
    )
    thresholds, totals = sweep_thresholds(all_scores, weights, wids, profile.fn_weight)
    if threshold is None:
        best = int(np.argmax(totals))  # first maximum = highest threshold among ties
        threshold = float(thresholds[best])
    per_file = {
        f.name: _file_score(np.asarray(scores[f.name], dtype=np.float64), f, profile, threshold)
        for f in files
    }
    raw = float(sum(per_file.values()))
    n_scored_windows = int(np.unique(wids[wids >= 0]).size)
    null = -profile.fn_weight * n_scored_windows
    perfect = profile.tp_weight * sum(len(f.windows) for f in files)
    normalised = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
    return ProfileResult(profile.name, threshold, raw, null, perfect, normalised, per_file)


def score_all_profiles(
    scores: dict[str, np.ndarray],
    files: list[LabelledFile],
    profiles: dict[str, CostProfile] | None = None,
) -> dict[str, ProfileResult]:
    """Score under every profile, each with its own corpus-optimal threshold."""
    profiles = profiles or PROFILES
    return {name: score_corpus(scores, files, p) for name, p in profiles.items()}


# ----------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class NabSeries:
    """One data file of the corpus: its values, timestamps and scoring geometry."""

    name: str
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray  # float64
    labels: LabelledFile


@dataclass(frozen=True)
class NabCorpus:
    root: Path
    series: list[NabSeries]
    profiles: dict[str, CostProfile]

    @property
    def files(self) -> list[LabelledFile]:
        return [s.labels for s in self.series]


def read_profiles(path: Path) -> dict[str, CostProfile]:
    """Read NAB's config/profiles.json ({name: {"CostMatrix": {tpWeight, fpWeight, fnWeight}}})."""
    try:
        raw = json.loads(path.read_text())
        return {
            name: CostProfile(
                name,
                float(p["CostMatrix"]["tpWeight"]),
                float(p["CostMatrix"]["fpWeight"]),
                float(p["CostMatrix"]["fnWeight"]),
            )
            for name, p in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read cost profiles {path}: {exc}") from exc


def read_nab_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NAB data file (timestamp,value) -> (datetime64[ns] timestamps, float64 values)."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
        ts = pd.to_datetime(df["timestamp"]).to_numpy(dtype="datetime64[ns]")
        values = df["value"].to_numpy(dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read NAB data file {path}: {exc}") from exc
    return ts, values


def read_corpus(root: str | Path, only: list[str] | None = None) -> NabCorpus:
    """Read a NAB corpus directory: data/<category>/<file>.csv, labels/combined_windows.json and
    (optionally) config/profiles.json. `only` restricts to some file names (for quick runs)."""
    root = Path(root)
    windows_path = root / "labels" / "combined_windows.json"
    if not (root / "data").is_dir() or not windows_path.is_file():
        raise UserError(
            f"{root} is not a NAB corpus (expected data/ and labels/combined_windows.json)"
        )
    try:
        windows = json.loads(windows_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {windows_path}: {exc}") from exc
    if not isinstance(windows, dict) or not windows:
        raise UserError(f"{windows_path}: expected a non-empty object of file -> windows")
    profiles_path = root / "config" / "profiles.json"
    profiles = read_profiles(profiles_path) if profiles_path.is_file() else dict(PROFILES)

    names = sorted(windows)
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise UserError(f"not in the corpus labels: {', '.join(unknown)}")
        names = [n for n in names if n in set(only)]
    series = []
    for name in names:
        path = root / "data" / name
        if not path.is_file():
            raise UserError(f"labelled file {name} is missing from {root / 'data'}")
        ts, values = read_nab_csv(path)
        limits = [
            (np.datetime64(_parse_time(s)), np.datetime64(_parse_time(e))) for s, e in windows[name]
        ]
        series.append(NabSeries(name, ts, values, label_file(name, ts, limits)))
    return NabCorpus(root, series, profiles)


def _parse_time(text: str) -> np.datetime64:
    import pandas as pd

    try:
        return pd.Timestamp(text).to_datetime64()
    except ValueError as exc:
        raise UserError(f"bad window timestamp {text!r}") from exc


def find_result_file(scores_dir: Path, name: str) -> Path:
    """Locate the NAB result CSV for data file `name` ("category/file.csv") under scores_dir.

    NAB's layout is results/<detector>/<category>/<detector>_<file>.csv; a plain
    <category>/<file>.csv is accepted too.
    """
    category, file_name = name.rsplit("/", 1) if "/" in name else ("", name)
    folder = scores_dir / category
    for candidate in (folder / f"{scores_dir.name}_{file_name}", folder / file_name):
        if candidate.is_file():
            return candidate
    matches = sorted(folder.glob(f"*_{file_name}"))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"several result files for {name} in {folder}")
    raise UserError(f"no result file for {name} in {folder}")


def read_result_scores(scores_dir: str | Path, corpus: NabCorpus) -> dict[str, np.ndarray]:
    """Read the anomaly_score column of every corpus file's NAB result CSV under scores_dir."""
    import pandas as pd

    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        raise UserError(f"scores directory {scores_dir} does not exist")
    out = {}
    for s in corpus.series:
        path = find_result_file(scores_dir, s.name)
        try:
            col = pd.read_csv(path, usecols=["anomaly_score"])["anomaly_score"]
            out[s.name] = col.to_numpy(dtype=np.float64)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot read anomaly_score from {path}: {exc}") from exc
    return out
