"""Operator rules (`tsguard serve --rules FILE`): per series glob, which side of normal alerts,
how small a change to ignore, how sensitive to be, labels for events and alerts, and mutes.

The file (contract: "Operator rules"; YAML):

    rules:
      - match: "web-*/cpu"          # glob over series ids; first match wins
        direction: up                # up | down | both (default both)
        min_delta: 5.0               # ignore deviations smaller than this, in series units
        sensitivity: 0.5             # 0..1, default 0.5: higher alerts on smaller surprises
        labels: {team: web, severity: page}
        mute:
          - {start: "2026-12-24T00:00:00Z", end: "2026-12-27T00:00:00Z", learn: false}
          - {cron: "0 3 * * SUN", duration: 2h}   # UTC

What each does, and where:
- `sensitivity` s scales the series' episode thresholds by 4 ** (0.5 - s): the default 0.5 keeps
  the model's, 1 halves them, 0 doubles them (the score is a log-probability scale, so a factor
  of two is twice or half the decades of surprise). Applied in the detector's episode bank.
- `direction` and `min_delta` judge an episode at its start: the point's deviation is its value
  minus the median of the window before it, in the dimension that contributed most.
- a mute holds an episode that starts inside it (its start and end events, hence its alert); an
  episode already open when a mute begins still ends normally. Times are the points' timestamps.
  `learn: false`: windows whose newest point is in the mute do not reach the detector at all
  (nothing is learned from them, and the series' score gauge holds still meanwhile).
- `labels` are copied into the series' events (`labels`) and so into its alerts.

`RulesFile` keeps the rules in force and re-reads the file when it changes (polled each second)
or on SIGHUP; a file that does not parse or validate is refused with one line and the rules in
force stay. `RuleGate` is what the metrics head asks, once per scored batch and per event.

>>> rules = parse_rules('rules: [{match: "web-*", direction: down, labels: {team: web}}]')
>>> rules.for_series("web-01/cpu").direction, rules.for_series("db-01/cpu")
('down', None)
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detector.errors import UserError

log = logging.getLogger(__name__)

DIRECTIONS = ("up", "down", "both")
RULE_KEYS = {"match", "direction", "min_delta", "sensitivity", "labels", "mute"}
MUTE_KEYS = {"start", "end", "cron", "duration", "learn"}
POLL_S = 1.0
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
                       r"(?:(\d+(?:\.\d+)?)s)?$")  # fmt: skip


class RulesError(UserError):
    """A rules file that cannot be used; the message is one line."""


class _CronWindows:
    """The windows [fire, fire + duration) of a cron expression (UTC), the last one cached:
    series are scored in time order, so consecutive questions fall in the same interval."""

    def __init__(self, expr: str, duration_s: float) -> None:
        self.expr, self.duration_s = expr, duration_s
        self._prev, self._next = math.inf, -math.inf  # the cached interval between two fires

    def covers(self, ts: float) -> bool:
        from croniter import croniter

        if not self._prev <= ts < self._next:
            it = croniter(self.expr, datetime.fromtimestamp(ts, UTC))
            self._next = it.get_next(float)
            self._prev = it.get_prev(float)
            if self._prev > ts:  # ts is a fire time itself
                self._prev = it.get_prev(float)
            if self._next <= ts:
                self._next = ts + 1e-3
        return ts < self._prev + self.duration_s


@dataclass(frozen=True)
class Mute:
    """An explicit span [start, end) or a cron window of `duration_s`; `learn` False also keeps
    the series' windows in it away from the detector."""

    learn: bool = True
    start: float = -math.inf
    end: float = math.inf
    cron: _CronWindows | None = field(default=None, compare=False)

    def covers(self, ts: float) -> bool:
        if self.cron is not None:
            return self.cron.covers(ts)
        return self.start <= ts < self.end


@dataclass(frozen=True)
class Rule:
    match: str
    direction: str = "both"
    min_delta: float = 0.0
    sensitivity: float = 0.5
    labels: dict[str, str] = field(default_factory=dict)
    mutes: tuple[Mute, ...] = ()

    @property
    def threshold_scale(self) -> float:
        return 4.0 ** (0.5 - self.sensitivity)

    def muted(self, ts: float) -> bool:
        return any(m.covers(ts) for m in self.mutes)

    def learns(self, ts: float) -> bool:
        return not any(not m.learn and m.covers(ts) for m in self.mutes)


@dataclass
class Rules:
    """The rules in force, in file order; `for_series` is the first whose glob matches."""

    rules: tuple[Rule, ...] = ()
    _cache: dict[str, Rule | None] = field(default_factory=dict, repr=False)

    @property
    def unlearning(self) -> bool:
        """Whether any rule has a `learn: false` mute (else no window needs asking)."""
        return any(not m.learn for r in self.rules for m in r.mutes)

    def for_series(self, series: str) -> Rule | None:
        try:
            return self._cache[series]
        except KeyError:
            pass
        if len(self._cache) > 200_000:  # bounded, whatever series arrive
            self._cache.clear()
        rule = next((r for r in self.rules if fnmatch.fnmatchcase(series, r.match)), None)
        self._cache[series] = rule
        return rule


