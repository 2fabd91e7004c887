"""Scoring in parts: MetricsHead.ready scores pending windows one scoring call of at most
max_batch at a time (the pipeline sends each part's events before the next is scored); however
polls and parts are cut, the events (ids and content) equal one drain of everything. Pending
windows of state being rebuilt are dropped unscored; a model reload keeps seasonal profiles."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import orjson
import pytest

from detector.detector import SIGNALS
from detector.scorer import load_scorer
from stream.heads.metrics import MetricsHead
from stream.metrics import Metrics
from stream.pipeline import split_replayed
from stream.settings import Settings

Record = namedtuple("Record", "topic partition offset key value")
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(None, "cpu")


def records(n_series: int, n_points: int) -> list[Record]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n_points):
        for k in range(n_series):
            v = 50 + 10 * np.sin(2 * np.pi * (i + 7 * k) / 50) + rng.normal(0, 0.5)
            if i in (300 + 11 * k, 420 + 5 * k):
                v += 40.0  # spikes that open episodes
            body = {"series": f"s{k}", "ts": T0 + 60 * i, "value": round(float(v), 4)}
            if k == 2:  # a multivariate series goes through its own bank
                body = {"series": "m", "ts": T0 + 60 * i, "values": {"x": body["value"], "y": 1}}
            out.append(Record("tsguard.metrics", k % 2, len(out), f"s{k}".encode(),
                              orjson.dumps(body)))  # fmt: skip
    return out


def events(outputs) -> list[dict]:
    """Anomaly events in order per series (banks of different dimensionality are scored one
    after the other, so the order across series depends on the cuts)."""
    evs = [orjson.loads(o.value) for o in outputs if o.topic == "tsguard.anomalies"]
    for e in evs:
        e.pop("detected_at")
    return sorted(evs, key=lambda e: e["series"])


def drain(head: MetricsHead) -> list:
    """Score every pending window now, as the pipeline's final emit does."""
    return [out for part in head.ready(0.0, flush=True) for out in part]


def serial(scorer, recs, max_batch: int) -> list[dict]:
    head = MetricsHead(Settings(max_batch=max_batch), scorer, Metrics())
    out = head.handle(recs, 0.0)
    out += drain(head)
    return events(out)


class _CountingScorer:
    """The real scorer, recording the batch size of every scoring call."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, windows, n_new):
        self.batches.append(len(windows))
        return self.inner.score(windows, n_new)


@pytest.mark.parametrize(
    ("poll", "every", "max_batch"), [(37, 1, 1024), (500, 3, 64), (2000, 1, 300)]
)
def test_scoring_in_parts_matches_one_drain(scorer, poll, every, max_batch):
    recs = records(n_series=4, n_points=520)
    expected = serial(scorer, recs, 1024)
    assert any(e["kind"] == "start" for e in expected), "the stream must raise anomalies"

    counting = _CountingScorer(scorer)
    head = MetricsHead(Settings(max_batch=max_batch), counting, Metrics())
    out = []
    for k, lo in enumerate(range(0, len(recs), poll)):
        out += head.handle(recs[lo : lo + poll], 0.0)
        if k % every == 0:
            for part in head.ready(0.0, flush=True):
                out += part
    for part in head.ready(0.0, flush=True):
        out += part
    assert events(out) == expected
    assert counting.batches and max(counting.batches) <= max_batch


def test_revoked_partitions_drop_their_windows_unscored(scorer):
    metrics = Metrics()
    head = MetricsHead(Settings(), scorer, metrics)
    recs = records(n_series=2, n_points=200)
    head.handle(recs, 0.0)
    # The commit waits at each partition's first record until its windows are scored.
    assert head.holds() == {0: 0, 1: 1}
    head.revoked({0})
    assert head.holds() == {1: 1}
    head.revoked({1})
    assert head.holds() == {} and list(head.ready(0.0, flush=True)) == []
    assert (metrics.registry.get_sample_value("tsguard_windows_scored_total") or 0) == 0


def test_a_model_reload_keeps_every_signal_but_the_forecast_tail(scorer):
    """The forecast residual's tail restarts on reload (a new model's errors live on another
    scale); the other signals (the series' own history) carry over with the same settings."""
    head = MetricsHead(Settings(), scorer, Metrics())
    head.handle(records(n_series=2, n_points=200), 0.0)
    drain(head)
    banks = head.detector.banks
    slots = {name: (len(s.dims), s.slot) for name, s in head.series.items()}
    forecast, others = SIGNALS.index("forecast"), [g for g in SIGNALS if g != "forecast"]
    profiles = {n: banks[d].signals["seasonal"].rows.mean[s].copy() for n, (d, s) in slots.items()}
    assert all(banks[d].signals["seasonal"].rows.count[s].sum() > 0 for d, s in slots.values())
    assert all(banks[d].tails.warmed_up(s, forecast) for d, s in slots.values())
    kept = {n: [banks[d].tails.tail(s, SIGNALS.index(g)) for g in others]
            for n, (d, s) in slots.items()}  # fmt: skip
    head.set_scorer(scorer)  # a reload of the same settings
    for name, (d, s) in slots.items():
        np.testing.assert_array_equal(banks[d].signals["seasonal"].rows.mean[s], profiles[name])
        assert [banks[d].tails.tail(s, SIGNALS.index(g)) for g in others] == kept[name]
    head.handle(records(n_series=2, n_points=201)[-2:], 0.0)  # one new point per series
    drain(head)
    for name, s in head.series.items():
        assert (len(s.dims), s.slot) == slots[name]
        assert banks[len(s.dims)].tails.tail(s.slot, forecast)["n"] <= 1  # starts over
    # Series of a partition given away leave nothing behind; their slots are reused.
    head.revoked({0, 1})
    assert len(head.series) == 0 and len(head.store) == 0
    head.handle(records(n_series=2, n_points=1), 0.0)
    assert sorted((len(s.dims), s.slot) for _, s in head.series.items()) == sorted(slots.values())
    assert all(banks[d].tails.tail(s, forecast)["n"] == 0
               and not banks[d].signals["seasonal"].rows.count[s].any()
               for d, s in slots.values())  # fmt: skip


def test_replayed_records_rebuild_state_without_republishing(scorer):
    """After a restart the pipeline re-reads records before the committed offset (`rebuild`):
    they rebuild windows and calibration, publish nothing, and once a partition has passed its
    committed offset its records are handled as new."""
    recs = records(n_series=2, n_points=520)
    expected = serial(scorer, recs, 1024)
    committed = 2 * 320  # after the first spikes (points 300 and 311), before the later ones
    metrics = Metrics()
    head = MetricsHead(Settings(), scorer, metrics)
    floor = {0: committed, 1: committed + 1}
    out = []
    for lo in range(0, len(recs), 100):
        poll = recs[lo : lo + 100]
        replayed, fresh = [], []
        for p in (0, 1):  # as Pipeline._handle does
            again, new = split_replayed([r for r in poll if r.partition == p], floor[p])
            replayed += again
            fresh += new
        head.rebuild(replayed, 0.0)
        out += head.handle(fresh, 0.0)
        out += drain(head)
    assert replayed == []  # the last poll: every partition past its committed offset
    assert metrics.registry.get_sample_value("tsguard_points_replayed_total") == committed
    # Exactly the events of points after the committed offset, with the same ids: the state
    # they were scored with was rebuilt point for point.
    cut = T0 + 60 * (committed // 2 - 1)
    later = [e for e in expected if e["ts"] > cut]
    assert later and len(later) < len(expected)
    assert events(out) == later
