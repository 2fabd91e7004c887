"""`tsguard evaluate labelled`: loaders of every layout, metrics on hand-computed cases, VUS-PR
against TSB-AD's reference code, and one CLI run end to end."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import labelled, metrics
from training.baselines import Poly, SubIForest, SubPca

REPO = Path(__file__).resolve().parents[1]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------- loaders


def test_nab_layout(tmp_path):
    root = tmp_path / "mynab"
    ts = [f"2014-01-01 {h:02d}:{m:02d}:00" for h in range(10) for m in range(0, 60, 5)]
    _write_csv(
        root / "data" / "cat" / "a.csv", ["timestamp", "value"], [[t, i] for i, t in enumerate(ts)]
    )
    windows = {"cat/a.csv": [["2014-01-01 05:00:00.000000", "2014-01-01 05:30:00.000000"]]}
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    (s,) = labelled.load_path(root)
    assert (s.collection, s.name, s.values.shape) == ("mynab", "cat/a", (120, 1))
    assert s.test_start == 18  # NAB probation: 15% of 120
    assert np.flatnonzero(s.labels).tolist() == list(range(60, 67))
    assert s.timestamps[1] - s.timestamps[0] == 300.0


def test_csv_train_test_folders(tmp_path):
    root = tmp_path / "kpi"
    _write_csv(
        root / "train" / "k1.csv.gz",
        ["timestamp", "value", "label"],
        [[60 * i, i, 0] for i in range(50)],
    )
    _write_csv(
        root / "test" / "k1.csv.gz",
        ["timestamp", "value", "label"],
        [[60 * (50 + i), i, int(i == 3)] for i in range(30)],
    )
    (s,) = labelled.load_path(root)
    assert (s.collection, s.name, s.test_start, len(s.values)) == ("kpi", "k1", 50, 80)
    assert np.flatnonzero(s.labels).tolist() == [53]
    t = labelled.trim_warmup(s, 20)
    assert (t.test_start, len(t.values), t.first_row) == (20, 50, 30)
    assert np.flatnonzero(t.labels).tolist() == [23]


def test_csv_multi_value_and_iso_times(tmp_path):
    path = tmp_path / "one.csv"
    _write_csv(
        path,
        ["timestamp", "cpu", "mem", "label"],
        [["2026-01-01T00:00:00Z", 1, 2, 0], ["2026-01-01T00:01:00Z", "", 3, 1]],
    )
    (s,) = labelled.load_path(path)
    assert s.dims == ["cpu", "mem"] and np.isnan(s.values[1, 0]) and s.test_start == 0
    assert s.timestamps[1] - s.timestamps[0] == 60.0 and s.labels.tolist() == [0, 1]


def test_tsbad_name_gives_train_length(tmp_path):
    path = tmp_path / "TSB" / "001_NAB_id_1_Facility_tr_7_1st_20.csv"
    _write_csv(path, ["Data", "Label"], [[float(i), int(i == 9)] for i in range(12)])
    (s,) = labelled.load_path(path.parent)
    assert (s.collection, s.test_start, s.dims) == ("TSB", 7, ["Data"])
    assert s.timestamps[:3].tolist() == [0.0, 60.0, 120.0]


def test_ucr_name(tmp_path):
    path = tmp_path / "ucr" / "001_UCR_Anomaly_Thing_10_15_17.txt"
    path.parent.mkdir()
    path.write_text("\n".join(str(float(i)) for i in range(30)))
    (s,) = labelled.load_path(path.parent)
    assert s.test_start == 10 and np.flatnonzero(s.labels).tolist() == [14, 15, 16]
    assert s.ucr == (14, 16)


def test_smd_like_folder(tmp_path):
    root = tmp_path / "smd"
    m = root / "machine-9"
    _write_csv(m / "train.csv.gz", ["m0", "m1"], [[i, 2 * i] for i in range(40)])
    _write_csv(m / "test.csv.gz", ["m0", "m1"], [[i, 2 * i] for i in range(20)])
    _write_csv(m / "test_label.csv.gz", ["label"], [[int(i in (5, 6))] for i in range(20)])
    (s,) = labelled.load_path(root)
    assert (s.collection, s.name, s.values.shape, s.test_start) == ("smd", "machine-9", (60, 2), 40)
    assert np.flatnonzero(s.labels).tolist() == [45, 46]
    (alone,) = labelled.load_path(m)
    assert (alone.collection, alone.name) == ("machine-9", "machine-9")


def test_bad_input_is_a_user_error(tmp_path):
    path = tmp_path / "x.csv"
    _write_csv(path, ["timestamp", "value"], [[0, 1]])
    with pytest.raises(labelled.UserError, match="no label column"):
        labelled.load_path(path)
    with pytest.raises(labelled.UserError, match="no such file"):
        labelled.load_path(tmp_path / "missing")


# ----------------------------------------------------------------------------- metrics


def test_event_f1_by_hand():
    y = np.array([0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0])
    # runs at 1-2 (onset in event 1), 4-7 (onset 4 outside: false, although it overlaps event 2)
    pred = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    assert metrics.event_counts(y, pred) == (3, 1, 2, 1)
    f1, precision, recall = metrics.event_f1_at(y, pred)
    assert (precision, recall) == (0.5, 1 / 3) and f1 == pytest.approx(0.4)
    # a run over the whole series is one onset at point 0: not an event
    assert metrics.event_f1_at(y, np.ones(12, bool))[0] == 0.0
    best = metrics.best_event_f1(y, np.array([0, 0.9, 0.2, 0, 0, 0, 0.8, 0.1, 0, 0, 0.7, 0]))
    assert best["f1"] == 1.0 and best["threshold"] == 0.7


def test_false_alerts_and_alert_f1_by_hand():
    y = np.zeros(2000, np.int8)
    y[100:110] = 1
    alerts = np.zeros(2000, bool)
    alerts[[50, 105, 1500, 1999]] = True
    assert metrics.false_alerts_per_1k(y, alerts) == 1.5  # 3 outside the event, 2000 points
    f1, precision, recall = metrics.alert_f1(y, alerts)
    assert (precision, recall) == (0.25, 1.0) and f1 == pytest.approx(0.4)


def test_ucr_accuracy_and_auc_pr():
    s = np.zeros(1000)
    s[380] = 1.0
    assert metrics.ucr_accuracy(s, 480, 500) == 1 and metrics.ucr_accuracy(s, 481, 500) == 0
    y = np.array([0, 0, 1, 0, 1])
    # ranks: 0.9 (+), 0.8 (-), 0.7 (+): AP = 1 * 1/2 + 2/3 * 1/2
    assert metrics.auc_pr(y, np.array([0.1, 0.8, 0.9, 0.2, 0.7])) == pytest.approx(5 / 6)
    assert np.isnan(metrics.auc_pr(np.zeros(5), np.arange(5.0)))


def _reference_vus():
    """TSB-AD's VUS-PR (`generate_curve`), or a skip naming how to install it."""
    try:
        from TSB_AD.evaluation.basic_metrics import generate_curve
    except ImportError:
        pytest.skip(
            "TSB-AD's metric code is not installed: pip install --no-deps tsb-ad==1.5 "
            "(the reference extra; its metric module needs only numpy and scikit-learn)"
        )
    return lambda y, s, w: generate_curve(y, s, w)[-1]


