"""deploy/: the Dockerfile, the Compose file and the Kubernetes manifests, checked as far
as a machine without a Docker engine or a cluster allows.

- the real tools, installed once by scripts/install-deploy-tools.sh into
  ~/.cache/candleflow/tools: `docker-compose config`, `kustomize build`, hadolint,
  kubernetes-validate (the Kubernetes API's schemas) and Strimzi's CRD schemas;
- every command and every CANDLEFLOW_* variable the containers use exists in this
  checkout's CLI and configuration (the same load_config the services run);
- what the pieces must agree on: topic names and partitions, the replicas a topic's
  partitions can feed, ports, probes, volumes, the Kafka and Redis addresses.

A test whose tool could not be installed is skipped, naming the tool and its log.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from typer.testing import CliRunner

from candleflow.cli import app
from candleflow.config import Settings, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "candleflow.yaml"
K8S = DEPLOY / "k8s"
K8S_CONFIG = K8S / "candleflow.yaml"
INSTALL_SCRIPT = ROOT / "scripts" / "install-deploy-tools.sh"
TOOLS_DIR = Path.home() / ".cache" / "candleflow" / "tools"
KUBERNETES_VERSION = "1.33.0"

# In the image: the configuration file's mount point and the probe's path.
CONFIG_IN_CONTAINER = "/etc/candleflow/candleflow.yaml"
PROBE_IN_CONTAINER = "/usr/local/bin/candleflow-healthcheck"

PIPELINE = ("ingest", "candles", "features", "sink", "serve")
CANDLEFLOW_COMPOSE_SERVICES = ("init", *PIPELINE)


# --- tools -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    dir: Path
    install_output: str

    def path(self, name: str) -> Path:
        """The tool's executable; skips the test when it could not be installed."""
        exe = self.dir / "bin" / name
        if not exe.exists():
            log = self.dir / "logs" / f"{name}.log"
            pytest.skip(f"{name} could not be installed by {INSTALL_SCRIPT.name} (log: {log}):\n"
                        f"{self.install_output[-2000:]}")
        return exe

    def strimzi_models(self) -> Path:
        prefix = self.dir / "npm"
        if not (prefix / "node_modules" / "@kubernetes-models" / "strimzi-kafka-operator").is_dir():
            pytest.skip(f"the Strimzi schemas (npm @kubernetes-models/strimzi-kafka-operator) could not be "
                        f"installed by {INSTALL_SCRIPT.name}:\n{self.install_output[-2000:]}")
        if shutil.which("node") is None:
            pytest.skip("node is not installed: the Strimzi schemas cannot be run")
        return prefix


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Install (once; cached across sessions) the tools that check deploy/."""
    try:
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT), str(TOOLS_DIR)], capture_output=True, text=True,
                              timeout=600)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"{INSTALL_SCRIPT.name} timed out: {exc}"
    return Tools(TOOLS_DIR, output)


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)


# --- reading the files ---------------------------------------------------------------------


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's `${NAME}` / `${NAME:-default}` substitution, on every string of a loaded file."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: environ.get(m["name"]) or (m["default"] or ""), value)
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    return value


def compose_file(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The Compose file as Compose reads it: YAML anchors and merge keys, then variables."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), environ or {})


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else list(value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_stages() -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            words = args.split()
            name = words[words.index("AS") + 1] if "AS" in words else (
                words[words.index("as") + 1] if "as" in words else None)
            stages.append({"from": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((instruction, args))
    return stages


def image_environment() -> dict[str, str]:
    """The ENV of the runtime (last) stage: every container starts with it."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile_stages()[-1]["instructions"]:
        if instruction == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def container_settings(environment: dict[str, str], config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The configuration a container starts with: the image's ENV, then its own variables.

    CANDLEFLOW_CONFIG names the mounted file; here it is read from the repository.
    Only CANDLEFLOW_* variables reach the configuration (others, such as
    HEALTHCHECK_URL, are the probe's).
    """
    env = {**image_environment(), **environment}
    assert env.get("CANDLEFLOW_CONFIG") == CONFIG_IN_CONTAINER, "the container must be told where its YAML is"
    with monkeypatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CANDLEFLOW_"):
                mp.delenv(name)
        for name, value in env.items():
            if name.startswith("CANDLEFLOW_") and name != "CANDLEFLOW_CONFIG":
                mp.setenv(name, value)
        return load_config(config_file)


def assert_cli_accepts(argv: list[str]) -> None:
    """`candleflow ARGV --help` exits 0: the subcommand and every option in ARGV exist."""
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"candleflow {' '.join(argv)}: {result.output}"


def candleflow_commands_in_shell(script: str) -> list[list[str]]:
    """The `candleflow ...` commands of a `sh -c` script (split at ; && || and newlines)."""
    commands = []
    for part in re.split(r";|&&|\|\||\n", script):
        words = shlex.split(part)
        if words and words[0] == "candleflow":
            commands.append(words[1:])
    return commands


def service_argv(service: dict[str, Any]) -> list[list[str]]:
    """The candleflow argument lists a Compose service runs."""
    entrypoint, command = as_argv(service.get("entrypoint")), as_argv(service.get("command"))
    if entrypoint[:2] == ["/bin/sh", "-c"] or entrypoint[:2] == ["sh", "-c"]:
        return candleflow_commands_in_shell(" ".join(command))
    assert not entrypoint or entrypoint == ["candleflow"], f"unexpected entrypoint {entrypoint}"
    return [command]


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    stages = dockerfile_stages()
    names = [s["name"] for s in stages]
    assert len(stages) >= 2 and "builder" in names, names
    runtime = stages[-1]["instructions"]
    kinds = [i for i, _ in runtime]

    users = [args.strip() for i, args in runtime if i == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runtime user is {user}"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")

    healthcheck = [args for i, args in runtime if i == "HEALTHCHECK"]
    assert healthcheck and "CMD" in healthcheck[0] and PROBE_IN_CONTAINER in healthcheck[0]
    entrypoint = json.loads([args for i, args in runtime if i == "ENTRYPOINT"][-1])
    assert entrypoint == ["candleflow"]

    # The runtime installs the wheels built in the builder stage, TA-Lib's binary one included,
    # and checks TA-Lib imports; no compiler is installed anywhere.
    builder = next(stage for stage in stages if stage["name"] == "builder")
    wheel_steps = [args for i, args in builder["instructions"] if i == "RUN" and "pip wheel" in args]
    assert wheel_steps and "--only-binary=:all:" in wheel_steps[0]
    install = " ".join(args for i, args in runtime if i == "RUN")
    assert "from=builder" in install and "--no-index" in install and "import talib" in install
    assert not re.search(r"apt-get install[^&]*(gcc|build-essential)", DOCKERFILE.read_text())


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = []
    for stage in dockerfile_stages():
        for instruction, args in stage["instructions"]:
            if instruction == "COPY" and "--from=" not in args:
                sources += [w for w in shlex.split(args) if not w.startswith("--")][:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
        top = Path(source).parts[0]
        assert source not in ignored and top not in ignored, f"COPY {source} is excluded by .dockerignore"


def test_dockerfile_passes_hadolint(tools: Tools) -> None:
    proc = run([tools.path("hadolint"), "--no-color", DOCKERFILE])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_environment_is_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings({"CANDLEFLOW_CONFIG": CONFIG_IN_CONTAINER}, COMPOSE_CONFIG, monkeypatch)
    assert str(settings.data_dir) == "/data"
    assert str(settings.store.repo_dir).startswith("/data/") and str(settings.store.offline_dir).startswith("/data/")
    assert settings.serve.host == "0.0.0.0"


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_probe_follows_the_http_status() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    probe = DEPLOY / "healthcheck.py"
    try:
        ok = run([sys.executable, probe], env={**os.environ, "HEALTHCHECK_URL": f"{base}/healthz"})
        failing = run([sys.executable, probe, f"{base}/unhealthy"])
    finally:
        server.shutdown()
    closed = run([sys.executable, probe, f"{base}/healthz"])  # nothing listens any more
    assert ok.returncode == 0, ok.stderr
    assert failing.returncode == 1 and "unhealthy" in failing.stderr
    assert closed.returncode == 1


# --- Docker Compose ----------------------------------------------------------------------------


def docker_compose_config(tools: Tools, file: Path,
                          environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INGEST_ARGS"}
    return run([tools.path("docker-compose"), "-f", file, "config", "--format", "json"],
               env={**env, **(environ or {})}, cwd=file.parent)


def compose_config(tools: Tools, environ: dict[str, str] | None = None) -> dict[str, Any]:
    proc = docker_compose_config(tools, COMPOSE_FILE, environ)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_docker_compose_config_rejects_a_broken_file(tools: Tools, tmp_path: Path) -> None:
    """The check bites: a misspelt key in a copy of the file is an error that names it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("  stop_grace_period: 30s", "  stop_grace_periods: 30s"))
    shutil.copy(COMPOSE_CONFIG, tmp_path / COMPOSE_CONFIG.name)
    proc = docker_compose_config(tools, broken)
    assert proc.returncode != 0 and "stop_grace_periods" in proc.stderr


def test_docker_compose_config_accepts_the_file(tools: Tools) -> None:
    config = compose_config(tools)
    services = config["services"]
    assert set(services) == {"kafka", "redis", *CANDLEFLOW_COMPOSE_SERVICES}

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft

    for name in CANDLEFLOW_COMPOSE_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(service["build"]["context"]) == ROOT
        if name == "init":
            assert service["restart"] == "no"
            continue
        assert service["restart"] in ("unless-stopped", "always", "on-failure")
        assert service["healthcheck"]["test"] == ["CMD", "python", PROBE_IN_CONTAINER]
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("kafka", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} needs a health check"

    # The offline store's volume is shared by the services that write or read it.
    for name in ("init", "sink", "serve"):
        mounts = {(v["type"], v.get("source"), v["target"]) for v in services[name]["volumes"]}
        assert ("volume", "candleflow-data", "/data") in mounts, name
    assert any(p["target"] == 8000 and str(p["published"]) == "8000" for p in services["serve"]["ports"])


def test_docker_compose_ingest_mode_is_chosen_by_variable(tools: Tools) -> None:
    assert compose_config(tools)["services"]["ingest"]["command"] == ["ingest"]
    simulated = compose_config(tools, {"INGEST_ARGS": "--simulate"})
    assert simulated["services"]["ingest"]["command"] == ["ingest", "--simulate"]


@pytest.mark.parametrize("ingest_args", ["", "--simulate"])
def test_compose_commands_exist_in_the_cli(ingest_args: str) -> None:
    services = compose_file({"INGEST_ARGS": ingest_args})["services"]
    seen = set()
    for name in CANDLEFLOW_COMPOSE_SERVICES:
        for argv in service_argv(services[name]):
            assert argv, f"{name} runs no candleflow command"
            assert_cli_accepts(argv)
            seen.add(argv[0])
    assert {"topics", "store", *PIPELINE} <= seen


@pytest.mark.parametrize("name", CANDLEFLOW_COMPOSE_SERVICES)
def test_compose_environment_is_valid_configuration(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose_file()["services"][name]
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    mounts = service.get("volumes") or []
    assert f"./candleflow.yaml:{CONFIG_IN_CONTAINER}:ro" in mounts
    settings = container_settings(environment, COMPOSE_CONFIG, monkeypatch)

    services = compose_file()["services"]
    assert settings.kafka.bootstrap_servers == "kafka:9092" and "kafka" in services
    assert settings.store.online.type == "redis"
    assert settings.store.online.connection_string == "redis:6379" and "redis" in services
    assert_probe_matches_service(name, environment, settings)


def assert_probe_matches_service(name: str, environment: dict[str, str], settings: Settings) -> None:
    """The probe asks the port this service really listens on."""
    if name == "init":
        return
    url = {**image_environment(), **environment}["HEALTHCHECK_URL"]
    if name == "serve":
        assert url == f"http://127.0.0.1:{settings.serve.port}/healthz"
        assert settings.serve.host == "0.0.0.0"
    else:
        port = getattr(settings, name).metrics_port
        assert port is not None, f"{name} exposes no /metrics port for its probe"
        assert url == f"http://127.0.0.1:{port}/metrics"


def test_compose_and_kubernetes_configurations_differ_only_in_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CANDLEFLOW_CONFIG": CONFIG_IN_CONTAINER}
    compose = container_settings(env, COMPOSE_CONFIG, monkeypatch).model_dump(mode="json")
    kubernetes = container_settings(env, K8S_CONFIG, monkeypatch).model_dump(mode="json")
    for settings in (compose, kubernetes):
        settings["kafka"].pop("bootstrap_servers")
        settings["store"]["online"].pop("connection_string")
    assert compose == kubernetes


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(tools: Tools) -> list[dict[str, Any]]:
    proc = run([tools.path("kustomize"), "build", K8S])
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def is_strimzi(manifest: dict[str, Any]) -> bool:
    return manifest["apiVersion"].startswith("kafka.strimzi.io/")


def kubernetes_validate(tools: Tools, manifests: list[dict[str, Any]],
                        tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    return run([tools.path("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, path])


def test_kubernetes_manifests_match_the_api_schemas(tools: Tools, manifests: list[dict[str, Any]],
                                                    tmp_path: Path) -> None:
    builtin = [m for m in manifests if not is_strimzi(m)]
    assert {m["kind"] for m in builtin} >= {"Namespace", "ConfigMap", "Deployment", "Service",
                                             "PersistentVolumeClaim", "Job"}
    proc = kubernetes_validate(tools, builtin, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The validator does reject what the API server would: a wrong type, an unknown field.
    broken = json.loads(json.dumps(by_kind(builtin, "Deployment")["candles"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 20
    proc = kubernetes_validate(tools, [broken], tmp_path)
    assert proc.returncode != 0 and "periodSecond" in proc.stdout + proc.stderr


def strimzi_errors(tools: Tools, resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    script = Path(__file__).with_name("validate_strimzi.mjs")
    proc = run(["node", script, tools.strimzi_models()], input=json.dumps(resources))
    assert proc.returncode == 0, proc.stderr
    return {f"{r['kind']}/{r['name']}": r["errors"] for r in json.loads(proc.stdout)}


def test_strimzi_resources_match_the_crd_schemas(tools: Tools, manifests: list[dict[str, Any]]) -> None:
    strimzi = [m for m in manifests if is_strimzi(m)]
    assert {m["kind"] for m in strimzi} == {"Kafka", "KafkaNodePool", "KafkaTopic"}
    errors = strimzi_errors(tools, strimzi)
    assert len(errors) == len(strimzi)
    assert all(not e for e in errors.values()), errors

    broken = json.loads(json.dumps(by_kind(strimzi, "KafkaTopic")["trades"]))
    broken["spec"]["partitions"] = "six"
    assert strimzi_errors(tools, [broken])["KafkaTopic/trades"], "the schema must reject a non-integer"


def test_kafka_runs_in_kraft_mode_and_its_address_is_configured(manifests: list[dict[str, Any]],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The Strimzi schemas do not reject unknown fields (the API server prunes them), so
    # what candleflow relies on is checked here by name.
    kafka = by_kind(manifests, "Kafka")
    assert len(kafka) == 1
    cluster, spec = next(iter(kafka.items()))
    pools = by_kind(manifests, "KafkaNodePool").values()
    assert pools and all(p["metadata"]["labels"]["strimzi.io/cluster"] == cluster for p in pools)
    assert {"controller", "broker"} <= {role for p in pools for role in p["spec"]["roles"]}  # KRaft
    assert "zookeeper" not in spec["spec"]
    plain = [listener for listener in spec["spec"]["kafka"]["listeners"] if not listener["tls"]]
    assert plain, "candleflow connects without TLS inside the cluster"

    settings = container_settings({"CANDLEFLOW_CONFIG": CONFIG_IN_CONTAINER}, K8S_CONFIG, monkeypatch)
    assert settings.kafka.bootstrap_servers == f"{cluster}-kafka-bootstrap:{plain[0]['port']}"
    # One broker: the transaction log (exactly-once) must not ask for more replicas than exist.
    replicas = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    assert spec["spec"]["kafka"]["config"]["transaction.state.log.replication.factor"] <= replicas
    assert settings.kafka.replication_factor <= replicas


def test_kafka_topics_match_the_configuration(manifests: list[dict[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings({"CANDLEFLOW_CONFIG": CONFIG_IN_CONTAINER}, K8S_CONFIG, monkeypatch)
    configured = {t.name: t for t in [*settings.topics.all(), settings.topics.features_partial]}
    topics = {t["spec"].get("topicName", name): t["spec"] for name, t in by_kind(manifests, "KafkaTopic").items()}
    assert set(topics) == set(configured)
    for name, spec in topics.items():
        assert spec["partitions"] == configured[name].partitions, name
        assert spec["replicas"] == settings.kafka.replication_factor, name
        retention = (spec.get("config") or {}).get("retention.ms")
        assert retention == configured[name].retention_ms, name


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def candleflow_workloads(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    workloads = {**by_kind(manifests, "Deployment"), **by_kind(manifests, "Job")}
    return {name: w for name, w in workloads.items() if pod_spec(w)["containers"][0]["image"].startswith("candleflow")}


def test_one_deployment_per_service_with_replicas_bounded_by_partitions(manifests: list[dict[str, Any]],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    deployments = by_kind(manifests, "Deployment")
    assert set(PIPELINE) <= set(deployments)
    settings = container_settings({"CANDLEFLOW_CONFIG": CONFIG_IN_CONTAINER}, K8S_CONFIG, monkeypatch)
    # Each replica of a consumer group needs a partition of its input topic to do anything.
    assert 1 < deployments["candles"]["spec"]["replicas"] <= settings.topics.trades.partitions
    assert 1 < deployments["features"]["spec"]["replicas"] <= settings.topics.candles.partitions
    # A second ingest would publish every trade twice.
    assert deployments["ingest"]["spec"]["replicas"] == 1
    assert deployments["ingest"]["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("name", [*PIPELINE, "candleflow-init"])
def test_kubernetes_workload_commands_and_environment(name: str, manifests: list[dict[str, Any]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    workload = candleflow_workloads(manifests)[name]
    spec = pod_spec(workload)
    container = spec["containers"][0]
    assert_cli_accepts(container["args"])

    environment = {e["name"]: e["value"] for e in container.get("env", [])}
    settings = container_settings(environment, K8S_CONFIG, monkeypatch)
    assert settings.store.online.type == "redis"
    redis_host, redis_port = settings.store.online.connection_string.split(":")
    redis = by_kind(manifests, "Service")[redis_host]
    assert int(redis_port) in [p["port"] for p in redis["spec"]["ports"]]

    # The config map and the volumes the pod mounts exist.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_map = volumes[mounts[str(Path(CONFIG_IN_CONTAINER).parent)]]["configMap"]["name"]
    assert config_map in by_kind(manifests, "ConfigMap")
    assert yaml.safe_load(by_kind(manifests, "ConfigMap")[config_map]["data"]["candleflow.yaml"]) == \
        yaml.safe_load(K8S_CONFIG.read_text())
    data = volumes[mounts["/data"]]
    if name in ("sink", "serve", "candleflow-init"):  # the offline store and Feast registry are shared
        assert data["persistentVolumeClaim"]["claimName"] in by_kind(manifests, "PersistentVolumeClaim")

    # Non-root, as the image; requests and limits set.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    if workload["kind"] == "Deployment":
        assert_kubernetes_probes(name, container, environment, settings)


def assert_kubernetes_probes(name: str, container: dict[str, Any], environment: dict[str, str],
                             settings: Settings) -> None:
    assert container.get("livenessProbe") and container.get("readinessProbe"), f"{name} needs probes"
    if name == "serve":
        port = next(p for p in container["ports"] if p["containerPort"] == settings.serve.port)
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/healthz" and get["port"] in (port["name"], port["containerPort"])
        assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"
    else:
        # /metrics listens on loopback inside the pod: probed from inside the container.
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["python", PROBE_IN_CONTAINER]
    assert_probe_matches_service(name, environment, settings)


def test_serve_service_reaches_the_serve_pods(manifests: list[dict[str, Any]]) -> None:
    service = by_kind(manifests, "Service")["serve"]
    pod = by_kind(manifests, "Deployment")["serve"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    target = service["spec"]["ports"][0]["targetPort"]
    assert ports.get(target, target) == 8000
    redis = by_kind(manifests, "Service")["redis"]
    redis_pod = by_kind(manifests, "Deployment")["redis"]["spec"]["template"]
    assert redis["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()


def test_everything_lives_in_the_candleflow_namespace(manifests: list[dict[str, Any]]) -> None:
    namespaces = by_kind(manifests, "Namespace")
    assert list(namespaces) == ["candleflow"]
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "candleflow", manifest["metadata"]["name"]


# --- the containers' commands and probes, run for real ---------------------------------------


def _localised(environment: dict[str, str], argv: list[str], settings: Settings, config_file: Path,
               ports: dict[int, int]) -> tuple[dict[str, str], list[str]]:
    """A container's environment and arguments, made to run side by side on this machine.

    In Compose every container has its own network and /data; here the processes share
    both, so paths point into the test's data directory, the fixed ports (9100, 8000)
    become free loopback ports, and 0.0.0.0 becomes 127.0.0.1. Nothing else changes.
    """
    def port(value: str) -> str:
        return re.sub(r":(\d+)/", lambda m: f":{ports[int(m[1])]}/", value)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
    env.update(image_environment())
    env.update(environment)
    env.update({
        "CANDLEFLOW_CONFIG": str(config_file),
        "CANDLEFLOW_DATA_DIR": str(settings.data_dir),
        "CANDLEFLOW_STORE__REPO_DIR": str(settings.store.repo_dir),
        "CANDLEFLOW_STORE__OFFLINE_DIR": str(settings.store.offline_dir),
        "CANDLEFLOW_SERVE__HOST": "127.0.0.1",
    })
    for name, value in list(env.items()):
        if name.endswith("__METRICS_PORT"):
            env[name] = str(ports[int(value)])
    env["HEALTHCHECK_URL"] = port(env["HEALTHCHECK_URL"])
    argv = ["127.0.0.1" if a == "0.0.0.0" else str(ports.get(int(a), a)) if a.isdigit() else a for a in argv]
    return env, argv


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, DEPLOY / "healthcheck.py"], env=env)


# serve is left out: its start (Feast, the dashboard) takes longest, and its /healthz is
# tested in tests/serve; the probe script itself is tested above.
PROBED_SERVICES = ("ingest", "candles", "features", "sink")


@pytest.mark.slow
def test_compose_services_start_and_answer_their_probes(settings_factory: Any, tmp_path: Path) -> None:
    """init's commands, then the pipeline services with their containers' environment and
    arguments, against the test broker: each one answers the probe its container runs."""
    from candleflow.broker.local import free_port

    settings = settings_factory(partitions=2)
    config_file = tmp_path / "candleflow.yaml"  # written by settings_factory
    services = compose_file({"INGEST_ARGS": "--simulate"})["services"]
    candleflow = Path(sys.executable).with_name("candleflow")
    logs = tmp_path / "logs"
    logs.mkdir()

    for argv in service_argv(services["init"]):
        env, argv = _localised(services["init"].get("environment", {}), argv, settings, config_file,
                               {9100: free_port(), 8000: free_port()})
        proc = run([candleflow, *argv], env=env)
        assert proc.returncode == 0, f"init: candleflow {' '.join(argv)}: {proc.stderr[-3000:]}"

    running: dict[str, tuple[subprocess.Popen[bytes], dict[str, str]]] = {}
    try:
        for name in PROBED_SERVICES:
            service = services[name]
            service_ports = {9100: free_port(), 8000: free_port()}
            env, argv = _localised({k: str(v) for k, v in service.get("environment", {}).items()},
                                   service_argv(service)[0], settings, config_file, service_ports)
            with open(logs / f"{name}.log", "wb") as log:
                process = subprocess.Popen([candleflow, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
            running[name] = (process, env)

        healthy: set[str] = set()
        deadline = time.monotonic() + 180  # generous: four services importing Quix, Feast, TA-Lib on 2 cores
        while len(healthy) < len(running) and time.monotonic() < deadline:
            for name, (process, env) in running.items():
                if name in healthy:
                    continue
                assert process.poll() is None, \
                    f"{name} exited with {process.returncode}:\n{(logs / f'{name}.log').read_text()[-3000:]}"
                if _probe(env).returncode == 0:
                    healthy.add(name)
            time.sleep(1)
        unhealthy = sorted(set(running) - healthy)
        assert not unhealthy, "no answer to the probe from " + ", ".join(
            f"{n} ({running[n][1]['HEALTHCHECK_URL']}):\n{(logs / f'{n}.log').read_text()[-2000:]}" for n in unhealthy)
    finally:
        for process, _ in running.values():
            process.terminate()
        for process, _ in running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
