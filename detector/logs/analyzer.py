"""The log analyzer: one pure-compute object behind `tsguard logs classify|summarize` and the
pipeline's logs head (stream/heads/logs.py; no Kafka imports here).

    analyzer = LogAnalyzer(LogAnalyzerConfig(labels="severity", window_s=300))
    classes = analyzer.classify(records)     # one tsguard.log-classes LogClass per record
    summaries = analyzer.observe(records)    # tsguard.log-summaries LogSummary of closed windows
    summaries += analyzer.flush()            # at shutdown / end of input

Per line: mask the variables and mine the template (Drain3, per source, bounded); the template's
words are what gets classified, and the classification is cached per template, so a repeated
template costs a dictionary lookup instead of an embedding. `classify` and `observe` mine each
line once even when both are called on the same batch (`process` does both in one call).

A tsguard.logs value, {"source", "ts", "message"} or a raw text line, becomes a `LogRecord`
(`parse_log_value`); the output messages and their encoders are in detector/messages.py.
`ts` and window bounds are epoch seconds.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from detector.errors import UserError
from detector.logs.classifier import (
    Classification,
    ClassifierConfig,
    LabelSet,
    TemplateText,
    ZeroShotClassifier,
    load_examples,
    load_label_set,
)
from detector.logs.encoder import CachedEncoder, TextEncoder
from detector.logs.headers import (
    LEVEL_WORDS,
    Header,
    LogFormat,
    parse_after_timestamp,
    parse_dotnet,
    parse_embedded_level,
    parse_logfmt,
    parse_pri,
    parse_relay,
    parse_stamped,
    parse_whole_line,
)
from detector.logs.severity import CLASSES as SEVERITY_CLASSES
from detector.logs.severity import STATED_LEVELS, SeverityModel, features, severity_mapping
from detector.logs.summarizer import SummaryConfig, WindowSummarizer
from detector.logs.templates import (
    MinedLine,
    TemplateConfig,
    TemplateMiner,
    embedding_text,
    mask_variables,
    prose_words,
)
from detector.logs.topic import TopicModel
from detector.logs.topic import features as topic_features
from detector.messages import LogClass, LogHeader, LogSummary, epoch_seconds, parse_ts

UNKNOWN_SOURCE = "unknown"
MAX_SOURCE_CHARS = 256
# A user example this close (cosine of template embeddings) to a template decides its label.
PROTOTYPE_MATCH = 0.9
_PRUNE_EVERY = 10_000  # lines between prunes of the summarizer's template history


@dataclass(frozen=True)
class LogRecord:
    source: str
    ts: float  # epoch seconds
    message: str
    content: str | None = None  # the message without its header (None: no header parsed)
    level: str | None = None  # the level the line states, as written
    component: str | None = None  # the header's component (logger, program, tag)
    # A raw line without header or time that reads as part of a stack trace (a frame, an
    # exception), or a header that says the line is a further part of its record (PostgreSQL's
    # `DETAIL:`); `indented`, one without header or time that is indented; `opens`, a header
    # whose message follows on the next line (.NET's console, indented; java.util.logging's, a
    # line that `completes` the record: its level and message, no time). LogAnalyzer._lines.
    continues: bool = False
    indented: bool = False
    opens: bool = False
    completes: bool = False

    @property
    def text(self) -> str:
        """What gets mined and classified: the content, or the line without its timestamp."""
        return self.content if self.content is not None else strip_timestamp(self.message)


@dataclass(frozen=True)
class LogAnalyzerConfig:
    labels: str = "severity"  # shipped set name, .yaml/.toml file, or "a,b,c"
    label_set: LabelSet | None = None  # a ready LabelSet (overrides `labels`)
    unknown_below: float = 0.0  # confidence under which the label is "unknown" (0: never)
    severity_head: bool = True  # the trained head for error/warning/info label sets
    severity_model: str | None = None  # its directory (None: the shipped one)
    topic_head: bool = True  # the trained head for the shipped topic label set
    topic_model: str | None = None  # its directory (None: the shipped one)
    examples: str | None = None  # few-shot: a JSON lines or CSV file of labelled lines
    corrections: str | None = None  # JSON lines {"source", "message", "label"}: they override
    window_s: float = 300.0  # summary window (tumbling, per source)
    highlights: int = 3
    max_templates: int = 2000  # per source (Drain clusters, LRU)
    max_sources: int = 1000
    template_cache: bool = True  # cache classifications/embeddings per template
    sentence_weight: float = 0.7
    max_line_chars: int = 4096  # longer lines are mined and classified on this prefix
    summarizer_model: str | None = None  # local seq2seq dir for abstractive summaries
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------
# Input parsing

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
# Zone names a server writes after its time (PostgreSQL's `%m` uses its log_timezone's), as
# minutes east of UTC. A name that several zones share (CST: US Central or China; IST; BST; AST)
# maps to None: read as UTC, as a time without a zone is.
_ZONE_MINUTES: dict[str, int | None] = {
    "UTC": 0, "GMT": 0, "WET": 0, "WEST": 60, "CET": 60, "CEST": 120, "EET": 120, "EEST": 180,
    "MSK": 180, "EST": -300, "EDT": -240, "CDT": -300, "MST": -420, "MDT": -360, "PST": -480,
    "PDT": -420, "AKST": -540, "AKDT": -480, "HST": -600, "JST": 540, "KST": 540, "HKT": 480,
    "SGT": 480, "AWST": 480, "ACST": 570, "ACDT": 630, "AEST": 600, "AEDT": 660, "NZST": 720,
    "NZDT": 780, "CST": None, "IST": None, "BST": None, "AST": None,
}  # fmt: skip
_ISO_RE = re.compile(
    r"^\[?(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](?P<isofrac>\d{1,9}))?"
    r"\s*(?P<isozone>Z|[+-](?:0\d|1[0-4])(?::?\d{2})?|(?:" + "|".join(_ZONE_MINUTES) + r")\b)?"
    # no digit next, nor a colon unless a fraction ends the time (Celery's `10:00:00,123:`)
    r"(?(isozone)(?![\d:])|(?(isofrac)(?!\d)|(?![\d:])))"
)
_CTIME_RE = re.compile(
    r"^\[\w{3} (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? (\d{4})\]"
)
# A date and time inside a header of unknown layout (after a level, component or id fields):
# ISO 8601 without zone, or IBM's dashed form "2005-06-03-15.42.50.363779" (DB2, Blue Gene).
_HEADER_TIME_RE = re.compile(
    r"(?<![\d.:-])(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):|-(\d{2})\.)(\d{2})[:.](\d{2})"
    r"(?:[.,](\d{1,9})(?!\d)|(?![\d:]))"  # a fraction may end in a colon (Celery's `,123:`)
)
# Java's `dd-Mon-yyyy hh:mm:ss.SSS` (Tomcat, java.util.logging's one-line layout)
_DMY_TIME_RE = re.compile(
    r"^(\d{2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?![\d:])"
)
_SYSLOG_RE = re.compile(r"^(\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})\b")
_YYMMDD_RE = re.compile(r"^(\d{2})(\d{2})(\d{2}) (\d{2})(\d{2})(\d{2})\b")  # HDFS
_SLASH_RE = re.compile(r"^(\d{2})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})\b")  # yy/mm/dd (Spark)
# yyyy/mm/dd: Go's standard `log` package, nginx's error log
_YMD_SLASH_RE = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\b")
_MMDD_RE = re.compile(r"^(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?\b")  # Android


_LOGFMT_START = re.compile(r"[A-Za-z_@][\w.@\-]*=")  # worth trying parse_logfmt on
_LEVEL_FIRST_RE = re.compile(r"\[?(?i:" + LEVEL_WORDS + r")(?:\]|:)\s")
_TS_PREFIX_RE = re.compile(
    "(?:"
    + "|".join(
        f"(?:{p.pattern})"
        for p in (_ISO_RE, _CTIME_RE, _SYSLOG_RE, _YYMMDD_RE, _SLASH_RE, _YMD_SLASH_RE, _MMDD_RE)
    )
    + r")(?:\s*(?:UTC|GMT)\b)?[\s,;|\]]*"  # UTC or GMT after a time that is not ISO 8601
)


def strip_timestamp(line: str) -> str:
    """The line without a recognised leading timestamp: a timestamp is a variable, and at the
    head of a line it would also take the first levels of Drain's parse tree."""
    m = _TS_PREFIX_RE.match(line)
    return line[m.end() :] if m and m.end() < len(line) else line


