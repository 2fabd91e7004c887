"""Incidents: anomaly episodes that overlap in time and share a group become one incident on
`tsguard.incidents` (contract: "Topics"), so a host that goes wrong pages once, not once per
metric.

The group of an episode is decided by its start event (`group_of`):
- its series' rule has labels (`--rules`, stream/rules.py): the labels are the group, so every
  series a rule with labels matches can join one incident (labels {team: web} group all of
  team web's series);
- else the series id has a prefix before its first "/": "web-01/cpu" and "web-01/mem" group as
  "web-01" (the incident's labels are {"group": "web-01"});
- else the series is a group of its own: every episode is still an incident, of one series.

An episode that starts while an incident of its group is open joins it (kind "update"; so does
a member's end while others are open); the incident closes when its last open episode ends
(kind "close"). `IncidentTracker` takes the events in time order: the metrics head hands them
over through `EventTimeOrder`, which holds each event until every partition still receiving
points has been scored past its time, so a partition read behind the others (a poll that brings
one partition's backlog first, a restart's catch-up) cannot split episodes that overlapped in
time; incident messages wait for the slowest partition, the anomaly events do not. A partition
not scored for IDLE_S seconds stops holding the others (a partition more behind than that can
still split an incident). The incident id is
a digest of the group and its first episode's id, and episode ids are deterministic, so a
re-consumed stream gives the same incidents and consumers de-duplicate as they do events.

Scope, and what happens on a restart or rebalance:
- per process: only the series this process owns (its partitions) are grouped. Series of one
  group on partitions owned by other members of the consumer group make incidents of their own
  there (a known limit, in docs/ARCHITECTURE.md).
- state is rebuilt, not stored: the metrics head replays the records before the committed offset
  on assignment (`--rebuild-messages`) and hands the replayed episodes' events here as well
  (`publish=False`), so an incident open at a restart is rebuilt under the same id and closed by
  its last episode's end. An episode that started before the replayed records is not known here
  any more: its end closes nothing (its Alertmanager alert expires by itself).
- series revoked or evicted leave their incidents without a close: their new owner rebuilds
  and closes them. A model reload closes every episode without an end event, and so closes
  every open incident (`close_all`).

>>> from detector.messages import AnomalyEvent, EventWindow
>>> def ev(kind, series, ts):
...     return AnomalyEvent(f"{series}{kind}", f"ep-{series}", kind, series, ts, 0.8, 0.4, "v1",
...                         EventWindow(ts, ts, 1), {}, ts)
>>> tracker = IncidentTracker()
>>> out = tracker.observe([(ev("start", "web-01/cpu", 10.0), True),
...                        (ev("start", "web-01/mem", 12.0), True)])
>>> [(m.kind, m.series, m.labels) for m in out]
[('open', ['web-01/cpu'], {'group': 'web-01'}), ('update', ['web-01/cpu', 'web-01/mem'], {'group': 'web-01'})]
>>> out = tracker.observe([(ev("end", "web-01/cpu", 20.0), True), (ev("end", "web-01/mem", 25.0), True)])
>>> [(m.kind, m.ts) for m in out]
[('update', 20.0), ('close', 25.0)]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from detector.messages import AnomalyEvent, IncidentMember, IncidentMessage, message_id

# How an incident's members were grouped (IncidentMessage.grouped_by).
BY_LABELS, BY_PREFIX, BY_SERIES = "labels", "prefix", "series"


@dataclass(frozen=True, slots=True)
class Group:
    """What an episode groups by: `key` identifies the group, `labels` go on its incidents."""

    key: str
    labels: dict[str, str]
    by: str  # BY_LABELS | BY_PREFIX | BY_SERIES


def group_of(series: str, labels: Mapping[str, str]) -> Group:
    """The group of a series' episodes: its rule's labels, else its id's prefix before the first
    "/", else the series alone.

    >>> group_of("web-01/cpu", {}).labels, group_of("db", {}).by
    ({'group': 'web-01'}, 'series')
    >>> group_of("web-01/cpu", {"team": "web"}).key == group_of("web-02/cpu", {"team": "web"}).key
    True
    """
    if labels:
        items = sorted((str(k), str(v)) for k, v in labels.items())
        return Group("labels:" + repr(items), dict(items), BY_LABELS)
    prefix, slash, _ = series.partition("/")
    if slash and prefix:
        return Group("prefix:" + prefix, {"group": prefix}, BY_PREFIX)
    return Group("series:" + series, {}, BY_SERIES)


@dataclass(slots=True)
class _Member:
    series: str
    episode_id: str
    start: float
    score: float
    signals: dict[str, float]
    end: float | None = None


@dataclass(slots=True)
class _Incident:
    incident_id: str
    group: Group
    members: list[_Member] = field(default_factory=list)  # in the order they joined
    last_ts: float = 0.0  # the latest event time seen in it

    @property
    def open_members(self) -> list[_Member]:
        return [m for m in self.members if m.end is None]

    def message(self, kind: str, ts: float) -> IncidentMessage:
        best: dict[str, float] = {}
        for m in self.members:
            best[m.series] = max(best.get(m.series, 0.0), m.score)
        total = sum(best.values())
        shares = {s: round(v / total, 4) if total > 0 else round(1 / len(best), 4)
                  for s, v in best.items()}  # fmt: skip
        return IncidentMessage(
            incident_id=self.incident_id,
            kind=kind,
            ts=ts,
            series=list(best),
            episodes=[m.episode_id for m in self.members],
            labels=dict(self.group.labels),
            score=max(best.values()),
            grouped_by=self.group.by,
            contributions=shares,
            members=[
                IncidentMember(m.series, m.episode_id, m.start, m.end, m.score, m.signals)
                for m in self.members
            ],
        )


class IncidentTracker:
    """Anomaly events in (with whether they were published), incident messages out; see the
    module docstring. `metrics`: a stream.metrics.Metrics whose `incidents_open` gauge it sets."""

    def __init__(self, metrics=None) -> None:
        self.metrics = metrics
        self._open: dict[str, _Incident] = {}  # group key -> its open incident
        self._episodes: dict[str, tuple[_Incident, _Member]] = {}  # open episode -> its incident
        self._series: dict[str, str] = {}  # series -> its open episode

    def __len__(self) -> int:
        """Open incidents."""
        return len(self._open)

    def observe(self, events: Iterable[tuple[AnomalyEvent, bool]]) -> list[IncidentMessage]:
        """Apply a batch of (event, published) in time order (a stable sort: each series' own
        events keep theirs). Events not published (replayed to rebuild state) change the state
        and give no message."""
        out: list[IncidentMessage] = []
        for event, publish in sorted(events, key=lambda item: item[0].ts):
            messages = self._start(event) if event.kind == "start" else self._end(event)
            if publish:
                out += messages
        self._gauge()
        return out

    def _start(self, event: AnomalyEvent) -> list[IncidentMessage]:
        if event.episode_id in self._episodes:  # the same start again: nothing changes
            return []
        out: list[IncidentMessage] = []
        previous = self._series.get(event.series)
        if previous is not None:  # its last episode ended without an event (held, or reset)
            out += self._finish(previous, event.ts)
        group = group_of(event.series, event.labels)
        incident = self._open.get(group.key)
        kind = "update"
        if incident is None:
            kind = "open"
            incident = _Incident(message_id(group.key, event.episode_id), group)
            self._open[group.key] = incident
        member = _Member(event.series, event.episode_id, event.ts, event.score, event.signals)
        incident.members.append(member)
        incident.last_ts = max(incident.last_ts, event.ts)
        self._episodes[event.episode_id] = (incident, member)
        self._series[event.series] = event.episode_id
        return out + [incident.message(kind, event.ts)]

    def _end(self, event: AnomalyEvent) -> list[IncidentMessage]:
        if self._series.get(event.series) == event.episode_id:
            del self._series[event.series]
        return self._finish(event.episode_id, event.ts)

    def _finish(self, episode_id: str, ts: float) -> list[IncidentMessage]:
        """An episode ended at ts: the incident is updated, or closed with its last episode."""
        found = self._episodes.pop(episode_id, None)
        if found is None:  # started before this process knew the series
            return []
        incident, member = found
        if self._series.get(member.series) == episode_id:
            del self._series[member.series]
        member.end = max(ts, member.start)
        incident.last_ts = max(incident.last_ts, member.end)
        if incident.open_members:
            return [incident.message("update", member.end)]
        del self._open[incident.group.key]
        return [incident.message("close", incident.last_ts)]

    def forget(self, series: Iterable[str]) -> None:
        """These series moved to another process (or were evicted): their open episodes leave
        their incidents without a message; an incident left without open episodes is dropped
        unclosed (whoever owns the series now rebuilds and closes it)."""
        for name in series:
            episode_id = self._series.pop(name, None)
            if episode_id is None:
                continue
            incident, member = self._episodes.pop(episode_id)
            incident.members.remove(member)
            if not incident.open_members:
                del self._open[incident.group.key]
        self._gauge()

    def close_all(self) -> list[IncidentMessage]:
        """Every open episode ended without an end event (a model reload): close every incident
        at the latest time seen in it."""
        out = []
        for incident in sorted(self._open.values(), key=lambda i: i.last_ts):
            for m in incident.open_members:
                m.end = incident.last_ts
            out.append(incident.message("close", incident.last_ts))
        self._open.clear()
        self._episodes.clear()
        self._series.clear()
        self._gauge()
        return out

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.incidents_open.set(len(self._open))


# A partition scored nothing for this long holds no other partition's incidents back (its
# series went quiet, or its share of a backfill is done).
IDLE_S = 10.0


@dataclass(order=True, slots=True)
class _Held:
    ts: float
    seq: int  # arrival order among events of one time: each series' own events keep theirs
    event: AnomalyEvent = field(compare=False)
    publish: bool = field(compare=False)
    partition: int = field(compare=False)
    offset: int | None = field(compare=False)  # the commit waits here until it is released


class EventTimeOrder:
    """Anomaly events in, in the order their partitions were scored; out in time order, each
    once every partition that was scored within the last `idle_s` seconds has been scored up to
    its time (the watermark). Until then its partition's commit is held at the first record of
    the batch that made it, so a restart re-derives it rather than losing its incident message.

    >>> from detector.messages import AnomalyEvent, EventWindow
    >>> def ev(series, ts):
    ...     return AnomalyEvent(series, series, "start", series, ts, 0.8, 0.4, "v1",
    ...                         EventWindow(ts, ts, 1), {}, ts)
    >>> order = EventTimeOrder()
    >>> order.add([(ev("a/mem", 120.0), True, 0)], {0: 7})
    >>> order.scored(0, 130.0, now=0.0); order.scored(1, 60.0, now=0.0)
    >>> order.due(now=0.0), order.holds()   # partition 1 has been scored up to 60 only
    ([], {0: 7})
    >>> order.add([(ev("a/cpu", 100.0), True, 1)], {1: 3})
    >>> order.scored(1, 130.0, now=0.1)
    >>> [e.series for e, _ in order.due(now=0.1)], order.holds()
    (['a/cpu', 'a/mem'], {})
    """

    def __init__(self, idle_s: float = IDLE_S) -> None:
        self.idle_s = idle_s
        self._clock: dict[int, tuple[float, float]] = {}  # partition -> (scored up to, when)
        self._heap: list[_Held] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(
        self, events: Iterable[tuple[AnomalyEvent, bool, int]], held: Mapping[int, int]
    ) -> None:
        """(event, published, partition) from one scoring call; `held`: each partition's first
        record in that call."""
        for event, publish, partition in events:
            self._seq += 1
            item = _Held(event.ts, self._seq, event, publish, partition, held.get(partition))
            heapq.heappush(self._heap, item)

    def expect(self, partitions: Iterable[int], now: float) -> None:
        """Newly assigned partitions: each holds every event back until it is first scored, or
        for `idle_s` if it never is (a partition without series)."""
        for p in partitions:
            self._clock.setdefault(p, (-math.inf, now))

    def scored(self, partition: int, ts: float, now: float) -> None:
        """The partition's series have been scored up to ts (its clock never goes back)."""
        if math.isfinite(ts):
            before = self._clock.get(partition, (-math.inf, now))[0]
            self._clock[partition] = (max(before, ts), now)

    def watermark(self, now: float) -> float:
        active = [ts for ts, at in self._clock.values() if now - at < self.idle_s]
        return min(active, default=math.inf)

    def due(self, now: float, flush: bool = False) -> list[tuple[AnomalyEvent, bool]]:
        """The events every active partition has been scored past, in time order (all with
        flush: end of input, shutdown, a model reload)."""
        if not self._heap:  # the common case: nothing waits, no watermark to work out
            return []
        limit = math.inf if flush else self.watermark(now)
        out = []
        while self._heap and self._heap[0].ts <= limit:
            item = heapq.heappop(self._heap)
            out.append((item.event, item.publish))
        return out

    def holds(self) -> dict[int, int]:
        """partition -> the offset its commit must wait at for the events held."""
        out: dict[int, int] = {}
        for item in self._heap:
            if item.offset is not None and item.offset < out.get(item.partition, math.inf):
                out[item.partition] = item.offset
        return out

    def drop(self, partitions: set[int]) -> None:
        """Revoked: their events and clocks go (the new owner rebuilds their incidents)."""
        for p in partitions:
            self._clock.pop(p, None)
        kept = [item for item in self._heap if item.partition not in partitions]
        if len(kept) != len(self._heap):
            heapq.heapify(kept)
            self._heap = kept
