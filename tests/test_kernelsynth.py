"""KernelSynth (training/kernelsynth.py): seeded, finite metric series whose chunked GP draws keep
the kernel's correlations across chunk boundaries, and `tsguard train --kernelsynth` on the card."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

import training.kernelsynth
from stream.cli import main
from training.datasets import kernelsynth_series
from training.kernelsynth import (
    MAX_KERNELS,
    RBF,
    Kernel,
    Linear,
    Product,
    Sum,
    random_kernel,
    sample_paths,
    to_metric,
)


def _leaves(kernel: Kernel) -> int:
    if isinstance(kernel, (Sum, Product)):
        return _leaves(kernel.a) + _leaves(kernel.b)
    return 1


def test_series_have_the_length_asked_and_finite_values() -> None:
    series = kernelsynth_series(4, 1500, seed=0)
    assert len(series) == 4
    for s in series:
        assert s.values.shape == (1500,) and s.values.dtype == np.float32
        assert np.isfinite(s.values).all() and np.ptp(s.values) > 0
        assert s.name.startswith("kernelsynth-")


def test_same_seed_same_series_other_seed_other_series() -> None:
    a, b, c = (kernelsynth_series(3, 1200, seed=s) for s in (5, 5, 6))
    assert [s.name for s in a] == [s.name for s in b]
    assert all(np.array_equal(x.values, y.values) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.values, y.values) for x, y in zip(a, c, strict=True))


def test_random_kernels_compose_one_to_five_bank_kernels() -> None:
    rng = np.random.default_rng(0)
    sizes = {_leaves(random_kernel(rng)) for _ in range(300)}
    assert sizes == set(range(1, MAX_KERNELS + 1))


def test_chunked_draws_keep_the_kernels_correlation_across_a_chunk_boundary() -> None:
    # span 256, overlap 64: points 250 and 258 lie in different chunks.
    paths = sample_paths(RBF(16), 600, np.random.default_rng(1), count=3000, span=256, overlap=64)
    assert paths.shape == (3000, 600)
    corr = np.corrcoef(paths[:, 250], paths[:, 258])[0, 1]
    assert corr == pytest.approx(np.exp(-0.5 * (8 / 16) ** 2), abs=0.03)
    assert paths[:, 500].var() == pytest.approx(1.0, abs=0.1)
    # A non-stationary kernel: Linear(1) has variance 1 + (t / length)^2 at point t.
    lin = sample_paths(Linear(1.0), 600, np.random.default_rng(2), count=3000, span=256, overlap=64)
    assert lin[:, 599].var() == pytest.approx(1.0 + (599 / 600) ** 2, rel=0.1)


def test_count_series_are_non_negative_integers() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        values, applied = to_metric(rng.standard_normal(500), rng)
        if applied == ["counts"]:
            assert (values >= 0).all() and np.array_equal(values, np.round(values))
            return
    pytest.fail("no series got the counts transform in 200 draws")


def test_train_mix_option_reaches_the_model_card(tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = ["train", "--synthetic", "1", "--kernelsynth", "2", "--synthetic-length", "300"]
    args += ["--window", "40", "--horizon", "8", "--patch", "8", "--d-model", "16"]
    args += ["--layers", "1", "--epochs", "1", "--seed", "11", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "config.json").read_text())["training"]["data"]
    assert data["synthetic_series"] == 1 and data["kernelsynth_series"] == 2
    assert data["series"] == 3 and data["points"] == 900
    assert [(g["name"], g["series"], g["points"], g["seed"]) for g in data["generators"]] == [
        ("synthetic", 1, 300, 11),
        ("kernelsynth", 2, 600, 11),
    ]
    assert data["evaluation_data"].startswith("none")


def test_a_negative_kernelsynth_count_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["train", "--kernelsynth", "-1", "--synthetic", "1", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "tsguard: error: --kernelsynth must be >= 0"


def test_docstring_examples() -> None:
    result = doctest.testmod(training.kernelsynth)
    assert result.attempted > 0 and result.failed == 0
