"""The project skeleton of issue 2, checked from the files themselves.

pyproject (distribution, packages, Python, dependencies, test extra, strict pytest, ruff),
LICENSE, the README's two newcomer commands, ``.ci/run`` running exactly the README's test
command in a fresh virtual environment, the ``tests/`` and ``examples/`` folders, and the
protocol micro-benchmark in ``bench/`` (run here with tiny durations, not timed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

import protocol

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
README = (ROOT / "README.md").read_text("utf-8")
CI_RUN = ROOT / ".ci" / "run"
#: What a newcomer sees without scrolling: the README's first screen.
FIRST_SCREEN_LINES = 30


def _requirement_names(requirements: list[str]) -> dict[str, str]:
    """``{"trio": ">=0.31", ...}`` from PEP 508 strings (no markers are used here)."""
    out = {}
    for req in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", req)
        assert match, req
        out[match.group(1).lower().replace("_", "-")] = match.group(2).strip()
    return out


# --- pyproject ---------------------------------------------------------------------------


def test_distribution_name_and_python() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "trio-actors"
    assert project["requires-python"] == ">=3.11"
    assert "MIT" in str(project["license"])


def test_the_three_top_level_packages_are_shipped() -> None:
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    for package in ("actors", "protocol", "runtime"):
        assert (ROOT / package / "__init__.py").is_file(), package
        assert any(re.fullmatch(pattern.replace("*", ".*"), package) for pattern in find["include"])
    # Nothing else at top level is importable as a shipped package (tests, examples, bench).
    assert not any(
        re.fullmatch(pattern.replace("*", ".*"), name)
        for pattern in find["include"]
        for name in ("tests", "examples", "bench", "docs")
    )


def test_runtime_dependencies() -> None:
    deps = _requirement_names(PYPROJECT["project"]["dependencies"])
    for name in ("trio", "trio-websocket", "attrs", "cbor2"):
        assert name in deps, name
    version = re.fullmatch(r">=\s*(\d+)\.(\d+).*", deps["trio"])
    assert version and (int(version.group(1)), int(version.group(2))) >= (0, 31), deps["trio"]


def test_test_extra() -> None:
    test = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["test"])
    for name in ("pytest", "pytest-trio", "hypothesis"):
        assert name in test, name


def test_pytest_is_strict() -> None:
    ini = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in shlex.split(ini["addopts"])
    assert ini["filterwarnings"][0] == "error"
    assert ini["trio_mode"] is True
    assert ini.get("xfail_strict") is True


def test_ruff_is_configured() -> None:
    ruff = PYPROJECT["tool"]["ruff"]
    assert ruff["target-version"] == "py311"
    assert {"E", "F", "I"} <= set(ruff["lint"]["select"])
    dev = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["dev"])
    assert "ruff" in dev


# --- LICENSE, README, CI -----------------------------------------------------------------


def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def _first_screen_commands() -> list[str]:
    screen = "\n".join(README.splitlines()[:FIRST_SCREEN_LINES])
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", screen, flags=re.DOTALL)
    assert blocks, "no command block on the README's first screen"
    return [
        line.strip()
        for line in blocks[0].splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _ci_commands() -> list[str]:
    lines = CI_RUN.read_text("utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command_in_a_fresh_venv() -> None:
    commands = _ci_commands()
    _, run_tests = _first_screen_commands()
    assert commands[-1] == run_tests
    assert any(re.match(r"python3? -m venv ", c) for c in commands)
    assert any(". " in c and "/bin/activate" in c for c in commands)
    install = [c for c in commands if "pip install" in c and "-e" in c]
    extras = re.search(r'"\.\[([a-z,]+)\]"', install[-1]) if install else None
    assert extras and "test" in extras.group(1).split(",")
    assert "set -euo pipefail" in commands


@pytest.mark.skipif(os.name != "posix", reason="the executable bit is a POSIX notion")
def test_ci_script_is_executable() -> None:
    assert os.access(CI_RUN, os.X_OK)
    assert CI_RUN.read_text("utf-8").startswith("#!/usr/bin/env bash")


def test_tests_and_examples_folders() -> None:
    assert (ROOT / "tests").is_dir()
    assert (ROOT / "examples").is_dir() and any((ROOT / "examples").glob("*.py"))


# --- bench/bench_protocol.py -------------------------------------------------------------


def _load_bench() -> Any:
    path = ROOT / "bench" / "bench_protocol.py"
    spec = importlib.util.spec_from_file_location("bench_protocol_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_protocol_measures_codec_and_a_10000_pattern_index() -> None:
    bench = _load_bench()
    assert bench.PATTERNS == 10_000
    messages = bench.typical_messages()
    assert {"Submit", "Assign", "Result"} <= set(messages)
    size, enc, dec, both = bench.bench_codec(messages["Submit"], 0.003)
    assert size == len(protocol.encode(messages["Submit"])) and enc > 0 and dec > 0 and both > 0
    index, subjects = bench.build_index(0)
    assert len(index) == 10_000 and len(subjects) > 10_000
    per_second, matches = bench.bench_index(0, 0.003)
    assert per_second > 0 and 0 < matches <= 1
