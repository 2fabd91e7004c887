"""Incidents (contract: the `tsguard.incidents` topic and "Alerting and health"): the grouping
rules of stream/incidents.py, and a running serve on the real embedded broker that turns two
overlapping episodes of one host into one incident and one Alertmanager alert."""

from __future__ import annotations

import time
from collections import namedtuple

import orjson
import pytest

from detector.messages import AnomalyEvent, EventWindow
from stream.alertmanager import alert_of, incident_alert_of
from stream.broker import free_port
from stream.incidents import EventTimeOrder, IncidentTracker, group_of
from stream.metrics import Metrics
from tests.conftest import point, produce, read_topic, stop, tsguard
from tests.test_alertmanager import BINARY, alertmanager  # noqa: F401 (a fixture)
from tests.test_serve_integration import normal_series, scrape


def event(kind: str, series: str, ts: float, episode: str | None = None, score: float = 0.8,
          labels: dict[str, str] | None = None,
          signals: dict[str, float] | None = None) -> AnomalyEvent:  # fmt: skip
    episode = episode or f"ep-{series}"
    return AnomalyEvent(
        event_id=f"{episode}-{kind}", episode_id=episode, kind=kind, series=series, ts=ts,
        score=score, threshold=0.4, model_version="v1", window=EventWindow(ts - 60, ts, 2),
        contributions={"value": 1.0}, detected_at=ts, labels=labels or {}, signals=signals or {},
    )  # fmt: skip


def published(*events: AnomalyEvent) -> list[tuple[AnomalyEvent, bool]]:
    return [(e, True) for e in events]


def kinds(messages) -> list[tuple[str, list[str]]]:
    return [(m.kind, m.series) for m in messages]


def test_overlapping_episodes_of_one_host_are_one_incident_closed_by_the_last_end():
    metrics = Metrics()
    tracker = IncidentTracker(metrics)

    def gauge() -> float:
        return metrics.registry.get_sample_value("tsguard_incidents_open")

    out = tracker.observe(published(event("start", "web-01/cpu", 100.0, score=0.9)))
    assert kinds(out) == [("open", ["web-01/cpu"])] and gauge() == 1
    out += tracker.observe(published(event("start", "web-01/mem", 160.0, score=0.6)))
    out += tracker.observe(published(event("end", "web-01/cpu", 200.0)))  # mem is still open
    assert tracker and gauge() == 1
    out += tracker.observe(published(event("end", "web-01/mem", 260.0)))
    both = ["web-01/cpu", "web-01/mem"]
    assert kinds(out) == [("open", ["web-01/cpu"]), ("update", both), ("update", both),
                          ("close", both)]  # fmt: skip
    assert [m.ts for m in out] == [100.0, 160.0, 200.0, 260.0]
    assert len({m.incident_id for m in out}) == 1
    close = out[-1]
    assert close.episodes == ["ep-web-01/cpu", "ep-web-01/mem"]
    assert close.labels == {"group": "web-01"} and close.grouped_by == "prefix"
    assert close.score == 0.9
    assert close.contributions == {"web-01/cpu": 0.6, "web-01/mem": 0.4}
    assert [(m.start, m.end) for m in close.members] == [(100.0, 200.0), (160.0, 260.0)]
    assert not tracker and gauge() == 0


def test_episodes_that_do_not_overlap_are_separate_incidents():
    tracker = IncidentTracker()
    first = tracker.observe(published(event("start", "web-01/cpu", 100.0),
                                      event("end", "web-01/cpu", 150.0)))  # fmt: skip
    second = tracker.observe(published(event("start", "web-01/mem", 160.0),
                                       event("end", "web-01/mem", 200.0)))  # fmt: skip
    assert kinds(first) == [("open", ["web-01/cpu"]), ("close", ["web-01/cpu"])]
    assert kinds(second) == [("open", ["web-01/mem"]), ("close", ["web-01/mem"])]
    assert first[0].incident_id != second[0].incident_id


