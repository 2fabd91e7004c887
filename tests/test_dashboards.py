"""Grafana dashboards and their provisioning, and the live cross-check of every metric that a
dashboard panel or alert rule references against the /metrics output of a running
`tsguard serve`.

The dashboards target Grafana 11.x (classic JSON model, schemaVersion 39); docker-compose.yml
runs grafana/grafana:11.6.0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from stream.broker import EmbeddedBroker, free_port
from tests.conftest import point, produce, stop, tsguard

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "tsguard.yml"
RULE_FILES = sorted((ROOT / "dashboards" / "prometheus" / "rules").glob("*.yml"))

SCHEMA_VERSION = 39  # Grafana 11.x classic dashboard JSON
METRIC_RE = re.compile(r"\b(tsguard_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Labels of each metric, from the public contract (docs/ARCHITECTURE.md, plus the two metrics
# the service adds for dashboards and alerts). Prometheus adds job and instance on scrape.
CONTRACT_LABELS: dict[str, set[str]] = {
    "tsguard_points_total": set(),
    "tsguard_messages_invalid_total": {"reason"},
    "tsguard_windows_scored_total": set(),
    "tsguard_anomalies_total": set(),
    "tsguard_anomaly_score": {"series"},
    "tsguard_series_tracked": set(),
    "tsguard_scoring_seconds": set(),
    "tsguard_batch_size": set(),
    "tsguard_end_to_end_seconds": set(),
    "tsguard_consumer_lag": {"topic", "partition"},
    "tsguard_model_info": {"version", "device"},
    "tsguard_log_lines_total": {"label"},
    "tsguard_log_summaries_total": set(),
    "tsguard_dead_letter_total": {"reason"},
    "tsguard_anomaly_threshold": set(),
    # --alertmanager and --rules (stream/alertmanager.py, stream/rules.py)
    "tsguard_alerts_sent_total": {"state"},
    "tsguard_alerts_failed_total": {"reason"},
    "tsguard_events_held_total": {"reason"},
    "tsguard_rules_loads_total": {"result"},
    "tsguard_rules_file_refused": set(),
    "tsguard_feedback_verdicts_total": {"verdict"},
    "tsguard_incidents_open": set(),  # stream/incidents.py
    "tsguard_anomaly_causes_total": {"signal"},  # episode starts by their loudest signal
}
HISTOGRAMS = {"tsguard_scoring_seconds", "tsguard_batch_size", "tsguard_end_to_end_seconds"}
SCRAPE_LABELS = {"job", "instance"}

# Grafana's built-in and our template variables, replaced by valid PromQL for syntax checks.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".+",
    "$series": ".+",
    "$label": ".+",
}


# --- helpers -------------------------------------------------------------------------------


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboards() -> dict[str, dict]:
    return {p.name: load(p) for p in DASHBOARD_FILES}


def panels(dash: dict) -> Iterator[dict]:
    """Every panel, rows' nested (collapsed) panels included; rows themselves excluded."""
    for p in dash["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", []) if t.get("expr")]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if a.get("expr")]
    return exprs


def variable_queries(dash: dict) -> list[str]:
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def rule_exprs() -> list[str]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [r["expr"] for r in group["rules"]]
    return out


def all_references() -> dict[str, set[str]]:
    """metric name -> where it is referenced (dashboard file or rules)."""
    refs: dict[str, set[str]] = {}
    for name, dash in dashboards().items():
        for text in dashboard_exprs(dash) + variable_queries(dash):
            for m in METRIC_RE.findall(text):
                refs.setdefault(m, set()).add(name)
    for expr in rule_exprs():
        for m in METRIC_RE.findall(expr):
            refs.setdefault(m, set()).add("rules")
    return refs


