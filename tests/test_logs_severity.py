"""The trained severity head, header parsing before mining, stated levels, label coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

import training.severity as training
from detector.errors import UserError
from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig, LogRecord, parse_log_value
from detector.logs.headers import LogFormat
from detector.logs.severity import (
    CLASSES,
    LEXICAL_NAMES,
    SeverityModel,
    keyword_level,
    lexical_features,
    severity_mapping,
)
from detector.messages import LogHeader
from stream.cli import main
from tests.fakes import HashEncoder

NOW = 1_700_000_000.0
MODEL_DIR = Path(__file__).resolve().parents[1] / "detector" / "logs" / "models" / "severity"


def _parse(line: str, log_format: LogFormat | None = None) -> LogRecord:
    return parse_log_value(line.encode(), b"app", NOW, log_format)


@pytest.mark.parametrize(
    ("line", "content", "level", "component"),
    [
        (
            "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.MRAppMaster: Created app 7",
            "Created app 7",
            "INFO",
            "org.apache.hadoop.MRAppMaster",
        ),
        (
            "081109 203615 148 WARN dfs.DataNode$PacketResponder: Got exception while serving",
            "Got exception while serving",
            "WARN",
            "dfs.DataNode$PacketResponder",
        ),
        (
            "03-17 16:13:38.811  1702  2395 E WindowManager: bad token",
            "bad token",
            "E",
            "WindowManager",
        ),  # fmt: skip
        (
            "[Sun Dec 04 04:47:44 2005] [error] mod_jk child in error state 6",
            "mod_jk child in error state 6",
            "error",
            None,
        ),  # fmt: skip
        (
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; uid=0",
            "authentication failure; uid=0",
            None,
            "sshd(pam_unix)",
        ),  # fmt: skip
        (
            "<11>Oct 11 22:14:15 mymachine su[12]: 'su root' failed",
            "'su root' failed",
            "err",
            "su",
        ),  # fmt: skip
        (
            "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
            "R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected",
            "instruction cache parity error corrected",
            "INFO",
            None,
        ),
        ("ERROR: could not open the database", "could not open the database", "ERROR", None),
        (  # logfmt as Prometheus and go-kit write it: the error joins the message
            "ts=2024-01-31T10:00:00.123Z caller=db.go:72 level=error component=tsdb "
            'msg="compaction failed" err="write /data/01H: no space left on device"',
            "compaction failed: write /data/01H: no space left on device",
            "error",
            "tsdb",
        ),
        (  # logrus' text format, an escaped quote inside a value
            'time="2024-01-31T10:00:00Z" level=warning msg="slow query \\"users\\"" took=2.5s',
            'slow query "users"',
            "warning",
            None,
        ),
        (
            "2024/01/31 10:00:00 [error] 1234#0: *5 connect() failed (111: Connection refused)",
            "*5 connect() failed (111: Connection refused)",
            "error",
            None,
        ),  # fmt: skip
        (
            '2024-01-31 10:00:00.123 UTC [4821] ERROR:  relation "users" does not exist',
            'relation "users" does not exist',
            "ERROR",
            None,
        ),
        (
            "2024-01-31 10:00:00.123 UTC [4821] LOG:  checkpoint complete: wrote 12 buffers",
            "checkpoint complete: wrote 12 buffers",
            "LOG",
            None,
        ),
        (
            "[2024-01-31T10:00:00,123][WARN ][o.e.c.r.a.DiskThresholdMonitor] [node-1] high disk "
            "watermark exceeded",
            "high disk watermark exceeded",
            "WARN",
            None,
        ),
        (
            "2024-01-31T10:00:00.123Z ERROR 1 --- [main] o.s.boot.SpringApplication           "
            "   : Application run failed",
            "Application run failed",
            "ERROR",
            "o.s.boot.SpringApplication",
        ),
        ("WARNING:root:disk almost full", "disk almost full", "WARNING", "root"),
        (
            "ERROR:myapp.db:connection lost: timeout",
            "connection lost: timeout",
            "ERROR",
            "myapp.db",
        ),
        (
            "2015-07-29 17:41:44,747 - INFO  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:"
            "FastLeaderElection@774] - Notification time out: 3200",
            "Notification time out: 3200",
            "INFO",
            "FastLeaderElection",
        ),
        (
            "W1206 04:59:41.123456  1234 server.cc:88] queue 7 is 90% full",
            "queue 7 is 90% full",
            "W",
            "server.cc:88",
        ),  # fmt: skip
        (
            "E, [2024-01-31T10:00:00.123456 #1234] ERROR -- : connection lost",
            "connection lost",
            "ERROR",
            None,
        ),  # fmt: skip
        ("I, [2024-01-31T10:00:00.123456 #1234]  INFO -- web: started", "started", "INFO", "web"),
        (
            "fail: Microsoft.AspNetCore.Server.Kestrel[13]",
            "Microsoft.AspNetCore.Server.Kestrel[13]",
            "fail",
            "Microsoft.AspNetCore.Server.Kestrel",
        ),  # fmt: skip
        (
            "1:M 31 Jan 2024 10:00:00.123 # Server initialized",
            "Server initialized",
            "warning",
            None,
        ),
        (
            "INFO  [main] 2024-01-31 10:00:00,123 CassandraDaemon.java:123 - Starting up",
            "Starting up",
            "INFO",
            "CassandraDaemon.java:123",
        ),
        (
            "[2024-01-31 10:00:00,123: ERROR/MainProcess] consumer: Cannot connect",
            "consumer: Cannot connect",
            "ERROR",
            "MainProcess",
        ),
        (
            "[Wed Jan 31 10:00:00.123456 2024] [core:error] [pid 123:tid 456] [client 1.2.3.4:5] "
            "AH00037: Symbolic link not allowed",
            "Symbolic link not allowed",
            "error",
            "AH00037",
        ),
    ],
)
def test_headers_are_split_from_the_content(line, content, level, component) -> None:
    rec = _parse(line)
    assert (rec.content, rec.level, rec.component) == (content, level, component)
    assert rec.message == line  # the output still carries the whole line


def test_prose_that_mentions_a_level_is_not_a_header() -> None:
    for line in ("Took 5 ms, ERROR count 3", "Error reading file /tmp/x", "user info updated",
                 "2024-01-31 10:00:00 log rotated", "2024-01-31 10:00:00 LOG rotated",
                 "user=bob level=error action=login", "msg=ok but then prose",
                 "fail: 3 of 12 checks [1]"):  # fmt: skip
        rec = _parse(line)
        assert (rec.content, rec.level) == (None, None)


@pytest.mark.parametrize(
    ("zone", "east_minutes"),
    [("UTC", 0), ("CET", 60), ("CEST", 120), ("EST", -300), ("PDT", -420), ("+01", 60),
     ("+05:30", 330), ("-0500", -300), ("CST", 0)],  # CST names two zones: read as UTC
)  # fmt: skip
def test_a_zone_after_the_time_is_applied_and_the_header_still_read(zone, east_minutes) -> None:
    """PostgreSQL writes its log_timezone's name (or a numeric offset) after the time."""
    rec = _parse(f"2024-01-31 10:00:00.123 {zone} [4821] ERROR:  relation does not exist")
    assert (rec.level, rec.content) == ("ERROR", "relation does not exist")
    assert rec.ts == pytest.approx(1706695200.123 - 60 * east_minutes)