def test_other_hosts_and_other_labels_are_other_incidents_shared_labels_group():
    tracker = IncidentTracker()
    web = {"team": "web", "severity": "page"}
    out = tracker.observe(published(
        event("start", "web-01/cpu", 100.0, labels=web),
        event("start", "web-02/cpu", 101.0, labels=dict(reversed(web.items()))),  # same labels
        event("start", "web-01/mem", 102.0),  # no rule labels: its host prefix
        event("start", "db-01/cpu", 103.0),  # another host
        event("start", "db-01/disk", 104.0, labels={"team": "db"}),  # other labels
    ))  # fmt: skip
    assert kinds(out) == [("open", ["web-01/cpu"]), ("update", ["web-01/cpu", "web-02/cpu"]),
                          ("open", ["web-01/mem"]), ("open", ["db-01/cpu"]),
                          ("open", ["db-01/disk"])]  # fmt: skip
    assert out[1].labels == web and out[1].grouped_by == "labels"
    assert len({m.incident_id for m in out}) == 4
    assert len(tracker) == 4


def test_an_incident_of_one_series():
    tracker = IncidentTracker()
    out = tracker.observe(published(event("start", "db", 10.0), event("end", "db", 70.0)))
    assert kinds(out) == [("open", ["db"]), ("close", ["db"])]
    assert out[1].labels == {} and out[1].grouped_by == "series"
    assert out[1].contributions == {"db": 1.0}
    assert group_of("/cpu", {}).by == "series"  # an empty prefix is no group


def test_a_batch_is_grouped_in_time_order_and_ids_are_deterministic():
    """The head scores a batch window by window: one series' events may come before another's
    that happened earlier."""
    batch = published(event("start", "h/a", 100.0), event("end", "h/a", 300.0),
                      event("start", "h/b", 200.0), event("end", "h/b", 400.0))  # fmt: skip
    out = IncidentTracker().observe(batch)
    assert [m.kind for m in out] == ["open", "update", "update", "close"]
    again = IncidentTracker().observe(batch)
    assert [m.encode() for m in again] == [m.encode() for m in out]


def test_replayed_events_rebuild_an_open_incident_that_the_next_end_closes():
    """After a restart the head replays the episodes' events unpublished: the incident comes
    back under the same id, says nothing, and closes at its last end."""
    first = IncidentTracker()
    opened = first.observe(published(event("start", "h/a", 100.0), event("start", "h/b", 110.0)))
    restarted = IncidentTracker()
    assert restarted.observe([(event("start", "h/a", 100.0), False),
                              (event("start", "h/b", 110.0), False)]) == []  # fmt: skip
    assert len(restarted) == 1
    out = restarted.observe(published(event("end", "h/a", 200.0), event("end", "h/b", 210.0)))
    assert [m.kind for m in out] == ["update", "close"]
    assert {m.incident_id for m in out} == {opened[0].incident_id}
    # An end whose start this process never saw, and a start sent twice, change nothing.
    assert restarted.observe(published(event("end", "h/c", 220.0))) == []
    twice = IncidentTracker()
    assert (
        len(twice.observe(published(event("start", "h/a", 1.0), event("start", "h/a", 1.0)))) == 1
    )


def test_a_start_while_the_series_episode_is_open_ends_that_episode():
    """An episode whose end was never seen (held by a rule, or closed by a model reload)."""
    tracker = IncidentTracker()
    out = tracker.observe(published(event("start", "h/a", 100.0, episode="e1"),
                                    event("start", "h/a", 500.0, episode="e2")))  # fmt: skip
    assert [m.kind for m in out] == ["open", "close", "open"]
    assert out[1].members[0].end == 500.0 and out[0].incident_id != out[2].incident_id


def test_forget_drops_unclosed_and_close_all_closes():
    tracker = IncidentTracker()
    tracker.observe(published(event("start", "h/a", 100.0), event("start", "h/b", 110.0),
                              event("start", "g/a", 120.0)))  # fmt: skip
    tracker.forget(["h/a", "h/b", "nobody"])  # their partitions were revoked: no close here
    assert len(tracker) == 1
    out = tracker.close_all()  # a model reload ended every episode
    assert kinds(out) == [("close", ["g/a"])] and out[0].ts == 120.0
    assert out[0].members[0].end == 120.0 and not tracker