def _utc(y: int, mo: int, d: int, h: int, mi: int, s: int, frac: str | None = None) -> float:
    ts = datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()
    return ts + (float("0." + frac) if frac else 0.0)


def parse_line_timestamp(line: str, now: float) -> float | None:
    """Epoch seconds from a raw log line's leading timestamp, or None.

    Recognises ISO 8601 ("2015-10-18 18:01:47,978", with or without zone), Apache
    "[Sun Dec 04 04:47:44 2005]", syslog "Jun 14 15:16:01", HDFS "081109 203615", "17/06/09
    20:10:40", Go's and nginx's "2024/01/31 10:00:00" and Android "03-17 16:13:38.811".
    A zone after an ISO time (`Z`, an offset, or a name in `_ZONE_MINUTES`) is applied;
    zone-less times are read as UTC; year-less ones take the year of `now`. Anything else: None
    (the caller uses arrival time).
    """
    try:
        m = _ISO_RE.match(line)
        if m:
            y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
            tz = m.group(8)
            if tz is None or tz == "Z" or tz[0] not in "+-":
                east = _ZONE_MINUTES.get(tz) if tz else None  # Z, UTC and GMT: 0
            else:  # +01, +0530, -05:00
                digits = tz[1:].replace(":", "")
                east = int(digits[:2]) * 60 + int(digits[2:] or 0)
                east = -east if tz[0] == "-" else east
            return _utc(y, mo, d, h, mi, s, m.group(7)) - 60 * (east or 0)
        m = _CTIME_RE.match(line)
        if m and m.group(1).lower() in _MONTHS:
            return _utc(int(m.group(7)), _MONTHS[m.group(1).lower()], int(m.group(2)),
                        int(m.group(3)), int(m.group(4)), int(m.group(5)), m.group(6))  # fmt: skip
        m = _SYSLOG_RE.match(line)
        if m and m.group(1).lower() in _MONTHS:
            year = datetime.fromtimestamp(now, UTC).year
            return _utc(year, _MONTHS[m.group(1).lower()], int(m.group(2)),
                        int(m.group(3)), int(m.group(4)), int(m.group(5)))  # fmt: skip
        m = _YYMMDD_RE.match(line)
        if m:
            yy, mo, d, h, mi, s = (int(g) for g in m.groups())
            return _utc(2000 + yy, mo, d, h, mi, s)
        m = _SLASH_RE.match(line)
        if m:
            yy, mo, d, h, mi, s = (int(g) for g in m.groups())
            return _utc(2000 + yy, mo, d, h, mi, s)
        m = _YMD_SLASH_RE.match(line)
        if m:
            y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
            return _utc(y, mo, d, h, mi, s, m.group(7))
        m = _MMDD_RE.match(line)
        if m:
            mo, d, h, mi, s = (int(g) for g in m.groups()[:5])
            year = datetime.fromtimestamp(now, UTC).year
            return _utc(year, mo, d, h, mi, s, m.group(6))
    except ValueError:  # e.g. month 13: not a timestamp after all
        return None
    return None


