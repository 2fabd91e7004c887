"""Anomaly episodes and incidents pushed to Prometheus Alertmanager's v2 API
(`--alertmanager URL[,URL]`).

A sink of the pipeline: it sees every output the pipeline sends, keeps the anomaly events and
incidents, and hands them to a background thread through a bounded queue, so a slow or absent
Alertmanager never blocks or crashes the pipeline (a full queue drops the message and counts
it). The thread turns them into alerts (contract, "Alerting and health"), one page per incident:

- an incident of a group (stream/incidents.py: a rule's labels, or a series id prefix) is one
  alert: labels `alertname="TsguardAnomaly"`, `incident`, `severity` and the group's labels;
  annotations `summary`, `description`, `score` and `series` (its member series, comma-separated),
  updated as members join; the member episodes send no alerts of their own;
- an episode of a series that groups with no other (no rule labels, no "/" in its id) is one
  alert: labels `alertname`, `series`, `severity` and the rule's labels; annotations `summary`,
  `description`, `score`;
- both add `why`, the signals loud at the start in words (`detector.signals.reasons`: `level
  shift, off the forecast`; an incident's per member series), and the summary ends with it;
- `startsAt` at the (first) episode's start; while open, re-sent every 60 s with `endsAt` a few
  resend intervals ahead (as Prometheus does: if tsguard goes away, the alert resolves by
  itself); at the end (the incident's close), sent once more with `endsAt` then, which resolves
  it.

Every URL gets every alert (an Alertmanager cluster de-duplicates). A failed POST is counted in
`tsguard_alerts_failed_total{reason}`; open alerts go again at the next resend, resolutions are
retried at the next tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from detector.errors import UserError
from detector.signals import reasons
from stream.heads.base import Output
from stream.incidents import BY_SERIES, group_of
from stream.metrics import Metrics

log = logging.getLogger(__name__)

ALERTNAME = "TsguardAnomaly"
DEFAULT_SEVERITY = "warning"
RESEND_S = 60.0
OPEN_FOR_RESENDS = 4  # an open alert's endsAt: this many resend intervals after it was sent
QUEUE_SIZE = 10_000
MAX_RESOLVED_BACKLOG = 10_000  # resolutions kept for a retry while Alertmanager is away
POST_TIMEOUT_S = 5.0
RETRY_S = 5.0  # after a failed POST, the next try waits this long


def rfc3339(ts: float) -> str:
    """Alertmanager's time format.

    >>> rfc3339(1700000000.5)
    '2023-11-14T22:13:20.500000Z'
    """
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Alert:
    """One episode's alert, as Alertmanager's v2 API takes it."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None  # None while open
    sent_at: float = field(default=-float("inf"), compare=False)

    def payload(self, now: float, resend_s: float) -> dict[str, Any]:
        ends = self.ends_at if self.ends_at is not None else now + OPEN_FOR_RESENDS * resend_s
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(ends),
        }


def alert_of(event: dict[str, Any]) -> Alert:
    """The alert of an episode, from its start event (tsguard.anomalies' contract)."""
    series, score = event["series"], float(event["score"])
    extra = {str(k): str(v) for k, v in (event.get("labels") or {}).items()}
    labels = {"severity": DEFAULT_SEVERITY, **extra, "alertname": ALERTNAME, "series": series}
    when = rfc3339(float(event["ts"]))
    why = ", ".join(reasons(event.get("signals") or {}))
    annotations = {
        "summary": f"Anomaly on {series}" + (f": {why}" if why else ""),
        "description": (
            f"tsguard scored {series} {score:.3f} (threshold {float(event['threshold']):.3f}) "
            f"at {when}; model {event['model_version']}, episode {event['episode_id']}"
        ),
        "score": f"{score:.4f}",
    }
    if why:
        annotations["why"] = why
    return Alert(labels, annotations, float(event["ts"]))


def incident_alert_of(incident: dict[str, Any]) -> Alert:
    """The alert of an incident, from any of its messages (tsguard.incidents' contract)."""
    extra = {str(k): str(v) for k, v in (incident.get("labels") or {}).items()}
    incident_id = incident["incident_id"]
    labels = {
        "severity": DEFAULT_SEVERITY,
        **extra,
        "alertname": ALERTNAME,
        "incident": incident_id,
    }
    alert = Alert(labels, {}, _incident_start(incident))
    _annotate(alert, incident)
    return alert


def _incident_start(incident: dict[str, Any]) -> float:
    starts = [float(m["start"]) for m in incident.get("members") or []]
    return min(starts) if starts else float(incident["ts"])


def _annotate(alert: Alert, incident: dict[str, Any]) -> None:
    """An incident alert's annotations, from its latest message."""
    series, score = [str(s) for s in incident["series"]], float(incident["score"])
    labels = incident.get("labels") or {}
    where = labels.get("group") or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    where = where or ",".join(series)
    alert.annotations = {
        "summary": f"Anomaly incident on {where}: {len(series)} series",
        "description": (
            f"tsguard grouped {len(incident['episodes'])} overlapping anomaly episode(s) of "
            f"{', '.join(series)} since {rfc3339(alert.starts_at)}; highest score {score:.3f}; "
            f"incident {incident['incident_id']}"
        ),
        "score": f"{score:.4f}",
        "series": ",".join(series),
    }
    # Each series' latest episode's reasons, in the order the series joined.
    latest = {
        str(m["series"]): reasons(m.get("signals") or {}) for m in incident.get("members") or []
    }
    why = "; ".join(f"{s}: {', '.join(r)}" for s, r in latest.items() if r)
    if why:
        alert.annotations["why"] = why


