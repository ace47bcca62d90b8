"""Real services for the distributed tests: a PostgreSQL server and a two-node Ray cluster.

Both run on this machine, are reached through loopback addresses, live in a private temporary
directory and are stopped by the process ids (process groups) started here, never by name, so
that other Ray or PostgreSQL instances on the machine are left alone.

A missing service skips its tests, unless ``LPSD_REQUIRE_SERVICES=1`` (CI), where it fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSTGRES_USER = "lpsd"
STOP_GRACE_SECONDS = 10.0


def missing(reason: str) -> None:
    """Skip the test, or fail it where the services are required (CI)."""
    if os.environ.get("LPSD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)
    # Until the group's last member is gone (bounded: unreaped zombies count as members).
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


# --- PostgreSQL ----------------------------------------------------------------------------------

def postgres_bin_dir() -> Path | None:
    """Directory of ``initdb`` / ``pg_ctl`` from the Debian packages, installing them as root."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False,
                       capture_output=True, timeout=600)
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(command: Sequence[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its binaries as the packaged ``postgres`` user.
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1 only (trust authentication)."""

    root: Path
    port: int
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(_as_server_user([str(self.bin_dir / "initdb"), "-D", str(self.data_dir),
                                        "-U", POSTGRES_USER, "-A", "trust", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        subprocess.run(_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                                        "-o", options, "-l", str(self.root / "server.log"),
                                        "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its SQLAlchemy URL."""
        subprocess.run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", POSTGRES_USER, name], check=True, capture_output=True, timeout=60)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                                        "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True, timeout=60)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server for the duration of the block (skips when there is none)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        # The driver SQLAlchemy picks for a plain ``postgresql://`` URL (psycopg from 2.1 on).
        import sqlalchemy

        sqlalchemy.create_engine("postgresql://127.0.0.1/probe")
    except ImportError as error:
        missing(f"no PostgreSQL driver ({error}); pip install -e '.[postgres]'")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="lpsd-pg-"))
    server = PostgresServer(root, free_port(), bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- Ray -----------------------------------------------------------------------------------------

@dataclass
class RayCluster:
    """A head node and worker nodes started with ``ray start --block``, one process group each."""

    root: Path
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment of the nodes and of every process that connects to them.

        Ray 2.60 turns token authentication on for ``ray start`` when ``~/.ray/auth_token``
        exists but not for clients, so the mode and a private token are set explicitly.
        """
        return {**os.environ, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token")}

    def _ray_start(self, *arguments: str, log: str) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        command = [ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                   "--node-ip-address", "127.0.0.1", "--object-store-memory", str(80 * 2**20),
                   *arguments]
        with (self.root / log).open("wb") as handle:
            # Own session: the whole node (raylet, workers) is one group we can signal.
            self.processes.append(subprocess.Popen(command, stdout=handle, stderr=handle,
                                                   env=self.client_env(),
                                                   start_new_session=True))

    def start(self, workers: int = 1, timeout: float = 90.0) -> None:
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self._ray_start("--head", "--port", str(self.port), "--temp-dir", str(self.root),
                        "--include-dashboard", "false", log="head.log")
        self.wait_for_nodes(1, timeout)
        for _ in range(workers):
            self.add_worker(wait=False)
        self.wait_for_nodes(1 + workers, timeout)

    def add_worker(self, wait: bool = True, timeout: float = 90.0) -> None:
        """Start one more worker node (its own process group: ``processes[-1]``)."""
        self._ray_start("--address", self.address, log=f"worker{len(self.processes)}.log")
        if wait:
            self.wait_for_nodes(len(self.processes), timeout)

    def node_ids(self) -> list[str]:
        """Ids of the alive nodes, as the cluster itself reports them (``ray.nodes()``)."""
        script = (f"import json, ray; ray.init(address={self.address!r}, "
                  "logging_level='ERROR'); "
                  "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=self.client_env(), timeout=60)
        if done.returncode != 0:
            return []
        return list(json.loads(done.stdout.strip().splitlines()[-1]))

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                break
            if len(self.node_ids()) >= count:
                return
            time.sleep(1.0)
        logs = "\n".join(p.read_text()[-2000:] for p in self.root.glob("*.log"))
        raise RuntimeError(f"Ray cluster did not reach {count} nodes:\n{logs}")

    def stop(self) -> None:
        # Workers first, so that the head is not left draining nodes it cannot reach.
        for process in reversed(self.processes):
            stop_group(process)


@contextlib.contextmanager
def ray_cluster(workers: int = 1) -> Iterator[RayCluster]:
    """A local multi-node Ray cluster for the duration of the block (skips without Ray)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        missing("Ray is not installed (pip install -e '.[ray]')")
    # Ray's unix sockets live under the temp dir, whose path must stay short (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="lpsd-ray-", dir="/tmp"))
    cluster = RayCluster(root, free_port())
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