def header_timestamp(head: str) -> float | None:
    """Epoch seconds from the first date and time among a header's fields (a line whose header
    does not start with its timestamp: OpenStack's `file.log 2017-05-16 00:00:00.008 ...`, Blue
    Gene's `- 1117838570 2005.06.03 node 2005-06-03-15.42.50.363779 ...`) or at its start in
    Java's `31-Jan-2024 10:00:00.123` (Tomcat), read as UTC; else None."""
    m = _HEADER_TIME_RE.search(head)
    if m is None:
        m = _DMY_TIME_RE.match(head)
        if m is None or m.group(2).lower() not in _MONTHS:
            return None
        d, month, y, h, mi, sec, frac = m.groups()
        try:
            return _utc(int(y), _MONTHS[month.lower()], int(d), int(h), int(mi), int(sec), frac)
        except ValueError:  # e.g. day 31 of a 30-day month
            return None
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    h = int(m.group(4) or m.group(5))
    try:
        return _utc(y, mo, d, h, int(m.group(6)), int(m.group(7)), m.group(8))
    except ValueError:  # e.g. month 13: not a timestamp after all
        return None


# A line of a stack trace, when it has no header and no time of its own: a frame (Java's `at
# ...(` and `... N more`, Python's `File "...", line N`), Python's chained-traceback notes, or an
# exception's line (`Caused by:`, `pkg.SomeError: reason`), which is also mined on its own: it
# names what went wrong, where a frame only says where.
_EXCEPTION_RE = re.compile(
    r"(?:Caused by|Suppressed): |(?:[A-Za-z_][\w$]*\.)*[A-Z][\w$]*(?:Exception|Error|Throwable)"
    r"(?::\s|$)"
)
_TRACE_LINE_RE = re.compile(
    r"at [\w$.<>/]+\(|\.\.\. \d+ (?:more|common frames omitted)$|File \"[^\"]+\", line \d+"
    r"|During handling of the above exception|The above exception was the direct cause"
    # Go's traceback: a goroutine's header, a call (`main.run(0xc0000b2000)`, `net/http.(*conn)
    # .serve(...)`, `panic({...})`), `created by`, a file line, the signal that caused a panic
    r"|goroutine \d+ [^\n]*\[[^\]]*\]:$|(?:[\w.\-]+/)*[\w\-]+\.(?:\(\*?[\w\[\]]+\)\.)?[\w\[\].]+\(.*\)$"
    r"|panic\(.*\)$|created by \S+|\S+\.go:\d+(?: \+0x[0-9a-f]+)?$|\[signal [A-Z]+|"
    + _EXCEPTION_RE.pattern
)
# The runtime's own report of an exception that escaped (Python's traceback banner, also written
# by logging's exc_info; the JVM's uncaught-exception line; Go's `panic:` and `fatal error:`;
# Node.js's `/app/server.js:12`, the file and line that threw, then the code and a caret): a
# record of its own that states ERROR, so a crash after an ordinary line is not folded into it.
_UNCAUGHT_RE = re.compile(
    r'Traceback \(most recent call last\):$|Exception in thread "[^"]*" \S|(?:panic|fatal error): \S'
    r"|(?:/|file://|[A-Za-z]:\\)\S*\.[cm]?[jt]s:\d+$"
)


# A container runtime's log line (CRI: containerd, CRI-O; Kubernetes' /var/log/containers):
# time, stream, F(ull) or P(artial), then the container's own line.
_CRI_RE = re.compile(
    r"(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})) "
    r"(?:stdout|stderr) [FP] (?P<line>.*\S.*)$",
    re.DOTALL,
)


def _raw_record(source: str, line: str, now: float, log_format: LogFormat | None) -> LogRecord:
    """A raw line, as it came, with its header parsed (see detector/logs/headers.py); one that
    began with white space is `indented`."""
    indented = line[:1] in (" ", "\t")
    text = line.strip()
    cri = _CRI_RE.match(text)
    if cri is not None:  # the container's line, as Docker's json-file "log" is read
        return _raw_record(source, cri.group("line"),
                           parse_line_timestamp(cri.group("ts"), now) or now, log_format)  # fmt: skip
    if log_format is not None:
        fields = log_format.parse(text)
        if fields is not None:
            stamp = " ".join(fields[k] for k in ("Date", "Time", "Timestamp") if k in fields)
            ts = parse_line_timestamp(stamp, now) if stamp else None
            if ts is None:
                ts = parse_line_timestamp(text, now)
            content = fields["Content"] or text
            return LogRecord(source, now if ts is None else ts, text, content,
                             fields.get("Level") or None, fields.get("Component") or None)  # fmt: skip
    pri_level = None
    body = text
    pri = parse_pri(text)
    if pri is not None:
        pri_level, body = pri
    logfmt = parse_logfmt(body) if _LOGFMT_START.match(body) else None
    if logfmt is not None:
        header, stamp = logfmt
        ts = parse_line_timestamp(stamp, now) if stamp else None
        if ts is None and stamp and stamp.replace(".", "", 1).isdigit():
            ts = epoch_seconds(float(stamp))  # go-kit's ts=unix; ms, us or ns by its size
        return _headed(source, now if ts is None else ts, text, header, pri_level)
    stamped = parse_stamped(body)
    if stamped is not None:
        header, ts = stamped
        return _headed(source, now if ts is None else ts, text, header, pri_level)
    relay = parse_relay(body)
    if relay is not None:  # its epoch is the line's time (the relayed line's may lack a year)
        ts, body = relay
    else:
        ts = parse_line_timestamp(body, now)
    m = _TS_PREFIX_RE.match(body)
    rest = body[m.end() :] if m and m.end() < len(body) else None
    header = parse_dotnet(body if rest is None else rest)
    if header is None and rest is not None:
        header = parse_after_timestamp(rest, bool(_SYSLOG_RE.match(body)))
    elif header is None and _LEVEL_FIRST_RE.match(body) and not _UNCAUGHT_RE.match(body):
        header = parse_after_timestamp(body, False)
        if header is not None and ts is None:  # `LEVEL: message`, no time: may complete a record
            header = replace(header, completes=True)
    if header is None:
        header = parse_whole_line(body) or parse_embedded_level(body)
        if header is not None and ts is None:
            # The header is what precedes the content; its time is the line's.
            head = body.rstrip()
            if head.endswith(header.content):
                ts = header_timestamp(head[: len(head) - len(header.content)])
    if header is None:
        if pri_level is None and relay is None:
            if _UNCAUGHT_RE.match(body):
                return LogRecord(source, now if ts is None else ts, text, body, "ERROR")
            if ts is not None:
                return LogRecord(source, ts, text)
            trace = _TRACE_LINE_RE.match(body) is not None
            return LogRecord(source, now, text, continues=trace, indented=indented)
        return LogRecord(source, now if ts is None else ts, text, strip_timestamp(body), pri_level)
    return _headed(source, now if ts is None else ts, text, header, pri_level)