def test_the_value_on_the_topic_has_the_contract_fields_first():
    start = event("start", "web-01/cpu", 100.0, signals={"forecast": 0.9, "shift": 0.2})
    out = IncidentTracker().observe(published(start))
    value = orjson.loads(out[0].encode())
    assert list(value)[:7] == ["incident_id", "kind", "ts", "series", "episodes", "labels",
                               "score"]  # fmt: skip
    assert value["members"] == [{"series": "web-01/cpu", "episode_id": "ep-web-01/cpu",
                                 "start": 100.0, "end": None, "score": 0.8,
                                 "signals": {"forecast": 0.9, "shift": 0.2}}]  # fmt: skip


def test_an_incident_alert_names_the_incident_and_its_series():
    tracker = IncidentTracker()
    tracker.observe(published(event("start", "web-01/cpu", 100.0, labels={"severity": "page"},
                                    signals={"seasonal": 0.5, "shift": 0.8, "spread": 0.1})))  # fmt: skip
    out = tracker.observe(published(event("start", "web-02/cpu", 160.0, score=0.95,
                                          labels={"severity": "page"})))  # fmt: skip
    alert = incident_alert_of(orjson.loads(out[0].encode()))
    assert alert.labels == {"alertname": "TsguardAnomaly", "severity": "page",
                            "incident": out[0].incident_id}  # fmt: skip
    assert alert.annotations["series"] == "web-01/cpu,web-02/cpu"
    assert alert.annotations["score"] == "0.9500"
    # What was loud at each member's start, loudest first; web-02/cpu's start said nothing.
    assert alert.annotations["why"] == "web-01/cpu: level shift, unusual for the time of day"
    assert alert.starts_at == 100.0 and alert.ends_at is None


def test_an_episode_alert_says_which_signals_were_loud():
    def annotations(signals: dict[str, float]) -> dict[str, str]:
        return alert_of(
            orjson.loads(event("start", "db", 100.0, signals=signals).encode())
        ).annotations

    assert "why" not in annotations({}) and annotations({})["summary"] == "Anomaly on db"
    loud = annotations({"range": 0.7, "novelty": 0.3, "forecast": 0.29})
    assert loud["why"] == "outside the usual range, a shape not seen recently"
    assert loud["summary"] == "Anomaly on db: outside the usual range, a shape not seen recently"
    # None at 0.3 (several a little surprised together): the loudest is still named.
    assert annotations({"forecast": 0.1, "spread": 0.2})["why"] == "change in variability"


# --- the metrics head ----------------------------------------------------------------------


Record = namedtuple("Record", "topic partition offset key value")


def host_records(n: int, spikes: dict[str, int]) -> list[Record]:
    """Series of one host, one partition each, in time order."""
    out = []
    for p, (name, at) in enumerate(spikes.items()):
        values = normal_series(n, seed=p)
        values[at] += 40.0
        out += [Record("tsguard.metrics", p, i, name.encode(),
                       orjson.dumps({"series": name, "ts": 1.7e9 + 60 * i, "value": float(v)}))
                for i, v in enumerate(values)]  # fmt: skip
    return sorted(out, key=lambda r: (r.offset, r.partition))


def incidents_of(outputs) -> list[dict]:
    return [orjson.loads(o.value) for o in outputs if o.topic == "tsguard.incidents"]


def test_the_head_rebuilds_an_open_incident_after_a_restart():
    """A restart between the spikes and the episodes' ends: the replayed records rebuild the
    incident without publishing it again, and the messages after the committed offset are the
    uninterrupted run's, ids included."""
    from detector.scorer import load_scorer
    from stream.heads.metrics import MetricsHead
    from stream.settings import Settings

    scorer = load_scorer(None, "cpu")
    recs = host_records(340, {"h/a": 300, "h/b": 302})
    head = MetricsHead(Settings(), scorer, Metrics())
    out = head.handle(recs, 0.0)
    out += [o for part in head.ready(0.0, flush=True) for o in part]
    expected = incidents_of(out)
    assert [m["kind"] for m in expected] == ["open", "update", "update", "close"]
    for o in out:
        if o.topic == "tsguard.incidents":
            assert o.key == expected[0]["incident_id"].encode()

    committed = 305  # both episodes open
    head = MetricsHead(Settings(), scorer, Metrics())
    head.rebuild([r for r in recs if r.offset < committed], 0.0)
    out = [o for part in head.ready(0.0, flush=True) for o in part]
    assert incidents_of(out) == [] and len(head.incidents) == 1
    out += head.handle([r for r in recs if r.offset >= committed], 0.0)
    out += [o for part in head.ready(0.0, flush=True) for o in part]
    later = [m for m in expected if m["ts"] >= 1.7e9 + 60 * committed]
    assert [m["kind"] for m in later] == ["update", "close"]  # the episodes' ends
    assert incidents_of(out) == later


