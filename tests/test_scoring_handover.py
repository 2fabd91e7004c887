"""Chunked scoring: windows taken with MetricsHead.take and scored chunk by chunk with
score_chunk, interleaved with new records (as the pipeline sends each chunk's events before
scoring the next), give the same events (ids and content) as one drain of everything, however
polls, hand-overs and chunks are cut; pending windows of state being rebuilt are dropped
unscored."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import orjson
import pytest

from detector.scorer import load_scorer
from stream.heads import MetricsHead
from stream.metrics import Metrics
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


def serial(scorer, recs, max_batch: int) -> list[dict]:
    head = MetricsHead(Settings(max_batch=max_batch), scorer, Metrics())
    out = head.handle(recs, 0.0)
    out += head.drain(0.0)
    return events(out)


@pytest.mark.parametrize(
    ("poll", "every", "max_batch"), [(37, 1, 1024), (500, 3, 64), (2000, 1, 300)]
)
def test_chunked_scoring_matches_one_drain(scorer, poll, every, max_batch):
    recs = records(n_series=4, n_points=520)
    expected = serial(scorer, recs, 1024)
    assert any(e["kind"] == "start" for e in expected), "the stream must raise anomalies"

    head = MetricsHead(Settings(max_batch=max_batch), scorer, Metrics())
    out = []
    for k, lo in enumerate(range(0, len(recs), poll)):
        out += head.handle(recs[lo : lo + poll], 0.0)
        if k % every == 0:
            chunks = head.take(0.0)
            assert all(len(c.series) <= max_batch for c in chunks)
            for chunk in chunks:
                out += score_chunk_between(head, chunk)
    for chunk in head.take(0.0):
        out += head.score_chunk(chunk)
    assert events(out) == expected


def score_chunk_between(head: MetricsHead, chunk) -> list:
    """A chunk taken before other windows arrive is still scored with its own windows."""
    before = head.store.pending_count()
    out = head.score_chunk(chunk)
    assert head.store.pending_count() == before
    return out


def test_discard_pending_drops_windows_unscored(scorer):
    metrics = Metrics()
    head = MetricsHead(Settings(), scorer, metrics)
    head.handle(records(n_series=2, n_points=200), 0.0)
    assert head.has_pending()
    head.discard_pending()
    assert not head.has_pending() and head.take(0.0) == []
    assert (metrics.registry.get_sample_value("tsguard_windows_scored_total") or 0) == 0


def test_a_model_reload_keeps_each_series_seasonal_profile(scorer):
    """The model's error calibration restarts on reload; the time-of-day profile, which does not
    depend on the model, carries over (same calibration settings)."""
    head = MetricsHead(Settings(), scorer, Metrics())
    head.handle(records(n_series=2, n_points=200), 0.0)
    head.drain(0.0)
    before = {name: st.calibrator for name, st in head.state.items()}
    assert all(c.profile is not None and sum(c.profile.count) > 0 for c in before.values())
    head.set_scorer(scorer)  # a reload of the same settings
    assert head.state == {}
    head.handle(records(n_series=2, n_points=201)[-2:], 0.0)  # one new point per series
    head.drain(0.0)
    for name, st in head.state.items():
        assert st.calibrator is not before[name]
        assert st.calibrator.forecast.n <= 1  # the error tail starts over
        assert st.calibrator.profile is before[name].profile
    # Series of a partition given away leave nothing behind.
    head.set_scorer(scorer)
    head.forget_partitions({0, 1})
    assert head._carried == {}