def _headed(source: str, ts: float, text: str, header: Header, pri_level: str | None) -> LogRecord:
    """A raw line's record from its parsed header (a `<PRI>`'s level when the header has none)."""
    return LogRecord(source, ts, text, header.content, header.level or pri_level,
                     header.component, header.continues, opens=header.opens,
                     completes=header.completes)  # fmt: skip


_JOURNALD_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def _journald(obj: dict, key_source: str) -> LogRecord:
    """A journald JSON record (`journalctl -o json`): MESSAGE, PRIORITY, SYSLOG_IDENTIFIER."""
    message = obj.get("MESSAGE")
    if not isinstance(message, str) or not message.strip():
        raise ValueError("MESSAGE must be a non-empty string")
    priority = str(obj.get("PRIORITY", ""))
    level = _JOURNALD_LEVELS[int(priority)] if priority.isdigit() and int(priority) < 8 else None
    component = obj.get("SYSLOG_IDENTIFIER") or obj.get("_SYSTEMD_UNIT")
    stamp = obj.get("__REALTIME_TIMESTAMP")
    if not (isinstance(stamp, str) and stamp.isdigit()):
        raise ValueError("__REALTIME_TIMESTAMP must be microseconds since the epoch")
    ts = parse_ts(int(stamp) / 1e6)
    source = obj.get("_HOSTNAME") if key_source == UNKNOWN_SOURCE else key_source
    source = source if isinstance(source, str) and source else key_source
    return LogRecord(source[:MAX_SOURCE_CHARS], ts, message, message, level,
                     component if isinstance(component, str) else None)  # fmt: skip


def _object_source(obj: dict, key_source: str) -> str:
    """A JSON record's "source", else the message key's."""
    source = obj.get("source", key_source)
    if source is None:
        source = key_source
    if not isinstance(source, str) or not source:
        raise ValueError("source must be a non-empty string")
    return source[:MAX_SOURCE_CHARS]


def _object_text(obj: dict, field: str) -> str:
    """A JSON record's message field: a string with something in it."""
    message = obj.get(field)
    if not isinstance(message, str):
        raise ValueError(f"{field} must be a string")
    if not message.strip():
        raise ValueError("empty message")
    return message


# Time fields of JSON loggers: zap "ts" (epoch seconds), logrus / slog / bunyan "time" (ISO 8601),
# pino "time" (epoch milliseconds), others "timestamp" or "@timestamp".
_LOGGER_TIME_KEYS = ("ts", "time", "timestamp", "@timestamp")


# pino and bunyan write their level as a number.
_NUMERIC_LEVELS = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}


def _logger_json(obj: dict, key_source: str, now: float, log_format: LogFormat | None) -> LogRecord:
    """A JSON logger's record: {"msg", "level", a time} (zap, logrus, slog, pino, bunyan;
    MongoDB's "s", "c" and "t": {"$date"}), or Docker's json-file driver {"log": the raw line,
    "time"}, whose line is parsed as any raw one."""
    stamp = next((obj[k] for k in _LOGGER_TIME_KEYS if obj.get(k) is not None), None)
    mongo = isinstance(obj.get("t"), dict) and "$date" in obj["t"]  # MongoDB's structured log
    if stamp is None and mongo:
        stamp = obj["t"]["$date"]
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        stamp = epoch_seconds(stamp)
    ts = now if stamp is None else parse_ts(stamp)
    source = _object_source(obj, key_source)
    field = "msg" if "msg" in obj else "log"
    message = _object_text(obj, field)
    if field == "log":
        return _raw_record(source, message, ts, log_format)
    level = obj.get("level", obj.get("severity", obj.get("s") if mongo else None))
    if isinstance(level, int) and not isinstance(level, bool):
        level = _NUMERIC_LEVELS.get(level)
    elif level is not None and not isinstance(level, str):
        raise ValueError("level must be a string or a number")
    component = obj.get("logger", obj.get("name", obj.get("c") if mongo else None))
    return LogRecord(source, ts, message, message, level or None,
                     component if isinstance(component, str) and component else None)  # fmt: skip