def test_a_signed_number_after_the_time_is_not_read_as_a_zone_beyond_14_hours() -> None:
    rec = _parse("2024-01-31 10:00:00 +15 new users today")
    assert (rec.ts, rec.text) == (1706695200.0, "+15 new users today")


def test_a_logfmt_lines_time_is_its_ts_or_time_field() -> None:
    assert _parse('level=info ts=2024-01-31T10:00:00.5Z msg="started"').ts == 1706695200.5
    assert _parse("level=info ts=1706695200.25 msg=started").ts == 1706695200.25
    assert _parse("level=info ts=1706695200250 msg=started").ts == 1706695200.25  # milliseconds
    assert _parse("level=info ts=1706695200250000 msg=started").ts == 1706695200.25  # microseconds
    rec = _parse('msg="no time here" level=WARN')
    assert (rec.ts, rec.level, rec.content) == (NOW, "WARN", "no time here")


def test_journald_and_json_level() -> None:
    value = {
        "MESSAGE": "Started Daily apt activities.",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "systemd",
        "__REALTIME_TIMESTAMP": "1700000000500000",
    }
    rec = _parse(orjson.dumps(value).decode())
    assert (rec.ts, rec.level, rec.component) == (1700000000.5, "warning", "systemd")
    rec = _parse('{"source": "api", "message": "slow reply", "level": "warn"}')
    assert (rec.source, rec.level, rec.text) == ("api", "warn", "slow reply")


