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
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["crashes"] == 0, results["crash_details"]
    assert results["total_frames"] >= 2000 or results["seconds"] >= 8
    assert {"message", "bundle"} <= set(results["frames"])
    assert set(results["connections"]) == {"tcp", "ws"}
    assert results["answers"].get("Welcome", 0) > 0 and results["error_codes"]
    good = results["good"]
    assert good["ok"] > 0 and good["failed"] == 0, good
    assert all(set(call) == {"ms", "at_s", "outcome"} for call in good["slowest"]), good
    lag = results["driver_lag"]  # the script's own stalls, which the good calls include
    assert {"count", "longest_s", "total_s", "examples", "gc_longest_s"} <= set(lag), lag
    assert results["driver_errors"] == {}
    assert "leader crashes: 0" in proc.stdout
    assert [pid for pid in results["leader_pids"] if _alive(pid)] == []


def test_flood_bundles_encode_their_message_once() -> None:
    """A flood bundle (one message thousands of times) is built from the message's bytes:
    encoding the list of copies walked a large payload thousands of times, and once took
    the script 53 s, during which the good client's calls timed out (not the leader's doing)."""
    import random
    import time

    import cbor2

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import fuzz_leader as fuzz
    finally:
        sys.path.remove(str(ROOT / "bench"))
    slowest = 0.0
    for seed in range(100):
        for role in ("client", "worker", None):
            rng = random.Random(f"flood:{seed}")
            grammar = fuzz.Grammar(rng, fuzz.Values(rng), fuzz.Context())
            start = time.perf_counter()
            built = grammar.flood_frame(role)
            slowest = max(slowest, time.perf_counter() - start)
            body = built.data[5:]
            assert len(body) <= fuzz.LIMIT + (1 << 20)  # (just past the limit at most)
            if len(body) < 1 << 20:
                items = cbor2.loads(body)
                assert len(items) == len(built.kinds)
                assert [item[1] for item in items] == list(range(1, len(items) + 1))
                assert len({cbor2.dumps(item[2:]) for item in items}) == 1
    assert slowest < 1.0
