"""Operator rules (`tsguard serve --rules FILE`, contract: "Operator rules"): the file, its
reloads, what the head holds back, and a running serve on the real embedded broker (with a real
Alertmanager where one is installed)."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from detector.episodes import EpisodeBank, EpisodeConfig
from stream.broker import free_port
from stream.metrics import Metrics
from stream.rules import RuleGate, RulesError, RulesFile, parse_rules
from tests.conftest import point, produce, read_topic, stop, tsguard
from tests.test_alertmanager import BINARY, alertmanager, by_series  # noqa: F401 (a fixture)
from tests.test_serve_integration import normal_series, scrape

CONTRACT_EXAMPLE = """
rules:
  - match: "web-*/cpu"          # glob over series ids; first match wins
    direction: up                # up | down | both (default both): which side of normal alerts
    min_delta: 5.0               # ignore deviations smaller than this, in series units
    sensitivity: 0.5             # 0..1, default 0.5: higher alerts on smaller surprises
    labels: {team: web, severity: page}   # copied to events, incidents and alerts
    mute:                        # no events or alerts in these spans; learn: false = also no learning
      - {start: "2026-12-24T00:00:00Z", end: "2026-12-27T00:00:00Z", learn: false}
      - {cron: "0 3 * * SUN", duration: 2h}   # a weekly maintenance window
  - match: "web-*"
    sensitivity: 0.9
"""


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_contract_example_first_match_wins():
    rules = parse_rules(CONTRACT_EXAMPLE)
    web = rules.for_series("web-01/cpu")
    assert (web.direction, web.min_delta, web.sensitivity) == ("up", 5.0, 0.5)
    assert web.labels == {"team": "web", "severity": "page"}
    assert rules.for_series("web-01/mem").sensitivity == 0.9  # the second rule
    assert rules.for_series("db-01/cpu") is None
    # the holiday span: muted, and not learned from
    assert web.muted(utc("2026-12-25T12:00:00")) and not web.learns(utc("2026-12-25T12:00:00"))
    assert not web.muted(utc("2026-12-27T00:00:00"))
    # Sunday 2026-12-06, 03:00-05:00 UTC: muted, still learned from
    assert web.muted(utc("2026-12-06T03:00:00")) and web.muted(utc("2026-12-06T04:59:00"))
    assert web.learns(utc("2026-12-06T04:00:00"))
    assert not web.muted(utc("2026-12-06T05:00:00")) and not web.muted(utc("2026-12-07T03:30:00"))
    assert rules.unlearning
    assert parse_rules("").rules == ()


@pytest.mark.parametrize(
    "text, says",
    [
        ("rules: [{match: a, direction: sideways}]", "rule 1 (a): direction must be up, down or both"),
        ("rules: [{match: a}, {match: b, sensitivity: 2}]", "rule 2 (b): sensitivity must be in 0..1"),
        ("rules: [{match: a, min_delta: -1}]", "min_delta must be >= 0"),
        ("rules: [{match: a, mute: [{cron: '61 * * * *', duration: 1h}]}]", "not a valid cron"),
        ("rules: [{match: a, mute: [{cron: '0 3 * * *'}]}]", "needs a duration"),
        ("rules: [{match: a, mute: [{cron: '0 3 * * *', duration: soon}]}]", "duration 'soon'"),
        ("rules: [{match: a, mute: [{start: '2026-12-27', end: '2026-12-24'}]}]", "end must be after start"),
        ("rules: [{match: a, mute: [{start: 'christmas', end: '2026-12-24'}]}]", "not an ISO 8601 time"),
        ("rules: [{match: a, labels: {alertname: x}}]", "may not set alertname"),
        ("rules: [{match: a, colour: red}]", "unknown key(s) colour"),
        ("rules: [{direction: up}]", "'match' (a series glob) is required"),
        ("rules: [{match: a, direction: up]", "not valid YAML at line 1"),
        ("- match: a", "expected a mapping with one key, 'rules'"),
    ],
)  # fmt: skip
def test_an_invalid_file_is_one_line_naming_the_rule(text: str, says: str):
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "ops.yml")
    message = str(caught.value)
    assert message.startswith("ops.yml") and says in message and "\n" not in message


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_reloaded_on_change_and_on_request_an_invalid_file_keeps_the_rules(tmp_path: Path):
    path = tmp_path / "rules.yml"
    path.write_text("rules: [{match: 'a*', labels: {team: one}}]")
    metrics = Metrics()
    rules = RulesFile(path, metrics, poll_s=0.05)
    try:
        assert rules.rules.for_series("a1").labels == {"team": "one"}
        path.write_text("rules: [{match: 'a*', labels: {team: two}}]\n")
        assert wait_until(lambda: rules.version == 1)
        assert rules.rules.for_series("a1").labels == {"team": "two"}
        path.write_text("rules: [{match: 'a*', direction: sideways}]\n")
        loads = metrics.registry.get_sample_value
        assert wait_until(lambda: loads("tsguard_rules_loads_total", {"result": "refused"}) == 1)
        assert rules.version == 1 and rules.rules.for_series("a1").labels == {"team": "two"}
        assert loads("tsguard_rules_file_refused") == 1
        rules.request_reload()  # SIGHUP: read again even though the file did not change
        assert wait_until(lambda: loads("tsguard_rules_loads_total", {"result": "refused"}) == 2)
        assert loads("tsguard_rules_loads_total", {"result": "ok"}) == 2  # the start + one reload
        path.write_text("rules: []\n")
        assert wait_until(lambda: loads("tsguard_rules_file_refused") == 0)
        assert rules.rules.for_series("a1") is None
    finally:
        rules.close()


def gate(tmp_path: Path, text: str) -> tuple[RuleGate, Metrics]:
    (tmp_path / "r.yml").write_text(text)
    metrics = Metrics()
    return RuleGate(RulesFile(tmp_path / "r.yml", metrics, poll_s=60), metrics), metrics


def test_the_gate_holds_episodes_by_direction_min_delta_and_mute(tmp_path: Path):
    g, metrics = gate(tmp_path, """
