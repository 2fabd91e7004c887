"""`tsguard logs classify|summarize` on small files: JSON lines out, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest

from stream.cli import main

REPO = Path(__file__).resolve().parents[1]
LOGHUB = REPO.parent / "shared" / "data" / "loghub"

CLASS_SCHEMA = {
    "type": "object",
    "required": ["source", "ts", "message", "label", "confidence", "scores"],
    "properties": {
        "source": {"type": "string", "minLength": 1},
        "ts": {"type": "number"},
        "message": {"type": "string"},
        "label": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
SUMMARY_SCHEMA = {
    "type": "object",
    "required": ["source", "window", "lines", "templates", "highlights", "summary"],
    "properties": {
        "source": {"type": "string"},
        "window": {
            "type": "object",
            "required": ["start", "end"],
            "properties": {"start": {"type": "number"}, "end": {"type": "number"}},
        },
        "lines": {"type": "integer", "minimum": 1},
        "templates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["template", "count", "new"],
                "properties": {
                    "template": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                    "new": {"type": "boolean"},
                },
            },
        },
        "highlights": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string", "minLength": 1},
    },
}

RAW = """\
081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 terminating
081109 203807 222 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block blk_-6952295868487656571 terminating
081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864

081109 204842 663 ERROR dfs.DataNode: Failed to transfer blk_-1608999687919862906 to 10.251.39.242:50010 got java.net.SocketException: Connection reset
081109 211005 222 INFO dfs.DataNode$PacketResponder: PacketResponder 2 for block blk_38865049064139661 terminating
"""


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_classify_raw_file(tmp_path: Path, capfd) -> None:
    f = tmp_path / "HDFS_small.log"
    f.write_text(RAW)
    assert main(["logs", "classify", str(f)]) == 0
    out = _json_lines(capfd.readouterr().out)
    assert len(out) == 5  # the blank line is not an entry
    for o in out:
        jsonschema.validate(o, CLASS_SCHEMA)
        assert o["source"] == "HDFS_small"
        assert o["label"] in {"error", "warning", "info", "unknown"}
        assert set(o["scores"]) == {"error", "warning", "info"}
    assert out[0]["ts"] == 1226262975.0  # 2008-11-09 20:36:15 UTC, from the line
    assert out[3]["label"] == "error"


def test_classify_json_lines_from_stdin_with_labels(tmp_path: Path, capfd, monkeypatch) -> None:
    lines = [
        {"source": "web", "ts": "2024-05-01T12:00:00Z", "message": "connection reset by peer"},
        {"source": "db", "ts": 1714564800, "message": "disk /dev/sda1 is full"},
    ]
    f = tmp_path / "in.jsonl"
    f.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    with f.open("rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        rc = main(["logs", "classify", "--labels", "network,storage", "--unknown-below", "0", "-"])
    assert rc == 0
    out = _json_lines(capfd.readouterr().out)
    assert [(o["source"], o["label"]) for o in out] == [("web", "network"), ("db", "storage")]
    assert out[0]["ts"] == 1714564800.0


def test_classify_label_set_topic(tmp_path: Path, capfd) -> None:
    f = tmp_path / "auth.log"
    f.write_text("Failed password for invalid user admin from 61.177.172.13 port 52436 ssh2\n")
    assert main(["logs", "classify", "--label-set", "topic", "--unknown-below", "0", str(f)]) == 0
    (o,) = _json_lines(capfd.readouterr().out)
    assert o["label"] == "security" and len(o["scores"]) == 6


def test_malformed_lines_are_skipped_or_fatal_with_strict(tmp_path: Path, capfd) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b'{"message": "service started"}\n{"message": \n{"message": 5}\n')
    assert main(["logs", "classify", str(f)]) == 0
    captured = capfd.readouterr()
    assert len(_json_lines(captured.out)) == 1
    assert "mixed.jsonl:2: skipped (invalid JSON)" in captured.err
    assert "mixed.jsonl:3: skipped (message must be a string)" in captured.err
    assert main(["logs", "classify", "--strict", str(f)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"tsguard: error: {f}:2: invalid JSON"


def test_summarize_file(tmp_path: Path, capfd) -> None:
    f = tmp_path / "HDFS_small.log"
    f.write_text(RAW)
    assert main(["logs", "summarize", "--window", "600", str(f)]) == 0
    out = _json_lines(capfd.readouterr().out)
    for s in out:
        jsonschema.validate(s, SUMMARY_SCHEMA)
    # 20:36:15 .. 20:48:42 and 21:10:05 -> windows 20:30, 20:40, 21:10 (600 s, epoch-aligned)
    assert [s["window"]["start"] for s in out] == [1226262600.0, 1226263200.0, 1226265000.0]
    assert [s["lines"] for s in out] == [2, 2, 1]
    assert out[0]["summary"].startswith("HDFS_small, 2008-11-09 20:30-20:40 UTC: 2 lines;")
    assert [t["new"] for t in out[2]["templates"]] == [False]  # PacketResponder seen before


@pytest.mark.skipif(not LOGHUB.is_dir(), reason="loghub data (../shared/data/loghub) not present")
def test_summarize_a_loghub_file(capfd) -> None:
    path = LOGHUB / "Apache" / "Apache_2k.log"
    assert main(["logs", "summarize", "--window", "86400", str(path)]) == 0
    out = _json_lines(capfd.readouterr().out)
    assert sum(s["lines"] for s in out) == 2000
    assert all(s["source"] == "Apache_2k" for s in out)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_file_is_a_one_line_error() -> None:
    for command in ("classify", "summarize"):
        proc = _cli("logs", command, "/nonexistent/app.log")
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.strip() == "tsguard: error: no such file: /nonexistent/app.log"


def test_bad_options_are_refused() -> None:
    proc = _cli("logs", "summarize", "--window", "0", "-")
    assert proc.returncode != 0 and "must be positive" in proc.stderr
    proc = _cli("logs", "classify", "--labels", "/nonexistent/labels.yaml", "-")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tsguard: error: label file not found: /nonexistent/labels.yaml"
