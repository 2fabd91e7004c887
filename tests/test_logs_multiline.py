"""Records written over several lines: a stack trace's frames and exception lines, PostgreSQL's
DETAIL and STATEMENT lines belong to the record above them."""

from __future__ import annotations

import pytest

from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord, parse_log_value
from detector.messages import LogHeader
from tests.fakes import HashEncoder

NOW = 1_700_000_000.0
T0 = 1704103200.0  # 2024-01-01 10:00:00 UTC

JAVA = [
    "2024-01-01 10:00:00,000 WARN  [pool-1] com.acme.Client: call failed, retrying",
    "java.net.SocketTimeoutException: Read timed out",
    "\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)",
    "\tat com.acme.Client.call(Client.java:88)",
    "Caused by: java.net.ConnectException: Connection refused",
    "\t... 12 more",
]


def _parse(line: str, source: bytes = b"app") -> LogRecord:
    return parse_log_value(line.encode(), source, NOW)


def _head() -> LogAnalyzer:
    return LogAnalyzer(LogAnalyzerConfig(labels="error,warning,info"), encoder=HashEncoder())


@pytest.mark.parametrize(
    ("line", "continues", "indented"),
    [
        ("\tat com.acme.Client.call(Client.java:88)", True, True),
        ("at com.acme.Client.call(Client.java:88)", True, False),  # a shipper trimmed the tab
        ("\t... 12 more", True, True),
        ("Caused by: java.net.ConnectException: Connection refused", True, False),
        ("java.lang.IllegalStateException", True, False),
        ('  File "/app/x.py", line 3, in <module>', True, True),
        ("KeyError: 'user'", True, False),
        ("During handling of the above exception, another exception occurred:", True, False),
        ("    main()", False, True),  # a traceback's code line: its only when a trace runs
        (" getTodayTotalDetailSteps = 1514038440000##6993", False, True),
        ("Error: disk full", False, False),  # a program's own message, not a class name
        ("2024-01-01 10:00:00,000 ERROR java.lang.IllegalStateException: x", False, False),
        ("2024-01-01T10:00:00Z at com.acme.Main.run(Main.java:3)", False, False),  # has a time
        # Go's runtime traceback
        ("goroutine 1 [running]:", True, False),
        ("main.handler(0xc000010000)", True, False),
        ("net/http.(*conn).serve(0xc000126000, {0x7c1a28, 0xc0000a4ae0})", True, False),
        ("created by net/http.(*Server).Serve in goroutine 1", True, False),
        ("\t/usr/local/go/src/net/http/server.go:3086 +0x4cc", True, True),
        ("[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x48f3c5]", True, False),
        ("exit status 2", False, False),
        ("request served in 3 ms", False, False),
    ],
)
def test_which_raw_lines_read_as_part_of_a_stack_trace(line, continues, indented) -> None:
    rec = _parse(line)
    assert (rec.continues, rec.indented) == (continues, indented)


def test_the_runtimes_report_of_an_escaped_exception_states_error() -> None:
    for banner in ("Traceback (most recent call last):",
                   'Exception in thread "main" java.lang.RuntimeException: boom',
                   "panic: runtime error: index out of range [3] with length 3",  # Go
                   "fatal error: all goroutines are asleep - deadlock!",
                   "/app/src/users.js:12"):  # fmt: skip
        # (the last: Node.js's first line of an uncaught exception, the file and line that threw)
        rec = _parse(banner)
        assert (rec.level, rec.content, rec.continues) == ("ERROR", banner, False)


def test_a_trace_takes_its_records_level_time_and_component() -> None:
    out = _head().classify([_parse(line) for line in JAVA])
    assert [o.message for o in out] == [JAVA[0]] + [line.strip() for line in JAVA[1:]]
    assert {(o.label, o.confidence, o.ts) for o in out} == {("warning", 1.0, T0)}
    assert {o.header for o in out} == {LogHeader("WARN", "com.acme.Client")}


def test_a_trace_continues_across_batches_and_per_source() -> None:
    head = _head()
    head.classify(
        [_parse(JAVA[0], b"a"), _parse("2024-01-01 10:00:01,000 ERROR [m] db: down", b"b")]
    )
    out = head.classify([_parse(JAVA[2], b"b"), _parse(JAVA[3], b"a")])
    assert [(o.source, o.label, o.header) for o in out] == [
        ("b", "error", LogHeader("ERROR", "db")),
        ("a", "warning", LogHeader("WARN", "com.acme.Client")),
    ]


