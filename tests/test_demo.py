"""`tsguard demo` (the README's first command): its plan (the rules file it writes, the scenes a
short run still holds), its picture, and one short run of the real command, as a user starts it,
whose printout must say what the README says it shows."""

from __future__ import annotations

import argparse
import re
import subprocess

import numpy as np
import pytest

from stream.broker import free_port
from stream.demo import HISTORY_POINTS, MUTED, Demo, make_plan
from stream.demo_plot import Picture, Span, draw
from stream.rules import parse_rules
from tests.conftest import tsguard

PNG = b"\x89PNG\r\n\x1a\n"


def plan(duration: float = 90.0):
    args = argparse.Namespace(series=6, duration=duration, rate=20.0, seed=7)
    return make_plan(args, np.random.default_rng(args.seed))


@pytest.mark.parametrize("duration", [90.0, 20.0])
def test_the_rules_mute_the_muted_spike_and_nothing_else(duration: float):
    p = plan(duration)
    rules = parse_rules(p.rules_yaml())
    assert [j.role for j in p.injections].count("mute") == 1
    for j in p.injections:
        rule = rules.for_series(j.series)
        assert (rule is not None and rule.muted(p.ts(j.index))) == (j.role == "mute"), j
    # The muted spike's episode (a spike's lasts ~30 points) starts and ends inside the mute.
    (muted,) = (j for j in p.injections if j.role == "mute")
    assert rules.for_series(MUTED).muted(p.ts(muted.index + 30))


@pytest.mark.parametrize("duration", [90.0, 20.0])
def test_every_scene_fits_and_the_repeat_meets_a_window_without_the_judged_spike(duration):
    p = plan(duration)
    by_role = {j.role: j for j in p.injections if j.role != "catch"}
    assert set(by_role) == {"judge", "mute", "repeat"}
    assert by_role["judge"].index < by_role["mute"].index < by_role["repeat"].index
    assert by_role["repeat"].index - by_role["judge"].index > 128  # the model's window
    assert by_role["repeat"].delta == by_role["judge"].delta  # the same surprise
    assert max(j.index for j in p.injections) < HISTORY_POINTS + p.live_points


def test_the_picture_shades_injections_and_marks_episodes_and_incidents(tmp_path):
    ts = 1_800_000_000.0 + 60.0 * np.arange(300)
    values = {"a/1": np.sin(np.arange(300) / 9.0), "b/1": np.cos(np.arange(300) / 9.0)}
    picture = Picture(
        ts=ts,
        values=values,
        injections=[
            Span("a/1", ts[100], ts[101], "catch"),
            Span("b/1", ts[150], ts[151], "judge", "judged a false positive"),
        ],  # fmt: skip
        mutes=[Span("b/1", ts[200], ts[240], "mute")],
        episodes=[Span("a/1", ts[100], ts[120]), Span("b/1", ts[150], None)],
        incidents=[("inc-1", ["a/1", "b/1"], ts[100], ts[160])],
        first=50,
    )
    path = draw(picture, tmp_path / "demo.png")
    assert path.read_bytes()[:8] == PNG


def test_incidents_are_printed_when_the_service_publishes_them(capsys):
    """The demo does not build incidents; it prints what tsguard.incidents carries."""
    demo = Demo(argparse.Namespace(), plan(20.0))
    for kind, ts in (("open", 1_800_000_000.0), ("close", 1_800_000_600.0)):
        demo._incident({"incident_id": "inc-0123456789ab", "kind": kind, "ts": ts,
                        "series": ["web-01/cpu", "web-01/latency_ms"]})  # fmt: skip
    out = capsys.readouterr().out
    assert "INCIDENT OPEN   inc-01234567 web-01/cpu, web-01/latency_ms" in out
    assert "INCIDENT CLOSE" in out
    assert demo.incidents == {"inc-0123456789ab": (["web-01/cpu", "web-01/latency_ms"],
                                                   1_800_000_000.0, 1_800_000_600.0)}  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_demo_prints_a_mute_holding_a_verdict_in_force_and_the_picture(tmp_path):
    png = tmp_path / "demo.png"
    proc = tsguard("demo", "--duration", "20", "--series", "3", "--no-logs", "--png", str(png),
                   "--metrics-port", str(free_port()),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    print(out)
    # Only the demo's own lines on stdout; logs on stderr, and quiet (WARNING) by default.
    assert lines and all(re.match(r"\[ *\d+\.\ds\] ", line) for line in lines), out
    assert " INFO " not in err
    assert "held by the mute: the spike in backup-01/io_wait published no event and no alert" in out
    assert "operator: tsguard feedback --event-id " in out
    assert "verdict in force: api-01/latency_ms now alerts above score" in out
    assert "no alert: the same spike in api-01/latency_ms stays quiet" in out
    # Each caught injection's line says which signals were loud at its start, in words.
    caught = [line for line in lines if "ANOMALY START" in line and "<- the injected" in line]
    assert caught and all(re.search(r"\(series time \d\d:\d\d; [a-z ,]+\)", c) for c in caught)
    # web-01/mem spikes as web-01/cpu shifts: one incident of the two (tsguard.incidents).
    assert re.search(r"INCIDENT \w+ +\w{12} web-01/(mem, web-01/cpu|cpu, web-01/mem) ", out), out
    assert f"picture: {png.resolve()} " in out and png.read_bytes()[:8] == PNG
    done = re.search(r"done: (\d+) of (\d+) injected anomalies caught; \d+ anomaly episodes", lines[-1])  # fmt: skip
    assert done and done[1] == done[2], lines[-1]
    assert "1 held by the mute; 1 not alerted after a false-positive verdict" in lines[-1]
