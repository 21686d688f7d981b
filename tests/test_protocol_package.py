"""The protocol package as a whole: no I/O or trio inside, documented names, and a
specification (docs/protocol.md) that covers every message and wire key."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import protocol
from protocol import MESSAGE_TYPES

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DIR = ROOT / "protocol"
DOC = ROOT / "docs" / "protocol.md"

#: Modules that would bring I/O, clocks or an event loop into the sans-I/O layer.
FORBIDDEN_MODULES = {"trio", "socket", "time", "asyncio", "select", "selectors", "ssl", "threading"}


def test_importing_protocol_does_not_import_trio() -> None:
    code = (
        "import sys, protocol\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_sources_import_no_io_or_clock(path: Path) -> None:
    assert not (_imports(path) & FORBIDDEN_MODULES)
    # And no dynamic import sneaking one in.
    assert "__import__" not in path.read_text(encoding="utf-8")
    assert "importlib" not in _imports(path)


def test_the_import_scan_would_notice(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import time as t\nfrom trio import lowlevel\nfrom . import _x\n")
    assert _imports(sample) == {"time", "trio"}


def _public_names() -> list[str]:
    return sorted(name for name in dir(protocol) if not name.startswith("_"))


def test_every_public_class_and_function_has_a_docstring() -> None:
    missing = []
    for name in _public_names():
        obj = getattr(protocol, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
            continue
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member)
                    or isinstance(member, property | staticmethod | classmethod)
                ):
                    continue
                doc = (
                    member.__doc__
                    if not isinstance(member, staticmethod | classmethod)
                    else member.__func__.__doc__
                )
                if not (doc or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public names without a docstring: {missing}"


def test_public_names_come_from_private_modules() -> None:
    """Implementation lives in _private modules; the package only re-exports."""
    for name in _public_names():
        obj = getattr(protocol, name)
        module = getattr(obj, "__module__", None)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert module is not None and module.startswith("protocol._"), (name, module)


def test_every_message_class_is_exported() -> None:
    for cls in MESSAGE_TYPES.values():
        assert getattr(protocol, cls.__name__) is cls


# ---------------------------------------------------------------------------------------
# docs/protocol.md


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_protocol_md", ROOT / "docs" / "gen_protocol_md.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_doc_is_up_to_date() -> None:
    generator = _load_generator()
    assert generator.check(), "docs/protocol.md is stale: run python docs/gen_protocol_md.py"


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^### {heading}\n(.*?)(?=^#{{2,3}} |\Z)", text, flags=re.M | re.S)
    assert match, f"no section '### {heading}'"
    return match.group(1)


def test_protocol_doc_describes_every_kind_and_wire_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    for tag, cls in MESSAGE_TYPES.items():
        assert f"| {tag} | [{cls.__name__}]" in text  # in the tag table
        section = _section(text, cls.__name__)
        assert f"Tag **{tag}**" in section
        for field in attrs.fields(cls):
            row = re.search(
                rf"^\| {field.name} \| `{re.escape(field.metadata['key'])}` \|(.+)\|$",
                section,
                flags=re.M,
            )
            assert row, f"{cls.__name__}.{field.name} missing from the doc"
            assert row.group(1).strip().split("|")[-1].strip(), "a field without meaning"


def test_protocol_doc_lists_every_error_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    for key, code in vars(protocol.ErrorCode).items():
        if key.isupper() and isinstance(code, str):
            closes = "yes" if code in protocol.ErrorCode.CLOSING else "no"
            assert f"| `{code}` | {closes} |" in text


def test_protocol_doc_example_frame_is_real() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"frame \((\d+) bytes\): header ([0-9a-f]+) \| body ([0-9a-f]+)", text)
    assert match
    frame = bytes.fromhex(match.group(2) + match.group(3))
    assert len(frame) == int(match.group(1))
    assert protocol.decode(frame) == protocol.Submit(
        mid=7, job_id="job-1", subject="math.square", payload={"n": 7}
    )


def test_protocol_doc_subject_examples_are_true() -> None:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("| Pattern | Matches | Does not match |")
    section = text[start : text.index("\n\n", start)]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    assert len(rows) >= 5
    for cells in rows:
        pattern, yes, no = (cell.strip() for cell in cells)
        pattern = pattern.strip("`")
        for subject in re.findall(r"`([^`]+)`", yes):
            assert protocol.subject_matches(pattern, subject), (pattern, subject)
        for subject in re.findall(r"`([^`]+)`", no):
            assert not protocol.subject_matches(pattern, subject), (pattern, subject)