def test_log_format() -> None:
    fmt = LogFormat("<Date> <Time> <Level> <Component>: <Content>")
    rec = _parse("2024-02-01 10:00:00 SEVERE db.pool: pool exhausted after 30 s", fmt)
    assert (rec.content, rec.level, rec.component) == ("pool exhausted after 30 s", "SEVERE",
                                                       "db.pool")  # fmt: skip
    assert rec.ts == pytest.approx(1706781600.0)
    with pytest.raises(UserError, match="<Content>"):
        LogFormat("<Date> <Level>")


def test_raw_lines_are_mined_on_their_content() -> None:
    head = LogAnalyzer(LogAnalyzerConfig(), encoder=HashEncoder())
    lines = [
        f"- {1117838570 + i} 2005.06.03 R02-M1-N{i}-C:J12-U11 2005-06-03-15.42.50.67587{i} "
        f"R02-M1-N{i}-C:J12-U11 RAS KERNEL INFO {i} ddr errors(s) detected and corrected"
        for i in range(5)
    ]
    head.classify([_parse(line) for line in lines])
    (template,) = {head.miner.template("app", t) for t in range(1, 6)} - {None}
    assert template == "<NUM> ddr errors(s) detected and corrected"


def test_a_stated_level_is_reported_in_the_users_names() -> None:
    recs = [_parse("2024-01-01T10:00:00Z WARN slow query"), _parse("slow query")]
    for names, expected in (("error,warning,info", "warning"), ("err,warn,information", "warn")):
        head = LogAnalyzer(LogAnalyzerConfig(labels=names), encoder=HashEncoder())
        stated, judged = head.classify(recs)
        assert (stated.label, stated.confidence) == (expected, 1.0)
        assert stated.header == LogHeader("WARN", None)
        assert judged.confidence < 1.0 and judged.header is None


def test_every_line_gets_one_of_the_labels_unless_abstention_is_asked() -> None:
    lines = [LogRecord("a", NOW, f"event {w} happened") for w in ("alpha", "beta", "gamma", "x")]
    head = LogAnalyzer(LogAnalyzerConfig(labels="error,warning,info"), encoder=HashEncoder())
    assert {o.label for o in head.classify(lines)} <= {"error", "warning", "info"}
    strict = LogAnalyzer(LogAnalyzerConfig(labels="error,warning,info", unknown_below=0.999),
                     encoder=HashEncoder())  # fmt: skip
    assert {o.label for o in strict.classify(lines)} == {"unknown"}


def test_shipped_model_is_safetensors_and_json_with_a_card() -> None:
    assert sorted(p.name for p in MODEL_DIR.iterdir()) == [
        "README.md",
        "severity.json",
        "severity.safetensors",
    ]
    model = SeverityModel.load()
    assert model.weight.shape == (3, 384 + len(LEXICAL_NAMES))
    assert model.meta["trained_on"]["systems"] == list(training.LEVELLED)
    p = model.probabilities(np.zeros((2, model.weight.shape[1]), dtype=np.float32))
    assert p.shape == (2, 3) and np.allclose(p.sum(axis=1), 1.0)


