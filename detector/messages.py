"""The values on tsguard's topics, as types (docs/ARCHITECTURE.md, "Topics").

Outputs are dataclasses with one encoder each, `encode() -> bytes`: the UTF-8 JSON on the topic.
    tsguard.anomalies      AnomalyEvent   (built by stream/heads/metrics.py)
    tsguard.incidents      IncidentMessage (stream/incidents.py)
    tsguard.dead-letter    DeadLetter     (stream/heads/base.py, for any input topic)
    tsguard.log-classes    LogClass       (detector/logs/analyzer.py)
    tsguard.log-summaries  LogSummary     (detector/logs/summarizer.py)
Inputs are decoded by stream/codec.py (tsguard.metrics) and detector/logs/analyzer.py (tsguard.logs);
both read `ts` with `parse_ts`, and a message that cannot be used raises `InvalidMessage`
whose `InvalidReason` is the `reason` label of tsguard_messages_invalid_total.

The module lives in detector/ because the log heads build their messages here and `detector`
never imports `stream`.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from detector.api import TS_MAX, TS_MIN


def message_id(*parts: object) -> str:
    """A deterministic id (episode, event, incident): the same parts give the same id, so a
    message produced again after a restart can be de-duplicated by its consumers."""
    return hashlib.sha256("|".join(map(repr, parts)).encode()).hexdigest()[:32]


def keyed_object(value: bytes | None, key: bytes | None, field: str) -> dict:
    """The JSON object a record's value holds, with `field` taken from the record's key when
    the object lacks it (a feedback record keyed by series or source); ValueError, one line,
    for anything that is not an object."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise ValueError("invalid JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("JSON value is not an object")
    if not obj.get(field) and key:
        obj[field] = key.decode("utf-8", errors="replace")
    return obj


def dumps(obj: Any) -> bytes:
    """The one JSON encoder of topic values (numpy arrays and scalars included)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


# ---------------------------------------------------------------------------------------------
# Input: what makes a message unusable, and the timestamp rule


class InvalidReason(StrEnum):
    """Why a message could not be used: a bounded vocabulary (a metric label)."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    BAD_SERIES = "bad_series"
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    MISSING_VALUE = "missing_value"
    BAD_VALUE = "bad_value"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    TOO_MANY_DIMENSIONS = "too_many_dimensions"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    DIMENSION_MISMATCH = "dimension_mismatch"
    INVALID_LOG = "invalid_log"
    INVALID_FEEDBACK = "invalid_feedback"


