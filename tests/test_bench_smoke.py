"""Smoke tests of the job benchmark script (``bench/bench_jobs.py``), with tiny numbers.

The script is run as a subprocess, as a user runs it; its ``--json`` line is checked. The
NATS half needs the nats-server on 127.0.0.1:4222 and is skipped when it does not answer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_jobs.py"
NATS_ADDRESS = ("127.0.0.1", 4222)
#: Seconds a tiny benchmark run may take (process start-up dominates).
RUN_TIMEOUT = 60


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_jobs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nats_answers() -> bool:
    try:
        with socket.create_connection(NATS_ADDRESS, timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(4) == b"INFO"
    except OSError:
        return False


def _run(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def _results(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_row(row: dict[str, Any], system: str, jobs: int) -> None:
    assert row["system"] == system
    assert row["jobs"] == jobs
    assert row["seconds"] > 0
    assert row["jobs_per_s"] == pytest.approx(jobs / row["seconds"])
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["cpu_s"], "CPU time of the processes was not measured"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_percentile_is_nearest_rank() -> None:
    bench = _load_bench()
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert bench.percentile(values, 0.50) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile(values, 1.0) == 100.0
    assert bench.percentile([7.0], 0.99) == 7.0
    assert math.isnan(bench.percentile([], 0.5))


def test_summarize_and_ratios() -> None:
    bench = _load_bench()
    ours = bench.summarize("ours", 2.0, [0.001] * 99 + [0.010], 1000)
    assert ours["jobs_per_s"] == 500.0
    assert ours["p50_ms"] == pytest.approx(1.0)
    assert ours["p99_ms"] == pytest.approx(1.0)
    nats = bench.summarize("nats", 1.0, [0.002] * 100, 1000)
    ratio = bench.ratios(ours, nats)
    assert ratio["jobs_per_s"] == pytest.approx(0.5)
    assert ratio["p50_ms"] == pytest.approx(0.5)


def test_bad_arguments_exit_2() -> None:
    proc = _run("--jobs", "0")
    assert proc.returncode == 2
    assert "--jobs" in proc.stderr
    proc = _run("--nats-url", "nats://192.0.2.1:4222")
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


@pytest.mark.e2e
def test_ours_runs_and_cleans_up() -> None:
    proc = _run("--only", "ours", "--jobs", "200", "--warmup", "20", "--repeat", "2", "--json")
    results = _results(proc)
    runs = results["runs"]["ours"]
    assert len(runs) == 2
    for row in runs:
        _check_row(row, "ours", 200)
    median = results["median"]["ours"]
    assert median in runs
    assert set(median["cpu_s"]) == {"leader", "worker-1", "worker-2", "client"}
    assert "nats" not in results["median"]
    # The table is printed too, and every process the script started is gone.
    assert proc.stdout.splitlines()[0].split() == [
        "system",
        "jobs",
        "seconds",
        "jobs/s",
        "p50",
        "ms",
        "p99",
        "ms",
    ]
    assert results["children"], "the script did not report its child processes"
    assert [pid for pid in results["children"] if _alive(pid)] == []


@pytest.mark.e2e
@pytest.mark.nats
@pytest.mark.skipif(not _nats_answers(), reason="no nats-server answers on 127.0.0.1:4222")
def test_both_systems_and_ratio() -> None:
    proc = _run("--jobs", "200", "--warmup", "20", "--map", "--json")
    results = _results(proc)
    _check_row(results["median"]["ours"], "ours", 200)
    _check_row(results["median"]["nats"], "nats", 200)
    assert results["median"]["ours (map)"]["jobs"] == 200
    assert "nats-server" in results["median"]["nats"]["cpu_s"]
    ratio = results["ratio"]
    assert ratio["jobs_per_s"] == pytest.approx(
        results["median"]["ours"]["jobs_per_s"] / results["median"]["nats"]["jobs_per_s"]
    )
    assert "ours / nats: throughput" in proc.stdout
    assert [pid for pid in results["children"] if _alive(pid)] == []


@pytest.mark.e2e
def test_unreachable_nats_is_reported_and_ours_still_runs() -> None:
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = _run(
        "--jobs", "100", "--warmup", "10", "--nats-url", f"nats://127.0.0.1:{port}", "--json"
    )
    results = _results(proc)
    assert "NATS not reachable" in proc.stderr
    assert "nats_skipped" in results
    _check_row(results["median"]["ours"], "ours", 100)
    assert "ratio" not in results


def test_the_leader_replay_runs_and_routes_every_job() -> None:
    # bench_leader.py raises if a round's Submits do not all become Assigns and its
    # Results all become Results to the client; a tiny run shows the script works.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_leader.py"),
            "--rounds",
            "20",
            "--repeat",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "leader work per job, without I/O:" in proc.stdout


@pytest.mark.e2e
def test_durable_bench_runs_ours_in_memory_and_journalled(tmp_path: Path) -> None:
    # bench_durable.py with tiny counts, our three variants (no JetStream): each row is
    # measured, the journalled ones really committed to a journal of their sync tier, the
    # ratios are those of the medians, and every process and data directory is gone.
    data_root = tmp_path / "journals"
    data_root.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_durable.py"),
            "--only",
            "ours",
            "--jobs",
            "200",
            "--warmup",
            "20",
            "--data-root",
            str(data_root),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    results = _results(proc)
    median = results["median"]
    assert list(median) == ["memory", "full", "normal"]
    for variant, row in median.items():
        _check_row(row, variant, 200)
        assert set(row["cpu_s"]) == {"leader", "worker", "client"}
    assert median["memory"]["journal"] is None
    for variant in ("full", "normal"):
        journal = median[variant]["journal"]
        assert journal["sync"] == variant
        assert journal["commits"] > 0 and journal["rows_written"] >= 220
        assert journal["path"].startswith(str(data_root))
    ratio = results["ratio"]
    assert set(ratio) == {"full/memory", "normal/memory"}
    assert ratio["full/memory"]["jobs_per_s"] == pytest.approx(
        median["full"]["jobs_per_s"] / median["memory"]["jobs_per_s"]
    )
    assert "full/memory:" in proc.stdout and "goal >= 0.70x" in proc.stdout
    assert list(data_root.iterdir()) == []
    assert [pid for pid in results["children"] if _alive(pid)] == []