rules:
  - {match: "up/*", direction: up}
  - {match: "big/*", min_delta: 10}
  - {match: "quiet/*", mute: [{start: 100, end: 200}]}
""")  # fmt: skip
    window = np.array([[50.0], [51.0], [49.0], [50.0], [42.0]])  # the last point drops by 8
    share = np.array([1.0])
    # a drop on an up-only series: held, and so is its end
    assert not g.admit("start", "up/a", "ep1", 1.0, window, 4, share)
    assert not g.admit("end", "up/a", "ep1", 2.0, window, 4, share)
    window[4, 0] = 58.0  # a rise: published, start and end
    assert g.admit("start", "up/a", "ep2", 3.0, window, 4, share)
    assert g.admit("end", "up/a", "ep2", 4.0, window, 4, share)
    assert not g.admit("start", "big/a", "ep3", 1.0, window, 4, share)  # 8 < min_delta 10
    window[4, 0] = 61.0
    assert g.admit("start", "big/a", "ep4", 1.0, window, 4, share)
    assert not g.admit("start", "quiet/a", "ep5", 150.0, window, 4, share)  # in the span
    assert not g.admit("end", "quiet/a", "ep5", 250.0, window, 4, share)
    assert g.admit("start", "quiet/a", "ep6", 250.0, window, 4, share)
    assert g.admit("end", "quiet/a", "ep6", 260.0, window, 4, share)
    assert g.admit("start", "other", "ep7", 150.0, window, 4, share)  # no rule
    held = metrics.registry.get_sample_value
    assert held("tsguard_events_held_total", {"reason": "direction"}) == 1
    assert held("tsguard_events_held_total", {"reason": "min_delta"}) == 1
    assert held("tsguard_events_held_total", {"reason": "mute"}) == 1
    g.source.close()


class FakeDetector:
    def __init__(self) -> None:
        self.scales: dict[int, float] = {}

    def set_threshold_scale(self, dims: int, slot: int, scale: float) -> None:
        self.scales[slot] = scale


def test_prepare_sets_sensitivity_and_keeps_unlearned_windows_from_the_detector(tmp_path: Path):
    g, _ = gate(tmp_path, """
rules:
  - {match: "keen", sensitivity: 1.0}
  - {match: "holiday", mute: [{start: 100, end: 200, learn: false}]}
""")  # fmt: skip
    det = FakeDetector()
    times = np.array([[90.0, 150.0], [90.0, 150.0], [150.0, 210.0], [90.0, 150.0]])
    slots = g.prepare(det, 1, ["keen", "holiday", "holiday", "plain"], [0, 1, 1, 2], times)
    assert slots == [0, -1, 1, 2]  # the holiday window whose newest point is at 150
    assert det.scales == {0: 0.5, 1: 1.0, 2: 1.0}
    g.source.close()


def test_a_threshold_scale_moves_where_an_episode_starts():
    bank = EpisodeBank(EpisodeConfig(threshold=0.8, end_after=2, repeat=0))
    bank.reset(0)
    bank.reset(1)
    bank.set_scale(1, 0.5)  # sensitivity 1.0: thresholds halved
    kinds = bank.update(np.array([0, 1]), np.array([[0.1, 0.5, 0.5, 0.1, 0.1]] * 2))
    assert kinds.tolist() == [[0, 0, 0, 0, 0], [0, 1, 0, 0, 2]]


def test_serve_refuses_a_bad_rules_file_in_one_line(tmp_path: Path):
    path = tmp_path / "rules.yml"
    path.write_text("rules: [{match: a, direction: sideways}]")
    proc = tsguard("serve", "--bootstrap", "127.0.0.1:1", "--rules", str(path),
                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == (
        f"tsguard: error: {path}: rule 1 (a): direction must be up, down or both, got 'sideways'"
    )
    assert "Traceback" not in err


SERVE_RULES = """
rules:
  - {match: "muted/*", mute: [{start: 0, end: 4102444800}]}
  - {match: "drops/*", direction: down}
  - {match: "small/*", min_delta: 1000}
  - {match: "web/*", direction: up, labels: {team: web, severity: page}}
