"""Smoke test of the leader fuzzer (``bench/fuzz_leader.py``) on a tiny budget.

The script is run as a user runs it: it starts a cluster (a leader with a TCP and a
WebSocket listener, two worker processes), sends 2,000 hostile frames over both transports
while a well-behaved client submits jobs, and ends with a JSON line. The leader must not
crash and every job of the good client must succeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "fuzz_leader.py"
#: Seconds the whole run may take (start-up, 2,000 frames, shutdown).
RUN_TIMEOUT = 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_the_fuzzer_does_not_crash_the_leader_and_good_jobs_succeed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--frames", "2000", "--seconds", "8", "--seed", "3",
            "--baseline-jobs", "20", "--connections", "8", "--json",
            "--dump-dir", str(tmp_path), "--logs", str(tmp_path / "logs"),
        ],  # fmt: skip
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["crashes"] == 0, results["crash_details"]
    assert results["total_frames"] >= 2000 or results["seconds"] >= 8
    assert {"message", "bundle"} <= set(results["frames"])
    assert set(results["connections"]) == {"tcp", "ws"}
    assert results["answers"].get("Welcome", 0) > 0 and results["error_codes"]
    good = results["good"]
    assert good["ok"] > 0 and good["failed"] == 0, good
    assert results["driver_errors"] == {}
    assert "leader crashes: 0" in proc.stdout
    assert [pid for pid in results["leader_pids"] if _alive(pid)] == []