def _dotted(obj: dict, name: str):
    """ECS writes `log.level` as a dotted key or as {"log": {"level": ...}}."""
    if name in obj:
        return obj[name]
    head, _, tail = name.partition(".")
    inner = obj.get(head)
    return inner.get(tail) if isinstance(inner, dict) else None


def _extra_time(obj: dict, now: float) -> float:
    """A contract record without `ts` (the first of _LOGGER_TIME_KEYS): a logger's other time
    field if it has one that reads as a time with a zone (ECS's `@timestamp`) or epoch seconds or
    milliseconds, else `now` (these fields are not the contract's, so one that does not read is
    not an error)."""
    stamp = next((obj[k] for k in _LOGGER_TIME_KEYS[1:] if obj.get(k) is not None), None)
    if stamp is None:
        return now
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        stamp = epoch_seconds(stamp)  # e.g. pino's milliseconds, as for a JSON logger's record
    try:
        return parse_ts(stamp)
    except ValueError:
        return now


def _clef(obj: dict, key_source: str, now: float) -> LogRecord:
    """Serilog's compact JSON (CLEF): `@m` (the rendered message) or `@mt` (its template), `@l`
    (absent: Information, as the format says), `@t`."""
    message = _object_text(obj, "@m" if "@m" in obj else "@mt")
    level = obj.get("@l", "Information")
    if not isinstance(level, str):
        raise ValueError("@l must be a string")
    ts = now if obj.get("@t") is None else parse_ts(obj["@t"])
    component = obj.get("SourceContext")
    return LogRecord(_object_source(obj, key_source), ts, message, message, level or None,
                     component if isinstance(component, str) and component else None)  # fmt: skip


def parse_log_value(
    value: bytes | None, key: bytes | None, now: float, log_format: LogFormat | None = None
) -> LogRecord:
    """Decode one tsguard.logs value: a JSON object {"source", "ts", "message"}, a journald or
    JSON logger's record ("MESSAGE"; "msg" or Docker's "log"; Serilog's "@m" / "@mt"), or a raw
    line.

    source: the object's, else the key, else "unknown"; ts: the object's (the rule of every topic,
    `detector.messages.parse_ts`), else a timestamp at the start of a raw line, else `now`. Raises ValueError with a short
    reason for input that cannot be used (broken UTF-8, a line that starts with "{" but is not a
    JSON object, a non-string message, a bad ts, an empty line).
    """
    if value is None:
        raise ValueError("empty value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-8") from None
    line, text = text, text.strip()
    if not text:
        raise ValueError("empty line")
    key_source = UNKNOWN_SOURCE
    if key:
        key_source = key.decode("utf-8", errors="replace")[:MAX_SOURCE_CHARS] or UNKNOWN_SOURCE
    if text.startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("invalid JSON") from None
        if not isinstance(obj, dict):
            raise ValueError("JSON value is not an object")
        if "message" not in obj and "MESSAGE" in obj:
            return _journald(obj, key_source)
        if "message" not in obj and ("msg" in obj or "log" in obj):
            return _logger_json(obj, key_source, now, log_format)
        if "message" not in obj and ("@m" in obj or "@mt" in obj):
            return _clef(obj, key_source, now)
        message = _object_text(obj, "message")
        source = _object_source(obj, key_source)
        level = obj.get("level", obj.get("severity"))  # "severity": Cloud Logging's name
        if level is not None and not isinstance(level, str):
            raise ValueError("level must be a string")
        if level is None:  # Elastic Common Schema's, read only when it is a word
            ecs = _dotted(obj, "log.level")
            level = ecs if isinstance(ecs, str) else None
        component = obj.get("logger", _dotted(obj, "log.logger"))
        return LogRecord(
            source,
            _extra_time(obj, now) if obj.get("ts") is None else parse_ts(obj["ts"]),
            message,
            None if level is None else message,
            level or None,
            component if isinstance(component, str) and component else None,
        )
    return _raw_record(key_source, line, now, log_format)


def json_lines(path: str, lines: list[str]) -> Iterator[tuple[int, object]]:
    """(line number, decoded value) of each non-blank line of a JSON lines file; a line that is
    not JSON is a user error naming the file and line."""
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield i, orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UserError(f"{path}:{i}: not a JSON object") from None