NO_RULES = Rules()


# -- the file ---------------------------------------------------------------------------------
def parse_rules(text: str, source: str = "rules") -> Rules:
    """Rules from the file's text; RulesError (one line, naming the rule) when it is not valid."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise RulesError(f"{source}: not valid YAML{where}: {problem}") from None
    if doc is None:
        return Rules()
    if not isinstance(doc, dict) or set(doc) != {"rules"} or not isinstance(doc["rules"], list):
        raise RulesError(f"{source}: expected a mapping with one key, 'rules', holding a list")
    rules = []
    for i, raw in enumerate(doc["rules"], start=1):
        name = raw.get("match") if isinstance(raw, dict) else None
        where = f"{source}: rule {i}" + (f" ({name})" if isinstance(name, str) else "")
        try:
            rules.append(_rule(raw))
        except (TypeError, ValueError) as exc:
            raise RulesError(f"{where}: {exc}") from None
    return Rules(tuple(rules))


def load_rules(path: str | Path) -> Rules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"--rules {path}: cannot read it: {exc}") from None
    return parse_rules(text, str(path))


def _mapping(raw: Any, keys: set[str], what: str, prefix: str = "") -> dict:
    """`raw` as a mapping of known keys only (ValueError: `what` it should be, or the unknown
    keys after `prefix`)."""
    if not isinstance(raw, dict):
        raise ValueError(what)
    unknown = set(raw) - keys
    if unknown:
        raise ValueError(f"{prefix}unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    return raw


def _rule(raw: Any) -> Rule:
    raw = _mapping(raw, RULE_KEYS, "a rule is a mapping")
    match = raw.get("match")
    if not isinstance(match, str) or not match:
        raise ValueError("'match' (a series glob) is required")
    direction = raw.get("direction", "both")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be up, down or both, got {direction!r}")
    min_delta = _number(raw.get("min_delta", 0.0), "min_delta")
    if min_delta < 0:
        raise ValueError(f"min_delta must be >= 0, got {min_delta}")
    sensitivity = _number(raw.get("sensitivity", 0.5), "sensitivity")
    if not 0.0 <= sensitivity <= 1.0:
        raise ValueError(f"sensitivity must be in 0..1, got {sensitivity}")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k) for k in labels
    ):
        raise ValueError("labels must map label names ([a-zA-Z_][a-zA-Z0-9_]*) to values")
    if {"alertname", "series"} & set(labels):
        raise ValueError("labels may not set alertname or series (tsguard sets them)")
    mutes = raw.get("mute") or []
    if not isinstance(mutes, list):
        raise ValueError("mute must be a list")
    return Rule(match, direction, min_delta, sensitivity,
                {k: str(v) for k, v in labels.items()}, tuple(_mute(m) for m in mutes))  # fmt: skip


def _mute(raw: Any) -> Mute:
    raw = _mapping(raw, MUTE_KEYS, "a mute is a mapping: {start, end} or {cron, duration}",
                   "mute: ")  # fmt: skip
    learn = raw.get("learn", True)
    if not isinstance(learn, bool):
        raise ValueError(f"mute: learn must be true or false, got {learn!r}")
    if "cron" in raw:
        if "start" in raw or "end" in raw:
            raise ValueError("mute: either {start, end} or {cron, duration}, not both")
        from croniter import croniter

        expr = raw["cron"]
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ValueError(f"mute: cron {expr!r} is not a valid cron expression")
        if "duration" not in raw:
            raise ValueError("mute: a cron window needs a duration (e.g. 2h)")
        return Mute(learn, cron=_CronWindows(expr, duration_s(raw["duration"])))
    if "duration" in raw:
        raise ValueError("mute: duration goes with cron; a span has start and end")
    if "start" not in raw or "end" not in raw:
        raise ValueError("mute: a span needs start and end")
    start, end = timestamp(raw["start"]), timestamp(raw["end"])
    if not start < end:
        raise ValueError("mute: end must be after start")
    return Mute(learn, start=start, end=end)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def duration_s(value: Any) -> float:
    """Seconds from a number or `1d2h30m10s` parts.

    >>> duration_s("2h"), duration_s("1h30m"), duration_s(90)
    (7200.0, 5400.0, 90.0)
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) and value else None
    if m is None or not any(m.groups()):
        raise ValueError(f"duration {value!r}: expected e.g. 90s, 30m, 2h, 1d or 1h30m")
    d, h, mi, s = (float(g or 0) for g in m.groups())
    total = ((d * 24 + h) * 60 + mi) * 60 + s
    if total <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return total


