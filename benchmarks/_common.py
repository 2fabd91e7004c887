"""What every benchmark shares: the run's environment, a table printer, JSON output, a synthetic
metric stream, and the Kafka/serve plumbing (each started thing is stopped, also on error)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
T0 = 1_700_000_000.0  # first timestamp of generated series
STEP_S = 60.0  # seconds between points of one generated series


# ----------------------------------------------------------------------------- reporting


def default_torch_threads() -> int:
    """`tsguard serve`'s default for --torch-threads 0: half the cores, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def add_common_args(
    p: argparse.ArgumentParser, name: str, threads: int | None = 2, sweep: bool = False
) -> None:
    """--out, and --threads (alias --torch-threads): torch CPU threads, default `threads`
    (None: serve's default, half the cores, at most 4); with `sweep` a comma list."""
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS / f"{name}.json",
        help=f"JSON result file (default benchmarks/results/{name}.json)",
    )
    default = default_torch_threads() if threads is None else threads
    what = "serve's default: half the cores, at most 4" if threads is None else "fixed"
    if sweep:
        p.add_argument(
            "--threads",
            "--torch-threads",
            dest="threads",
            type=lambda s: list(
                dict.fromkeys(int(x) or default_torch_threads() for x in s.split(",") if x)
            ),  # fmt: skip
            default=[default],
            help=f"torch CPU threads, comma list, 0 = serve's default (default {default}: {what})",
        )
    else:
        p.add_argument(
            "--threads",
            "--torch-threads",
            dest="threads",
            type=lambda s: int(s) or default_torch_threads(),
            default=default,
            help=f"torch CPU threads, 0 = serve's default (default {default}: {what})",
        )


def environment() -> dict:
    """Where and under what load the numbers were taken (a loaded machine is not a quiet one)."""
    import torch

    load1, load5, load15 = os.getloadavg()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host_cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "loadavg": {"1m": load1, "5m": load5, "15m": load15},
        "uptime": _uptime(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"wrote {path}")


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    """A plain fixed-width table: one row per dict, the given columns in order."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def percentiles(values: list[float] | np.ndarray, qs=(50, 90, 99)) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": math.nan for q in qs} | {"max": math.nan, "n": 0}
    out = {f"p{q}": float(np.percentile(a, q)) for q in qs}
    return out | {"max": float(a.max()), "n": int(a.size)}


# ----------------------------------------------------------------------------- the data


def series_name(i: int) -> str:
    return f"host-{i:05d}/cpu"


def point_value(series: int, k: int, rng: np.random.Generator | None = None) -> float:
    """A calm seasonal value of series `series` at step k (noise added by the caller's rng)."""
    noise = 0.0 if rng is None else float(rng.normal(0.0, 0.5))
    return 50.0 + 10.0 * math.sin(2 * math.pi * (k + 7 * series) / 50.0) + noise


def encoded_points(n: int, n_series: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """n (key, value) messages, one JSON point each, round-robin over n_series series."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.5, n)
    out = []
    names = [series_name(i).encode() for i in range(n_series)]
    for j in range(n):
        s, k = j % n_series, j // n_series
        value = point_value(s, k) + float(noise[j])
        body = {"series": names[s].decode(), "ts": T0 + STEP_S * k, "value": round(value, 4)}
        out.append((names[s], orjson.dumps(body)))
    return out


# ----------------------------------------------------------------------------- Kafka plumbing


@contextlib.contextmanager
def embedded_broker(partitions: int, log_file: Path | None = None) -> Iterator[str]:
    """A fresh embedded broker with tsguard's topics created (`partitions` each); stopped after."""
    from stream.broker import EmbeddedBroker
    from stream.kafka_io import ensure_topics
    from stream.settings import Settings

    broker = EmbeddedBroker(log_file=log_file)
    broker.start()
    try:
        settings = Settings(bootstrap=broker.bootstrap, partitions=partitions)
        ensure_topics(settings, settings.topics.all())
        yield broker.bootstrap
    finally:
        broker.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Send every message as fast as the client allows; returns seconds taken (flushed)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    try:
        t = time.perf_counter()
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush()
        return time.perf_counter() - t
    finally:
        producer.close()


SESSION_TIMEOUT_MS = 6000  # the embedded broker lets a new group join after about half of it


def add_session_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=SESSION_TIMEOUT_MS,
        help=f"consumer session timeout (default {SESSION_TIMEOUT_MS}); the embedded broker's "
        "group join takes about half of it (smoke tests use less)",
    )


def serve_command(
    bootstrap: str, metrics_port: int, *extra: str, session_timeout_ms: int = SESSION_TIMEOUT_MS
) -> list[str]:
    """The command line of `tsguard serve` as the benchmarks run it (fresh consumer group)."""
    return [
        sys.executable, "-m", "stream.cli", "serve", "--bootstrap", bootstrap,
        "--metrics-port", str(metrics_port), "--metrics-addr", "127.0.0.1",
        "--group-id", f"bench-{uuid.uuid4().hex[:8]}",
        "--session-timeout-ms", str(session_timeout_ms), *extra,
    ]  # fmt: skip


class ServeProcess:
    """`tsguard serve` in a subprocess; its log lines are timestamped (monotonic) as they arrive,
    so the phases (model load, group join, end) can be read off afterwards. Always stopped."""

    def __init__(self, cmd: list[str], echo: bool = False, env: dict[str, str] | None = None):
        self.cmd = cmd
        self.echo = echo
        self.env = env or {}
        self.lines: list[tuple[float, str]] = []
        self.started = 0.0
        self.exited: float | None = None
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ServeProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))
            if self.echo:
                print("  serve|", line.rstrip(), file=sys.stderr)

    def first(self, pattern: str) -> float | None:
        """Monotonic time of the first log line matching `pattern` (regex), or None."""
        rx = re.compile(pattern)
        return next((t for t, line in list(self.lines) if rx.search(line)), None)

    def wait_for(self, pattern: str, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self.first(pattern)
            if t is not None:
                return t
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"serve exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.02)
        raise TimeoutError(f"serve never logged {pattern!r}:\n{self.tail()}")

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout_s)
        self.exited = time.monotonic()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return rc

    def tail(self, n: int = 20) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.exited = time.monotonic()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def scrape(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """The metrics endpoint as {name{labels}: value} (unlabelled names are bare)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class BackgroundLoop:
    """A daemon thread that calls `once()` until the `with` block ends (then `close()`)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def once(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self.once()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.close()


class Scraper(BackgroundLoop):
    """Scrapes the metrics endpoint every `every_s` in a thread; keeps the latest good scrape."""

    def __init__(self, port: int, every_s: float = 0.2):
        super().__init__()
        self.port = port
        self.every_s = every_s
        self.latest: dict[str, float] = {}
        self.latest_at = 0.0

    def once(self) -> None:
        if self._stop.wait(self.every_s):
            return
        with contextlib.suppress(OSError):
            self.latest = scrape(self.port, timeout_s=1.0)
            self.latest_at = time.monotonic()
