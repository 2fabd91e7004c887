"""The sentence encoder behind the log heads: batch planning (pure) and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.logs.encoder import (
    BATCH_OVERHEAD_TOKENS,
    plan_batches,
    shared_encoder,
    spread_batches,
)

# ----------------------------------------------------------------------------- planning


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=80), max_size=400).map(sorted),
    st.integers(min_value=1, max_value=64),
)
def test_plan_covers_every_text_once_within_the_batch_limit(lengths, max_batch) -> None:
    bounds = plan_batches(lengths, max_batch)
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(len(lengths)))
    assert all(0 < hi - lo <= max_batch for lo, hi in bounds)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=300).map(sorted),
    st.integers(min_value=1, max_value=64),
)
def test_plan_is_never_worse_than_fixed_batches(lengths, max_batch) -> None:
    def work(bounds):
        return sum(BATCH_OVERHEAD_TOKENS + (hi - lo) * lengths[hi - 1] for lo, hi in bounds)

    fixed = [(i, min(i + max_batch, len(lengths))) for i in range(0, len(lengths), max_batch)]
    assert work(plan_batches(lengths, max_batch)) <= work(fixed)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=40), max_size=400).map(sorted),
    st.integers(min_value=1, max_value=256),
    st.integers(min_value=1, max_value=2048),
    st.integers(min_value=1, max_value=4),
)
def test_token_limited_plan_and_spread_cover_every_text_once(lengths, rows, tokens, workers):
    bounds = plan_batches(lengths, rows, tokens)
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(len(lengths)))
    for lo, hi in bounds:
        assert 0 < hi - lo <= rows
        assert hi - lo == 1 or (hi - lo) * lengths[hi - 1] <= tokens
    spread = spread_batches(bounds, lengths, workers)
    assert [i for lo, hi in spread for i in range(lo, hi)] == list(range(len(lengths)))
    assert len(spread) >= len(bounds)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=30), max_size=60).map(sorted),
    st.integers(min_value=1, max_value=40),
    st.one_of(st.none(), st.integers(min_value=1, max_value=300)),
)
def test_plan_is_the_least_work_of_any_cut(lengths, rows, tokens) -> None:
    def limit(length):
        return rows if tokens is None else max(1, min(rows, tokens // length))

    least = [0.0] + [float("inf")] * len(lengths)  # every cut tried: O(n * rows)
    for q in range(1, len(lengths) + 1):
        for p in range(max(0, q - limit(lengths[q - 1])), q):
            work = least[p] + BATCH_OVERHEAD_TOKENS + (q - p) * lengths[q - 1]
            least[q] = min(least[q], work)
    bounds = plan_batches(lengths, rows, tokens)
    assert (
        sum(BATCH_OVERHEAD_TOKENS + (hi - lo) * lengths[hi - 1] for lo, hi in bounds) == least[-1]
    )


def test_short_texts_share_a_forward_pass_up_to_the_token_budget() -> None:
    assert len(plan_batches([3] * 600, 64)) == 10
    assert len(plan_batches([3] * 600, 256, 2048)) == 3
    bounds = plan_batches([24] * 200, 256, 2048)
    assert len(bounds) == 3 and max(hi - lo for lo, hi in bounds) <= 85  # 2048 // 24


def test_a_burst_in_one_batch_is_split_for_two_workers() -> None:
    bounds = plan_batches([12] * 40, 256, 2048)
    assert bounds == [(0, 40)]
    assert spread_batches(bounds, [12] * 40, 2) == [(0, 20), (20, 40)]
    assert spread_batches(bounds, [12] * 40, 1) == [(0, 40)]
    assert spread_batches([(0, 1)], [12], 2) == [(0, 1)]  # one text stays one batch


def test_plan_keeps_a_long_text_out_of_a_batch_of_short_ones() -> None:
    lengths = [3] * 40 + [60]
    assert plan_batches(lengths, 64) == [(0, 40), (40, 41)]
    assert plan_batches([], 64) == []


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def encoder():
    enc = shared_encoder("cpu")
    enc.encode(["load the model once"])
    return enc


TEXTS = [
    "error",
    "connection refused",
    "Received block of size from",
    "Failed to write block to error code",
    "session opened for user by uid",
    "timeout",
    "disk usage at consider cleaning up " * 3,
    "PacketResponder for block terminating",
]


def test_embeddings_match_sentence_transformers(encoder) -> None:
    ours = encoder.encode(TEXTS)
    reference = encoder._load().encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.allclose(ours, reference, atol=1e-5)


def test_a_text_embeds_the_same_alone_in_any_batch_on_any_worker_count(encoder) -> None:
    import torch

    threads = torch.get_num_threads()
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    saved = encoder.workers
    try:
        for workers in (1, 2):
            encoder.workers = workers
            together = encoder.encode(TEXTS[::-1] + TEXTS)
            assert np.allclose(together[len(TEXTS) :], alone, atol=1e-5)
            assert np.allclose(together[: len(TEXTS)], alone[::-1], atol=1e-5)
    finally:
        encoder.workers = saved
    assert torch.get_num_threads() == threads  # the workers' setting does not leak


def test_long_texts_are_cut_not_refused(encoder) -> None:
    long = " ".join(["worker"] * 500)
    vec = encoder.encode([long])
    assert vec.shape == (1, 384) and np.isfinite(vec).all()
