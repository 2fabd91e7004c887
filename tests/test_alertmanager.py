"""`--alertmanager URL`: episodes pushed to a real Alertmanager (Debian's prometheus-alertmanager,
installed by .ci/run) that each test starts on a free port. Contract: "Alerting and health"."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from datetime import datetime

import numpy as np
import orjson
import pytest

from stream.alertmanager import AlertmanagerSink
from stream.broker import free_port
from stream.heads.base import Output
from stream.metrics import Metrics
from tests.conftest import point, produce, stop, tsguard

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_alertmanager = pytest.mark.skipif(
    BINARY is None, reason="prometheus-alertmanager is not installed (.ci/run installs it)"
)

CONFIG = """
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


class Alertmanager:
    def __init__(self, url: str) -> None:
        self.url = url

    def alerts(self) -> list[dict]:
        """The active alerts (a resolved alert is no longer listed)."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=2) as r:
            return orjson.loads(r.read())

    def groups(self) -> list[dict]:
        """The aggregation groups: which receiver gets which alerts together."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts/groups", timeout=2) as r:
            return orjson.loads(r.read())

    def wait_for(self, predicate, timeout_s: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        alerts = self.alerts()
        while not predicate(alerts) and time.monotonic() < deadline:
            time.sleep(0.3)
            alerts = self.alerts()
        return alerts


@contextlib.contextmanager
def running_alertmanager(tmp_path, config: str):
    """A real Alertmanager with this configuration, on a free port, until the block ends."""
    if BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (.ci/run installs it)")
    (tmp_path / "am.yml").write_text(config)
    port = free_port()
    proc = subprocess.Popen(
        [BINARY, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("alertmanager did not become ready") from None
            time.sleep(0.2)
    try:
        yield Alertmanager(url)
    finally:
        stop(proc, 10)


@pytest.fixture
def alertmanager(tmp_path):
    with running_alertmanager(tmp_path, CONFIG) as am:
        yield am


def event(kind: str, series: str, ts: float, score: float = 0.93, **extra) -> Output:
    value = {"event_id": f"{series}-{kind}", "episode_id": f"ep-{series}", "kind": kind,
             "series": series, "ts": ts, "score": score, "threshold": 0.4, "model_version": "v1",
             "window": {"start": ts - 60, "end": ts, "length": 2}, "contributions": {"value": 1.0},
             "detected_at": ts, **extra}  # fmt: skip
    return Output("tsguard.anomalies", series.encode(), orjson.dumps(value))


def by_series(alerts: list[dict]) -> dict[str, dict]:
    return {a["labels"]["series"]: a for a in alerts if "series" in a["labels"]}


@needs_alertmanager
def test_sink_fires_and_resolves_an_episode(alertmanager):
    metrics = Metrics()
    sink = AlertmanagerSink([alertmanager.url], "tsguard.anomalies", metrics)
    try:
        start = time.time() - 120
        sink.take([event("start", "web-01/cpu", start, labels={"team": "web", "severity": "page"}),
                   Output("tsguard.dead-letter", None, b"not an event")])  # fmt: skip
        alerts = alertmanager.wait_for(lambda a: "web-01/cpu" in by_series(a))
        alert = by_series(alerts)["web-01/cpu"]
        assert alert["labels"] == {"alertname": "TsguardAnomaly", "series": "web-01/cpu",
                                   "severity": "page", "team": "web"}  # fmt: skip
        assert {"summary", "description", "score"} <= set(alert["annotations"])
        assert alert["annotations"]["score"] == "0.9300"
        assert alert["startsAt"].startswith(
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(start)))
        )
        assert alert["status"]["state"] == "active"
        sink.take([event("end", "web-01/cpu", start + 60, score=0.1)])
        alerts = alertmanager.wait_for(lambda a: "web-01/cpu" not in by_series(a))
        assert "web-01/cpu" not in by_series(alerts)
    finally:
        sink.close()
    sent = metrics.registry.get_sample_value
    assert sent("tsguard_alerts_sent_total", {"state": "firing"}) >= 1
    assert sent("tsguard_alerts_sent_total", {"state": "resolved"}) >= 1
    assert sent("tsguard_alerts_failed_total", {"reason": "unreachable"}) == 0


@needs_alertmanager
def test_an_open_episode_is_re_sent_with_a_later_end(alertmanager):
    metrics = Metrics()
    sink = AlertmanagerSink([alertmanager.url], "tsguard.anomalies", metrics, resend_s=0.5)
    try:
        sink.take([event("start", "s/open", time.time() - 60)])
        alerts = alertmanager.wait_for(lambda a: "s/open" in by_series(a))

        def ends(alerts: list[dict]) -> datetime:
            return datetime.fromisoformat(by_series(alerts)["s/open"]["endsAt"])

        first_end = ends(alerts)
        alerts = alertmanager.wait_for(lambda a: "s/open" in by_series(a) and ends(a) > first_end)
        assert ends(alerts) > first_end
        assert (
            metrics.registry.get_sample_value("tsguard_alerts_sent_total", {"state": "firing"}) >= 2
        )
    finally:
        sink.close()


def test_an_absent_alertmanager_never_blocks_and_is_counted():
    metrics = Metrics()
    sink = AlertmanagerSink([f"http://127.0.0.1:{free_port()}"], "tsguard.anomalies", metrics,
                            queue_size=2)  # fmt: skip
    t0 = time.monotonic()
    sink.take([event("start", f"s{i}", 1_700_000_000.0) for i in range(50)])
    assert time.monotonic() - t0 < 1.0  # take() only queues
    deadline = time.monotonic() + 10
    failed = metrics.registry.get_sample_value
    while failed("tsguard_alerts_failed_total", {"reason": "unreachable"}) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sink.close()
    assert failed("tsguard_alerts_failed_total", {"reason": "queue_full"}) >= 1


def test_a_bad_url_is_one_line():
    from detector.errors import UserError

    with pytest.raises(UserError, match="--alertmanager 'alertmanager:9093'"):
        AlertmanagerSink(["alertmanager:9093"], "tsguard.anomalies", Metrics())


def normal_series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * t / 50) + rng.normal(0, 0.5, n)


@pytest.mark.integration
@needs_alertmanager
def test_serve_pushes_an_episode_that_resolves_at_its_end(broker, alertmanager):
    n, spike_at = 400, 330
    t0 = time.time() - 60 * n  # the stream ends about now
    values = normal_series(n)
    values[spike_at] += 40.0
    messages = [point("s1", t0 + 60 * i, float(v)) for i, v in enumerate(values)]
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(free_port()),
                   "--group-id", "it-alerts", "--session-timeout-ms", "6000",
                   "--alertmanager", alertmanager.url)  # fmt: skip
    try:
        # Up to just after the spike: the episode is open, and so is its alert.
        produce(broker.bootstrap, "tsguard.metrics", messages[: spike_at + 2])
        alerts = alertmanager.wait_for(lambda a: "s1" in by_series(a), timeout_s=120)
        alert = by_series(alerts)["s1"]
        assert alert["labels"]["alertname"] == "TsguardAnomaly"
        assert alert["labels"]["severity"] == "warning"
        spike = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t0 + 60 * spike_at)))
        assert alert["startsAt"].startswith(spike)
        assert alert["status"]["state"] == "active"
        # The rest: the score settles, the episode ends, and the alert resolves.
        produce(broker.bootstrap, "tsguard.metrics", messages[spike_at + 2 :])
        alerts = alertmanager.wait_for(lambda a: "s1" not in by_series(a), timeout_s=60)
        assert "s1" not in by_series(alerts)
    finally:
        stop(proc)
    assert proc.returncode == 0
