"""`tsguard logs classify|summarize`: the log heads on a file or stdin.

Input: one log entry per line, either raw text (loghub `.log` form: a leading timestamp is parsed
when recognised) or a JSON object {"source", "ts", "message"}. Both commands drive the same
detector.logs.analyzer.LogAnalyzer as the Kafka pipeline does.

    tsguard logs classify [--labels severity|topic|A,B,C|FILE.yaml] [FILE|-]   -> JSON lines
    tsguard logs summarize [--window S] [FILE|-]                               -> JSON lines
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from detector.errors import UserError

READ_CHUNK = 1 << 20
MAX_WARNINGS = 5


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "logs",
        help="log heads: zero-shot classification and window summaries of log lines",
        description="Zero-shot classification and window summaries of log lines.",
    )
    sub = p.add_subparsers(dest="logs_command", metavar="{classify,summarize}", required=True)

    c = sub.add_parser(
        "classify",
        help="one JSON line per input line: label, confidence, scores",
        description="Classify each log line (the trained heads for the shipped severity and "
        "topic sets, zero-shot for any other labels); prints JSON lines "
        '{"source", "ts", "message", "label", "confidence", "scores"}.',
    )
    label_group = c.add_mutually_exclusive_group()
    label_group.add_argument(
        "--labels",
        metavar="A,B,C|FILE",
        help="label names (comma-separated) or a YAML/TOML file of names with descriptions "
        "(default: the shipped severity set)",
    )
    label_group.add_argument(
        "--label-set",
        choices=("severity", "topic"),
        help="a shipped label set: severity (error/warning/info) or topic",
    )
    c.add_argument(
        "--unknown-below",
        type=_probability,
        default=0.0,
        metavar="P",
        help="opt into abstention: label 'unknown' when the top probability is below P "
        "(default: every line gets one of the labels)",
    )
    c.add_argument(
        "--severity-model",
        metavar="DIR",
        help="the trained severity head (severity.safetensors + severity.json) used when the "
        "labels are error/warning/info (default: the shipped one)",
    )
    c.add_argument(
        "--topic-model",
        metavar="DIR",
        help="the trained topic head (topic.safetensors + topic.json) used with the shipped "
        "topic labels (default: the shipped one)",
    )
    c.add_argument(
        "--examples",
        metavar="FILE",
        help='few-shot: labelled lines (JSON lines {"label", "message"} or CSV with label '
        "and message columns) that become prototypes beside the label descriptions",
    )
    c.add_argument(
        "--corrections",
        metavar="FILE",
        help='label corrections, JSON lines {"source", "message", "label"}: every line of that '
        "message's template in that source gets that label",
    )
    c.add_argument(
        "--zero-shot",
        action="store_true",
        help="score the shipped label sets zero-shot too, instead of with the trained severity "
        "and topic heads",
    )
    _common(c)
    c.set_defaults(handler=_classify)

    s = sub.add_parser(
        "summarize",
        help="one JSON summary per source and window",
        description="Summarize log lines per source and tumbling window; prints JSON lines "
        '{"source", "window", "lines", "templates", "highlights", "summary"}.',
    )
    s.add_argument(
        "--window",
        type=_positive,
        default=300.0,
        metavar="S",
        help="window length in seconds (default 300)",
    )
    s.add_argument(
        "--highlights",
        type=int,
        default=3,
        metavar="K",
        help="highlight lines per summary (default 3)",
    )
    s.add_argument(
        "--summarizer-model",
        metavar="DIR",
        help="a local Hugging Face seq2seq model directory for abstractive summaries "
        "(loaded offline, never downloaded)",
    )
    _common(s)
    s.set_defaults(handler=_summarize)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="input (default: stdin)")
    p.add_argument(
        "--source",
        help="source name for raw lines (default: the file name without extension, or 'stdin'); "
        "JSON lines keep their own source",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "auto"),
        help="device for the embedding model (default cpu)",
    )
    p.add_argument(
        "--log-format",
        metavar="FORMAT",
        help="loghub-style line format, e.g. '<Date> <Time> <Level> <Component>: <Content>': "
        "templates are mined on <Content>; lines that do not match fall back to the detected "
        "headers (syslog, log4j/logback, ISO time + level, journald JSON)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed line (default: skip it with a warning)",
    )


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _open_input(name: str) -> tuple[int, bool]:
    """A file descriptor to read from and whether we opened it (and must close it)."""
    if name == "-":
        return sys.stdin.fileno(), False
    path = Path(name)
    if path.is_dir():
        raise UserError(f"{name} is a directory, not a log file")
    try:
        return os.open(path, os.O_RDONLY), True
    except FileNotFoundError:
        raise UserError(f"no such file: {name}") from None
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror}") from None


def _line_batches(fd: int) -> Iterator[list[tuple[int, bytes]]]:
    """Numbered lines in batches of whatever is available: large batches from a file (fast),
    small ones from a slow pipe such as `tail -f` (prompt output)."""
    pending = b""
    number = 0
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        batch = []
        for line in lines:
            number += 1
            batch.append((number, line))
        if batch:
            yield batch
    if pending:
        yield [(number + 1, pending)]


def _run(args: argparse.Namespace, emit) -> int:
    from detector.logs.analyzer import parse_log_value

    fd, owned = _open_input(args.file)
    source = args.source or ("stdin" if args.file == "-" else Path(args.file).name.split(".")[0])
    key = source.encode()
    log_format = None
    if args.log_format is not None:
        from detector.logs.headers import LogFormat

        log_format = LogFormat(args.log_format)
    skipped = 0
    out = sys.stdout.buffer
    try:
        for batch in _line_batches(fd):
            now = time.time()
            records = []
            for number, raw in batch:
                if not raw.strip():
                    continue  # blank lines separate nothing in a log file
                try:
                    records.append(parse_log_value(raw.rstrip(b"\r"), key, now, log_format))
                except ValueError as exc:
                    if args.strict:
                        raise UserError(f"{args.file}:{number}: {exc}") from None
                    skipped += 1
                    if skipped <= MAX_WARNINGS:
                        print(
                            f"tsguard: warning: {args.file}:{number}: skipped ({exc})",
                            file=sys.stderr,
                        )
            if records:
                emit(records, out)
                out.flush()
        emit(None, out)
        out.flush()
    except BrokenPipeError:  # `| head`: the reader is gone, nothing left to do
        sys.stderr.close()
        return 0
    finally:
        if owned:
            os.close(fd)
    if skipped > MAX_WARNINGS:
        print(f"tsguard: warning: {skipped} malformed lines skipped in total", file=sys.stderr)
    return 0


def _classify(args: argparse.Namespace) -> int:
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig

    labels = args.label_set or args.labels or "severity"
    analyzer = LogAnalyzer(
        LogAnalyzerConfig(
            labels=labels,
            unknown_below=args.unknown_below,
            severity_head=not args.zero_shot,
            severity_model=args.severity_model,
            topic_head=not args.zero_shot,
            topic_model=args.topic_model,
            examples=args.examples,
            corrections=args.corrections,
            device=_device(args.device),
        )
    )

    def emit(records, out) -> None:
        if records is None:
            return
        out.write(b"".join(c.encode() + b"\n" for c in analyzer.classify(records)))

    return _run(args, emit)


def _summarize(args: argparse.Namespace) -> int:
    from detector.logs.analyzer import LogAnalyzer, LogAnalyzerConfig

    if args.highlights < 0:
        raise UserError("--highlights must be zero or more")
    analyzer = LogAnalyzer(
        LogAnalyzerConfig(
            window_s=args.window,
            highlights=args.highlights,
            summarizer_model=args.summarizer_model,
            device=_device(args.device),
        )
    )

    def emit(records, out) -> None:
        summaries = analyzer.flush() if records is None else analyzer.observe(records)
        out.write(b"".join(s.encode() + b"\n" for s in summaries))

    return _run(args, emit)