def load_corrections(path: str) -> list[tuple[int, str, str, str]]:
    """(line number, source, message, label) from a JSON lines file of
    {"source", "message", "label"} (the tsguard.log-feedback value)."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"corrections file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read corrections file {path}: {exc}") from None
    out = []
    for i, obj in json_lines(path, lines):
        fields = [
            obj.get(k) if isinstance(obj, dict) else None for k in ("source", "message", "label")
        ]
        if not all(isinstance(f, str) and f.strip() for f in fields):
            raise UserError(f"{path}:{i}: needs non-empty strings 'source', 'message' and 'label'")
        out.append((i, *fields))
    return out


def _widens(old: str, new: str) -> bool:
    """Whether Drain's template `new` is `old` with some tokens turned into <*>."""
    a, b = old.split(), new.split()
    return len(a) == len(b) and all(x == y or y == "<*>" for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# The head

# Per record of a batch: where it was mined, the record it belongs to, whether it is folded into it.
_Lines = tuple[list[MinedLine], list[LogRecord], list[bool]]


@dataclass(slots=True)
class _OpenRecord:
    record: LogRecord
    mined: MinedLine
    in_trace: bool  # a stack trace runs on from it: indented lines are its too
    awaits_message: bool = False  # a header that opens a record: its next line is the message


class LogAnalyzer:
    """Zero-shot classification and window summaries over log records (see module docstring)."""

    def __init__(
        self,
        config: LogAnalyzerConfig | None = None,
        encoder: TextEncoder | None = None,
        severity: SeverityModel | None = None,
        topic: TopicModel | None = None,
    ):
        """`severity`: a ready severity model (else the configured or shipped one is loaded when
        the label set is error/warning/info); `topic`: likewise for the shipped topic set."""
        from detector.logs.encoder import shared_encoder

        self.config = config = config or LogAnalyzerConfig()
        self.label_set = given = config.label_set or load_label_set(config.labels)
        examples = load_examples(config.examples, self.label_set) if config.examples else {}
        self._prototypes: tuple[np.ndarray, np.ndarray] | None = None
        self._prototype_texts = [(text, name) for name, texts in examples.items() for text in texts]
        if examples:
            # Prototypes beside the descriptions: the zero-shot classifier scores them as phrases.
            self.label_set = replace(
                self.label_set,
                labels=tuple(
                    replace(label, examples=label.examples + tuple(examples.get(label.name, ())))
                    for label in self.label_set.labels
                ),
            )
        if not 0.0 <= config.unknown_below <= 1.0:
            raise ValueError("unknown_below must be in [0, 1]")
        base = encoder if encoder is not None else shared_encoder(config.device)
        # Without the template cache every line's text goes to the model: nothing is remembered.
        self.encoder = CachedEncoder(base, max_entries=100_000 if config.template_cache else 0)
        self.classifier = ZeroShotClassifier(
            self.label_set,
            encoder=self.encoder,
            config=ClassifierConfig(
                unknown_below=config.unknown_below,
                sentence_weight=config.sentence_weight,
                cache_size=50_000 if config.template_cache else 0,
            ),
        )
        # Label set column of each severity class, when the label set is the three levels.
        self.severity_columns = severity_mapping(self.label_set.names)
        # The decision for each level a line can state (`_stated`), made once: not per line.
        self._stated_as: dict[str, Classification] = {}
        if self.severity_columns is not None:
            names = self.label_set.names
            for level, column in zip(SEVERITY_CLASSES, self.severity_columns, strict=True):
                scores = {name: 1.0 if i == column else 0.0 for i, name in enumerate(names)}
                self._stated_as[level] = Classification(names[column], 1.0, scores)
        self.severity: SeverityModel | None = None
        if self.severity_columns is not None and config.severity_head:
            self.severity = severity or SeverityModel.load(
                None if config.severity_model is None else Path(config.severity_model)
            )
        # The trained topic head, for the shipped topic set as shipped (its zero-shot features
        # come from those descriptions; a user's examples become prototypes, as for severity).
        self.topic: TopicModel | None = None
        if self.severity is None and config.topic_head and given == load_label_set("topic"):
            self.topic = topic or TopicModel.load(
                None if config.topic_model is None else Path(config.topic_model)
            )
            self._topic_zeroshot = ZeroShotClassifier(
                given,
                encoder=self.encoder,
                config=ClassifierConfig(cache_size=50_000 if config.template_cache else 0),
            )
        self._trained_probs: OrderedDict[TemplateText, np.ndarray] = OrderedDict()
        # (source, template id) -> (label, template text when corrected)
        self._corrections: dict[tuple[str, int], tuple[str, str]] = {}
        self.corrected_lines = 0
        if (self.severity is not None or self.topic is not None) and self._prototype_texts:
            names = self.label_set.names
            vecs = self.encoder.encode([text for text, _ in self._prototype_texts])
            owners = np.asarray([names.index(name) for _, name in self._prototype_texts])
            self._prototypes = (vecs, owners)
        self.miner = TemplateMiner(
            TemplateConfig(max_templates=config.max_templates, max_sources=config.max_sources)
        )
        abstractive = None
        if config.summarizer_model:
            from detector.logs.abstractive import AbstractiveSummarizer

            abstractive = AbstractiveSummarizer(config.summarizer_model, device=config.device)
        self.summarizer = WindowSummarizer(
            SummaryConfig(window_s=config.window_s, highlights=config.highlights),
            template_of=self.miner.template,
            encode=self.encoder.encode,
            abstractive=abstractive,
        )
        # (source, template id) -> (template text, classifier input)
        self._texts: OrderedDict[tuple[str, int], tuple[str, TemplateText]] = OrderedDict()
        self._last: tuple[list[LogRecord], _Lines] | None = None
        # Per source, its last record that began with a header or on its own, where it was mined
        # and whether a stack trace runs on from it.
        self._open_records: dict[str, _OpenRecord] = {}
        self.lines = 0
        self._since_prune = 0
        if config.corrections:
            for where, source, message, label in load_corrections(config.corrections):
                try:
                    self.correct(source, message, label)
                except ValueError as exc:
                    raise UserError(f"{config.corrections}:{where}: {exc}") from None

    # -- mining (once per record, shared by classify and observe) --

    def _mine(self, records: list[LogRecord]) -> list[MinedLine]:
        return self._lines(records)[0]

    def _lines(self, records: list[LogRecord]) -> _Lines:
        """Per record, where it was mined and the record it belongs to: itself, or for a line
        of a stack trace (`LogRecord.continues`; an indented line once a trace has begun) the
        source's record above it, whose time, level and component it takes. A frame also takes
        that record's template and is not summarised apart (folded); an exception's line is
        mined on its own, as is the message line of a header that `opens` a record (the header
        line is then folded when it is in the same batch: the summaries count the record once,
        by its message; a header whose message does not come is a line of its own)."""
        if self._last is not None and self._last[0] is records:
            return self._last[1]
        limit = self.config.max_line_chars
        mined, heads, folded = [], [], []
        open_records = self._open_records
        add = self.miner.add
        began_here: dict[str, int] = {}  # per source, the index of its open record's first line
        for i, r in enumerate(records):
            text = r.text
            joins = r.continues or r.indented or r.completes
            head = open_records.get(r.source) if joins else None
            if head is not None and r.completes and not head.awaits_message:
                head = None  # a `LEVEL: message` line with no header line above: its own record
            elif head is not None and not r.continues and not head.in_trace:
                head = None  # an indented line with no trace running: a line of its own
            fold = False
            if head is None:
                banner = r.level == "ERROR" and _UNCAUGHT_RE.match(text) is not None
                head = _OpenRecord(r, add(r.source, text[:limit]),
                                   r.continues or r.opens or banner, r.opens)  # fmt: skip
                began_here[r.source] = i
                open_records.pop(r.source, None)  # so the oldest is the least recently seen
                open_records[r.source] = head
                if len(open_records) > self.config.max_sources:
                    del open_records[next(iter(open_records))]
                m = head.mined
            else:
                head.in_trace = True
                if head.awaits_message:  # a header line's message: the record is counted by it
                    head.awaits_message = False
                    m = add(r.source, text[:limit])
                    if r.completes:  # the header line's time and component, this line's level
                        opened = head.record
                        head.record = replace(r, ts=opened.ts, component=opened.component)
                        head.mined = m
                    index = began_here.get(r.source)
                    if index is not None:  # the header line is in this batch
                        heads[index], folded[index] = head.record, True
                elif _EXCEPTION_RE.match(text):
                    m = add(r.source, text[:limit])
                else:
                    m, fold = head.mined, True
            heads.append(head.record)
            mined.append(m)
            folded.append(fold)
        self._last = (records, (mined, heads, folded))
        self.lines += len(records)
        return mined, heads, folded

    def _input(self, mined: MinedLine) -> TemplateText:
        """What gets classified for a line: its template's words as first seen.

        When Drain widens a template (a token becomes <*>), the template keeps its input and so
        its cached label instead of costing a new embedding (widenings are common; F1 unchanged).
        """
        key = (mined.source, mined.template_id)
        entry = self._texts.get(key)
        if entry is not None and entry[0] != mined.template:
            if _widens(entry[0], mined.template):
                entry = (mined.template, entry[1])
                self._texts[key] = entry
            else:  # an id reused after the source's miner was evicted: a different template
                entry = None
        if entry is None:
            template = mined.template
            entry = (
                template,
                TemplateText(embedding_text(template) or template, prose_words(template), template),
            )
            self._texts[key] = entry
            if len(self._texts) > 100_000:
                self._texts.popitem(last=False)
        else:
            self._texts.move_to_end(key)
        return entry[1]

    # -- public API --

    def prepare(self) -> None:
        """Load the embedding model and embed the label phrases now (startup work that the
        first classify would otherwise do)."""
        if self.topic is not None:
            self._topic_zeroshot.prepare()
        elif self.severity is None:
            self.classifier.prepare()
        else:
            self.encoder.encode(["load the model"])

    def probabilities(self, texts: list[TemplateText]) -> np.ndarray:
        """(n, labels) probabilities in the label set's order: a trained head (severity for the
        three levels, topic for the shipped topic set), the zero-shot classifier for any other
        label set."""
        if self.severity is None and self.topic is None:
            return self.classifier.probabilities(texts)
        if not self.config.template_cache:  # every line scored, its embedding computed again
            if not texts:
                return np.zeros((0, len(self.label_set.names)))
            return self._trained_rows(texts)
        cache = self._trained_probs
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            rows = self._trained_rows(todo)
            for text, row in zip(todo, rows, strict=True):
                cache[text] = row
            while len(cache) > 50_000:
                cache.popitem(last=False)
        if not texts:
            return np.zeros((0, len(self.label_set.names)))
        return np.stack([cache[t] if t in cache else self.probabilities([t])[0] for t in texts])

    def _trained_rows(self, texts: list[TemplateText]) -> np.ndarray:
        """The trained head's probabilities in label set order, pulled towards a user example
        that the template nearly repeats (cosine c >= PROTOTYPE_MATCH: row = c * that label +
        (1 - c) * row)."""
        emb = self.encoder.encode([t.sentence for t in texts])
        raws = [t.raw or t.sentence for t in texts]
        if self.topic is not None:  # the topics are the label set's names, in its order
            zeroshot = self._topic_zeroshot.probabilities(texts)
            rows = self.topic.probabilities(topic_features(emb, zeroshot, raws))
        else:
            assert self.severity is not None
            p = self.severity.probabilities(features(emb, raws))
            rows = np.empty_like(p)
            rows[:, self.severity_columns] = p
        if self._prototypes is not None:
            vecs, owners = self._prototypes
            sims = emb @ vecs.T
            best = sims.argmax(axis=1)
            for i, j in enumerate(best):
                c = float(sims[i, j])
                if c >= PROTOTYPE_MATCH:
                    rows[i] *= 1.0 - c
                    rows[i, owners[j]] += c
        return rows

    def correct(self, source: str, message: str, label: str) -> None:
        """From now on, lines of `message`'s template in `source` get `label` (an operator's
        correction). Raises ValueError for a label outside the label set."""
        if label not in self.label_set.names:
            raise ValueError(f"label {label!r} is not one of {self.label_set.names}")
        record = parse_log_value(message.encode(), source.encode(), 0.0)
        mined = self.miner.add(source, record.text[: self.config.max_line_chars])
        self._corrections[(source, mined.template_id)] = (label, mined.template)

    @property
    def corrections(self) -> int:
        """Corrections in force."""
        return len(self._corrections)

    def _corrected(self, mined: MinedLine) -> Classification | None:
        entry = self._corrections.get((mined.source, mined.template_id))
        if entry is None:
            return None
        label, template = entry
        if template != mined.template:
            if not _widens(template, mined.template):  # the id was reused: another template
                del self._corrections[(mined.source, mined.template_id)]
                return None
            self._corrections[(mined.source, mined.template_id)] = (label, mined.template)
        scores = {name: 1.0 if name == label else 0.0 for name in self.label_set.names}
        return Classification(label=label, confidence=1.0, scores=scores)

    def _stated(self, record: LogRecord) -> Classification | None:
        """The level a severity line states in its header, as a decision with confidence 1."""
        if record.level is None or not self._stated_as:
            return None
        level = STATED_LEVELS.get(record.level.lower())
        return None if level is None else self._stated_as[level]

    def classify(self, records: list[LogRecord]) -> list[LogClass]:
        """One tsguard.log-classes message per record (embeddings batched, cached per template)."""
        if not records:
            return []
        mined, heads, _ = self._lines(records)
        if self.config.template_cache:
            texts = [self._input(m) for m in mined]
            # A batch repeats few templates many times: decide each distinct one once.
            distinct = list(dict.fromkeys(texts))
            rows = self.probabilities(distinct)
            decided = dict(zip(distinct, map(self.classifier.decide, rows), strict=True))
            decisions = [decided[text] for text in texts]
        else:
            # The uncached path: each line's own masked words, embedded every time.
            limit = self.config.max_line_chars
            masked = [mask_variables(r.text[:limit]) for r in heads]
            texts = [TemplateText(embedding_text(m) or m, prose_words(m), m) for m in masked]
            decisions = list(map(self.classifier.decide, self.probabilities(texts)))
        out = []
        for record, head, c, m in zip(records, heads, decisions, mined, strict=True):
            fixed = self._corrected(m) if self._corrections else None
            if fixed is not None:
                self.corrected_lines += 1
            c = fixed or self._stated(head) or c
            header = None if head.content is None else LogHeader(head.level, head.component)
            out.append(
                LogClass(
                    record.source, head.ts, record.message, c.label, c.confidence,
                    dict(c.scores),  # each output owns its dict
                    header, corrected=fixed is not None,
                )
            )  # fmt: skip
        return out

    def _error_class(self, records: list[LogRecord], mined: list[MinedLine]) -> list[bool]:
        """Per line, whether it is error-class (its stated level, else its template's severity
        label): the summaries lead with these. All False when the labels are not the levels."""
        if self.severity_columns is None or not records:
            return [False] * len(records)
        texts = [self._input(m) for m in mined]
        distinct = list(dict.fromkeys(texts))
        error_column = self.severity_columns[0]
        judged = {
            t: int(np.argmax(row)) == error_column
            for t, row in zip(distinct, self.probabilities(distinct), strict=True)
        }
        out = []
        for record, text in zip(records, texts, strict=True):
            stated = STATED_LEVELS.get(record.level.lower()) if record.level else None
            out.append(stated == "error" if stated is not None else judged[text])
        return out

    def observe(
        self,
        records: list[LogRecord],
        scopes: Sequence[Hashable] | None = None,
        positions: Sequence[int] | None = None,
    ) -> list[LogSummary]:
        """Feed the window summarizer; returns summaries of the windows that closed (event time).

        `scopes` and `positions` (one per record, e.g. Kafka partition and offset) keep separate
        windows per scope and let `holds()` tell where each scope's open windows start."""
        out: list[LogSummary] = []
        add = self.summarizer.add
        n = len(records)
        scopes = [None] * n if scopes is None else scopes
        positions = [None] * n if positions is None else positions
        mined, heads, folded = self._lines(records)
        errors = self._error_class(heads, mined)
        for record, head, m, fold, scope, position, error in zip(
            records, heads, mined, folded, scopes, positions, errors, strict=True
        ):
            if fold:  # a stack frame is part of its record's line, not one more
                continue
            out.extend(
                add(record.source, head.ts, m.template_id, record.message, scope, position, error)
            )
        self._since_prune += len(records)
        if self._since_prune >= _PRUNE_EVERY:
            # The history of "seen" templates follows the miner's evictions; done now and then
            # because it walks every source's history.
            self._since_prune = 0
            self.summarizer.forget(
                lambda s, t: self.miner.template(s, t) is not None, self.config.max_sources
            )
        return out

    def process(
        self,
        records: list[LogRecord],
        scopes: Sequence[Hashable] | None = None,
        positions: Sequence[int] | None = None,
    ) -> tuple[list[LogClass], list[LogSummary]]:
        """classify + observe in one call (mines each line once)."""
        return self.classify(records), self.observe(records, scopes, positions)

    def advance(self, watermark: float) -> list[LogSummary]:
        """Close windows that end at or before `watermark` (e.g. wall clock minus a grace period),
        so a source that went quiet still gets its summary."""
        return self.summarizer.advance(watermark)

    def flush(self) -> list[LogSummary]:
        """Close all open windows (shutdown / end of file)."""
        return self.summarizer.flush()

    def holds(self) -> dict[Hashable, int]:
        """Per scope, the lowest position of a line in a summary window still open: what a
        Kafka commit must not pass for the summary to be rebuilt after a crash."""
        return self.summarizer.holds()

    def drop(self, scopes: Collection[Hashable]) -> None:
        """Forget the open windows of these scopes without publishing them (their lines will be
        read again: a partition given away, or re-consumed from the last commit)."""
        self.summarizer.drop(scopes)

    @property
    def embedded_texts(self) -> int:
        """Texts that went to the embedding model so far (cache misses)."""
        return self.encoder.encoded