@pytest.mark.parametrize("case", range(6))
def test_vus_pr_equals_tsb_ad(case):
    reference = _reference_vus()
    rng = np.random.default_rng(case)
    n = int(rng.integers(400, 2500))
    y = np.zeros(n, int)
    for _ in range(int(rng.integers(1, 7))):
        a = int(rng.integers(0, n - 5))
        y[a : a + int(rng.integers(1, 60))] = 1
    if case == 0:  # events touching both ends of the series
        y[:4], y[-3:] = 1, 1
    s = rng.random(n) + 0.8 * y * rng.random(n)
    if case == 1:  # many tied scores
        s = np.round(s, 1)
    w = [0, 1, 7, 25, 60, 100][case]
    assert metrics.vus_pr(y, s, w) == pytest.approx(reference(y, s, w), abs=1e-9)


def test_period_length_finds_the_period():
    t = np.arange(5000)
    assert metrics.period_length(np.sin(2 * np.pi * t / 144)) == 144
    assert metrics.period_length(np.ones(500)) == metrics.DEFAULT_PERIOD


def test_offline_baselines_find_a_planted_anomaly():
    rng = np.random.default_rng(3)
    t = np.arange(3000)
    x = np.sin(2 * np.pi * t / 50) + 0.05 * rng.normal(size=3000)
    x[2000:2010] += 3.0
    # MatrixProfile is left out: stumpy's first call compiles for half a minute or more here.
    for det in (SubPca(), SubIForest(), Poly()):
        raw = det.raw_scores(x)
        assert raw.shape == (3000,)
        assert 1950 <= int(np.argmax(raw)) <= 2060, det.name