def test_an_indented_line_with_no_trace_running_is_a_line_of_its_own() -> None:
    head = _head()
    recs = [_parse(JAVA[0]), _parse(" getTodayTotalDetailSteps = 1514038440000##6993")]
    stated, own = head.classify(recs)
    assert stated.confidence == 1.0
    assert (own.ts, own.header) == (NOW, None) and own.confidence < 1.0


def test_an_escaped_exception_after_an_ordinary_line_is_an_error_of_its_own() -> None:
    lines = [
        "2024-01-01 10:00:00,000 INFO  [main] app: request served",
        "Traceback (most recent call last):",
        '  File "/app/x.py", line 3, in <module>',
        "    main()",
        "ValueError: bad value",
    ]
    out = _head().classify([_parse(line) for line in lines])
    assert [o.label for o in out] == ["info", "error", "error", "error", "error"]
    assert {o.ts for o in out[1:]} == {NOW}  # the banner has no time of its own: arrival time


def test_summaries_count_records_and_name_the_exceptions_not_the_frames() -> None:
    head = _head()
    lines = JAVA + ["2024-01-01 10:00:05,000 INFO  [main] com.acme.Server: request served"]
    head.observe([_parse(line) for line in lines])
    (summary,) = head.flush()
    templates = [t.template for t in summary.templates]
    assert summary.lines == 4  # the record, its two exceptions' lines, the next record
    assert not any(t.startswith(("at ", "...")) for t in templates)
    assert "Caused by: java.net.ConnectException: Connection refused" in templates
    assert summary.window.start == T0  # the trace's lines are filed under their record's time


def test_postgresqls_detail_and_statement_lines_are_parts_of_their_record() -> None:
    lines = [
        '2024-01-01 10:00:00.000 UTC [4242] ERROR:  duplicate key value violates "users_pkey"',
        "2024-01-01 10:00:00.000 UTC [4242] DETAIL:  Key (id)=(1) already exists.",
        "2024-01-01 10:00:00.000 UTC [4242] STATEMENT:  INSERT INTO users VALUES (1)",
    ]
    recs = [_parse(line) for line in lines]
    assert [(r.content, r.level, r.continues) for r in recs[1:]] == [
        ("Key (id)=(1) already exists.", None, True),
        ("INSERT INTO users VALUES (1)", None, True),
    ]
    head = _head()
    assert {(o.label, o.confidence) for o in head.classify(recs)} == {("error", 1.0)}
    (summary,) = head.observe(recs) + head.flush()
    assert (summary.lines, [t.template for t in summary.templates]) == (
        1,
        ['duplicate key value violates "users_pkey"'],
    )


def test_a_dotnet_header_line_is_followed_by_its_message() -> None:
    lines = [
        "fail: Microsoft.AspNetCore.Diagnostics.ExceptionHandlerMiddleware[1]",
        "      An unhandled exception has occurred while executing the request.",
        "      System.InvalidOperationException: boom",
        "         at Foo.Bar() in /src/Foo.cs:line 10",
        "info: Microsoft.Hosting.Lifetime[0]",
        "      Now listening on: http://localhost:5000",
    ]
    recs = [_parse(line) for line in lines]
    assert (recs[0].level, recs[0].opens) == ("fail", True)
    head = _head()
    out = head.classify(recs)
    assert [o.label for o in out] == ["error"] * 4 + ["info"] * 2
    (summary,) = head.observe(recs) + head.flush()
    # each record counted once, by its message; the exception named; the frame folded
    assert [t.template for t in summary.templates] == [
        "An unhandled exception has occurred while executing the request.",
        "System.InvalidOperationException: boom",
        "Now listening on: http://localhost:<NUM>",
    ]


JUL = [
    "Jan 1, 2024 10:00:00 AM com.acme.Pool borrow",
    "SEVERE: Connection refused to db-01",
    "java.net.ConnectException: Connection refused",
    "\tat com.acme.Pool.borrow(Pool.java:42)",
    "Jan 1, 2024 10:00:05 PM org.apache.catalina.startup.Catalina start",
    "INFO: Server startup in 1234 ms",
]
T_PM = T0 + 12 * 3600 + 5  # 10:00:05 PM


