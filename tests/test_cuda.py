"""The CUDA scoring path (bf16 autocast, pinned memory) agrees with the CPU path, and so does
the pattern novelty's matrix-product search on the GPU with its compiled loop on the CPU.

Skipped on machines without a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.detector import SIGNALS, Detector
from detector.model import normalise
from detector.scorer import load_scorer
from tests.test_signals import novelty_searches_agree

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
]


def _windows(b: int, length: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(length)[None, :, None]
    w = (
        50
        + 10 * np.sin(2 * np.pi * t / 48 + rng.uniform(0, 6, (b, 1, d)))
        + rng.normal(size=(b, length, d))
    )
    w[0, -1, 0] += 60  # one clear anomaly
    w[1, 10:20, 0] = np.nan  # a gap
    return w.astype(np.float32)


@pytest.mark.parametrize("n_new", [1, 8])
def test_cuda_scores_match_cpu_within_bf16_tolerance(n_new: int) -> None:
    cpu = load_scorer(None, device="cpu")
    gpu = load_scorer(None, device="cuda")
    assert gpu.device == "cuda" and load_scorer(None, device="auto").device == "cuda"
    w = _windows(512, cpu.window_length, 3)
    a, b = cpu.score(w, n_new), gpu.score(w, n_new)
    assert b.errors.shape == a.errors.shape and b.errors.dtype == np.float32
    # Errors are in series units: compare them in units of each window's robust scale (the
    # geometric mean over dimensions, as the scorer combines them). bf16 keeps ~3 significant
    # digits through the network, so a typical point's forecast moves by a few hundredths of
    # that scale and a rare one by a few tenths (seen on an H100: 0.3% of points beyond 0.05,
    # the largest 0.26).
    end = cpu.window_length - n_new
    context = torch.from_numpy(w[:, end - cpu.cfg.context : end].transpose(0, 2, 1).copy())
    _, scale = normalise(context.reshape(-1, context.shape[2]))
    unit = np.exp(np.log(scale.numpy().reshape(len(w), -1)).mean(axis=1))[:, None]
    diff = np.abs(b.errors - a.errors) / unit
    assert np.quantile(diff, 0.99) < 0.05 and diff.max() < 0.5, (
        np.quantile(diff, 0.99),
        diff.max(),
    )
    share_diff = np.abs(b.contributions - a.contributions)
    assert np.quantile(share_diff, 0.99) < 0.05, np.quantile(share_diff, 0.99)
    np.testing.assert_allclose(b.contributions.sum(axis=2), 1.0, atol=1e-3)
    assert b.errors[0, -1] > 10 * np.median(b.errors)


@pytest.mark.parametrize(("dims", "n_new"), [(1, 1), (1, 5), (3, 1), (3, 5)])
def test_novelty_matmul_search_on_cuda_matches_the_loop(dims: int, n_new: int) -> None:
    novelty_searches_agree("cuda", dims, n_new)


def test_the_detector_searches_novelty_where_the_model_runs() -> None:
    """A detector on the GPU searches with the matrix product there, one on the CPU with the
    loop; a series' novelty tail scores are the same either way (here 2,048 windows of one
    series per call)."""
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(3000) * 2 * np.pi / 144) + rng.normal(0, 0.05, 3000)
    x[2500:2510] += np.linspace(0, 2, 10)
    ts = 300.0 * np.arange(3000)
    runs = {}
    for device in ("cpu", "cuda"):
        det = Detector(load_scorer(None, device=device))
        det.reset(1, 0)  # makes the bank
        assert det.banks[1].signals["novelty"].device == device
        runs[device] = det.run_series(x[:, None], ts).signals[:, SIGNALS.index("novelty")]
    assert np.isfinite(runs["cpu"]).sum() > 2000
    np.testing.assert_allclose(runs["cuda"], runs["cpu"], rtol=1e-6, atol=1e-9)