"""


@pytest.mark.integration
def test_serve_holds_and_labels_events_and_alerts(broker, tmp_path: Path, request):
    """Five series, each with a spike up near its end (the episodes are still open): a muted
    series, an alert-on-drops series and a min_delta series publish nothing; the web series'
    events carry the rule's labels, the unruled one's none, and each opens an incident;
    Alertmanager (where installed) gets alerts for exactly those two incidents, with the labels."""
    am = request.getfixturevalue("alertmanager") if BINARY else None
    rules = tmp_path / "rules.yml"
    rules.write_text(SERVE_RULES)
    n, spike_at = 400, 392
    t0 = time.time() - 60 * n
    names = ["muted/a", "drops/a", "small/a", "web/a", "plain/a"]
    messages = []
    for k, name in enumerate(names):
        values = normal_series(n, seed=k)
        values[spike_at] += 40.0
        messages += [point(name, t0 + 60 * i, float(v)) for i, v in enumerate(values)]
    produce(broker.bootstrap, "tsguard.metrics", messages)
    port = free_port()
    extra = ["--alertmanager", am.url] if am else []
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--stop-at-end", "--metrics-port",
                   str(port), "--group-id", "it-rules", "--session-timeout-ms", "6000",
                   "--rules", str(rules), *extra)  # fmt: skip
    assert proc.wait(timeout=180) == 0

    events = read_topic(broker.bootstrap, "tsguard.anomalies")
    starts = {e["series"]: e for e in events if e["kind"] == "start"}
    spike_ts = t0 + 60 * spike_at
    assert starts["web/a"]["ts"] == spike_ts and starts["plain/a"]["ts"] == spike_ts
    assert starts["web/a"]["labels"] == {"team": "web", "severity": "page"}
    assert starts["plain/a"]["labels"] == {}
    assert not {"muted/a", "drops/a", "small/a"} & {e["series"] for e in events}
    incidents = {m["series"][0]: m for m in read_topic(broker.bootstrap, "tsguard.incidents")}
    assert set(incidents) == {"web/a", "plain/a"}  # incidents of one series, labels as the rule's
    assert incidents["web/a"]["labels"] == {"team": "web", "severity": "page"}
    if am is not None:
        # Series with a "/" page as their incidents (the member series in an annotation).
        def by_member(alerts: list[dict]) -> dict[str, dict]:
            return {a["annotations"]["series"]: a for a in alerts if "incident" in a["labels"]}

        alerts = am.wait_for(lambda a: {"web/a", "plain/a"} <= set(by_member(a)))
        assert set(by_member(alerts)) == {"web/a", "plain/a"}  # a muted series sends none
        assert not by_series(alerts)
        web = by_member(alerts)["web/a"]["labels"]
        assert web == {"alertname": "TsguardAnomaly", "incident": incidents["web/a"]["incident_id"],
                       "team": "web", "severity": "page"}  # fmt: skip


@pytest.mark.integration
def test_a_running_serve_reloads_on_sighup_and_keeps_its_rules_past_a_bad_file(
    broker, tmp_path: Path
):
    rules = tmp_path / "rules.yml"
    rules.write_text('rules: [{match: "s/*", labels: {team: before}}]\n')
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(port),
                       "--group-id", "it-reload", "--session-timeout-ms", "6000", "--rules",
                       str(rules), stderr=err)  # fmt: skip
    try:

        def loads(result: str) -> float:
            try:
                return scrape(port).get(f'tsguard_rules_loads_total{{result="{result}"}}', 0)
            except OSError:
                return 0

        assert wait_until(lambda: loads("ok") == 1, 120)
        rules.write_text('rules: [{match: "s/*", direction: sideways}]\n')  # refused
        assert wait_until(lambda: loads("refused") == 1, 30)
        # SIGHUP re-reads it (the same bad file: refused again, nothing else changes)
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: loads("refused") == 2, 30)
        rules.write_text('rules: [{match: "s/*", labels: {team: after}}]\n')
        assert wait_until(lambda: loads("ok") == 2, 30)
        n, spike_at = 400, 392
        t0 = time.time() - 60 * n
        values = normal_series(n)
        values[spike_at] += 40.0
        produce(broker.bootstrap, "tsguard.metrics",
                [point("s/1", t0 + 60 * i, float(v)) for i, v in enumerate(values)])  # fmt: skip
        events = read_topic(broker.bootstrap, "tsguard.anomalies", expect=1, timeout_s=90)
        assert [e["labels"] for e in events if e["kind"] == "start"] == [{"team": "after"}]
    finally:
        stop(proc)
    refusals = [line for line in log.read_text().splitlines() if "rules refused" in line]
    assert len(refusals) == 2
    assert refusals[0].endswith(
        f"rules refused, the rules in force stay: {rules}: rule 1 (s/*): "
        "direction must be up, down or both, got 'sideways'"
    )
    assert proc.returncode == 0