def test_cues_read_negations_and_failures() -> None:
    names = list(LEXICAL_NAMES)
    fail = lexical_features("Failed to renew lease after <NUM> attempts; will retry")
    assert fail[names.index("fail")] == fail[names.index("retry")] == 1.0
    fixed = lexical_features("instruction cache parity error corrected")
    assert fixed[names.index("recovered")] == fixed[names.index("level_error")] == 1.0
    assert lexical_features("Job started")[names.index("fail")] == 0.0
    assert lexical_features("java.io.IOException: broken pipe")[names.index("exception_name")]


def test_keyword_rule_is_one_hot_of_its_level() -> None:
    names = list(LEXICAL_NAMES)
    for text, level in [
        ("NoRouteToHostException while connecting", "error"),
        ("WARN disk almost full", "warning"),
        ("failed to warn the user", "error"),  # error words win over warn
        ("Job started", "info"),
    ]:
        row = lexical_features(text)
        hot = [c for c in CLASSES if row[names.index(f"keyword_{c}")] == 1.0]
        assert hot == [level] == [keyword_level(text)]


def test_severity_mapping() -> None:
    assert severity_mapping(["info", "error", "warning"]) == [1, 2, 0]
    assert severity_mapping(["ERR", "Warn", "notice"]) == [0, 1, 2]
    assert severity_mapping(["network", "storage"]) is None
    assert severity_mapping(["error", "info"]) is None


def test_leave_one_out_never_fits_on_the_held_out_system(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    dim = 384 + len(LEXICAL_NAMES)

    def system(name: str) -> training.SystemData:
        x = rng.standard_normal((6, dim)).astype(np.float32)
        return training.SystemData(name, x, np.arange(6), np.arange(6) % 3, ["line"] * 6)

    data = [system(s) for s in ("a", "b", "c")]
    seen: list[set[str]] = []
    real_fit = training.fit

    def spy(fitted):
        seen.append({d.name for d in fitted})
        return real_fit(fitted)

    monkeypatch.setattr(training, "fit", spy)
    out = training.leave_one_out(data)
    assert seen == [{"b", "c"}, {"a", "c"}, {"a", "b"}]
    assert all(out[d.name].shape == (6, len(CLASSES)) for d in data)


def test_cli_log_format_errors_are_one_line(tmp_path, capsys) -> None:
    f = tmp_path / "x.log"
    f.write_text("2024-01-01 10:00:00 INFO a: b\n")
    assert main(["logs", "classify", "--log-format", "<Date> <Level>", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tsguard: error: --log-format")


# ----------------------------------------------------------------------------- few-shot


def test_examples_become_prototypes(tmp_path) -> None:
    jsonl = tmp_path / "ex.jsonl"
    jsonl.write_text(
        '{"label": "payments", "message": "charge 42 declined by issuer"}\n'
        '{"label": "auth", "message": "token for user 7 expired"}\n'
    )
    head = LogAnalyzer(
        LogAnalyzerConfig(labels="payments,auth", examples=str(jsonl)), encoder=HashEncoder()
    )
    out = head.classify(
        [
            LogRecord("a", NOW, "charge 9001 declined by issuer"),
            LogRecord("a", NOW, "token for user 12 expired"),
        ]
    )
    assert [o.label for o in out] == ["payments", "auth"]
    # With the severity head: an example the template repeats decides (cosine 1 here).
    csv_file = tmp_path / "ex.csv"
    csv_file.write_text("label,message\nerror,quota of tenant 5 nearly used up\n")
    head = LogAnalyzer(LogAnalyzerConfig(examples=str(csv_file)), encoder=HashEncoder())
    (o,) = head.classify([LogRecord("a", NOW, "quota of tenant 77 nearly used up")])
    assert o.label == "error" and o.confidence >= 0.99


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"label": "nope", "message": "x"}\n', "is not one of"),
        ('{"label": "error"}\n', "non-empty string"),
        ("not json\n", "not a JSON object"),
    ],
)
def test_bad_examples_are_one_clear_error(tmp_path, text, message) -> None:
    f = tmp_path / "ex.jsonl"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        LogAnalyzer(LogAnalyzerConfig(examples=str(f)), encoder=HashEncoder())
