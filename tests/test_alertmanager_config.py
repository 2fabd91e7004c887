"""The stack's Alertmanager configuration (dashboards/alertmanager/alertmanager.yml): valid for
amtool, every alert tsguard raises routed where its comments say, and, on a real Alertmanager,
the incidents two serve processes open for one host's series grouped into one notification."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import yaml

from stream.alertmanager import AlertmanagerSink
from stream.heads.base import Output
from stream.incidents import IncidentTracker
from stream.metrics import Metrics
from tests.test_alertmanager import event as episode_output
from tests.test_alertmanager import needs_alertmanager, running_alertmanager
from tests.test_incidents import event, published

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "dashboards" / "prometheus" / "rules" / "tsguard.rules.yml"
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool is not installed (Debian prometheus-alertmanager; .ci/run)"
)
DETECTIONS = {"TsguardSeriesAnomaly", "TsguardAnomalyEvents"}  # Prometheus's view of events


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def receiver(**labels: str) -> str:
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}",
                 *(f"{k}={v}" for k, v in labels.items()))  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_amtool
def test_amtool_accepts_the_config():
    out = amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_amtool
def test_incidents_page_oncall_detections_stay_quiet_health_goes_to_ops():
    assert receiver(alertname="TsguardAnomaly", group="web-01", incident="x") == "oncall"
    assert receiver(alertname="TsguardAnomaly", series="db", severity="page") == "oncall"
    names = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
             if "alert" in r]  # fmt: skip
    assert set(names) >= DETECTIONS
    for name in names:
        expected = "detections" if name in DETECTIONS else "ops"
        assert receiver(alertname=name, instance="tsguard:9109") == expected, name


@needs_alertmanager
def test_two_processes_incidents_of_one_host_are_one_notification_group(tmp_path):
    """serve groups per process: two members of a consumer group that own web-01/cpu and
    web-01/mem each open an incident; the shipped route groups both by `group` for one page,
    and a series that groups with no other is a notification group of its own."""
    now = time.time()
    messages = []
    for series in ("web-01/cpu", "web-01/mem"):  # one tracker per process
        (incident,) = IncidentTracker().observe(published(event("start", series, now - 60)))
        messages.append(Output("tsguard.incidents", incident.incident_id.encode(),
                               incident.encode()))  # fmt: skip
    with running_alertmanager(tmp_path, CONFIG.read_text()) as am:
        sinks = [AlertmanagerSink([am.url], "tsguard.anomalies", Metrics(),
                                  incidents_topic="tsguard.incidents")
                 for _ in messages]  # fmt: skip
        try:
            for sink, message in zip(sinks, messages, strict=True):
                sink.take([message])
            sinks[0].take([episode_output("start", "db", now - 30)])
            am.wait_for(lambda alerts: len(alerts) == 3, timeout_s=30)
            groups = {orjson.dumps(g["labels"], option=orjson.OPT_SORT_KEYS): g
                      for g in am.groups()}  # fmt: skip
        finally:
            for sink in sinks:
                sink.close()
    host = groups[orjson.dumps({"alertname": "TsguardAnomaly", "group": "web-01"},
                               option=orjson.OPT_SORT_KEYS)]  # fmt: skip
    assert host["receiver"]["name"] == "oncall"
    assert sorted(a["annotations"]["series"] for a in host["alerts"]) == ["web-01/cpu",
                                                                          "web-01/mem"]  # fmt: skip
    assert len({a["labels"]["incident"] for a in host["alerts"]}) == 2
    alone = groups[orjson.dumps({"alertname": "TsguardAnomaly", "series": "db"},
                                option=orjson.OPT_SORT_KEYS)]  # fmt: skip
    assert alone["receiver"]["name"] == "oncall" and len(alone["alerts"]) == 1
    assert len(groups) == 2