class AlertmanagerSink:
    """Takes the pipeline's outputs (`take`), posts the episodes' alerts from its own thread."""

    def __init__(
        self,
        urls: list[str],
        anomalies_topic: str,
        metrics: Metrics,
        resend_s: float = RESEND_S,
        queue_size: int = QUEUE_SIZE,
        incidents_topic: str | None = None,
    ) -> None:
        """With `incidents_topic`, grouped episodes page through their incidents (one alert per
        incident); without it, every episode is its own alert."""
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UserError(f"--alertmanager {url!r}: need http(s)://HOST:PORT")
        self.urls = [u.rstrip("/") + "/api/v2/alerts" for u in urls]
        self.topic = anomalies_topic
        self.incidents_topic = incidents_topic
        self.metrics = metrics
        self.resend_s = resend_s
        # (from the incidents topic?, the message)
        self._queue: queue.Queue[tuple[bool, dict[str, Any]]] = queue.Queue(maxsize=queue_size)
        # ("series", series) -> its open episode's alert; ("incident", id) -> an incident's
        self._open: dict[tuple[str, str], Alert] = {}
        self._resolved: list[Alert] = []  # ended, not yet delivered
        self._retry_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alertmanager", daemon=True)
        self._thread.start()

    # -- the pipeline's thread ----------------------------------------------------------------
    def take(self, outputs: list[Output]) -> None:
        """Never blocks: events past a full queue are dropped and counted."""
        for out in outputs:
            incident = out.topic == self.incidents_topic
            if out.topic != self.topic and not incident:
                continue
            try:
                self._queue.put_nowait((incident, orjson.loads(out.value)))
            except queue.Full:
                self.metrics.alerts_failed.labels("queue_full").inc()
            except orjson.JSONDecodeError:
                log.warning("alertmanager: an output on %s is not JSON; not alerted", out.topic)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (bounded by timeout_s), then stop the thread."""
        self._stop.set()
        self._thread.join(timeout_s)

    # -- the sink's thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=min(1.0, self.resend_s))
            except queue.Empty:
                item = None
            changed = []
            while item is not None:
                incident, message = item
                try:
                    apply = self._apply_incident if incident else self._apply
                    changed.extend(apply(message))
                except (KeyError, TypeError, ValueError) as exc:  # not from our head: skip it
                    log.warning("alertmanager: skipped a message it cannot read: %s", exc)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            now = time.time()
            due = [a for a in self._open.values() if now - a.sent_at >= self.resend_s]
            batch = self._resolved + [a for a in changed + due if a.ends_at is None]
            batch = list({id(a): a for a in batch}.values())  # each alert once
            if batch and now >= self._retry_at:
                if self._post(batch, now):
                    self._resolved = []
                    for alert in batch:
                        alert.sent_at = now
                else:
                    self._retry_at = now + RETRY_S
            if len(self._resolved) > MAX_RESOLVED_BACKLOG:
                del self._resolved[:-MAX_RESOLVED_BACKLOG]
            if self._stop.is_set() and self._queue.empty():
                return

    def _apply(self, event: dict[str, Any]) -> list[Alert]:
        """Update the open alerts with one event; returns the alerts to send now. A grouped
        episode's alert is its incident's (with incidents)."""
        series = event["series"]
        grouped = group_of(series, event.get("labels") or {}).by != BY_SERIES
        if grouped and self.incidents_topic is not None:
            return []
        key = ("series", series)
        if event["kind"] == "start":
            alert = self._open[key] = alert_of(event)
            return [alert]
        alert = self._open.pop(key, None)
        if alert is None:  # the start went before this process owned the series
            alert = alert_of(event)
        alert.ends_at = max(float(event["ts"]), alert.starts_at)
        self._resolved.append(alert)
        return []

    def _apply_incident(self, incident: dict[str, Any]) -> list[Alert]:
        """Update the open alerts with one incident message; an incident of a lone series is
        alerted as its episode (`_apply`)."""
        if incident["grouped_by"] == BY_SERIES:
            return []
        key = ("incident", incident["incident_id"])
        alert = self._open.get(key)
        if alert is None:  # its open, or the process that sent it, went before
            alert = incident_alert_of(incident)
        else:
            _annotate(alert, incident)
        if incident["kind"] != "close":
            self._open[key] = alert
            return [alert]
        self._open.pop(key, None)
        alert.ends_at = max(float(incident["ts"]), alert.starts_at)
        self._resolved.append(alert)
        return []

    def _post(self, alerts: list[Alert], now: float) -> bool:
        body = orjson.dumps([a.payload(now, self.resend_s) for a in alerts])
        ok = True
        for url in self.urls:
            request = urllib.request.Request(
                url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
                    response.read()
            except urllib.error.HTTPError as exc:
                ok = False
                self.metrics.alerts_failed.labels("http_error").inc()
                log.warning("alertmanager %s answered %d: %s", url, exc.code, exc.reason)
            except (OSError, ValueError) as exc:  # refused, unreachable, timed out
                ok = False
                self.metrics.alerts_failed.labels("unreachable").inc()
                log.warning("alertmanager %s: %s", url, exc)
            else:
                for alert in alerts:
                    kind = "resolved" if alert.ends_at is not None else "firing"
                    self.metrics.alerts_sent.labels(kind).inc()
        return ok
