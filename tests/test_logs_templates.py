"""Template mining and input parsing for the log heads (no embedding model needed)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.logs.analyzer import (
    LogRecord,
    parse_line_timestamp,
    parse_log_value,
    strip_timestamp,
)
from detector.logs.templates import (
    TemplateConfig,
    TemplateMiner,
    embedding_text,
    mask_variables,
    prose_words,
)

NOW = 1_700_000_000.0


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("connect to 10.0.0.1:8080 failed", "connect to <IP> failed"),
        ("flags=0x1f ok", "flags=<HEX> ok"),
        ("object 9f4ef63 released", "object <HEX> released"),
        ("id 123e4567-e89b-12d3-a456-426614174000 done", "id <UUID> done"),
        ("open /var/log/app/x.log", "open <PATH>"),
        ("took 1,204 ms at 12.5%", "took <NUM> ms at <NUM>%"),
        ("blk_-6952295868487656571 deleted", "blk_<NUM> deleted"),
        ("on 2015-10-18", "on <NUM>-<NUM>-<NUM>"),
        ("proxy.cse.cuhk.edu.hk:5070 open through proxy", "<HOST> open through proxy"),
        ("connect to www.google.com:443 ok", "connect to <HOST> ok"),
        ("rhost=220-135-151-1.hinet-ip.hinet.net user=root", "rhost=<HOST> user=root"),
        ("from aml-sfh-3310b.adsl.wanadoo.nl.", "from <HOST>."),
        ("get s.360.cn:80 close", "get <HOST> close"),
    ],
)
def test_mask_variables_masks_the_variable_parts(line: str, expected: str) -> None:
    assert mask_variables(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "java.net.ConnectException: Connection refused",
        "org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster",
        "mapred.task.id is deprecated. Instead, use mapreduce.task.id",
        "Start proc com.android.phone for service",
        "Keystone.ticketstore.lock is busy",
    ],
)
def test_code_names_are_not_hosts(line: str) -> None:
    # Dotted class, package and property names name things; they are not variables.
    assert "<HOST>" not in mask_variables(line)


def test_hosts_do_not_split_an_event_into_templates() -> None:
    # A host at the start of a line would otherwise be a Drain tree key: one template per host.
    miner = TemplateMiner(TemplateConfig())
    hosts = ["proxy.cse.cuhk.edu.hk:5070", "get.sogou.com:80", "api.github.com:443", "d.qq.com:80"]
    mined = [miner.add("proxy", f"{h} close, 0 bytes sent, 0 bytes received") for h in hosts]
    assert len({m.template_id for m in mined}) == 1


def test_lines_differing_only_in_variables_mask_identically() -> None:
    a = "Failed to connect to 10.1.2.3:50010 after 3 retries, blk_123 at 0xdeadbeef in /data/a/b"
    b = "Failed to connect to 192.168.0.77:9 after 12 retries, blk_-98 at 0x1 in /tmp/x/y/z"
    assert mask_variables(a) == mask_variables(b)


def test_embedding_text_drops_masks_and_splits_identifiers() -> None:
    text = embedding_text("getRunningAppProcesses: caller <NUM> from <IP> of NameSystem.addBlock")
    assert "<" not in text and "NUM" not in text
    assert text.split() == [
        "get", "Running", "App", "Processes", "caller", "from", "of", "Name", "System", "add",
        "Block",
    ]  # fmt: skip


def test_prose_words_leave_identifiers_out() -> None:
    words = prose_words("BLOCK* NameSystem.delete: blk_<NUM> is added to invalidSet; Can't find it")
    assert "invalid" not in " ".join(words) and "invalidset" not in words
    assert {"added", "can't", "find", "block"} <= set(words)


# ----------------------------------------------------------------------------- Drain3


def test_same_event_with_different_variables_shares_a_template() -> None:
    miner = TemplateMiner(TemplateConfig())
    a = miner.add("hdfs", "Received block blk_123 of size 67108864 from /10.250.19.102")
    b = miner.add("hdfs", "Received block blk_-987 of size 3545 from /10.251.71.16")
    c = miner.add("hdfs", "Deleting block blk_55 file /mnt/hadoop/dfs/data/current/blk_55")
    assert a.template_id == b.template_id != c.template_id
    assert a.created and not b.created and c.created
    assert "<NUM>" in b.template and "3545" not in b.template


def test_templates_are_per_source() -> None:
    miner = TemplateMiner(TemplateConfig())
    a = miner.add("web", "user logged in")
    b = miner.add("db", "user logged in")
    assert a.created and b.created
    assert miner.template_count("web") == miner.template_count("db") == 1


def test_template_state_is_bounded() -> None:
    miner = TemplateMiner(TemplateConfig(max_templates=10, max_sources=3))
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    for i in range(60):
        # Distinct first tokens: each line is its own template.
        miner.add("s", f"{words[i % 9]}{words[(i // 9) % 9]} started service")
    assert miner.template_count("s") <= 10
    for s in ("a", "b", "c", "d", "e"):
        miner.add(s, "hello world")
    assert len(miner.sources()) == 3 and miner.evicted_sources >= 2


# ----------------------------------------------------------------------------- parsing


def test_json_record_with_all_fields() -> None:
    value = orjson.dumps({"source": "web", "ts": "2024-05-01T12:00:00Z", "message": "hi there"})
    rec = parse_log_value(value, b"key", NOW)
    assert rec == LogRecord("web", _utc(2024, 5, 1, 12), "hi there")


def test_json_record_defaults_source_from_key_and_ts_from_now() -> None:
    rec = parse_log_value(b'{"message": "disk full"}', b"host-1", NOW)
    assert rec == LogRecord("host-1", NOW, "disk full")
    rec = parse_log_value(b'{"message": "disk full", "ts": 1700000123.5}', None, NOW)
    assert rec == LogRecord("unknown", 1700000123.5, "disk full")


def test_raw_line_uses_key_and_its_leading_timestamp() -> None:
    line = b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 terminating"
    rec = parse_log_value(line, b"HDFS", NOW)
    assert rec.source == "HDFS" and rec.message == line.decode()
    assert rec.ts == _utc(2008, 11, 9, 20, 36, 15)
    assert parse_log_value(b"no timestamp here", None, NOW) == LogRecord(
        "unknown", NOW, "no timestamp here"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # zap: epoch seconds in "ts", the logger's name
        (b'{"level":"warn","ts":1714564800.5,"logger":"db","msg":"slow query"}',
         LogRecord("k", 1714564800.5, "slow query", "slow query", "warn", "db")),
        # logrus / slog: ISO 8601 "time"
        (b'{"time":"2024-05-01T12:00:00.123456789+02:00","level":"ERROR","msg":"disk full"}',
         LogRecord("k", _utc(2024, 5, 1, 10) + 0.123456, "disk full", "disk full", "ERROR")),
        # pino / bunyan: numeric level, epoch milliseconds, "name"
        (b'{"level":50,"time":1714564800123,"name":"api","hostname":"h","msg":"boom"}',
         LogRecord("k", 1714564800.123, "boom", "boom", "error", "api")),
        # no time: the arrival time; the object's source beats the key
        (b'{"msg":"hello","source":"web-1"}', LogRecord("web-1", NOW, "hello", "hello")),
        # Docker's json-file driver: the raw line inside, parsed as that line would be
        (b'{"log":"2024-05-01 12:00:00,000 WARN [main] Pool low\\n","stream":"stderr",'
         b'"time":"2024-05-01T12:00:01Z"}',
         parse_log_value(b"2024-05-01 12:00:00,000 WARN [main] Pool low", b"k", NOW)),
        (b'{"log":"no header here","time":"2024-05-01T12:00:01Z"}',
         LogRecord("k", _utc(2024, 5, 1, 12, 0, 1), "no header here")),
        # MongoDB's structured log: "s" the level, "c" the component, "t" {"$date"}
        (b'{"t":{"$date":"2024-05-01T12:00:00.500+00:00"},"s":"W","c":"NETWORK","id":1,'
         b'"ctx":"conn7","msg":"Slow query"}',
         LogRecord("k", _utc(2024, 5, 1, 12) + 0.5, "Slow query", "Slow query", "W", "NETWORK")),
        # Serilog's compact JSON (CLEF): "@m" rendered, "@mt" its template; no "@l" is Information
        (b'{"@t":"2024-05-01T12:00:00Z","@mt":"Disk {Disk} full","@l":"Error","Disk":"C:",'
         b'"SourceContext":"App.Storage"}',
         LogRecord("k", _utc(2024, 5, 1, 12), "Disk {Disk} full", "Disk {Disk} full", "Error",
                   "App.Storage")),
        (b'{"@t":"2024-05-01T12:00:00Z","@m":"Started"}',
         LogRecord("k", _utc(2024, 5, 1, 12), "Started", "Started", "Information")),
    ],
)  # fmt: skip
def test_json_logger_records_are_read(value: bytes, expected: LogRecord) -> None:
    assert parse_log_value(value, b"k", NOW) == expected


def test_a_contract_record_states_its_level_as_level_or_severity() -> None:
    for field in ("level", "severity"):
        value = f'{{"message": "disk full", "{field}": "ERROR"}}'.encode()
        assert parse_log_value(value, b"k", NOW) == LogRecord(
            "k", NOW, "disk full", "disk full", "ERROR"
        )
    assert parse_log_value(b'{"message": "x"}', b"k", NOW).level is None


def test_a_container_runtime_line_is_read_as_the_containers_line() -> None:
    """CRI (containerd, CRI-O): time, stream, F or P, then the line, read as Docker's "log" is:
    the line's own time if it has one, else the runtime's."""
    inner = b'level=error ts=2024-05-01T11:59:59Z msg="db down"'
    cri = b"2024-05-01T12:00:00.123456789Z stderr F " + inner
    assert parse_log_value(cri, b"k", NOW) == parse_log_value(inner, b"k", NOW)
    plain = parse_log_value(b"2024-05-01T12:00:00.5Z stdout P no header here", b"k", NOW)
    assert plain == LogRecord("k", _utc(2024, 5, 1, 12) + 0.5, "no header here")


def test_a_contract_record_in_elastic_common_schema_gives_its_level_time_and_logger() -> None:
    flat = b'{"@timestamp":"2024-05-01T12:00:00Z","log.level":"warn","log.logger":"db","message":"slow"}'
    nested = b'{"@timestamp":"2024-05-01T12:00:00Z","log":{"level":"warn","logger":"db"},"message":"slow"}'
    for value in (flat, nested):
        assert parse_log_value(value, b"k", NOW) == LogRecord(
            "k", _utc(2024, 5, 1, 12), "slow", "slow", "warn", "db"
        )
    # The contract's "ts" wins; a logger's time that does not read is not an error (not the
    # contract's field): the arrival time.
    value = b'{"ts": 1714564800, "timestamp": "2024-05-02T00:00:00Z", "message": "x"}'
    assert parse_log_value(value, b"k", NOW).ts == 1714564800.0
    assert parse_log_value(b'{"timestamp": "5 May", "message": "x"}', b"k", NOW).ts == NOW
    # Epoch seconds, milliseconds (pino), microseconds or nanoseconds (zap's and slog's epoch
    # encoders), the unit read from the size as for Telegraf's timestamps.
    for stamp in (b"1714564800", b"1714564800000", b"1714564800000000", b"1714564800000000000"):
        value = b'{"time": ' + stamp + b', "message": "x"}'
        assert parse_log_value(value, b"k", NOW).ts == 1714564800.0
    assert parse_log_value(b'{"log": {"level": 5}, "message": "x"}', b"k", NOW).level is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"message": "x"', "invalid JSON"),
        (b'{"message": 42}', "message must be a string"),
        (b'{"source": "a"}', "message must be a string"),
        (b'{"msg": 42}', "msg must be a string"),
        (b'{"log": null}', "log must be a string"),
        (b'{"msg": " "}', "empty message"),
        (b'{"msg": "x", "level": [1]}', "level"),
        (b'{"msg": "x", "time": "5 May"}', "timestamp"),
        (b'{"msg": "x", "source": 7}', "source"),
        (b'{"message": "x", "ts": "yesterday"}', "ts"),
        (b'{"message": "x", "ts": 1e30}', "ts"),
        (b'{"message": "x", "ts": "2024-05-01T12:00:00"}', "timezone"),  # as on tsguard.metrics
        (b'{"message": "x", "source": 7}', "source"),
        (b"\xff\xfe broken", "UTF-8"),
        (b"   ", "empty"),
        (None, "empty"),
    ],
)
def test_malformed_values_raise_value_error_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_log_value(value, None, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=20)))
def test_any_bytes_give_a_record_or_value_error(value: bytes, key: bytes | None) -> None:
    try:
        rec = parse_log_value(value, key, NOW)
    except ValueError:
        return
    assert isinstance(rec.message, str) and rec.message
    assert isinstance(rec.source, str) and rec.source
    assert math.isfinite(rec.ts)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2015-10-18 18:01:47,978 INFO [main] x", _utc(2015, 10, 18, 18, 1, 47) + 0.978),
        ("2016-09-28 04:30:30, Info CBS x", _utc(2016, 9, 28, 4, 30, 30)),
        ("2024-05-01T12:00:00+02:00 x", _utc(2024, 5, 1, 10)),
        ("[Sun Dec 04 04:47:44 2005] [notice] x", _utc(2005, 12, 4, 4, 47, 44)),
        ("081109 203615 148 INFO x", _utc(2008, 11, 9, 20, 36, 15)),
        ("17/06/09 20:10:40 INFO x", _utc(2017, 6, 9, 20, 10, 40)),
        ("Jun 14 15:16:01 combo sshd", _utc(2023, 6, 14, 15, 16, 1)),  # year of NOW (2023)
        ("03-17 16:13:38.811  1702 D x", _utc(2023, 3, 17, 16, 13, 38) + 0.811),
        ("2024/01/31 10:00:00 [error] 7#7: x", _utc(2024, 1, 31, 10)),  # nginx, Go's log
        ("2024/01/31 10:00:00.250 x", _utc(2024, 1, 31, 10) + 0.25),
    ],
)
def test_loghub_timestamps_are_parsed(line: str, expected: float) -> None:
    assert parse_line_timestamp(line, NOW) == pytest.approx(expected)


def test_a_timestamp_inside_a_header_is_the_lines_time() -> None:
    # No leading timestamp: the date and time among the header's fields (before the level and
    # component) is the line's, read as UTC; one in the content is not.
    bgl = (b"R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.363779 "
           b"R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected")  # fmt: skip
    rec = parse_log_value(bgl, b"bgl", NOW)
    assert rec.ts == pytest.approx(_utc(2005, 6, 3, 15, 42, 50) + 0.363779)
    assert (rec.level, rec.content) == ("INFO", "instruction cache parity error corrected")
    openstack = (b"nova-compute.log.1.2017-05-16_13:55:31 2017-05-16 00:00:10.296 2931 WARNING "
                 b"nova.compute.manager [req-addc1839 - - - - -] While synchronizing power states")  # fmt: skip
    rec = parse_log_value(openstack, b"nova", NOW)
    assert rec.ts == pytest.approx(_utc(2017, 5, 16, 0, 0, 10) + 0.296)
    assert (rec.level, rec.component) == ("WARNING", "nova.compute.manager")
    in_content = b"- 1117838570 R02-M1-N0 RAS KERNEL INFO job of 2005-06-03 10:00:00 started"
    assert parse_log_value(in_content, b"bgl", NOW).ts == NOW
    impossible = b"- 1117838570 2005-13-03-15.42.50 R02-M1-N0 RAS KERNEL INFO started"
    assert parse_log_value(impossible, b"bgl", NOW).ts == NOW


def test_an_access_log_line_is_timed_by_its_bracketed_time_and_mined_from_the_request() -> None:
    line = (
        b'10.0.0.7 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 500 2326 "-" "curl"'
    )
    rec = parse_log_value(line, b"web", NOW)
    assert rec.ts == _utc(2000, 10, 10, 20, 55, 36)
    assert (rec.content, rec.level) == ('"GET /a.gif HTTP/1.0" 500 2326 "-" "curl"', None)
    bad_month = b'10.0.0.7 - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 5'
    assert parse_log_value(bad_month, b"web", NOW).ts == NOW


@pytest.mark.parametrize(
    "line",
    [
        b"1:M 31 Jan 2024 10:00:00.250 * Ready to accept connections",  # Redis
        b"[Wed Jan 31 10:00:00.250000 2024] [mpm_event:notice] [pid 1:tid 2] AH00489: ready",
        b"31-Jan-2024 10:00:00.250 INFO [main] org.apache.catalina.startup.Catalina.start ready",
        b"[2024-01-31 10:00:00,250: ERROR/MainProcess] consumer: Cannot connect",  # Celery
        b"Jan 31, 2024 10:00:00 AM com.acme.Pool borrow",  # java.util.logging (no fraction)
    ],
)
def test_more_servers_times_are_read(line: bytes) -> None:
    fraction = 0.0 if line.startswith(b"Jan") else 0.25
    assert parse_log_value(line, b"k", NOW).ts == _utc(2024, 1, 31, 10) + fraction


def test_a_relay_prefix_is_split_off_and_its_epoch_is_the_lines_time() -> None:
    # Alert tag, epoch, date and node before the original line (the Sandia supercomputer logs):
    # the relayed line is parsed as any other; the tag is neither content nor component.
    relayed = (b"TAG_X 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 "
               b"crond(pam_unix)[2915]: session closed for user root")  # fmt: skip
    rec = parse_log_value(relayed, b"tb", NOW)
    assert rec.ts == 1131566461.0
    assert (rec.content, rec.component, rec.level) == (
        "session closed for user root", "crond(pam_unix)", None)  # fmt: skip
    bgl = (b"- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.363779 "
           b"R02-M1-N0-C:J12-U11 RAS KERNEL FATAL data TLB error interrupt")  # fmt: skip
    rec = parse_log_value(bgl, b"bgl", NOW)
    assert (rec.ts, rec.level, rec.content) == (1117838570.0, "FATAL", "data TLB error interrupt")
    failure = bgl.replace(b"FATAL", b"FAILURE")  # Blue Gene's sixth severity
    assert parse_log_value(failure, b"bgl", NOW).level == "FAILURE"
    unknown = b"- 1131566461 2005.11.09 node-7 some relayed text without a header"
    rec = parse_log_value(unknown, b"tb", NOW)
    assert (rec.ts, rec.content) == (1131566461.0, "some relayed text without a header")


def test_unrecognised_or_impossible_timestamps_give_none() -> None:
    assert parse_line_timestamp("hello 2015", NOW) is None
    assert parse_line_timestamp("2015-13-45 10:00:00 bad month", NOW) is None


def test_strip_timestamp_keeps_the_rest_of_the_line() -> None:
    assert strip_timestamp("2016-09-28 04:30:30, Info CBS x") == "Info CBS x"
    assert strip_timestamp("plain line") == "plain line"