def family(name: str) -> str:
    """The metric family a referenced sample name belongs to (histogram suffixes stripped)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in HISTOGRAMS:
            return base
    return name


def substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARS[var])
    return expr


def labels_used(expr: str) -> set[str]:
    """Label names an expression selects on, groups by, or uses in a legend."""
    used = set()
    for body in re.findall(r"\btsguard_[a-z0-9_]+\{([^}]*)\}", expr):
        used |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(
        r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        used |= {x.strip() for x in body.split(",") if x.strip()}
    return used


# --- dashboard JSON ------------------------------------------------------------------------


def test_three_dashboards_with_unique_uids_and_titles():
    dash = dashboards()
    assert set(dash) == {"tsguard-service.json", "tsguard-anomalies.json", "tsguard-logs.json"}
    uids = [d["uid"] for d in dash.values()]
    titles = [d["title"] for d in dash.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    assert all(len(u) <= 40 and re.fullmatch(r"[a-z0-9-]+", u) for u in uids)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_model(path: Path):
    dash = load(path)
    assert dash["schemaVersion"] == SCHEMA_VERSION
    assert "tsguard" in dash["tags"]
    assert "id" not in dash or dash["id"] is None, "provisioned dashboards must not pin an id"
    ids = [p["id"] for p in dash["panels"]] + [
        p["id"] for r in dash["panels"] for p in r.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # Grid: inside 24 columns, no two panels overlapping.
    cells: dict[tuple[int, int], int] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_have_datasource_unit_and_queries(path: Path):
    for p in panels(load(path)):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']!r} has no unit"
        assert p.get("description"), f"{p['title']!r} has no description"
        assert p["targets"], p["title"]
        refids = [t["refId"] for t in p["targets"]]
        assert len(refids) == len(set(refids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_template_variables(path: Path):
    dash = load(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == provisioned["uid"]
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["multi"] and inst["includeAll"]
    # Every selector of a tsguard metric follows the instance variable; bare names are not
    # allowed (they would mix instances the user filtered out).
    for expr in dashboard_exprs(dash):
        assert not re.search(r"\btsguard_[a-z0-9_]+\b(?!\{)", expr), expr
        for body in re.findall(r"\btsguard_[a-z0-9_]+\{([^}]*)\}", expr):
            assert 'instance=~"$instance"' in body, expr
    # Nothing refers to a variable the dashboard does not define.
    defined = set(variables) | {"__rate_interval", "__interval", "__range"}
    for text in dashboard_exprs(dash) + variable_queries(dash):
        for var in re.findall(r"\$\{?(\w+)", text):
            assert var in defined, f"${var} in {text!r}"


def test_anomalies_dashboard_filters_by_series():
    dash = load(GRAFANA / "dashboards" / "tsguard-anomalies.json")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "tsguard_anomaly_score" in variables["series"]["definition"]
    score_selectors = [
        body
        for expr in dashboard_exprs(dash)
        for body in re.findall(r"\btsguard_anomaly_score\{([^}]*)\}", expr)
    ]
    assert score_selectors and all('series=~"$series"' in b for b in score_selectors)


def test_dashboards_cover_what_the_issue_asks_for():
    d = {name: "\n".join(dashboard_exprs(dash)) for name, dash in dashboards().items()}
    service, anomalies, logs = (
        d["tsguard-service.json"],
        d["tsguard-anomalies.json"],
        d["tsguard-logs.json"],
    )
    for needle in (
        "rate(tsguard_points_total",
        "tsguard_consumer_lag",
        "histogram_quantile(0.99, sum by (le) (rate(tsguard_end_to_end_seconds_bucket",
        "tsguard_batch_size_bucket",
        "tsguard_scoring_seconds_bucket",
        "rate(tsguard_dead_letter_total",
        "tsguard_model_info",
    ):
        assert needle in service, needle
    for needle in (
        "tsguard_anomaly_score",
        "tsguard_anomalies_total",
        "topk(10,",
        "tsguard_anomaly_threshold",
    ):
        assert needle in anomalies, needle
    for needle in ("sum by (label) (rate(tsguard_log_lines_total", "tsguard_log_summaries_total"):
        assert needle in logs, needle


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian `prometheus`)"
)
def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    """promtool parses each panel/annotation query as a recording rule (variables substituted)."""
    rules = []
    for name, dash in dashboards().items():
        for i, expr in enumerate(dashboard_exprs(dash)):
            promql = substitute(expr)
            assert "$" not in promql, f"unknown variable left in {expr!r}"
            rules.append(
                {
                    "record": f"dashboard:{name.removesuffix('.json').replace('-', '_')}:{i}",
                    "expr": promql,
                }
            )
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- references against the contract -----------------------------------------------------


def test_references_only_contract_metrics():
    refs = all_references()
    unknown = {m: sorted(w) for m, w in refs.items() if family(m) not in CONTRACT_LABELS}
    assert not unknown, f"metrics outside the contract: {unknown}"
    # Histogram series are only used through their _bucket/_sum/_count samples.
    for m in refs:
        assert m not in HISTOGRAMS, f"{m} is a histogram: use {m}_bucket/_sum/_count"


def test_every_contract_metric_is_on_a_dashboard_or_in_a_rule():
    assert {family(m) for m in all_references()} == set(CONTRACT_LABELS)


def test_references_only_contract_labels():
    texts = rule_exprs() + [e for dash in dashboards().values() for e in dashboard_exprs(dash)]
    for expr in texts:
        metrics = {family(m) for m in METRIC_RE.findall(expr)}
        allowed = SCRAPE_LABELS | {"le"} | set().union(*(CONTRACT_LABELS[m] for m in metrics))
        assert labels_used(expr) <= allowed, f"{expr!r}: {labels_used(expr) - allowed}"


# --- provisioning --------------------------------------------------------------------------


def test_datasource_provisioning():
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds["isDefault"]
    assert re.fullmatch(r"http://[a-z0-9-]+:\d+", ds["url"])


def test_dashboard_provider():
    doc = yaml.safe_load(PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# --- live cross-check: a running `tsguard serve` exposes every referenced metric ------------


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, set[frozenset[str]]]]:
    """(family name -> type, sample name -> label-name sets seen) from Prometheus text format."""
    types: dict[str, str] = {}
    samples: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
            assert m, line
            names = frozenset(re.findall(r'(\w+)="', m.group(2) or "")) - {"le"}
            samples.setdefault(m.group(1), set()).add(names)
    return types, samples


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory) -> str:
    """/metrics text of a real `tsguard serve` (embedded broker) that has consumed a few points."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    port = free_port()
    broker = EmbeddedBroker()
    broker.start()
    # Enough points of one series for full windows, so the per-series gauge gets a sample.
    t0, n = 1_700_000_000.0, 300
    values = (
        50 + 10 * np.sin(2 * np.pi * np.arange(n) / 50) + np.random.default_rng(0).normal(0, 0.5, n)
    )
    produce(
        broker.bootstrap,
        "tsguard.metrics",
        [point("xcheck", t0 + 60 * i, float(v)) for i, v in enumerate(values)],
    )
    with log.open("w") as out:
        proc = tsguard("serve", "--bootstrap", broker.bootstrap, "--metrics-port", str(port),
                       "--metrics-addr", "127.0.0.1", "--group-id", "dashboards-xcheck",
                       "--session-timeout-ms", "6000", stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
            except OSError:
                text = ""
            if "tsguard_anomaly_score{" in text and "tsguard_consumer_lag{" in text:
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"tsguard serve exited:\n{log.read_text()[-3000:]}"
        assert text, f"no /metrics from tsguard serve:\n{log.read_text()[-3000:]}"
        yield text
    finally:
        stop(proc)
        broker.stop()


def missing_from(exposition: str, refs: dict[str, set[str]]) -> dict[str, list[str]]:
    """References that the exposition does not back: metric -> where it is referenced.

    A plain name must have a `# TYPE` line (prometheus-client writes one even for a labelled
    metric with no samples yet); a histogram sample name (`_bucket`, `_sum`, `_count`) needs
    its family typed `histogram` and the sample present. The type must also fit the use:
    `_total` names are counters, the rest gauges.
    """
    types, samples = parse_exposition(exposition)
    missing = {}
    for name, where in sorted(refs.items()):
        fam = family(name)
        expected = (
            "histogram" if fam in HISTOGRAMS else "counter" if fam.endswith("_total") else "gauge"
        )
        present = name in samples if fam != name else name in types
        if not present or types.get(fam) != expected:
            missing[name] = sorted(where)
    return missing


def test_missing_from_flags_absent_and_mistyped_metrics():
    exposition = "\n".join(
        [
            "# TYPE tsguard_points_total counter",
            "tsguard_points_total 3.0",
            "# TYPE tsguard_anomaly_score gauge",
            "# TYPE tsguard_scoring_seconds histogram",
            'tsguard_scoring_seconds_bucket{le="+Inf"} 0.0',
            "tsguard_scoring_seconds_count 0.0",
            "# TYPE tsguard_series_tracked counter",
            "",
        ]
    )
    refs = {
        "tsguard_points_total": {"a"},
        "tsguard_anomaly_score": {"a"},  # typed, no samples yet: fine
        "tsguard_scoring_seconds_bucket": {"a"},
        "tsguard_scoring_seconds_sum": {"b"},  # not exposed
        "tsguard_consumer_lag": {"rules"},  # not exposed
        "tsguard_series_tracked": {"a"},  # exposed with the wrong type
    }
    assert missing_from(exposition, refs) == {
        "tsguard_scoring_seconds_sum": ["b"],
        "tsguard_consumer_lag": ["rules"],
        "tsguard_series_tracked": ["a"],
    }


@pytest.mark.integration
def test_every_referenced_metric_exists_in_live_metrics(live_metrics: str):
    refs = all_references()
    missing = missing_from(live_metrics, refs)
    assert not missing, (
        f"referenced but not exposed (or of another type) by tsguard serve: {missing}"
    )


@pytest.mark.integration
def test_live_label_names_match_the_contract(live_metrics: str):
    """Labelled metrics with samples carry exactly the contract's label names (the dashboards
    group and filter by them). Those the service has not yet used have no samples to check."""
    _, samples = parse_exposition(live_metrics)
    checked = []
    for fam, labels in CONTRACT_LABELS.items():
        sample = fam + "_bucket" if fam in HISTOGRAMS else fam
        for label_set in samples.get(sample, ()):
            assert label_set == frozenset(labels), (
                f"{sample}: {sorted(label_set)} != {sorted(labels)}"
            )
            checked.append(fam)
    # The ones this test makes sure to exercise (points were produced for one series).
    assert {"tsguard_anomaly_score", "tsguard_consumer_lag", "tsguard_model_info",
            "tsguard_dead_letter_total", "tsguard_messages_invalid_total"} <= set(checked)  # fmt: skip
