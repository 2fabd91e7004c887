"""End to end: a real Prometheus scrapes a running `tsguard serve`, evaluates our alert rules and
raises the anomaly alert for a series that got an injected spike.

Everything runs on loopback on free ports: the embedded broker, `tsguard serve`, and Prometheus
(Debian's `prometheus`, installed by .ci/run) with this test's own config (1s scrape and
evaluation intervals) and a copy of dashboards/prometheus/rules with every `for:` cut to 1s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from stream.broker import EmbeddedBroker, free_port
from tests.conftest import point, produce, stop, tsguard

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "dashboards" / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus")
ALERT_TIMEOUT_S = 60.0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return json.loads(resp.read())


def wait_until(what: str, check, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tails}")


def fast_rules(dest: Path) -> list[str]:
    """Copies of the rule files with every `for:` cut to 1s (keep_firing_for left as is)."""
    paths = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        out = dest / path.name
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(str(out))
    return paths


def series_values(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 50) + rng.normal(0, 0.5, n)


def query(prom: str, promql: str) -> float | None:
    """Value of a one-element instant vector, None while the vector is empty."""
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result = get_json(url)["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def active_alerts(prom: str) -> list[dict]:
    return get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian `prometheus`; .ci/run installs it)"
)
def test_prometheus_raises_the_anomaly_alert(tmp_path: Path):
    serve_log, prom_log = tmp_path / "serve.log", tmp_path / "prometheus.log"
    logs = [serve_log, prom_log]
    metrics_port, prom_port = free_port(), free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    procs: list[subprocess.Popen] = []
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log").start()
    try:
        with serve_log.open("w") as out:
            procs.append(
                tsguard(
                    "serve",
                    "--bootstrap",
                    broker.bootstrap,
                    "--metrics-port",
                    str(metrics_port),
                    "--metrics-addr",
                    "127.0.0.1",
                    "--group-id",
                    f"e2e-{uuid.uuid4().hex[:8]}",
                    "--session-timeout-ms",
                    "6000",
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        wait_until(
            "tsguard /metrics",
            lambda: b"tsguard_model_info{" in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read(),
            90,
            logs,
        )  # fmt: skip

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": fast_rules(tmp_path),
            "scrape_configs": [
                {
                    "job_name": "tsguard",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with prom_log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        PROMETHEUS,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        # Scraping the service before any point arrives, so counters are seen rising.
        wait_until(
            "Prometheus to scrape tsguard", lambda: query(prom, 'up{job="tsguard"}') == 1, 60, logs
        )

        # ~300 normal points for two series, then a spike (~80 noise sigmas) on s1 only.
        t0, n = 1_700_000_000.0, 300
        s1 = series_values(n + 1, seed=0)
        s1[n] += 40.0
        s2 = series_values(n + 1, seed=1)
        messages = [point("s1", t0 + 60 * i, float(v)) for i, v in enumerate(s1)]
        messages += [point("s2", t0 + 60 * i, float(v)) for i, v in enumerate(s2)]
        produce(broker.bootstrap, "tsguard.metrics", messages)

        def anomaly_alerts_raised() -> bool:
            raised = {
                (a["labels"]["alertname"], a["labels"].get("series"))
                for a in active_alerts(prom)
                if a["state"] in ("pending", "firing")
            }
            # The per-series score alert, and the anomaly-event alert (tsguard_anomalies_total
            # rose while Prometheus was watching).
            return {("TsguardSeriesAnomaly", "s1"), ("TsguardAnomalyEvents", None)} <= raised

        wait_until(
            "TsguardSeriesAnomaly{series=s1} and TsguardAnomalyEvents",
            anomaly_alerts_raised,
            ALERT_TIMEOUT_S,
            logs,
        )

        alerts = active_alerts(prom)
        s1_alert = next(a for a in alerts if a["labels"].get("series") == "s1")
        assert s1_alert["labels"]["alertname"] == "TsguardSeriesAnomaly"
        assert s1_alert["labels"]["severity"] == "warning"
        assert s1_alert["labels"]["job"] == "tsguard"
        assert s1_alert["annotations"]["summary"] == "Anomaly on series s1"
        # What the alert claims is what the service exposes.
        score = get_json(f"{prom}/api/v1/query?query=tsguard_anomaly_score%7Bseries%3D%22s1%22%7D")
        threshold = get_json(f"{prom}/api/v1/query?query=tsguard_anomaly_threshold")
        assert float(score["data"]["result"][0]["value"][1]) >= float(
            threshold["data"]["result"][0]["value"][1]
        )
        # The healthy parts of the pipeline raise nothing.
        names = {a["labels"]["alertname"] for a in alerts}
        assert not names & {
            "TsguardNoModelLoaded",
            "TsguardTargetDown",
            "TsguardPipelineStalled",
        }, alerts
        assert not [a for a in alerts if a["labels"].get("series") == "s2"], alerts
    finally:
        for proc in reversed(procs):
            stop(proc)
        broker.stop()