class InvalidMessage(ValueError):
    def __init__(self, reason: InvalidReason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def epoch_seconds(stamp: int | float) -> float:
    """A timestamp in seconds, milliseconds, microseconds or nanoseconds, as seconds (the unit
    read from its size, for times after 1973): Telegraf's line protocol, JSON loggers' times.

    >>> epoch_seconds(1700000000), epoch_seconds(1700000000123), epoch_seconds(1700000000123456789)
    (1700000000.0, 1700000000.123, 1700000000.1234567)
    """
    for scale in (1e9, 1e6, 1e3):
        if abs(stamp) >= 1e8 * scale:  # 1e8 s is 1973
            return stamp / scale
    return float(stamp)


def parse_ts(raw: Any) -> float:
    """A message's `ts` in epoch seconds, for every topic: a number of epoch seconds, or an ISO
    8601 string with a timezone ("Z" or an offset), within 1970..2100."""
    if isinstance(raw, bool) or raw is None:
        raise InvalidMessage(
            InvalidReason.BAD_TS, f"ts must be epoch seconds or ISO 8601, got {raw!r}"
        )
    if isinstance(raw, int | float):
        try:
            ts = float(raw)
        except OverflowError:  # an integer beyond float range (the NaN fallback parser keeps them)
            ts = math.inf
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
        except ValueError:
            raise InvalidMessage(
                InvalidReason.BAD_TS, f"unparseable timestamp {raw[:64]!r}"
            ) from None
        if dt.tzinfo is None:
            raise InvalidMessage(InvalidReason.BAD_TS, f"timestamp {raw[:64]!r} has no timezone")
        ts = dt.timestamp()
    else:
        raise InvalidMessage(
            InvalidReason.BAD_TS, f"ts must be a number or string, got {type(raw).__name__}"
        )
    if not (TS_MIN <= ts <= TS_MAX):  # also rejects NaN and inf
        raise InvalidMessage(
            InvalidReason.TS_OUT_OF_RANGE, f"ts {ts!r} is not epoch seconds in 1970..2100"
        )
    return ts


# ---------------------------------------------------------------------------------------------
# tsguard.anomalies


@dataclass(frozen=True, slots=True)
class EventWindow:
    """The points the scored window held: fewer than the model's L while a series is young."""

    start: float
    end: float
    length: int


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """The start or end of an anomaly episode of a series. `event_id` is deterministic (same
    input and model, same id) so consumers can de-duplicate."""

    event_id: str
    episode_id: str
    kind: str  # "start" | "end"
    series: str
    ts: float
    score: float  # 0..1
    threshold: float
    model_version: str
    window: EventWindow
    contributions: dict[str, float]  # dimension -> share of the error
    detected_at: float
    labels: dict[str, str] = field(default_factory=dict)  # the series' operator rule's labels
    # Each signal's tail score at the event's point (those with an opinion): what made it one.
    signals: dict[str, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        return dumps(self)


# ---------------------------------------------------------------------------------------------
# tsguard.incidents


@dataclass(frozen=True, slots=True)
class IncidentMember:
    """One episode of an incident: when it started and ended (None while open), its start score
    and its start event's `signals`."""

    series: str
    episode_id: str
    start: float
    end: float | None
    score: float
    signals: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IncidentMessage:
    """An incident opened, changed (an episode joined or ended) or closed: overlapping episodes
    of one group. The first seven fields are the contract's; `grouped_by` (what grouped
    them: "labels", "prefix" or "series"), `contributions` ({series: share of the members' summed
    start scores}) and `members` are tsguard's additions."""

    incident_id: str
    kind: str  # "open" | "update" | "close"
    ts: float
    series: list[str]
    episodes: list[str]
    labels: dict[str, str]
    score: float  # the highest start score of its episodes
    grouped_by: str
    contributions: dict[str, float]
    members: list[IncidentMember]

    def encode(self) -> bytes:
        return dumps(self)


# ---------------------------------------------------------------------------------------------
# tsguard.dead-letter


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with where it came from. The payload is kept as text
    when it is UTF-8, else base64 (`payload_encoding`)."""

    error: str
    reason: InvalidReason
    topic: str
    partition: int
    offset: int
    payload: str | None
    payload_encoding: str  # "utf-8" | "base64" | "none"

    @classmethod
    def of(
        cls, error: InvalidMessage, topic: str, partition: int, offset: int, payload: bytes | None
    ) -> DeadLetter:
        if payload is None:
            text, encoding = None, "none"
        else:
            try:
                text, encoding = payload.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        return cls(str(error), error.reason, topic, partition, offset, text, encoding)

    def encode(self) -> bytes:
        return dumps(self)


# ---------------------------------------------------------------------------------------------
# tsguard.log-classes


@dataclass(frozen=True, slots=True)
class LogHeader:
    """What a parsed line header said."""

    level: str | None
    component: str | None


@dataclass(frozen=True, slots=True)
class LogClass:
    """The label of one log line. `header` only when the line's header was parsed, `corrected`
    only when an operator's correction set the label (both left out of the JSON otherwise)."""

    source: str
    ts: float
    message: str
    label: str
    confidence: float
    scores: dict[str, float]  # label -> probability
    header: LogHeader | None = None
    corrected: bool = False

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "source": self.source,
            "ts": self.ts,
            "message": self.message,
            "label": self.label,
            "confidence": self.confidence,
            "scores": self.scores,
        }
        if self.header is not None:
            value["header"] = self.header
        if self.corrected:
            value["corrected"] = True
        return dumps(value)


# ---------------------------------------------------------------------------------------------
# tsguard.log-summaries


@dataclass(frozen=True, slots=True)
class SummaryWindow:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class TemplateCount:
    template: str
    count: int
    new: bool  # first seen in this window
    rising: bool  # well above its usual count per window
    errors: int  # lines of it that are error-class


@dataclass(frozen=True, slots=True)
class Lead:
    """A template the summary text leads with, and why; `usual` (its usual count per window)
    only when it is rising."""

    template: str
    count: int
    why: list[str]  # of "error", "new", "rising"
    usual: float | None = None


@dataclass(frozen=True, slots=True)
class LogSummary:
    """One source's lines in one tumbling window."""

    source: str
    window: SummaryWindow
    lines: int
    templates: list[TemplateCount]
    leads: list[Lead]
    highlights: list[str]  # example lines
    summary: str

    def encode(self) -> bytes:
        leads = [
            {"template": x.template, "count": x.count, "why": x.why}
            | ({} if x.usual is None else {"usual": x.usual})
            for x in self.leads
        ]
        return dumps(
            {
                "source": self.source,
                "window": self.window,
                "lines": self.lines,
                "templates": self.templates,
                "leads": leads,
                "highlights": self.highlights,
                "summary": self.summary,
            }
        )
