"""Log line headers: split a raw line into its header fields (level, component, host) and content.

Templates are mined on the content only: a header mined as if it were the message gives templates
such as `- <NUM> <NUM> <*> <NUM>-<NUM>-<NUM>-<NUM> <*> RAS KERNEL <*> <*> <*>`. Recognised without
configuration (after a leading timestamp that `head.strip_timestamp` knows):

- level-first layouts: log4j / logback / Python logging / Spark / HDFS / Android / Windows CBS /
  Apache / nginx / PostgreSQL / Elasticsearch / Spring Boot, i.e. optional pid and tid numbers,
  an optional `[thread]`, a level word (`ERROR`, `warn`, `[notice]`, `[WARN ]`, PostgreSQL's
  `LOG:`, or a one-letter Android level after pid and tid), Spring Boot's `pid ---`, up to two
  `[...]` groups, then an optional `component:` or `component  :` (or a short component
  followed by two or more spaces); PostgreSQL's `DETAIL:`, `HINT:`, `CONTEXT:`, `STATEMENT:`,
  `QUERY:` and `LOCATION:` in place of the level mark the line as part of the record above it;
- syslog (BSD): `Jun 14 15:16:01 host program[pid]: content` (a relayed host as
  `host/relay` or `user@host`), and RFC 5424 / a leading `<PRI>`, whose severity is the level;
- a relay prefix before any of these, as the Sandia supercomputer logs carry it (Oliner and
  Stearley, DSN 2007): an alert tag (`-` when none), epoch seconds, the date and the reporting
  node, `- 1131566461 2005.11.09 node Nov 9 12:01:01 node/node crond[2915]: content`; the epoch
  is the line's time, and the tag is dropped (in those collections it is the label);
- glog / abseil (`I1206 04:59:41.123456  1234 file.cc:12] content`);
- .NET's console logger, whose header line `fail: Category[event id]` is followed by the
  message on an indented line (the message is the record's content: `LogAnalyzer._lines`);
- Python logging's default `WARNING:root:content`; Ruby's Logger
  `E, [2024-01-31T10:00:00.123456 #1234] ERROR -- progname: content`;
- Celery's worker `[2024-01-31 10:00:00,123: ERROR/MainProcess] content`; a level, a
  `[thread]` and then the time, as Cassandra writes them
  (`INFO  [main] 2024-01-31 10:00:00,123 File.java:12 - content`); Apache 2.4's `[module:level]`;
- web servers' access logs (Common and Combined Log Format): `client - user [10/Oct/2000:13:55:36
  -0700] "GET / HTTP/1.0" 500 2326`, whose content is the request on (no level is stated), and
  Redis' `1:M 31 Jan 2024 10:00:00.123 # content` (`parse_stamped`, which also reads their times);
- java.util.logging's default two-line layout: `Jan 31, 2024 9:05:03 AM com.acme.Pool borrow`
  (time and the class that logged, read by `parse_stamped`) opens a record that the next line,
  `SEVERE: content` (a level-first line with no time), completes with its level and content;
- logfmt (`ts=... level=error component=tsdb msg="compaction failed" err="disk full"`), read by
  `parse_logfmt` before anything else;
- a line that starts with a level word and a colon or brackets (`ERROR: disk full`);
- otherwise an upper-case level word among a line's first ten tokens after a token with a digit
  (BGL `... R02-M1-N0 RAS KERNEL INFO content`, ZooKeeper `... - INFO  [thread:Class@774] - content`
  whose `Class` is the component,
  OpenStack `file.log 2017-05-16 00:00:00.008 25746 INFO nova.compute [req-..] content`): what
  follows, without leading `[...]` groups and dashes, is the content (the first date and time
  among the header's tokens is the line's time: `analyzer.header_timestamp`).

journald JSON records and container runtimes' (CRI) lines are read in
`analyzer.parse_log_value`. Anything else is a loghub-style format,
`LogFormat('<Date> <Time> <Level> <Component>: <Content>')`: each `<Field>` matches lazily, the
last one greedily, spaces match any run of spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from detector.errors import UserError

LEVEL_WORDS = (
    "EMERG|EMERGENCY|ALERT|CRIT|CRITICAL|ERR|ERROR|FATAL|PANIC|SEVERE|WARN|WARNING|NOTICE|INFO|"
    "INFORMATION|DEBUG|TRACE|VERBOSE|FINE|FINER|FINEST"
)
_AFTER_TS = re.compile(
    r"(?P<ids>(?:\d+\s+){0,2})"
    r"(?:\[[^\]]{0,64}\]\s*)?"
    r"(?:\[ ?(?:[\w\-]{1,32}:)?(?P<blevel>(?i:" + LEVEL_WORDS + r")) *\]:?\s*"
    r"|(?P<level>(?i:" + LEVEL_WORDS + r")|[VDIWEF]|LOG(?=:))(?=[\s:])[:\s]\s*"
    r"|(?P<part>DETAIL|HINT|CONTEXT|STATEMENT|QUERY|LOCATION):\s*)"
    r"(?:\d+ --- )?"  # Spring Boot's pid
    r"(?:\[[^\]]{0,64}\]\s*){0,2}"
    r"(?:(?P<component>[\w.$\-/()#@]{1,128}?)(?:\[\d+\])?(?::| +: )\s*"
    r"|(?P<wcomponent>[A-Za-z][\w.\-]{0,31})\s{2,})?"
    r"(?P<content>.*)$",
    re.DOTALL,
)
_PID_TID = re.compile(r"\d+#\d+")
_SYSLOG_BODY = re.compile(
    r"(?P<host>[\w.\-/@]+)\s+(?P<component>[\w.\-/()@]{1,128}?)(?:\[\d+\])?:\s+(?P<content>.*)$",
    re.DOTALL,
)
_RELAY = re.compile(
    r"\S{1,64} (?P<epoch>\d{9,10}) \d{4}\.\d{2}\.\d{2} \S+ (?P<rest>\S.*)$", re.DOTALL
)
_PRI = re.compile(r"<(?P<pri>\d{1,3})>(?:1\s+)?")
_PRI_LEVEL = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(frozen=True)
class Header:
    content: str  # the message without its header
    level: str | None = None  # as written ("INFO", "notice", "W")
    component: str | None = None
    host: str | None = None
    # The line is one more part of the record above it (PostgreSQL's `DETAIL:` or `STATEMENT:`).
    continues: bool = False
    opens: bool = False  # the record's message follows on the next line (.NET, java.util.logging)
    # The line completes the record whose header line opened it: java.util.logging's second line
    # (`SEVERE: message`, no time of its own) gives that record its level and content.
    completes: bool = False


def parse_after_timestamp(rest: str, syslog: bool) -> Header | None:
    """Header fields of a line whose timestamp has been stripped (`rest`), or None."""
    m = _AFTER_TS.match(rest)
    if m and m.group("part"):
        content = m.group("content").strip()
        return Header(content, continues=True) if content else None
    if m:
        level = m.group("blevel") or m.group("level")
        # A single letter is a level only in the Android layout (after pid and tid).
        if len(level) > 1 or (m.group("ids").split() and level.isupper()):
            component = m.group("component") or m.group("wcomponent")
            if component and _PID_TID.fullmatch(component):  # nginx's `pid#tid:`, not a name
                component = None
            content = m.group("content").strip()
            if content:
                return Header(content, level, component)
    if syslog:
        m = _SYSLOG_BODY.match(rest)
        if m and m.group("content").strip():
            return Header(m.group("content").strip(), None, m.group("component"), m.group("host"))
    return None


# glog / abseil: `I1206 04:59:41.123456  1234 file.cc:12] message`.
_GLOG = re.compile(
    r"(?P<level>[IWEF])\d{4} \d{2}:\d{2}:\d{2}(?:\.\d+)?\s+\d+ (?P<component>[\w.\-]+:\d+)\] "
    r"(?P<content>.*)$",
    re.DOTALL,
)


# Python logging's default layout (logging.basicConfig): `LEVEL:logger name:message`.
_PYTHON_DEFAULT = re.compile(
    r"(?P<level>CRITICAL|ERROR|WARNING|INFO|DEBUG):(?P<component>[\w.\-]{1,128}):(?P<content>.*)$",
    re.DOTALL,
)


# Ruby's Logger: `E, [2024-01-31T10:00:00.123456 #1234] ERROR -- progname: message`.
_RUBY = re.compile(
    r"[DIWEFA], \[[^\]]{1,64} #\d+\] +(?P<level>[A-Z]+) -- (?P<component>[^:\s][^:]{0,127})?: "
    r"(?P<content>.*)$",
    re.DOTALL,
)


# Celery's worker: `[2024-01-31 10:00:00,123: ERROR/MainProcess] message`.
_CELERY = re.compile(
    r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}: (?P<level>[A-Z]+)/(?P<component>[\w\-]{1,64})\] "
    r"(?P<content>.*)$",
    re.DOTALL,
)


# A level, a `[thread]`, then the time (Cassandra's default logback layout):
# `INFO  [main] 2024-01-31 10:00:00,123 CassandraDaemon.java:123 - message`.
_LEVEL_THREAD_TIME = re.compile(
    r"(?P<level>TRACE|DEBUG|INFO|WARN|ERROR|FATAL) +\[[^\]]{0,128}\] +"
    r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})? +"
    r"(?:(?P<component>[\w.$\-]{1,128}:\d+) - )?(?P<content>.*)$",
    re.DOTALL,
)


# Layouts whose pattern names the level, component and content of the whole line, tried in turn.
_WHOLE_LINE = (_GLOG, _PYTHON_DEFAULT, _RUBY, _CELERY, _LEVEL_THREAD_TIME)


def parse_whole_line(line: str) -> Header | None:
    """The header of a line in one of the `_WHOLE_LINE` layouts (glog, Python logging's
    default, Ruby's Logger, Celery's worker, Cassandra's), or None."""
    for pattern in _WHOLE_LINE:
        m = pattern.match(line)
        if m is not None and m.group("content").strip():
            return Header(m.group("content").strip(), m.group("level"), m.group("component"))
    return None


# .NET's console logger (Microsoft.Extensions.Logging, simple format): a header line
# `fail: Category[event id]`, the message on the next, indented line.
_DOTNET = re.compile(
    r"(?P<level>trce|dbug|info|warn|fail|crit): (?P<component>[^\s\[\]]{1,256})\[\d+\]\s*$"
)


def parse_dotnet(line: str) -> Header | None:
    """The header line of .NET's console logger (`fail: Category[event id]`); its content is
    the category and event id (the message follows on the next line)."""
    m = _DOTNET.match(line) if line[4:6] == ": " else None  # every level has four letters
    return Header(line[m.end("level") + 2 :].strip(), m.group("level"), m.group("component"),
                  opens=True) if m else None  # fmt: skip


def _strptime(stamp: str, layout: str) -> float | None:
    """Epoch seconds of a time written in `layout` (UTC unless it has a zone), else None."""
    try:
        when = datetime.strptime(stamp, layout)
    except ValueError:  # e.g. month "Foo": the caller uses the arrival time
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# The Common and Combined Log Formats of web servers' access logs (Apache, nginx):
# `client ident user [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 2326 ...`.
_ACCESS = re.compile(
    r"(?P<client>\S+) \S+ \S+ \[(?P<time>\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    r"(?P<content>\".*)$",
    re.DOTALL,
)
# Redis: `pid:role 31 Jan 2024 10:00:00.123 # message`, the mark its level.
_REDIS = re.compile(
    r"\d+:[XCSM] (?P<time>\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})? "
    r"(?P<mark>[.\-*#]) (?P<content>.*)$",
    re.DOTALL,
)
_REDIS_LEVELS = {".": "debug", "-": "verbose", "*": "notice", "#": "warning"}
# java.util.logging's SimpleFormatter (its default): `Jan 31, 2024 9:05:03 AM com.example.Foo run`,
# the time and the class (and method) that logged; `LEVEL: message` follows on the next line.
_JUL = re.compile(
    r"(?P<time>[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M) "
    r"(?P<component>[A-Za-z_$][\w.$]{0,255})(?: [\w$<>]{1,128})?\s*$"
)


def parse_stamped(line: str) -> tuple[Header, float | None] | None:
    """(header, the line's time or None) of a layout whose time only this parser reads: an
    access log line (the content is the request on, the client is the host; no level is
    stated), Redis' (its mark as a level word: `#` warning, `*` notice, `-` verbose, `.`
    debug) or java.util.logging's header line (it opens a record: class and method as content,
    the class as component; level and message come on the next line)."""
    m = _ACCESS.match(line) if '] "' in line else None  # the time, then the request
    if m is not None:
        header = Header(m.group("content").strip(), None, None, m.group("client"))
        return header, _strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
    m = _REDIS.match(line) if line[:1].isdigit() else None
    if m is not None and m.group("content").strip():
        ts = _strptime(m.group("time"), "%d %b %Y %H:%M:%S")
        if ts is not None and m.group("frac"):
            ts += float(m.group("frac"))
        return Header(m.group("content").strip(), _REDIS_LEVELS[m.group("mark")]), ts
    m = _JUL.match(line) if line[3:4] == " " and line[:1].isupper() else None  # `Jan 31, `
    if m is not None:
        header = Header(line[m.end("time") + 1 :].strip(), None, m.group("component"), opens=True)
        return header, _strptime(m.group("time"), "%b %d, %Y %I:%M:%S %p")
    return None


def parse_relay(line: str) -> tuple[float, str] | None:
    """(epoch seconds, the relayed line) for a line with the relay prefix above, else None."""
    m = _RELAY.match(line)
    return (float(m.group("epoch")), m.group("rest")) if m else None


def parse_pri(line: str) -> tuple[str, str] | None:
    """(level, rest of the line) for a line with a leading syslog `<PRI>`, else None."""
    m = _PRI.match(line)
    if not m or int(m.group("pri")) > 191:
        return None
    return _PRI_LEVEL[int(m.group("pri")) % 8], line[m.end() :]


# FAILURE: Blue Gene/L's RAS severities are INFO, WARNING, SEVERE, ERROR, FATAL and FAILURE.
_CAPS_LEVEL = re.compile(
    r"(?:EMERG|ALERT|CRIT|CRITICAL|ERROR|ERR|FATAL|FAILURE|PANIC|SEVERE|WARN|WARNING|NOTICE|INFO"
    r"|DEBUG|TRACE)"
)
# Inside a `[...]` group: text, and bracket groups one level deep (`[QuorumPeer[myid=1]/...]`).
_IN_BRACKETS = r"(?:[^\[\]]|\[[^\[\]]*\]){0,300}"
_LEADING_NOISE = re.compile(r"(?:\[" + _IN_BRACKETS + r"\]\s*|-\s+)*")
# A header token: has a digit or punctuation, or is upper case (`RAS`, `KERNEL`); a plain word
# such as `Took` means the line's prose has begun and a level word after it is content.
_PLAIN_WORD = re.compile(r"[A-Za-z]*[a-z][A-Za-z]*")
_DOTTED_COMPONENT = re.compile(r"([\w$-]+(?:\.[\w$-]+)+):?\s+")
# log4j's `[%t:%C{1}@%L]` (ZooKeeper's layout): the thread, then the class that logged and its line.
_THREAD_CLASS = re.compile(r"\[" + _IN_BRACKETS + r":(?P<cls>[A-Za-z_$][\w$]*)@\d+\]")


def parse_embedded_level(line: str) -> Header | None:
    """An upper-case level word inside a header of unknown layout (see the module docstring)."""
    tokens = line.split(None, 10)
    digit_seen = False
    for i, token in enumerate(tokens[:10]):
        if digit_seen and _CAPS_LEVEL.fullmatch(token) and i + 1 < len(tokens):
            rest = line.split(None, i + 1)[i + 1]
            m = _THREAD_CLASS.match(rest)
            component = m.group("cls") if m else None
            rest = rest[_LEADING_NOISE.match(rest).end() :]
            m = None if component else _DOTTED_COMPONENT.match(rest)
            if m:
                component, rest = m.group(1), rest[m.end() :]
                rest = rest[_LEADING_NOISE.match(rest).end() :]
            rest = rest.strip()
            return Header(rest, token, component) if rest else None
        if _PLAIN_WORD.fullmatch(token):
            return None
        digit_seen = digit_seen or any(c.isdigit() for c in token)
    return None


# logfmt (logrus' text format, go-kit, Prometheus, Grafana): `key=value` pairs, a value bare or
# double-quoted with backslash escapes; a line is logfmt only if it is pairs from end to end.
_LOGFMT_PAIR = re.compile(r'([A-Za-z_@][\w.@\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s+|$)')
_LOGFMT_ESCAPE = re.compile(r"\\(.)")
_LOGFMT_MESSAGE = ("msg", "message")
_LOGFMT_LEVEL = ("level", "lvl", "severity")
_LOGFMT_COMPONENT = ("component", "logger", "module", "caller")
_LOGFMT_ERROR = ("err", "error")


def parse_logfmt(line: str) -> tuple[Header, str | None] | None:
    """(header, its time as written) of a logfmt line with a `msg` or `message`, else None. The
    content is the message, then `: ` and the `err` or `error` value when there is one."""
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = _LOGFMT_PAIR.match(line, pos)
        if m is None:
            return None
        value = m.group(2)
        if value.startswith('"'):
            value = _LOGFMT_ESCAPE.sub(r"\1", value[1:-1])
        pairs.setdefault(m.group(1), value)
        pos = m.end()
    message = next((pairs[k] for k in _LOGFMT_MESSAGE if pairs.get(k, "").strip()), None)
    if message is None:
        return None
    error = next((pairs[k] for k in _LOGFMT_ERROR if pairs.get(k)), None)
    content = f"{message.strip()}: {error}" if error else message.strip()
    level = next((pairs[k] for k in _LOGFMT_LEVEL if pairs.get(k)), None)
    component = next((pairs[k] for k in _LOGFMT_COMPONENT if pairs.get(k)), None)
    stamp = next((pairs[k] for k in ("ts", "time", "t", "timestamp") if pairs.get(k)), None)
    return Header(content, level, component), stamp


_FIELD_RE = re.compile(r"<(\w+)>")


class LogFormat:
    """A loghub-style line format: `<Date> <Time> <Level> <Component>: <Content>`."""

    def __init__(self, spec: str) -> None:
        parts = _FIELD_RE.split(spec)
        fields = parts[1::2]
        if "Content" not in fields:
            raise UserError(f"--log-format {spec!r}: needs a <Content> field")
        if len(set(fields)) != len(fields):
            raise UserError(f"--log-format {spec!r}: a field appears twice")
        pattern = ""
        for i, part in enumerate(parts):
            if i % 2 == 0:
                pattern += r"\s+".join(re.escape(chunk) for chunk in part.split(" "))
            else:
                last = i == len(parts) - 2
                pattern += f"(?P<{part}>.*)" if last else f"(?P<{part}>.*?)"
        self.spec = spec
        self.fields = tuple(fields)
        self._re = re.compile("^" + pattern + "$", re.DOTALL)

    def parse(self, line: str) -> dict[str, str] | None:
        """The line's fields, or None when the line does not have this format."""
        m = self._re.match(line)
        return None if m is None else {k: v.strip() for k, v in m.groupdict().items()}
