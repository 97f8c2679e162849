"""A real single-node Apache Kafka (KRaft) broker, started by candleflow itself.

The broker runtime comes from Maven Central: ``mvn dependency:copy-dependencies``
on the small pom shipped beside this module copies ``kafka_2.13`` and a log4j2
binding into a cache directory once. Then :class:`LocalBroker` formats KRaft
storage, runs ``java -cp '<jars>/*' kafka.Kafka server.properties`` as a
detached process with a pid file, and waits until a metadata request succeeds.

Against an existing cluster (``kafka.bootstrap_servers``) none of this runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from candleflow.config import LocalBrokerConfig

PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
PROPERTIES_FILE = "server.properties"
READY_MARKER = ".complete"  # written last into the jar directory
_KAFKA_MAIN = "kafka.Kafka"


class BrokerError(RuntimeError):
    """The local broker cannot be installed, started or stopped; the message says why and what to do."""


_NO_CLUSTER_HINT = (
    "or point candleflow at an existing Kafka or Redpanda cluster instead: set kafka.bootstrap_servers "
    "in candleflow.yaml or CANDLEFLOW_KAFKA__BOOTSTRAP_SERVERS=host:port (then nothing is started locally)"
)


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "candleflow"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path
    stale_pid_file: bool = False


class LocalBroker:
    def __init__(self, config: LocalBrokerConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.expanduser().resolve()
        self.jar_dir = (config.cache_dir or default_cache_root() / f"kafka-{config.version}").expanduser().resolve()

    # --- paths -----------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def properties_file(self) -> Path:
        return self.data_dir / PROPERTIES_FILE

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    # --- installation ----------------------------------------------------------

    def jars_cached(self) -> bool:
        return (self.jar_dir / READY_MARKER).exists()

    def ensure_jars(self, out: callable = print) -> bool:  # type: ignore[valid-type]
        """Download the broker jars if they are not cached. Returns True if it downloaded."""
        if self.jars_cached():
            return False
        self.jar_dir.parent.mkdir(parents=True, exist_ok=True)
        # Several processes (parallel test sessions, `make run` twice) may race here.
        with _file_lock(self.jar_dir.parent / f".{self.jar_dir.name}.lock"):
            if self.jars_cached():
                return False
            _require_tool("mvn", "Maven is needed once, to download the Kafka broker jars from Maven Central "
                                 "(Debian/Ubuntu: apt-get install maven)")
            out(f"downloading Apache Kafka {self.config.version} from Maven Central into {self.jar_dir} ...")
            staging = Path(tempfile.mkdtemp(prefix=f".{self.jar_dir.name}-", dir=self.jar_dir.parent))
            try:
                pom = staging / "pom.xml"
                pom.write_text(resources.files("candleflow.broker").joinpath("pom.xml").read_text())
                libs = staging / "libs"
                cmd = [
                    "mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                    f"-Dkafka.version={self.config.version}", f"-DoutputDirectory={libs}",
                    "-DincludeScope=runtime",
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
                    detail = (proc.stdout + proc.stderr).strip()[-2000:]
                    raise BrokerError(f"downloading the Kafka jars failed (mvn exit {proc.returncode}):\n{detail}")
                (libs / READY_MARKER).write_text(self.config.version + "\n")
                if self.jar_dir.exists():
                    shutil.rmtree(self.jar_dir)
                libs.rename(self.jar_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return True

    # --- lifecycle ---------------------------------------------------------------

    def status(self) -> BrokerStatus:
        pid = self._read_pid()
        running = pid is not None and _is_broker_process(pid)
        return BrokerStatus(
            running=running,
            pid=pid if running else None,
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
            log_file=self.log_file,
            stale_pid_file=pid is not None and not running,
        )

    def start(self, out: callable = print) -> bool:  # type: ignore[valid-type]
        """Start the broker and wait until it answers. Returns False if it was already running."""
        state = self.status()
        if state.running:
            return False
        if state.stale_pid_file:
            self.pid_file.unlink(missing_ok=True)
        java = _require_tool("java", "Java 17 or newer is needed to run the local Kafka broker "
                                     "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)")
        self.ensure_jars(out)
        for port in (self.config.port, self.config.controller_port):
            if port_open(self.config.host, port):
                raise BrokerError(
                    f"port {self.config.host}:{port} is already in use by another program; choose other ports "
                    "(kafka.local.port / kafka.local.controller_port) " + _NO_CLUSTER_HINT
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(self._server_properties())
        self._format_storage(java)
        log4j = resources.files("candleflow.broker").joinpath("log4j2.properties")
        cmd = [
            java, f"-Xms{self.config.heap}", f"-Xmx{self.config.heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{self.jar_dir}/*", _KAFKA_MAIN, str(self.properties_file),
        ]
        with open(self.log_file, "ab") as log:
            # A session of its own: the broker outlives this command and ignores its Ctrl-C.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.data_dir)
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_ready(proc)
        except BaseException:
            self._terminate(proc.pid, timeout=10)
            self.pid_file.unlink(missing_ok=True)
            raise
        return True

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`). False if it was not running."""
        state = self.status()
        if not state.running:
            self.pid_file.unlink(missing_ok=True)
            return False
        assert state.pid is not None
        self._terminate(state.pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail_log(self, lines: int = 50) -> list[str]:
        if not self.log_file.exists():
            return []
        with open(self.log_file, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            return fh.read().decode(errors="replace").splitlines()[-lines:]

    # --- internals ---------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _server_properties(self) -> str:
        c = self.config
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{c.host}:{c.controller_port}",
            "listeners": f"PLAINTEXT://{c.host}:{c.port},CONTROLLER://{c.host}:{c.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{c.host}:{c.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            # One node: every internal topic has a single replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: a laptop broker starts and rebalances faster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly (candleflow topics create, Quix admin).
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
        }
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def _format_storage(self, java: str) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        cluster_id = _kafka_cluster_id()
        cmd = [java, "-cp", f"{self.jar_dir}/*", "kafka.tools.StorageTool", "format",
               "-t", cluster_id, "-c", str(self.properties_file), "--ignore-formatted"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage in {self.log_dir} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(self.tail_log(30))
                raise BrokerError(f"the Kafka broker exited with status {proc.returncode} during start-up; "
                                  f"last lines of {self.log_file}:\n{tail}")
            if port_open(self.config.host, self.config.port) and metadata_ready(self.bootstrap):
                return
            time.sleep(0.25)
        raise BrokerError(f"the Kafka broker did not answer within {self.config.start_timeout_s:.0f}s; "
                          f"see {self.log_file}")

    @staticmethod
    def _terminate(pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)


def metadata_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request and names a controller."""
    from confluent_kafka.admin import AdminClient  # local import: keep CLI start-up light

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "logger": _SILENT})
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(meta.brokers)


class _SilentLogger:
    """librdkafka logs every refused connection while the broker boots; not news."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str):  # debug/info/warning/error/...
        return self.log


_SILENT = _SilentLogger()


def _kafka_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding. Like Kafka's own
    # Uuid.randomUuid, never one starting with "-": StorageTool would read it as an option.
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BrokerError(f"`{name}` was not found on PATH. {why}; {_NO_CLUSTER_HINT}.")
    return path


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _is_broker_process(pid: int) -> bool:
    """A live pid that really is a Kafka broker (pids get reused after a reboot)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return _KAFKA_MAIN.encode() in cmdline


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    """A free TCP port on loopback (for tests and ad-hoc brokers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
