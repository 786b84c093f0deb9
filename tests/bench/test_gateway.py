"""bench/gateway.py's CPU meter: what a process group spent, children started mid-run included."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.gateway import CpuMeter


def test_cpu_meter_counts_the_root_and_children_started_during_the_run():
    # Given a parent process that, once measuring has begun, starts a child that burns CPU
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; time.sleep(0.5); "
         "subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
         "while time.process_time() - t < 0.4: pass']); time.sleep(30)"],
    )
    try:
        meter = CpuMeter({"group": parent.pid, "absent": None})
        meter.start()
        # when the run ends after the child is done, counted as 4 calls
        time.sleep(2.5)
        got = meter.stop(4)
    finally:
        parent.kill()
        parent.wait()
    # then the child's ~0.4 s shows, per call (~100 ms), and a group without a process is left out
    assert set(got) == {"group"}
    assert 80 <= got["group"]["user_ms"] + got["group"]["system_ms"] <= 200