def test_each_published_start_is_counted_by_its_loudest_signal():
    from detector.scorer import load_scorer
    from detector.signals import SIGNALS
    from stream.heads.metrics import MetricsHead
    from stream.settings import Settings

    metrics = Metrics()
    head = MetricsHead(Settings(), load_scorer(None, "cpu"), metrics)
    out = head.handle(host_records(340, {"h/a": 300, "h/b": 302}), 0.0)
    out += [o for part in head.ready(0.0, flush=True) for o in part]
    starts = [e for o in out if o.topic == "tsguard.anomalies"
              if (e := orjson.loads(o.value))["kind"] == "start"]  # fmt: skip
    assert len(starts) >= 2
    want = dict.fromkeys(SIGNALS, 0)
    for e in starts:
        want[max(SIGNALS, key=lambda k: e["signals"].get(k, -1.0))] += 1  # first of any tie
    got = {k: metrics.registry.get_sample_value("tsguard_anomaly_causes_total", {"signal": k})
           for k in SIGNALS}  # fmt: skip
    assert got == want


def test_a_partition_read_behind_the_other_does_not_split_an_incident():
    """h/a's episode starts two points before h/b's, on another partition. A poll brings h/b's
    partition whole before h/a's (a restart's catch-up): its episode starts and ends first, yet
    the incidents are the time-ordered run's, one incident of both; the events that wait hold
    their partition's commit."""
    from detector.scorer import load_scorer
    from stream.heads.metrics import MetricsHead
    from stream.settings import Settings

    scorer = load_scorer(None, "cpu")
    recs = host_records(340, {"h/a": 300, "h/b": 302})
    head = MetricsHead(Settings(), scorer, Metrics())
    out = head.handle(recs, 0.0) + [o for part in head.ready(0.0, flush=True) for o in part]
    expected = incidents_of(out)
    assert [m["kind"] for m in expected] == ["open", "update", "update", "close"]

    head = MetricsHead(Settings(), scorer, Metrics())
    head.assigned({0, 1}, 0.0)
    out = head.handle([r for r in recs if r.partition == 1], 0.0)
    out += [o for part in head.ready(1.0) for o in part]
    anomalies = [o for o in out if o.topic == "tsguard.anomalies"]
    assert len(anomalies) == 2 and incidents_of(out) == []  # h/b's start and end, held
    assert head.holds() == {1: 0}
    out = head.handle([r for r in recs if r.partition == 0], 1.0)
    out += [o for part in head.ready(2.0) for o in part]
    out += [o for part in head.ready(3.0, flush=True) for o in part]
    assert incidents_of(out) == expected and head.holds() == {}


def test_a_partition_that_goes_quiet_holds_the_others_back_only_for_idle_s():
    order = EventTimeOrder(idle_s=10.0)
    order.expect({0, 1, 2}, now=0.0)
    order.add([(event("start", "h/a", 100.0), True, 0)], {0: 5})
    order.scored(0, 100.0, now=1.0)
    order.scored(1, 160.0, now=1.0)
    assert order.due(now=9.0) == [] and order.holds() == {0: 5}  # 2 never scored, 10 s not up
    order.scored(0, 200.0, now=10.5)
    assert [e.ts for e, _ in order.due(now=10.5)] == [100.0]  # 2 idle since assignment
    order.add([(event("end", "h/a", 200.0), True, 0)], {0: 9})
    assert order.due(now=10.9) == []  # 1 was scored up to 160, 9.9 s ago
    assert [e.kind for e, _ in order.due(now=11.1)] == ["end"]
    order.add([(event("start", "h/b", 300.0), True, 1)], {1: 2})
    order.drop({1})  # revoked: its events and its clock go
    assert order.due(now=12.0) == [] and order.holds() == {} and len(order) == 0