# ----------------------------------------------------------------------------- CLI


def test_cli_end_to_end(tmp_path):
    root = tmp_path / "coll"
    rng = np.random.default_rng(0)
    for k in range(2):
        n = 1500
        v = np.sin(np.arange(n) * 2 * np.pi / 60) + 0.05 * rng.normal(size=n)
        lab = np.zeros(n, int)
        v[1000 + 100 * k : 1010 + 100 * k] += 4.0
        lab[1000 + 100 * k : 1010 + 100 * k] = 1
        _write_csv(
            root / "train" / f"s{k}.csv",
            ["timestamp", "value", "label"],
            [[60 * i, v[i], lab[i]] for i in range(500)],
        )
        _write_csv(
            root / "test" / f"s{k}.csv",
            ["timestamp", "value", "label"],
            [[60 * i, v[i], lab[i]] for i in range(500, n)],
        )
    out, res, plots = tmp_path / "r.json", tmp_path / "res", tmp_path / "plots"
    cmd = [
        sys.executable,
        "-m",
        "stream.cli",
        "evaluate",
        "labelled",
        str(root),
        "--detector",
        "windowed-gaussian,poly",
        "--out",
        str(out),
        "--results-dir",
        str(res),
        "--plots",
        str(plots),
        "--n-plots",
        "1",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["files"] == 2 and set(printed) == {"files", "windowed-gaussian", "poly"}
    for name in ("windowed-gaussian", "poly"):
        c = printed[name]["coll"]
        assert c["files"] == 2 and c["averaging"] == "mean over files"
        for key in ("vus_pr", "auc_pr", "event_f1_best", "event_f1_shipped"):
            assert 0.0 <= c[key] <= 1.0
        assert c["false_alerts_per_1k"] >= 0.0
    # the spike is obvious to a z-score
    assert printed["windowed-gaussian"]["coll"]["auc_pr"] > 0.5
    report = json.loads(out.read_text())
    assert report["detectors"]["poly"]["streaming"] is False
    assert report["detectors"]["windowed-gaussian"]["streaming"] is True
    per_file = report["detectors"]["poly"]["per_file"]["coll"]
    assert set(per_file) == {"s0", "s1"} and per_file["s0"]["points"] == 1000
    import pandas as pd

    df = pd.read_csv(res / "poly" / "coll" / "s1.csv")
    assert list(df.columns) == ["index", "score", "alert", "label"]
    assert df["index"].tolist() == list(range(500, 1500))
    assert df["label"].sum() == 10 and set(df["alert"].unique()) <= {0, 1}
    assert df.loc[df["label"] == 1, "index"].tolist() == list(range(1100, 1110))
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) == 2 and pngs[0].startswith("poly_01_coll_")

    bad = subprocess.run(
        cmd[:5] + [str(root), "--detector", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("tsguard: error: unknown detector 'nope'")


@pytest.mark.parametrize("dims", [1, 3])
def test_tsguard_adapter_is_causal(dims):
    """The score and alerts of point t are the same whether or not later points exist."""
    rng = np.random.default_rng(dims)
    n = 700
    values = np.sin(np.arange(n)[:, None] * 2 * np.pi / 50 + np.arange(dims)) + 0.05 * rng.normal(
        size=(n, dims)
    )
    values[600:605] += 5.0
    labels = np.zeros(n, np.int8)
    labels[600:605] = 1

    def series(m: int) -> labelled.LabelledSeries:
        return labelled.LabelledSeries(
            "c",
            "s",
            values[:m],
            np.arange(m) * 60.0,
            labels[:m],
            100,
            [f"d{k}" for k in range(dims)],
        )

    det = labelled.TsguardLabelled(device="cpu")
    full = det.run(series(n))
    part = det.run(series(620))
    assert full.scores.shape == (n,) and full.alerts.dtype == bool
    assert full.scores.min() >= 0.0 and full.scores.max() <= 1.0
    np.testing.assert_allclose(part.scores, full.scores[:620], rtol=1e-6, atol=1e-9)
    assert (part.alerts == full.alerts[:620]).all()
