"""/healthz and /readyz on the metrics port (contract: "Alerting and health"), against a running
`tsguard serve` on the real embedded broker, plus the reasons they give, on a clock we move."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
import yaml

from stream.broker import free_port
from stream.health import Health
from stream.metrics import Metrics
from tests.conftest import REPO, stop, tsguard


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readyz_needs_model_partitions_and_a_recent_broker_answer():
    clock = Clock()
    h = Health(clock=clock)
    assert h.live() == (True, "ok")
    assert h.ready() == (False, "the model is not loaded yet")
    h.model_loaded = True
    assert h.ready() == (False, "no partitions assigned")
    h.partitions = 4
    assert h.ready() == (False, "the broker has not answered yet")
    h.broker_answered()
    clock.now += 29
    assert h.ready() == (True, "ok")
    clock.now += 2  # 31 s since the broker's last answer
    assert h.ready() == (False, "the broker has not answered for 31s")
    h.broker_answered()
    assert h.ready() == (True, "ok")


def test_healthz_fails_when_the_loop_stalls_or_stops():
    clock = Clock()
    h = Health(stall_s=120, clock=clock)
    h.model_loaded, h.partitions = True, 1
    h.broker_answered()
    clock.now += 121
    assert h.live() == (False, "the pipeline loop has not turned for 121s")
    assert h.ready()[0] is False
    h.loop_turned()
    h.broker_answered()
    assert h.live() == (True, "ok") and h.ready() == (True, "ok")
    h.stopped = True
    assert h.live() == (False, "the pipeline loop has stopped")


def test_probes_share_the_metrics_port():
    clock = Clock()
    h = Health(clock=clock)
    port = free_port()
    Metrics().serve(port, "127.0.0.1", h)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (503, "the model is not loaded yet\n")
    status, body = get(port, "/metrics")
    assert status == 200 and "tsguard_points_total" in body


@pytest.mark.integration
def test_serve_answers_healthz_and_readyz(broker):
    port = free_port()
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(port),
                   "--group-id", "it-health", "--session-timeout-ms", "6000")  # fmt: skip
    try:
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answers.append(get(port, "/readyz"))
            except OSError:  # not listening yet: the model is loading
                time.sleep(0.3)
                continue
            if answers[-1][0] == 200:
                break
            time.sleep(0.3)
        assert answers and answers[-1] == (200, "ok\n"), answers[-5:]
        # Before that: 503 with one line saying why (typically: waiting for the group's join).
        reasons = {"no partitions assigned", "the broker has not answered yet"}
        assert all(code == 503 and body.strip() in reasons for code, body in answers[:-1])
        assert all(body.count("\n") == 1 for _, body in answers)
        assert get(port, "/healthz") == (200, "ok\n")
        status, body = get(port, "/metrics")
        assert status == 200 and "tsguard_points_total" in body
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_compose_and_dockerfile_probe_the_health_endpoints():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    test = " ".join(compose["services"]["tsguard"]["healthcheck"]["test"])
    assert "http://127.0.0.1:9109/readyz" in test
    dockerfile = (REPO / "Dockerfile").read_text()
    (healthcheck,) = [line for line in dockerfile.splitlines() if line.strip().startswith("CMD [")
                      and "urlopen" in line]  # fmt: skip
    assert "http://127.0.0.1:9109/healthz" in healthcheck