# --- a running serve --------------------------------------------------------------------------


def by_incident(alerts: list[dict]) -> dict[str, dict]:
    return {a["labels"]["incident"]: a for a in alerts if "incident" in a["labels"]}


def wait_for_sample(port: int, name: str, value: float, timeout_s: float) -> None:
    """Until the running serve's /metrics shows name == value."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if scrape(port).get(name) == value:
                return
        except OSError:  # not serving yet
            pass
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.2)


@pytest.mark.integration
def test_serve_groups_two_series_of_one_host_into_one_incident_and_one_alert(broker, request):
    """web-01/cpu and web-01/mem spike two points apart. Produced as a live stream would bring
    them (up to just past both spikes, then the rest): one incident opens, gains the second
    series, and closes when both episodes have ended; Alertmanager (where installed) gets one
    alert for it, with the member series, that resolves at the close."""
    am = request.getfixturevalue("alertmanager") if BINARY else None
    n, spike_at = 400, 330
    t0 = time.time() - 60 * n  # the stream ends about now
    cpu, mem = normal_series(n, seed=1), normal_series(n, seed=2)
    cpu[spike_at] += 40.0
    mem[spike_at + 2] += 40.0
    messages = [m for i in range(n) for m in (point("web-01/cpu", t0 + 60 * i, float(cpu[i])),
                                              point("web-01/mem", t0 + 60 * i, float(mem[i])))]  # fmt: skip
    both = ["web-01/cpu", "web-01/mem"]
    port = free_port()
    extra = ["--alertmanager", am.url] if am else []
    proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(port),
                   "--group-id", "it-incidents", "--session-timeout-ms", "6000", *extra)  # fmt: skip
    try:
        produce(broker.bootstrap, "tsguard.metrics", messages[: 2 * (spike_at + 4)])
        wait_for_sample(port, 'tsguard_anomaly_events_total{kind="start"}', 2, timeout_s=120)
        opened = read_topic(broker.bootstrap, "tsguard.incidents", expect=2)
        # (in time order when a poll brings both series; in arrival order when not)
        assert [m["kind"] for m in opened] == ["open", "update"]
        assert sorted(opened[1]["series"]) == both
        incident_id = opened[0]["incident_id"]
        if am is not None:
            alerts = am.wait_for(lambda a: incident_id in by_incident(a))
            alert = by_incident(alerts)[incident_id]
            assert alert["labels"] == {"alertname": "TsguardAnomaly", "incident": incident_id,
                                       "group": "web-01", "severity": "warning"}  # fmt: skip
            assert alert["status"]["state"] == "active"
            spike = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t0 + 60 * spike_at)))
            assert alert["startsAt"].startswith(spike)
            # One page for the host: no alert of a member series.
            assert not {"web-01/cpu", "web-01/mem"} & {a["labels"].get("series") for a in alerts}
        assert scrape(port)["tsguard_incidents_open"] == 1
        produce(broker.bootstrap, "tsguard.metrics", messages[2 * (spike_at + 4) :])
        wait_for_sample(port, "tsguard_incidents_open", 0, timeout_s=60)
        incidents = read_topic(broker.bootstrap, "tsguard.incidents", expect=4)
        assert [m["kind"] for m in incidents] == ["open", "update", "update", "close"]
        assert {m["incident_id"] for m in incidents} == {incident_id}
        close = incidents[-1]
        assert sorted(close["series"]) == both and close["labels"] == {"group": "web-01"}
        events = read_topic(broker.bootstrap, "tsguard.anomalies", expect=4)
        assert sorted(close["episodes"]) == sorted(e["episode_id"] for e in events
                                                   if e["kind"] == "start")  # fmt: skip
        assert close["ts"] == max(e["ts"] for e in events if e["kind"] == "end")
        if am is not None:
            alerts = am.wait_for(lambda a: incident_id not in by_incident(a))
            assert incident_id not in by_incident(alerts)  # resolved at the close
    finally:
        stop(proc)
    assert proc.returncode == 0
