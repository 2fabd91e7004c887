"""`tsguard demo`: the whole service on one machine, watching a live stream with injected anomalies.

It runs the real parts: the embedded Kafka broker, the pipeline with the shipped model, the
metrics endpoint; a producer plays metric series (daily seasonality, trend and noise) into
`tsguard.metrics`, and a separate consumer prints what arrives on `tsguard.anomalies` (and on
`tsguard.incidents`, when the service publishes incidents). Two series play an operator's part:
- `backup-01/io_wait` has a mute in the rules file the demo writes and serves with
  (`--rules`); a spike injected inside it is held: no event, no alert.
- `api-01/latency_ms` gets a small spike that alerts; the demo judges that event a false
  positive exactly as `tsguard feedback` does (stream/feedback.py's `publish`), waits until the
  service has the verdict in force, and plays the same spike again: no alert.
- `web-01/mem` shares a host with `web-01/cpu` and spikes 20 points into web-01/cpu's level
  shift: the two episodes overlap, so they are one incident (one page). Incidents of a single series
  are not printed (their page is the episode's).
At the end it draws the run (stream/demo_plot.py) and prints where. Logs go to stderr, at
WARNING unless `--log-level` says otherwise, so the printout is not interleaved with them.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from detector.messages import dumps
from detector.signals import reasons
from stream.broker import EmbeddedBroker, free_port
from stream.demo_plot import Picture, Span

log = logging.getLogger(__name__)

SERIES = [
    "web-01/cpu", "web-02/latency_ms", "db-01/connections", "cache-01/hit_ratio",
    "queue-01/depth", "edge-01/requests_per_s", "web-03/cpu", "db-02/iops",
]  # fmt: skip
KINDS = ["spike", "level_shift", "dip", "noise_burst", "spike", "drift"]
JUDGED = "api-01/latency_ms"  # its small spike is judged a false positive
MUTED = "backup-01/io_wait"  # its backup window is muted in the demo's rules
HOST_MATE = "web-01/mem"  # spikes during web-01/cpu's first level shift: one incident of two
# Points into the shift: the shift's start event must be published first, and the two series
# are on different partitions, which the service may read a batch apart.
HOST_MATE_LAG = 20
SCENE_SPEC = {"base": 120.0, "daily_amplitude": 30.0, "period": 288, "noise": 4.0}
MAGNITUDE = 8.0  # injected anomalies, in units of noise + daily amplitude / 4 (synthetic.py)
SMALL = 3.5  # the judged spike: alerts, with a score well below 1 (a verdict can quiet it)
MUTE_SPAN = (20, 120)  # the mute: from this many points before the muted spike to after it
HISTORY_POINTS = 500  # per series, replayed at start so windows and calibration are warm
STEP_S = 60.0  # the simulated series are 1-minute metrics, played faster than real time


@dataclass
class Injection:
    series: str
    kind: str
    index: int  # point index in the series
    length: int = 1
    role: str = "catch"  # catch, judge, mute or repeat (stream.demo_plot.ROLES)
    delta: float = 0.0  # added to the point at `index` as it is played (the scenes' spikes)
    at_s: float = math.inf  # demo time when it was played
    caught_s: float | None = None
    event: dict | None = None  # the first episode start on its series after it was played


def spacing(duration_s: float) -> tuple[float, float]:
    """(first injection, seconds between injections): 8 and 9 for the default 90 s; a shorter
    demo packs them closer (4 s apart at least), so that it still shows every scene."""
    every = min(9.0, max(4.0, duration_s / 10))
    return every - 1.0, every


@dataclass
class Plan:
    names: list[str]
    data: dict[str, np.ndarray]  # values by point index; the scenes' spikes are added as played
    injections: list[Injection]  # in the order they are played (the repeat may wait)
    live_points: int
    base_ts: float  # series time of point 0
    mute: Span

    def ts(self, index: int) -> float:
        return self.base_ts + index * STEP_S

    def rules_yaml(self) -> str:
        start, end = (_iso(t) for t in (self.mute.start, self.mute.end))
        return (
            f"# written by tsguard demo: {MUTED}'s backup window is muted (no events, no alerts)\n"
            f"rules:\n"
            f'  - match: "{MUTED}"\n'
            f'    mute: [{{start: "{start}", end: "{end}"}}]\n'
        )


def make_plan(args: argparse.Namespace, rng: np.random.Generator) -> Plan:
    from training.synthetic import Anomaly, SeriesSpec, generate

    regular = (
        SERIES[: args.series]
        if args.series <= len(SERIES)
        else [f"host-{i:02d}/metric" for i in range(args.series)]
    )
    first, every = spacing(args.duration)
    live_points = int(args.duration * args.rate) + 1
    total = HISTORY_POINTS + live_points

    def index(t: float) -> int:
        return HISTORY_POINTS + int(t * args.rate)

    injections: list[Injection] = []
    t, i = first, 0
    while t < args.duration - 3:
        kind = KINDS[i % len(KINDS)]
        injections.append(Injection(regular[(i * 5 + 1) % len(regular)], kind, index(t),
                                    1 if kind == "spike" else 25))  # fmt: skip
        t += every
        i += 1
    data = {}
    for k, name in enumerate(regular):
        spec = SeriesSpec.random(rng, seed=args.seed * 100 + k)
        spec = SeriesSpec(**{**spec.__dict__, "period": 288, "trend_per_point": 0.0})
        anomalies = [
            Anomaly(j.kind, j.index, j.length, magnitude=MAGNITUDE)
            for j in injections if j.series == name
        ]  # fmt: skip
        data[name], _ = generate(spec, total, anomalies)
    unit = SCENE_SPEC["noise"] + 0.25 * SCENE_SPEC["daily_amplitude"]
    for k, name in enumerate((JUDGED, MUTED, HOST_MATE)):
        data[name], _ = generate(SeriesSpec(**SCENE_SPEC, seed=args.seed * 100 + 50 + k), total)
    mate = next((j for j in injections if j.series == "web-01/cpu"), None)
    scenes = [
        Injection(JUDGED, "spike", index(first + every / 2), role="judge", delta=SMALL * unit),
        Injection(MUTED, "spike", index(first + 1.5 * every), role="mute", delta=MAGNITUDE * unit),
        Injection(JUDGED, "spike", index(first + 2.5 * every), role="repeat", delta=SMALL * unit),
    ]
    if mate is not None:
        scenes.append(Injection(HOST_MATE, "spike", mate.index + HOST_MATE_LAG,
                                delta=MAGNITUDE * unit))  # fmt: skip
    injections += [s for s in scenes if s.index < index(args.duration - 3)]
    injections.sort(key=lambda j: j.index)
    # The live part starts at 00:00 UTC today, in series time: the detector's seasonal signal
    # bins the time of day, so a fixed phase makes every run score the same.
    base_ts = math.floor(time.time() / 86400) * 86400 - HISTORY_POINTS * STEP_S
    muted = scenes[1].index
    mute = Span(MUTED, base_ts + (muted - MUTE_SPAN[0]) * STEP_S,
                base_ts + (muted + MUTE_SPAN[1]) * STEP_S, "mute")  # fmt: skip
    names = regular + [JUDGED, MUTED] + ([HOST_MATE] if mate is not None else [])
    return Plan(names, data, injections, live_points, base_ts, mute)


def run_demo(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    return Demo(args, make_plan(args, rng)).run()


class Demo:
    """One run: the player (this thread) injects and checks, the watcher prints what arrives,
    the operator publishes the verdict."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args, self.plan = args, plan
        self.t0 = time.monotonic()
        self._said = threading.Lock()  # several threads talk: one line at a time
        self.lock = threading.Lock()  # what the watcher records, read by the player
        self.starts: list[dict] = []
        self.episodes: dict[str, Span] = {}  # episode_id -> its span in series time
        self.incidents: dict[str, tuple[list[str], float, float | None]] = {}
        self.verdict_in_force = threading.Event()
        self.outcomes: dict[str, str] = {}  # mute, repeat -> what the check found, for the summary
        self.notes: dict[str, str] = {}  # judge, mute, repeat -> a word in the picture

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        with self._said:
            print(f"[{self.now():5.1f}s] {msg}", flush=True)

    def run(self) -> int:
        from stream.clients import make_consumer, make_producer
        from stream.commands import build_service
        from stream.settings import Settings

        args, plan = self.args, self.plan
        heads = ("metrics",) if args.no_logs else ("metrics", "logs")
        rules = Path(tempfile.mkdtemp(prefix="tsguard-demo-")) / "rules.yaml"
        rules.write_text(plan.rules_yaml(), encoding="utf-8")
        with EmbeddedBroker() as broker:
            self.say(f"embedded Kafka broker on {broker.bootstrap}")
            settings = Settings(bootstrap=broker.bootstrap, group_id="tsguard-demo", session_timeout_ms=6000,
                                heads=_available_heads(heads), max_wait_ms=20.0, model_dir=args.model,
                                log_window_s=30.0, rules=str(rules))  # fmt: skip
            self.settings = settings
            pipeline, metrics = build_service(settings)
            self.pipeline, self.metrics = pipeline, metrics
            port = args.metrics_port
            try:
                metrics.serve(port, "127.0.0.1", pipeline.health)
            except Exception:
                port = free_port()
                metrics.serve(port, "127.0.0.1", pipeline.health)
            head = self.head = pipeline.heads[settings.topics.metrics]
            self.say(f"model {head.scorer.version} on {head.scorer.device}, window {head.scorer.window_length} points, "
                     f"alert threshold {head.detector.threshold:.3f}")  # fmt: skip
            self.say(f"metrics: http://127.0.0.1:{port}/metrics")
            self.say(f"rules: {MUTED} muted {_hhmm(plan.mute.start)}-{_hhmm(plan.mute.end)} "
                     f"series time ({rules})")  # fmt: skip
            service = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
            service.start()

            producer = make_producer(settings)
            stop = threading.Event()
            watcher = threading.Thread(target=self._watch, args=(make_consumer(settings, group=False), stop),
                                       name="watcher", daemon=True)  # fmt: skip
            watcher.start()
            for name in plan.names:
                for i in range(HISTORY_POINTS):
                    producer.send(settings.topics.metrics, key=name.encode(),
                                  value=dumps(_msg(name, plan.ts(i), plan.data[name][i])))  # fmt: skip
            producer.flush()
            # The live stream is played in real time and its injections timed against it: it
            # starts once the service has scored the history (seconds on a busy machine, where
            # joining the group and the first batches take longer), not while it is still behind.
            if not self._wait_scored(HISTORY_POINTS - 1):
                self.say("  the service had not scored the history after 30 s; going live anyway")
            self.say(f"replayed {HISTORY_POINTS} points of history for {len(plan.names)} series; going live at "
                     f"{args.rate:g} points/s per series for {args.duration:g}s")  # fmt: skip
            log_thread = None
            if "logs" in settings.heads:
                from stream.demo_logs import play_logs

                log_thread = threading.Thread(
                    target=play_logs, args=(producer, settings, stop, self.say), daemon=True
                )
                log_thread.start()

            self._play(producer)
            stop.set()
            pipeline.stop()
            service.join(timeout=15)
            watcher.join(timeout=5)
            if log_thread:
                log_thread.join(timeout=5)
            producer.close()
        self._draw()
        targets = [j for j in plan.injections if j.role in ("catch", "judge")]
        n_caught = sum(1 for j in targets if j.caught_s is not None)
        extra = "".join(f"; {self.outcomes[k]}" for k in ("mute", "repeat") if k in self.outcomes)
        self.say(f"done: {n_caught} of {len(targets)} injected anomalies caught; "
                 f"{len(self.starts)} anomaly episodes published in all{extra}")  # fmt: skip
        return 0

    # -- the player ------------------------------------------------------------------------
    def _play(self, producer) -> None:
        """Send the live points in real time, inject as planned and run the checks; the repeat
        of the judged spike waits until the verdict is in force."""
        plan, settings, rate = self.plan, self.settings, self.args.rate
        end = HISTORY_POINTS + plan.live_points
        pending = list(plan.injections)
        checks: list[tuple[int, Callable[[bool], bool]]] = []  # (due index, check(final))
        live_start = time.monotonic()
        for n in range(plan.live_points):
            while (delay := live_start + n / rate - time.monotonic()) > 0:
                time.sleep(delay)
            i = HISTORY_POINTS + n
            while pending and pending[0].index <= i:
                inj = pending.pop(0)
                if inj.role == "repeat" and not self.verdict_in_force.is_set():
                    inj.index += int(rate)  # the verdict is not in force yet: a second later
                    if inj.index < end - 3 * rate:
                        pending.append(inj)
                        pending.sort(key=lambda j: j.index)
                    else:
                        self.outcomes["repeat"] = "the verdict was not in force in time to repeat"
                        with self.lock:
                            plan.injections.remove(inj)
                    continue
                checks += self._inject(inj, i)
            for due, check in [c for c in checks if c[0] <= i]:
                if check(False):
                    checks.remove((due, check))
            for name in plan.names:
                producer.send(settings.topics.metrics, key=name.encode(),
                              value=dumps(_msg(name, plan.ts(i), plan.data[name][i])))  # fmt: skip
        producer.flush()
        # On a busy machine the service can fall seconds behind the live stream: the last
        # injections are judged once it has scored every point played, not before.
        if not self._wait_scored(end - 1):
            self.say("  the service had not scored every point after 30 s; stopping anyway")
        deadline = time.monotonic() + 10.0
        time.sleep(1.5)
        while checks and time.monotonic() < deadline:
            checks = [c for c in checks if not c[1](False)]
            time.sleep(0.2)
        for _, check in checks:
            check(True)

    def _inject(self, inj: Injection, i: int) -> list[tuple[int, Callable[[bool], bool]]]:
        """Play an injection at point i; returns the checks it needs."""
        plan = self.plan
        inj.index = i
        plan.data[inj.series][i] += inj.delta
        inj.at_s = self.now()
        if inj.role == "judge":
            self.say(f"injecting a small spike into {inj.series} (the operator will call its alert a false positive)")  # fmt: skip
        elif inj.role == "mute":
            self.say(f"injecting a spike into {inj.series}, inside the mute of the rules")
            until = round((plan.mute.end - plan.base_ts) / STEP_S)  # the mute's last point
            return [(until + 10, lambda final: self._check_mute(inj, until + 10, final))]
        elif inj.role == "repeat":
            self.say(
                f"injecting the same small spike into {inj.series} again, its verdict in force"
            )
            due = i + int(2 * self.args.rate)
            return [(due, lambda final: self._check_repeat(inj, due, final))]
        else:
            self.say(f"injecting a {inj.kind} into {inj.series}")
        return []

    def _wait_scored(self, index: int, timeout_s: float = 30.0) -> bool:
        """Wait up to `timeout_s` for `_scored(index)`; whether it came."""
        deadline = time.monotonic() + timeout_s
        while not self._scored(index):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _scored(self, index: int) -> bool:
        """Whether the service has scored every series' windows up to point `index`, so their
        events are decided (published or held). Taken in is not enough: on a busy machine the
        scoring can trail the consumer by seconds. A series' first window is at point
        max(min_points, stride) - 1, then one every `stride` points (stream/windows.py)."""
        stride = self.settings.stride
        first = max(self.head.scorer.min_points, stride) - 1
        per_series = (index - first) // stride + 1 if index >= first else 0
        got = self.metrics.registry.get_sample_value("tsguard_windows_scored_total") or 0.0
        return got >= per_series * len(self.plan.names)

    def _check_mute(self, inj: Injection, upto: int, final: bool) -> bool:
        held = self.metrics.registry.get_sample_value("tsguard_events_held_total", {"reason": "mute"}) or 0.0  # fmt: skip
        if inj.event is not None:
            self.say(f"  the mute did not hold the spike in {inj.series}: an event was published")
            self.outcomes["mute"] = "the muted spike was NOT held"
        elif held >= 1:
            self.say(f"  held by the mute: the spike in {inj.series} published no event and no alert "
                     f'(tsguard_events_held_total{{reason="mute"}} {held:g})')  # fmt: skip
            self.outcomes["mute"], self.notes["mute"] = "1 held by the mute", "held by the mute"
        elif final or self._scored(upto):
            self.say(f"  the spike in {inj.series} was not alerted at all, so the mute had nothing to hold")  # fmt: skip
            self.outcomes["mute"] = "the muted spike was not alerted (nothing held)"
        else:
            return False
        return True

    def _check_repeat(self, inj: Injection, upto: int, final: bool) -> bool:
        if inj.event is not None:
            self.say(f"  the same spike in {inj.series} alerted again, score {inj.event['score']:.3f}: "
                     "above the threshold the verdict raised")  # fmt: skip
            self.outcomes["repeat"] = "the repeat after the false-positive verdict alerted"
        elif final or self._scored(upto):
            self.say(f"  no alert: the same spike in {inj.series} stays quiet now that it was judged a false positive")  # fmt: skip
            self.outcomes["repeat"] = "1 not alerted after a false-positive verdict"
            self.notes["repeat"] = "no alert"
        else:
            return False
        return True

    # -- the operator ----------------------------------------------------------------------
    def _judge(self, event: dict) -> None:
        """Publish a false_positive verdict on the event (what `tsguard feedback` does) and say
        when the service has it in force."""
        from detector.errors import UserError
        from stream.feedback import publish

        series, topic = event["series"], self.settings.topics.feedback
        self.say(
            f"operator: tsguard feedback --event-id {event['event_id']} --verdict false_positive"
        )
        try:
            verdict = publish(self.settings, event["event_id"], "false_positive",
                              by="tsguard demo", note="a small spike, nothing wrong")  # fmt: skip
        except (UserError, OSError) as exc:
            self.say(f"  the verdict was not published: {exc}")
            return
        self.say(f"  verdict published to {topic}: {verdict.series}'s alert (score {verdict.score:.3f}) "
                 "is a false positive")  # fmt: skip
        verdicts = self.head.rules.verdicts
        deadline = time.monotonic() + 30.0
        while verdicts.scale(series) <= 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        scale = verdicts.scale(series)
        if scale <= 1.0:
            self.say(f"  the service did not read the verdict from {topic} within 30s")
            return
        threshold = self.head.detector.threshold
        self.notes["judge"] = "judged a false positive"
        self.say(f"  verdict in force: {series} now alerts above score {threshold * scale:.3f} "
                 f"(was {threshold:.3f}); the other series are unchanged")  # fmt: skip
        self.verdict_in_force.set()

    # -- the watcher -----------------------------------------------------------------------
    def _watch(self, consumer, stop: threading.Event) -> None:
        import orjson

        from stream.clients import TopicPartition

        topics = self.settings.topics
        incidents = getattr(topics, "incidents", "tsguard.incidents")  # another issue's topic
        assignment = []
        for topic in (topics.anomalies, topics.log_summaries, incidents):
            parts: set[int] = set()
            while not parts and not stop.is_set():
                parts = consumer.partitions_for(topic)
                if not parts and topic == incidents:
                    break  # not in this build: nothing to print
                if not parts:
                    time.sleep(0.2)
            assignment += [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(assignment)
        while not stop.is_set():
            for tp, records in consumer.poll(0.2).items():
                for r in records:
                    ev = orjson.loads(r.value)
                    if tp.topic == topics.log_summaries:
                        self.say(f"  log summary   {ev['summary']}")
                    elif tp.topic == incidents:
                        self._incident(ev)
                    elif ev["kind"] != "start":
                        self._end(ev)
                    else:
                        self._start(ev)
        consumer.close()

    def _start(self, ev: dict) -> None:
        series, now = ev["series"], self.now()
        with self.lock:
            self.starts.append(ev)
            self.episodes[ev["episode_id"]] = Span(series, ev["ts"], None)
            inj = next((j for j in self.plan.injections
                        if j.series == series and j.event is None and j.at_s <= now), None)  # fmt: skip
            mute = self.plan.mute
            if inj is not None and inj.role == "mute" and not mute.start <= ev["ts"] < mute.end:
                inj = None  # an episode after the mute is not the mute's to hold
            if inj is not None:
                inj.event = ev
        note = ""
        if inj is not None and inj.role in ("catch", "judge"):
            inj.caught_s = now
            what = "small spike" if inj.role == "judge" else inj.kind
            note = f"  <- the injected {what}, caught {now - inj.at_s:.1f}s after injection"
        elif inj is not None:
            note = "  <- the spike the rules mute (!)" if inj.role == "mute" else "  <- the repeat"
        loud = reasons(ev.get("signals") or {})[:2]  # the two loudest signals, in words
        why = "; " + ", ".join(loud) if loud else ""
        self.say(f"  ANOMALY START {series:<24} score {ev['score']:.3f} (series time {_hhmm(ev['ts'])}{why}){note}")  # fmt: skip
        if inj is not None and inj.role == "judge":
            threading.Thread(target=self._judge, args=(ev,), name="operator", daemon=True).start()

    def _end(self, ev: dict) -> None:
        with self.lock:
            span = self.episodes.get(ev["episode_id"])
            if span is not None:
                self.episodes[ev["episode_id"]] = Span(span.series, span.start, ev["ts"])
        self.say(f"  anomaly END   {ev['series']:<24} (series time {_hhmm(ev['ts'])})")

    def _incident(self, ev: dict) -> None:
        incident_id, kind = str(ev.get("incident_id", "?")), str(ev.get("kind", "?"))
        members = [str(s) for s in ev.get("series") or []]
        ts = float(ev.get("ts") or 0.0)
        with self.lock:
            _, start, _ = self.incidents.get(incident_id, (members, ts, None))
            self.incidents[incident_id] = (members, start, ts if kind == "close" else None)
        if len(members) > 1:  # one series: its page is the episode's, printed already
            self.say(f"  INCIDENT {kind.upper():<6} {incident_id[:12]} {', '.join(members)} "
                     f"(series time {_hhmm(ts)})")  # fmt: skip

    # -- the picture -----------------------------------------------------------------------
    def _draw(self) -> None:
        from stream.demo_plot import draw

        plan = self.plan
        n = HISTORY_POINTS + plan.live_points
        picture = Picture(
            ts=plan.base_ts + STEP_S * np.arange(n),
            values={name: plan.data[name][:n] for name in plan.names},
            injections=[
                Span(
                    j.series,
                    plan.ts(j.index),
                    plan.ts(j.index + j.length),
                    j.role,
                    self.notes.get(j.role, ""),
                )
                for j in plan.injections
                if j.at_s < math.inf
            ],  # fmt: skip
            mutes=[plan.mute],
            episodes=list(self.episodes.values()),
            incidents=[(k, m, s, e) for k, (m, s, e) in self.incidents.items()],
            first=HISTORY_POINTS - 120,
        )
        try:
            path = draw(picture, self.args.png)
        except OSError as exc:
            self.say(f"picture not written: {exc}")
            return
        self.say(f"picture: {path.resolve()} (each series; injections shaded, episodes marked)")


def _available_heads(wanted: tuple[str, ...]) -> tuple[str, ...]:
    if "logs" not in wanted:
        return wanted
    try:
        import detector.logs.analyzer  # noqa: F401
    except ImportError:
        log.warning("log heads not available; running the metrics head only")
        return tuple(h for h in wanted if h != "logs")
    return wanted


def _msg(series: str, ts: float, value: float) -> dict:
    return {"series": series, "ts": round(ts, 3), "value": round(float(value), 5)}


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
