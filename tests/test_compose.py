"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine on CI machines).

- docker-compose.yml validates against the Compose Specification JSON schema (vendored under
  dashboards/compose-spec/, see its README for where it came from);
- its service names and ports agree with dashboards/prometheus/prometheus.yml and the Grafana
  datasource, and its mounts with the files they mount;
- every `tsguard` command line in it (and the Dockerfile's CMD) parses with the real CLI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from stream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "dashboards" / "compose-spec" / "compose-spec.json"
PROMETHEUS_YML = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
DATASOURCES = ROOT / "dashboards" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "dashboards" / "grafana" / "provisioning" / "dashboards" / "tsguard.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def published(service: dict) -> dict[int, int]:
    """container port -> host port, from short-syntax `ports` ("[ip:]host:container")."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        out[int(parts[-1])] = int(parts[-2])
    return out


def env(service: dict) -> dict[str, str]:
    e = service.get("environment", {})
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path, for short-syntax bind mounts ("./src:/dst[:ro]")."""
    out = {}
    for spec in service.get("volumes", []):
        src, dst, *_ = str(spec).split(":")
        if src.startswith((".", "/")):
            out[dst] = (ROOT / src).resolve()
    return out


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """KAFKA_*LISTENERS "NAME://host:port,..." -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, rest = item.split("://")
        host, port = rest.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def cli_args(service: dict) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "use the list form, so no shell re-splits arguments"
    return [str(a) for a in command]


# --- schema --------------------------------------------------------------------------------


def test_validates_against_the_compose_specification(compose: dict):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_a_misspelt_key(compose: dict):
    """The vendored schema is strict enough to matter (additionalProperties: false)."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["tsguard"]["helthcheck"] = broken["services"]["tsguard"].pop("healthcheck")
    assert not jsonschema.Draft201909Validator(schema).is_valid(broken)


# --- the stack -----------------------------------------------------------------------------


def test_services_images_and_profiles(compose: dict):
    s = services(compose)
    assert set(s) == {
        "kafka",
        "tsguard",
        "models-init",
        "retrain",
        "demo-producer",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert s["prometheus"]["image"].startswith("prom/prometheus:")
    assert s["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert re.match(r"grafana/grafana:11\.", s["grafana"]["image"]), "dashboards target Grafana 11"
    for name in ("tsguard", "models-init", "retrain", "demo-producer"):
        assert s[name]["build"]["dockerfile"] == "Dockerfile"
        assert s[name]["build"]["args"]["BASE_IMAGE"].endswith(":-python:3.11-slim}")
    assert s["demo-producer"]["profiles"] == ["demo"]
    assert s["retrain"]["profiles"] == ["retrain"]
    for name in ("kafka", "tsguard", "models-init", "prometheus", "alertmanager", "grafana"):
        assert "profiles" not in s[name], f"{name} must start without a profile"


def test_long_running_services_have_healthchecks(compose: dict):
    for name in ("kafka", "tsguard", "prometheus", "alertmanager", "grafana"):
        hc = services(compose)[name]["healthcheck"]
        assert hc["test"] and hc["interval"] and hc["retries"] > 0, name


def test_named_volumes_are_declared_and_used(compose: dict):
    declared = set(compose["volumes"])
    used = {
        str(spec).split(":")[0]
        for svc in services(compose).values()
        for spec in svc.get("volumes", [])
        if not str(spec).startswith((".", "/"))
    }
    assert (
        used
        == declared
        == {"kafka-data", "prometheus-data", "alertmanager-data", "grafana-data", "models"}
    )


def test_kafka_is_single_node_kraft_with_inside_and_host_listeners(compose: dict):
    kafka = services(compose)["kafka"]
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node, voter = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node == e["KAFKA_NODE_ID"]
    bound = listeners(e["KAFKA_LISTENERS"])
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    controller = e["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert voter == f"{kafka['hostname']}:{bound[controller][1]}"
    assert controller not in advertised and bound[controller][1] not in published(kafka)
    assert e["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    # Inside the compose network: the service name; from the host: localhost on a published port.
    inside = advertised[e["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert inside[0] == "kafka" and kafka["hostname"] == "kafka"
    host = [a for a in advertised.values() if a[0] == "localhost"]
    assert len(host) == 1 and published(kafka)[host[0][1]] == host[0][1]
    for name, (_, port) in advertised.items():
        assert bound[name][1] == port, name


def test_tsguard_serve_command_matches_kafka_and_prometheus(compose: dict):
    s = services(compose)
    args = build_parser().parse_args(cli_args(s["tsguard"]))
    assert args.command == "serve"
    # --bootstrap is Kafka's inside listener.
    e = env(s["kafka"])
    inside = listeners(e["KAFKA_ADVERTISED_LISTENERS"])[e["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert args.bootstrap == f"{inside[0]}:{inside[1]}"
    assert s["tsguard"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # Prometheus scrapes tsguard by service name on its --metrics-port, which is published.
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tsguard"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"tsguard:{args.metrics_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert args.metrics_port in published(s["tsguard"])
    assert str(args.metrics_port) in " ".join(map(str, s["tsguard"]["healthcheck"]["test"]))


def test_every_scrape_target_is_a_compose_service_or_localhost(compose: dict):
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    for job in config["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services(compose) or host == "localhost", target


def test_prometheus_mounts_its_config_and_rules(compose: dict):
    prom = services(compose)["prometheus"]
    flags = dict(a.split("=", 1) for a in cli_args(prom) if "=" in a)
    config_path = Path(flags["--config.file"])
    mounts = bind_mounts(prom)
    assert mounts[str(config_path.parent)] == PROMETHEUS_YML.parent
    assert (PROMETHEUS_YML.parent / config_path.name).is_file()
    assert flags["--storage.tsdb.path"] in {str(v).split(":")[1] for v in prom["volumes"]}
    # Grafana reaches Prometheus by service name on its listen port, which is published.
    port = int(flags["--web.listen-address"].rsplit(":", 1)[1])
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["url"] == f"http://prometheus:{port}"
    assert port in published(prom)


def test_alerts_go_to_the_stacks_alertmanager(compose: dict):
    """Prometheus's rules and serve's incidents both reach the alertmanager service, on the
    port it listens on, with the shipped config mounted where its flag points."""
    s = services(compose)
    am = s["alertmanager"]
    flags = dict(a.split("=", 1) for a in cli_args(am) if "=" in a)
    config_path = Path(flags["--config.file"])
    assert bind_mounts(am)[str(config_path.parent)] == ALERTMANAGER_YML.parent
    assert (ALERTMANAGER_YML.parent / config_path.name).is_file()
    assert flags["--storage.path"] in {str(v).split(":")[1] for v in am["volumes"]}
    port = int(flags["--web.listen-address"].rsplit(":", 1)[1])
    assert port in published(am)
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (am_config,) = config["alerting"]["alertmanagers"]
    assert [t for sc in am_config["static_configs"] for t in sc["targets"]] == [
        f"alertmanager:{port}"
    ]
    args = build_parser().parse_args(cli_args(s["tsguard"]))
    assert args.alertmanager == (f"http://alertmanager:{port}",)


def test_grafana_mounts_provisioning_and_dashboards(compose: dict):
    grafana = services(compose)["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DATASOURCES.parent.parent
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards_dir.glob("*.json")) == [
        "tsguard-anomalies.json",
        "tsguard-logs.json",
        "tsguard-service.json",
    ]
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).relative_to(provider["options"]["path"])).is_file()
    assert 3000 in published(grafana)


def test_published_ports_are_loopback_only(compose: dict):
    for name, svc in services(compose).items():
        for spec in svc.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name}: {spec}"


# --- demo producer -------------------------------------------------------------------------


def test_demo_producer_writes_replayable_csvs(compose: dict, tmp_path: Path, monkeypatch):
    """Run the demo producer's own code, with `subprocess.Popen` standing in for the process
    launch: each launch must be a valid `tsguard replay` command on a CSV that replay reads."""
    from stream.replay import read_points

    demo = services(compose)["demo-producer"]
    assert demo["entrypoint"] == ["python", "-c"]
    (code,) = demo["command"]
    launched: list[list[str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str]):
            launched.append(cmd)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        exec(compile(code, "demo-producer", "exec"), {"__name__": "__main__"})
    assert exit_.value.code == 0
    assert len(launched) == 3
    for cmd in launched:
        assert cmd[0] == "tsguard"
        args = build_parser().parse_args(cmd[1:])
        assert args.command == "replay" and args.bootstrap == "kafka:9092"
        points = list(read_points(Path(cmd[2]), args.series))
        assert len(points) == 3000 and all(p["series"] == args.series for p in points)
        assert all(p["value"] is not None for p in points)
    assert len({tuple(c) for c in launched}) == 3


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_is_a_build_argument():
    ins = dockerfile_instructions()
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert [rest for k, rest in ins if k == "FROM"] == ["${BASE_IMAGE}"]


def test_dockerfile_installs_with_constraints_and_runs_as_non_root():
    ins = dockerfile_instructions()
    runs = " ".join(rest for k, rest in ins if k == "RUN")
    assert "pip install -c constraints.txt '.[confluent]'" in runs
    assert re.search(r"pip install -c constraints\.txt .*torch", runs)
    users = [rest for k, rest in ins if k == "USER"]
    assert users and users[-1] not in {"root", "0"}
    entrypoint = [json.loads(rest) for k, rest in ins if k == "ENTRYPOINT"]
    assert entrypoint == [["tsguard"]]
    (cmd,) = [json.loads(rest) for k, rest in ins if k == "CMD"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve"
    exposed = {int(p) for k, rest in ins if k == "EXPOSE" for p in rest.split()}
    assert args.metrics_port in exposed


def test_dockerfile_copies_what_the_package_needs():
    """Every file and top-level package that `pip install .` needs is copied into the image,
    and .dockerignore does not exclude it from the build context."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {p.rstrip("*") for p in include} | {"pyproject.toml", "constraints.txt"}
    if pyproject["project"].get("readme"):
        needed.add(pyproject["project"]["readme"])
    copied = {word for k, rest in dockerfile_instructions() if k == "COPY" for word in rest.split()}
    assert needed <= copied, needed - copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not needed & ignored


def test_entrypoint_is_the_tsguard_console_script():
    """The image's ENTRYPOINT is the `tsguard` console script; it must resolve to stream.cli."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["tsguard"] == "stream.cli:main"
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--metrics-port" in out.stdout


def test_retrain_promotes_into_the_directory_serve_watches(compose: dict):
    """The retrain profile's commands parse as tsguard commands, and promote swaps into the
    model directory `tsguard serve` reads, on a volume both mount."""
    import shlex

    s = services(compose)
    serve = build_parser().parse_args(cli_args(s["tsguard"]))
    for name in ("tsguard", "models-init", "retrain"):
        assert "models:/models" in s[name]["volumes"], name
    assert s["tsguard"]["depends_on"]["models-init"]["condition"] == (
        "service_completed_successfully"
    )
    environment = env(s["retrain"])
    assert environment["TSGUARD_MODEL"] == serve.model == "/models/current"
    e = env(s["kafka"])
    inside = listeners(e["KAFKA_ADVERTISED_LISTENERS"])[e["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert environment["TSGUARD_BOOTSTRAP"] == f"{inside[0]}:{inside[1]}"
    script = " ".join(s["models-init"]["command"]) + "\n" + s["retrain"]["command"][0]
    commands = [
        shlex.split(line.split("|| ", 1)[-1].replace("$$", "$"))[1:]
        for line in script.splitlines()
        if "tsguard " in line
    ]
    parsed = [build_parser().parse_args(c) for c in commands]
    assert [p.command for p in parsed] == ["promote", "train", "promote"]
    init, train, promote = parsed
    assert str(init.candidate) == "default" and str(init.serving) == serve.model
    assert train.from_kafka and train.init == serve.model
    assert str(promote.serving) == serve.model and str(promote.candidate) == train.out
