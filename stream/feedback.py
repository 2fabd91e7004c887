"""Operator verdicts on anomaly events: `tsguard feedback` publishes them to tsguard.feedback,
and `stream.heads.feedback.FeedbackHead` applies them to the series they are about.

- `false_positive`: the series becomes less sensitive to surprises of that size. Its episode
  thresholds rise to just above the score of the event judged (a surprise as large as that one
  is normal for this series; a larger one still alerts), never past `MAX_THRESHOLD`. A verdict
  without the event's score (the event could not be found) raises them by `FP_FACTOR` instead.
- `true_positive`: kept on the topic (which is not compacted) as a labelled example for
  retraining, and counted; detection does not change.

The latest verdict on an event wins, and a verdict read twice counts once, so re-reading the
topic gives the same state. tsguard.feedback is keyed by series with as many partitions as
tsguard.metrics, so the process that owns a series owns its verdicts; on assignment the pipeline
reads back up to `--rebuild-messages` records of each partition (this head rebuilds state), so
verdicts survive restarts and rebalances. A record that is not a verdict goes to the dead-letter
topic with its reason.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import orjson

from detector.errors import UserError

if TYPE_CHECKING:  # `tsguard --help` imports this module: heavy imports stay in functions
    from stream.settings import Settings

VERDICTS = ("false_positive", "true_positive")
MARGIN = 1.01  # a false positive's score times this is the series' new start threshold
MAX_THRESHOLD = 0.99  # a series never goes fully silent: a score of 1 still alerts
FP_FACTOR = 1.25  # a verdict without the event's score: thresholds times this


@dataclass(frozen=True)
class Verdict:
    """A record of tsguard.feedback (`score`/`threshold`: the event's, when it was found)."""

    event_id: str
    series: str
    verdict: str
    ts: float
    by: str = ""
    note: str = ""
    score: float | None = None
    threshold: float | None = None

    def encode(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @staticmethod
    def decode(value: bytes | None, key: bytes | None = None) -> Verdict:
        """ValueError (the reason, one line) for anything that is not a verdict."""
        from detector.messages import keyed_object

        obj = keyed_object(value, key, "series")
        series = obj.get("series")
        event_id, verdict = obj.get("event_id"), obj.get("verdict")
        if not all(isinstance(f, str) and f for f in (series, event_id)):
            raise ValueError("needs an event_id and a series (or key)")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be false_positive or true_positive, got {verdict!r}")
        score, threshold = obj.get("score"), obj.get("threshold")
        ok = (score is None or _unit(score)) and (threshold is None or _unit(threshold))
        if not ok or (threshold is not None and threshold <= 0):
            raise ValueError("score and threshold, when given, are numbers in 0..1")
        ts = obj.get("ts", 0.0)
        return Verdict(event_id, series, verdict,
                       float(ts) if isinstance(ts, int | float) else 0.0,
                       str(obj.get("by") or ""), str(obj.get("note") or ""),
                       None if score is None else float(score),
                       None if threshold is None else float(threshold))  # fmt: skip


def _unit(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and 0.0 <= x <= 1.0


class Verdicts:
    """The verdicts in force, per series, and the threshold scale they ask for.

    >>> v = Verdicts()
    >>> v.add(Verdict("e1", "web-01/cpu", "false_positive", 0.0, score=0.6, threshold=0.4))
    >>> round(v.scale("web-01/cpu"), 3), v.scale("db-01/cpu")
    (1.515, 1.0)
    >>> v.add(Verdict("e1", "web-01/cpu", "false_positive", 0.0, score=0.6, threshold=0.4))
    >>> round(v.scale("web-01/cpu"), 3)  # the same verdict again: no change
    1.515
    """

    def __init__(self) -> None:
        self._by_series: dict[str, dict[str, Verdict]] = {}  # series -> event_id -> latest
        self._scale: dict[str, float] = {}

    def __len__(self) -> int:
        """Series with a verdict (even one that asks for nothing now: its scale must reset)."""
        return len(self._by_series)

    def add(self, v: Verdict) -> None:
        events = self._by_series.setdefault(v.series, {})
        events[v.event_id] = v
        scale = 1.0
        for fp in events.values():
            if fp.verdict != "false_positive":
                continue
            if fp.score is not None and fp.threshold:
                need = min(fp.score * MARGIN, MAX_THRESHOLD) / fp.threshold
            else:
                need = scale * FP_FACTOR
            scale = max(scale, need)
        if scale > 1.0:
            self._scale[v.series] = scale
        else:
            self._scale.pop(v.series, None)

    def scale(self, series: str) -> float:
        return self._scale.get(series, 1.0)


# -- `tsguard feedback` -------------------------------------------------------------------------
def register_cli(sub) -> None:
    from stream.cli import env_default

    p = sub.add_parser(
        "feedback", help="publish an operator's verdict on an anomaly event to tsguard.feedback"
    )
    p.add_argument("--event-id", required=True, help="the event's event_id (tsguard.anomalies)")
    p.add_argument("--series", help="the event's series (default: looked up on tsguard.anomalies)")
    p.add_argument("--verdict", required=True, choices=VERDICTS)
    p.add_argument("--by", default=None, help="who judged it (default: the user name)")
    p.add_argument("--note", default="", help="free text kept with the verdict")
    p.add_argument("--key", default=None,
                   help="the Kafka key of the series' metrics when it is not the series id "
                        "(e.g. the host, for Telegraf with routing_tag = \"host\")")  # fmt: skip
    p.add_argument("--bootstrap", default=env_default("bootstrap", "127.0.0.1:9092"))
    p.add_argument("--lookup-timeout", type=float, default=30.0, metavar="S",
                   help="longest to search tsguard.anomalies for the event")  # fmt: skip
    p.set_defaults(handler=feedback)


def feedback(args: argparse.Namespace) -> int:
    from stream.settings import Settings

    verdict = publish(Settings(bootstrap=args.bootstrap), args.event_id, args.verdict,
                      series=args.series, by=args.by, note=args.note,
                      lookup_timeout_s=args.lookup_timeout, key=args.key)  # fmt: skip
    sys.stdout.write(verdict.encode().decode() + "\n")
    return 0


def publish(settings: Settings, event_id: str, verdict: str, series: str | None = None,
            by: str | None = None, note: str = "", lookup_timeout_s: float = 30.0,
            key: str | None = None) -> Verdict:  # fmt: skip
    """What `tsguard feedback` does (and `tsguard demo` with it): look the event up on
    tsguard.anomalies for its series, score and threshold, and publish the verdict to
    tsguard.feedback keyed by series, or by `key`: the key the series' metrics are produced
    with when that is not the series id (Telegraf keyed by host), so the verdict lands on the
    partition of the process that owns the series. UserError when the event is not found and
    no series is given."""
    from stream.clients import make_producer
    from stream.kafka_io import ensure_topics

    ensure_topics(settings, [settings.topics.anomalies])  # waits for the broker
    ensure_topic(settings)
    event = find_event(settings, event_id, series, lookup_timeout_s)
    if event is None and not series:
        raise UserError(f"event {event_id} not found on {settings.topics.anomalies}; give --series")
    record = Verdict(
        event_id=event_id,
        series=series or event["series"],
        verdict=verdict,
        ts=time.time(),
        by=by if by is not None else _user(),
        note=note,
        score=None if event is None else float(event["score"]),
        threshold=None if event is None else float(event["threshold"]),
    )
    producer = make_producer(settings)
    try:
        producer.send(settings.topics.feedback, (key or record.series).encode(), record.encode())
        producer.flush(timeout_s=30)
    finally:
        producer.close(timeout_s=10)
    return record


def ensure_topic(settings: Settings) -> None:
    """Create tsguard.feedback co-partitioned with tsguard.metrics: as many partitions as it has
    (settings.partitions when neither exists yet); an existing one that differs is logged."""
    import contextlib
    import logging

    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    from stream.kafka_io import make_admin

    topics = settings.topics
    admin = make_admin(settings)  # kafka-python's admin, whichever client serves
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in (topics.metrics, topics.feedback) if t in existing]
        counts = (
            {
                d.get("name", d.get("topic")): len(d["partitions"])
                for d in admin.describe_topics(wanted)
            }
            if wanted
            else {}
        )
        want = counts.get(topics.metrics) or settings.partitions
        if topics.feedback not in counts:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topics.feedback, want, 1)], timeout_ms=10000)
        elif counts[topics.feedback] != want:
            logging.getLogger(__name__).warning(
                "%s has %d partitions and %s %d: a series' verdicts may reach another member",
                topics.feedback, counts[topics.feedback], topics.metrics, want,
            )  # fmt: skip
    except KafkaError as exc:
        raise UserError(f"cannot create {topics.feedback} on {settings.bootstrap}: {exc}") from None
    finally:
        admin.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def find_event(settings: Settings, event_id: str, series: str | None, timeout_s: float):
    """The event with this id on the anomalies topic (only records keyed by the series when the
    series is known), or None once every partition was read to its end."""
    from stream.kafka_io import read_to_end

    key = series.encode() if series is not None else None
    for records in read_to_end(settings, settings.topics.anomalies, timeout_s):
        for rec in records:
            if key is not None and rec.key != key:
                continue
            try:
                event = orjson.loads(rec.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event_id") == event_id:
                return event
    return None