def timestamp(value: Any) -> float:
    """Epoch seconds from epoch seconds, ISO 8601 text, or a YAML timestamp (naive = UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"{value!r} is not a time")


# -- in force, reloaded -----------------------------------------------------------------------
class RulesFile:
    """The rules in force from FILE: refused at start with one line (RulesError); re-read when
    the file changes or on `request_reload()` (SIGHUP), from a watcher thread. A refused reload
    is logged in one line and counted; the rules in force stay."""

    def __init__(self, path: str | Path, metrics=None, poll_s: float = POLL_S) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.rules = load_rules(self.path)
        self.version = 0
        self._stamp = self._file_stamp()
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._count("ok")
        log.info("rules: %d from %s", len(self.rules.rules), self.path)
        threading.Thread(target=self._watch, name="rules", daemon=True).start()

    def request_reload(self) -> None:
        self._reload.set()

    def close(self) -> None:
        self._stop.set()
        self._reload.set()

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _watch(self) -> None:
        while not self._stop.is_set():
            asked = self._reload.wait(self._poll_s)
            if self._stop.is_set():
                return
            self._reload.clear()
            stamp = self._file_stamp()
            if asked or stamp != self._stamp:
                self._stamp = stamp
                self.reload()

    def reload(self) -> bool:
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            self._count("refused")
            log.error("rules refused, the rules in force stay: %s", exc)
            return False
        self.rules, self.version = rules, self.version + 1
        self._count("ok")
        log.info("rules reloaded: %d from %s", len(rules.rules), self.path)
        return True

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.rules_loads.labels(result).inc()
            self.metrics.rules_refused.set(result == "refused")


class RuleGate:
    """What the metrics head asks of the rules in force (see the module docstring) and of the
    operators' verdicts (stream/feedback.py), which raise a series' thresholds."""

    def __init__(self, source: RulesFile | None, metrics, verdicts=None) -> None:
        self.source = source  # None: no --rules
        self.metrics = metrics
        self.verdicts = verdicts  # stream.feedback.Verdicts, or None
        self._held: dict[str, str] = {}  # series -> its held (open) episode
        self._tuned = False  # a scale was set: from then on, every batch sets them

    @property
    def rules(self) -> Rules:
        return self.source.rules if self.source is not None else NO_RULES

    def prepare(self, detector, dims: int, series: list[str], slots: list[int],
                times: np.ndarray) -> list[int]:  # fmt: skip
        """Before a batch is scored: each series' threshold scale set in the detector, and the
        slot of a window whose newest point is in a `learn: false` mute replaced by -1 (the
        detector skips it)."""
        rules, verdicts = self.rules, self.verdicts
        if not (rules.rules or verdicts or self._tuned):  # every scale is still the default 1
            return slots
        self._tuned = True
        for name, slot in dict(zip(series, slots, strict=True)).items():
            if slot >= 0:
                rule = rules.for_series(name)
                scale = rule.threshold_scale if rule is not None else 1.0
                if verdicts:  # a false positive's floor (the larger of the two wins)
                    scale = max(scale, verdicts.scale(name))
                detector.set_threshold_scale(dims, slot, scale)
        if not rules.unlearning:
            return slots
        newest = times[:, -1].tolist()
        out = list(slots)
        for i, name in enumerate(series):
            rule = rules.for_series(name)
            if rule is not None and out[i] >= 0 and not rule.learns(newest[i]):
                out[i] = -1
        return out

    def admit(self, kind: str, series: str, episode_id: str, ts: float, window: np.ndarray,
              point: int, contributions: np.ndarray, count: bool = True) -> bool:  # fmt: skip
        """Whether this event is published: an episode's end follows its start; a start is held
        in a mute, on the wrong side of normal or nearer to it than min_delta (counted in
        tsguard_events_held_total unless `count` is False: an event replayed to rebuild state)."""
        if kind != "start":
            return self._held.pop(series, None) != episode_id
        self._held.pop(series, None)
        rule = self.rules.for_series(series)
        if rule is None:
            return True
        reason = None
        if rule.muted(ts):
            reason = "mute"
        elif rule.direction != "both" or rule.min_delta > 0:
            delta = deviation(window, point, contributions)
            if math.isfinite(delta):
                if (rule.direction == "up" and delta <= 0) or (
                    rule.direction == "down" and delta >= 0
                ):
                    reason = "direction"
                elif abs(delta) < rule.min_delta:
                    reason = "min_delta"
        if reason is None:
            return True
        self._held[series] = episode_id
        if count:
            self.metrics.events_held.labels(reason).inc()
        return False

    def labels(self, series: str) -> dict[str, str]:
        rule = self.rules.for_series(series)
        return dict(rule.labels) if rule is not None else {}


def deviation(window: np.ndarray, point: int, contributions: np.ndarray) -> float:
    """The point's value minus the median of the window before it, in the dimension that
    contributed most (NaN when that cannot be told).

    >>> deviation(np.array([[1.0], [2.0], [3.0], [10.0]]), 3, np.array([1.0]))
    8.0
    """
    shares = np.nan_to_num(np.asarray(contributions, dtype=np.float64), nan=-1.0)
    d = int(np.argmax(shares)) if shares.size else 0
    before = window[:point, d]
    before = before[np.isfinite(before)]
    value = float(window[point, d])
    if before.size == 0 or not math.isfinite(value):
        return math.nan
    return value - float(np.median(before))