def test_a_java_util_logging_header_line_opens_a_record_its_next_line_completes() -> None:
    recs = [_parse(line) for line in JUL]
    assert (recs[0].ts, recs[0].component, recs[0].level, recs[0].opens) == (
        T0,
        "com.acme.Pool",
        None,
        True,
    )
    assert (recs[1].ts, recs[1].level, recs[1].content, recs[1].completes) == (
        NOW,
        "SEVERE",
        "Connection refused to db-01",
        True,
    )
    assert recs[4].ts == T_PM
    head = _head()
    out = head.classify(recs)
    # both lines of a record, and its trace, have the second line's level at the first's time
    assert [(o.label, o.confidence, o.ts) for o in out] == [("error", 1.0, T0)] * 4 + [
        ("info", 1.0, T_PM)
    ] * 2
    assert out[0].header == LogHeader("SEVERE", "com.acme.Pool") == out[3].header
    morning, evening = head.observe(recs) + head.flush()
    assert (morning.window.start, morning.lines, evening.lines) == (T0, 2, 1)
    templates = [t.template for s in (morning, evening) for t in s.templates]
    assert templates == [  # each record once, by its message; the exception named
        "Connection refused to db<NUM>",
        "java.net.ConnectException: Connection refused",
        "Server startup in <NUM> ms",
    ]


def test_a_java_util_logging_record_split_across_batches_still_completes() -> None:
    head = _head()
    (first,) = head.classify([_parse(JUL[0])])
    message, other = head.classify([_parse(JUL[1]), _parse(JUL[1], b"other")])
    assert (message.label, message.ts, message.header) == (
        "error",
        T0,
        LogHeader("SEVERE", "com.acme.Pool"),
    )
    assert first.ts == T0  # labelled alone: its level had not come yet
    # a `LEVEL: message` line with no header line above it is a record of its own
    assert (other.label, other.ts, other.header) == ("error", NOW, LogHeader("SEVERE", None))


def test_a_header_line_whose_message_does_not_come_is_a_line_of_its_own() -> None:
    lines = [
        "fail: App.Worker[7]",  # the next line is another record's header: no message came
        "info: Microsoft.Hosting.Lifetime[0]",
        "      Now listening on: http://localhost:5000",
    ]
    head = _head()
    (summary,) = head.observe([_parse(line) for line in lines]) + head.flush()
    assert summary.lines == 2
    assert [t.template for t in summary.templates] == [
        "App.Worker[<NUM>]",
        "Now listening on: http://localhost:<NUM>",
    ]


def test_a_go_panic_and_its_goroutines_are_one_error_record() -> None:
    lines = [
        "2024/01/01 10:00:00 starting server on :8080",
        "panic: runtime error: index out of range [3] with length 3",
        "goroutine 1 [running]:",
        "main.handler(0xc000010000)",
        "\t/app/main.go:10 +0x1d",
        "main.main()",
        "\t/app/main.go:20 +0x25",
        "exit status 2",
    ]
    recs = [_parse(line) for line in lines]
    head = _head()
    out = head.classify(recs)
    assert [(o.label, o.confidence) for o in out[1:7]] == [("error", 1.0)] * 6
    assert out[0].header is None and out[7].header is None  # before and after: lines of their own
    assert {o.ts for o in out[1:7]} == {NOW}  # the runtime writes no time: the arrival time
    summaries = head.observe(recs) + head.flush()
    templates = [t.template for s in summaries for t in s.templates]
    assert "panic: runtime error: index out of range [<NUM>] with length <NUM>" in templates
    assert sum(s.lines for s in summaries) == 3  # the server's line, the panic, `exit status`


def test_a_node_crash_is_one_error_record() -> None:
    lines = [
        "Server listening on 3000",
        "/app/src/users.js:12",
        "    return user.id;",
        "                ^",
        "TypeError: Cannot read properties of undefined (reading 'id')",
        "    at getUser (/app/src/users.js:12:20)",
        "Node.js v20.11.0",
    ]
    out = _head().classify([_parse(line) for line in lines])
    assert [(o.label, o.confidence) for o in out[1:6]] == [("error", 1.0)] * 5
    assert out[0].header is None and out[6].header is None
