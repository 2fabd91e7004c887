"""tsguard.metrics -> windows -> Transformer scorer -> calibration -> episodes -> tsguard.anomalies
(and the episodes' incidents -> tsguard.incidents, stream/incidents.py).

Points are decoded column-wise into per-series windows (stream/windows.py); a window is scored
once `stride` new points arrived, in batches of up to max_batch windows that wait at most
max_wait_ms. The model is reloaded between batches on SIGHUP or when its files change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

import numpy as np

from detector.detector import KINDS, SIGNALS, Detector
from detector.messages import (
    AnomalyEvent,
    EventWindow,
    IncidentMessage,
    InvalidMessage,
    InvalidReason,
    message_id,
)
from detector.signals import loudest_first
from stream.codec import decode_batch
from stream.heads.base import Head, Output, dead_letter
from stream.incidents import EventTimeOrder, IncidentTracker
from stream.metrics import Metrics
from stream.series import Series, SeriesTable
from stream.settings import Settings
from stream.windows import WindowStore

log = logging.getLogger(__name__)

MODEL_CHECK_EVERY_S = 2.0


def load_kernels() -> None:
    """Compile (the first run on a machine, a few seconds; numba caches the result beside the
    code or in NUMBA_CACHE_DIR) or load the detector's loops and the scorer's CPU
    preprocessing, by running each once.
    `make setup` and the Docker image run it once so that no process compiles them."""
    from detector.detector import load_kernels as detector_kernels
    from detector.model import prepare_numpy

    detector_kernels()
    prepare_numpy(np.ones((1, 4), np.float32))  # the scorer's CPU preprocessing


class MetricsHead(Head):
    """tsguard.metrics -> windows -> Transformer scorer -> calibration -> episodes -> events."""

    rebuilds_state = True

    def __init__(self, settings: Settings, scorer, metrics: Metrics):
        self.settings = settings
        self.topic = settings.topics.metrics
        self.metrics = metrics
        for signal in SIGNALS:  # every cause shows, at 0, before it first happens
            metrics.anomaly_causes.labels(signal)
        # Every series' slot, partition and episode; the windows' rings and the detector's rows
        # are slot-indexed arrays that reset a row when the table hands its slot to a new series.
        self.series = SeriesTable(settings.max_series)
        self.store = WindowStore(
            scorer.window_length,
            settings.stride,
            settings.max_batch,
            min_points=scorer.min_points,
            series=self.series,
        )
        self.series.on_taken.append(self._taken)
        self.series.on_gone.append(self._gone)
        # partition -> its first record handled since nothing was pending: the commit waits there
        # until the pending windows' events are sent
        self._held: dict[int, int] = {}
        self.reload_requested = threading.Event()  # SIGHUP
        self._model_stamp = self._stamp()
        self._last_model_check = time.monotonic()
        self.rules = None  # stream.rules.RuleGate with --rules: holds events, adds labels
        self.incidents = IncidentTracker(metrics)  # the episodes' incidents (tsguard.incidents)
        self.event_order = EventTimeOrder()  # hands the tracker its events in time order
        self.set_scorer(scorer)
        load_kernels()  # now rather than in the first batch

    def set_scorer(self, scorer) -> None:
        """Swap the model between batches (hot reload). Series keep their windows; with the same
        detection settings the detector keeps every signal but the forecast residual, whose
        tail restarts (the new model's errors live on another scale); other settings start
        every series afresh. Open episodes are closed without an end event."""
        if scorer.window_length != self.store.length:
            raise ValueError(
                f"new model window {scorer.window_length} != running window {self.store.length}"
            )
        old = getattr(self, "detector", None)
        if old is not None and old.config == scorer.calibration:
            old.set_scorer(scorer)
        else:
            self.detector = Detector(scorer)
            for _, s in self.series.items():
                self.detector.reset(len(s.dims), s.slot)
        for _, s in self.series.items():
            s.episode_id = ""
        self.metrics.set_model(scorer.version, scorer.device)
        self.metrics.threshold.set(self.detector.threshold)

    @property
    def scorer(self):
        """The model serving now (the detector's)."""
        return self.detector.scorer

    def _reload(self) -> bool:
        """Load the model directory again and swap it in (True); a model that fails to load or
        does not fit the running windows is refused, and the current one keeps serving."""
        from detector.errors import ModelLoadError
        from detector.scorer import load_scorer

        try:
            scorer = load_scorer(
                self.settings.model_dir, self.settings.device, compile=self.settings.compile
            )
            if scorer.window_length != self.store.length:
                raise ModelLoadError(
                    f"window {scorer.window_length} differs from the running {self.store.length}; "
                    "restart to change the window length"
                )
        except ModelLoadError as exc:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("model reload refused, still serving %s: %s", self.scorer.version, exc)
            return False
        self.set_scorer(scorer)
        self.metrics.model_reloads.labels("ok").inc()
        log.info("model reloaded: now serving %s on %s", scorer.version, scorer.device)
        return True

    def _stamp(self) -> tuple:
        """Changes when the model directory's files change (size or mtime)."""
        from detector.scorer import DEFAULT_MODEL_DIR

        root = Path(self.settings.model_dir) if self.settings.model_dir else DEFAULT_MODEL_DIR
        stamp = []
        for name in ("config.json", "model.safetensors"):
            try:
                st = (root / name).stat()
                stamp.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _reload_due(self, now: float) -> bool:
        """On SIGHUP, or when the model directory's files changed (looked at every few seconds)."""
        if (
            not self.reload_requested.is_set()
            and now - self._last_model_check <= MODEL_CHECK_EVERY_S
        ):
            return False
        self._last_model_check = now
        stamp = self._stamp()
        if not self.reload_requested.is_set() and stamp == self._model_stamp:
            return False
        self.reload_requested.clear()
        self._model_stamp = stamp
        return True

    # -- consuming ---------------------------------------------------------------------------
    def handle(self, records: list, now: float) -> list[Output]:
        return self._add(records, False, now)

    def rebuild(self, records: list, now: float) -> None:
        self._add(records, True, now)

    def _add(self, records: list, replay: bool, now: float) -> list[Output]:
        """Decode records column-wise and append them to the windows; no Python object per point
        on the common path (see codec.decode_batch and WindowStore.add_batch)."""
        if not records:
            return []
        s, m, store = self.settings, self.metrics, self.store
        cols = decode_batch(
            [r.value for r in records],
            s.max_message_bytes,
            s.max_points_per_message,
            s.max_dimensions,
        )
        res = store.add_batch(cols, now, [r.partition for r in records])
        if replay:
            for name in res.touched:
                if (series := self.series.get(name)) is not None:  # not evicted again since
                    series.mute_until = store.last_ts(name)
        m.series_tracked.set(len(store))
        if store.pending_count():
            held = self._held
            for r in records:
                if r.partition not in held:
                    held[r.partition] = r.offset
        if replay:  # their dead letters and counts were published the first time
            m.points_replayed.inc(res.accepted)
            return []
        m.points.inc(res.accepted)
        for status, k in res.skipped.items():
            m.points_skipped.labels(status).inc(k)
        bad = list(cols.errors)
        for i, k in res.mismatched.items():
            bad.append((i, InvalidMessage(
                InvalidReason.DIMENSION_MISMATCH,
                f"{k} point(s) bring dimensions the series does not have "
                "(series dimensions are fixed by their first point)",
            )))  # fmt: skip
        bad.sort(key=lambda item: item[0])  # dead letters in message order
        return [dead_letter(s, m, records[i], exc) for i, exc in bad]

    def _taken(self, series: Series) -> None:
        self.detector.reset(len(series.dims), series.slot)

    def _gone(self, name: str, series: Series) -> None:
        self.incidents.forget([name])

    def _to_incidents(self, now: float, flush: bool = False) -> list[Output]:
        """The incident messages of the events that are due (stream/incidents.py); events of a
        series forgotten while they waited are dropped, as its state was."""
        table = self.series
        due = [(e, p) for e, p in self.event_order.due(now, flush) if e.series in table]
        return [self._incident(m) for m in self.incidents.observe(due)] if due else []

    def assigned(self, partitions: set[int], now: float) -> None:
        """New partitions hold the incidents back until they are first scored (or go idle)."""
        self.event_order.expect(partitions, now)

    def revoked(self, partitions: set[int]) -> None:
        """Series of these partitions, and their windows waiting to be scored, are forgotten."""
        table = self.series
        for name in [n for n, s in table.items() if s.partition in partitions]:
            table.drop(name)
        self.store.keep_pending(table.__contains__)
        for p in partitions:
            self._held.pop(p, None)
        self.event_order.drop(partitions)
        if not self.store.pending_count():
            self._held.clear()
        self.metrics.series_tracked.set(len(self.store))

    # -- scoring -----------------------------------------------------------------------------
    def ready(self, now: float, flush: bool = False) -> Iterator[list[Output]]:
        """Score the pending windows when due (a full batch, or the oldest waited max_wait_ms),
        one scoring call of at most max_batch windows per part: the pipeline sends a part's
        events before the next part is scored. A model reload waits for the windows consumed
        before it, so each window is scored by the model it met."""
        reload = not flush and self._reload_due(now)
        if flush or reload or self._due(now):
            step = self.settings.max_batch
            for dims, pend in self.store.pending_batches():
                n = len(pend)
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    yield self._score(
                        dims, pend.windows[lo:hi], pend.ts[lo:hi], pend.series[lo:hi], now
                    )
                self.metrics.end_to_end.observe(time.monotonic() - pend.first_at)
                self.store.clear_pending(dims)
            self._held.clear()
        reloaded = reload and self._reload()
        out = self._to_incidents(now, flush or reloaded)
        if reloaded:
            # The old model's open episodes ended without an event: so do their incidents.
            out += [self._incident(m) for m in self.incidents.close_all()]
        if out:
            yield out

    def _due(self, now: float) -> bool:
        pending = self.store.pending_count()
        if pending == 0:
            return False
        return (
            pending >= self.settings.max_batch
            or (now - self.store.oldest_pending()) * 1000.0 >= self.settings.max_wait_ms
        )

    def holds(self) -> dict[int, int]:
        out = dict(self._held)
        for partition, offset in self.event_order.holds().items():
            out[partition] = min(offset, out.get(partition, offset))
        return out

    def _score(
        self, dims: int, windows: np.ndarray, ts: np.ndarray, series: list[str], now: float
    ) -> list[Output]:
        stride = self.settings.stride
        table = self.series
        # A window whose series was evicted or revoked while it waited is skipped (slot -1).
        slot_list = [s.slot if (s := table.get(name)) is not None else -1 for name in series]
        rules = self.rules
        if rules is not None:  # per-series thresholds; `learn: false` mutes skip the detector
            slot_list = rules.prepare(self.detector, dims, series, slot_list, ts)
        slots = np.array(slot_list, dtype=np.int64)
        t0 = time.perf_counter()
        det = self.detector.score(dims, slots, windows, ts, stride)
        self.metrics.scoring_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(series))
        base = windows.shape[1] - stride
        point_ts = ts[:, base:]
        scores, kinds = det.scores, det.kinds
        out: list[Output] = []
        events: list[tuple[AnomalyEvent, bool, int]] = []  # for the incidents
        version = self.scorer.version
        for i, j in zip(*np.nonzero(kinds), strict=True):  # window, point: in order
            name = series[i]
            st, t, kind = table.get(name), float(point_ts[i, j]), KINDS[kinds[i, j]]
            if kind == "start":
                st.episode_id = message_id(name, t, version)
            # Points up to mute_until were replayed to rebuild state: their events were
            # published the first time; they only rebuild the rules' and incidents' state.
            publish = t > st.mute_until
            contributions = det.contributions[i, j]
            if rules is not None and not rules.admit(
                kind, name, st.episode_id, t, windows[i], base + j, contributions, count=publish
            ):
                continue
            event = self._event(kind, name, st, ts[i], base + j, float(scores[i, j]), contributions,
                                det.signals[i, j])  # fmt: skip
            if publish:
                self._count(event)
                out.append(Output(self.settings.topics.anomalies, name.encode(), event.encode()))
            events.append((event, publish, st.partition))
        # Counted once their events are decided (published or held): whoever reads the counter
        # (the demo) knows those points' fate.
        self.metrics.windows_scored.inc(len(series))
        # Each series' last window: its partition's clock, and its score gauge.
        pairs = enumerate(zip(series, slot_list, strict=True))
        last = {name: i for i, (name, slot) in pairs if slot >= 0}
        order = self.event_order
        order.add(events, self._held)
        ends = ts[:, -1].tolist()
        for name, i in last.items():
            order.scored(table.get(name).partition, ends[i], now)
        out += self._to_incidents(now)
        # One gauge update per series and batch, in the order of their last windows (the
        # gauge cap is an LRU).
        latest = scores[:, -1].tolist()
        for name, i in sorted(last.items(), key=itemgetter(1)):
            self.metrics.set_score(name, latest[i])
        return out

    def _event(self, kind: str, series: str, st: Series, ts_row: np.ndarray, j: int, score: float,
               contributions: np.ndarray, signals: np.ndarray) -> AnomalyEvent:  # fmt: skip
        version = self.scorer.version
        ts = float(ts_row[j])
        observed = np.flatnonzero(np.isfinite(ts_row))
        shares = {
            d: round(float(c), 4)
            for d, c in zip(st.dims, np.nan_to_num(contributions), strict=False)
        }
        return AnomalyEvent(
            event_id=message_id(st.episode_id, kind, ts, version),
            episode_id=st.episode_id,
            kind=kind,
            series=series,
            ts=ts,
            score=round(score, 6),
            threshold=self.detector.threshold,
            model_version=version,
            window=EventWindow(
                start=float(ts_row[observed[0]]),
                end=float(ts_row[-1]),
                length=int(len(ts_row) - observed[0]),
            ),
            contributions=shares,
            detected_at=time.time(),
            labels=self.rules.labels(series) if self.rules is not None else {},
            signals={
                SIGNALS[k]: round(float(signals[k]), 4)
                for k in np.flatnonzero(np.isfinite(signals))
            },
        )

    def _count(self, event: AnomalyEvent) -> None:
        """A published event, in the metrics and the log."""
        if event.kind == "start":
            self.metrics.anomalies.inc()
            if event.signals:  # ranked as the alerts' reasons are
                self.metrics.anomaly_causes.labels(loudest_first(event.signals)[0]).inc()
        self.metrics.anomaly_events.labels(event.kind).inc()
        log.info(
            "anomaly %s series=%s ts=%s score=%.4f", event.kind, event.series, event.ts, event.score
        )

    def _incident(self, message: IncidentMessage) -> Output:
        log.info(
            "incident %s %s series=%s", message.kind, message.incident_id, ",".join(message.series)
        )
        return Output(
            self.settings.topics.incidents, message.incident_id.encode(), message.encode()
        )
