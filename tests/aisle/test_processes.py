"""Servers started by a benchmark or a test session stop with it, even when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aisle import processes
from core.settings import REPO_ROOT

# The parent: starts a server in a session of its own, as every ServerProcess does, then waits
# to be stopped; the server is stopped in `finally`, as bench/ and the fixtures do.
PARENT = """
import sys, time
from pathlib import Path
from aisle import processes
{install}
server = processes.ServerProcess(
    "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1]), ready=lambda: True,
).start(timeout=10)
try:
    # Inside the try: a signal that arrives once the test has read the pid finds it entered.
    print(server.pid, flush=True)
    time.sleep(120)
finally:
    server.stop(grace=5)
"""


def _server_after_sigterm(tmp_path: Path, install: str) -> psutil.Process:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(install=install), str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    server = psutil.Process(int(parent.stdout.readline()))
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=15)
    return server


def _running(server: psutil.Process) -> bool:
    try:
        return server.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_the_servers_a_process_started(tmp_path):
    # given a process that turned SIGTERM into an interrupt and started a server
    # when it is sent SIGTERM
    server = _server_after_sigterm(tmp_path, "processes.interrupt_on_sigterm()")
    # then its server is stopped too (its parent waited for it before exiting)
    assert not _running(server)


def test_without_it_the_server_outlives_its_parent(tmp_path):
    # given the same process with Python's default SIGTERM (what `aisle up` keeps on purpose)
    server = _server_after_sigterm(tmp_path, "")
    try:
        # then its server outlives it
        assert _running(server)
    finally:
        server.kill()


def test_a_server_interrupted_before_it_is_ready_is_stopped(tmp_path):
    def interrupted() -> bool:
        raise KeyboardInterrupt

    # Given a server whose readiness wait is interrupted (Ctrl-C or SIGTERM during `aisle up`)
    server = processes.ServerProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "sleeper.log", ready=interrupted,
    )
    # when it starts
    with pytest.raises(KeyboardInterrupt):
        server.start(timeout=10)
    # then it is stopped, not left for no one to stop
    assert server.popen.poll() is not None
