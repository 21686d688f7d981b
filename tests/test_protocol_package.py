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
import cbor2
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


def test_the_package_says_it_is_typed() -> None:
    # PEP 561: type checkers read a package's annotations only if it ships this marker.
    assert (PROTOCOL_DIR / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"*" = ["py.typed"]' in pyproject  # (and the wheel takes it along)


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
    match = re.search(
        rf"^### {heading}\n(.*?)(?=^#{{2,3}} |\Z)", text, flags=re.MULTILINE | re.DOTALL
    )
    assert match, f"no section '### {heading}'"
    return match.group(1)


def test_protocol_doc_describes_every_kind_and_wire_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    for tag, cls in MESSAGE_TYPES.items():
        assert f"| {tag} | [{cls.__name__}]" in text  # in the tag table
        section = _section(text, cls.__name__)
        assert f"Tag **{tag}**" in section
        for field in attrs.fields(cls):
            # A payload's row names the key of its encoded form (its own holds one plain).
            key = field.metadata["key"]
            if field.metadata.get("payload"):
                key = protocol._payload.ENCODED_KEY
            row = re.search(
                rf"^\| {field.name} \| `{re.escape(key)}` \|(.+)\|$",
                section,
                flags=re.MULTILINE,
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
    # The payload travels as the bytes of its encoding, the ones the text describes.
    kept = protocol.decode(frame, decode_payloads=False)
    assert kept.payload == protocol.Encoded(bytes.fromhex("a1616e07"))
    assert "`h'a1616e07'`" in text and "\"e\": h'a1616e07'" in text
    assert bytes.fromhex("6165" + "44" + "a1616e07") in frame  # key "e", bytes(4), {"n": 7}
    # Sent plain instead (key "p"), the same message.
    body = cbor2.dumps({"t": 3, "i": 7, "j": "job-1", "s": "math.square", "p": {"n": 7}})
    assert '`"p": {"n": 7}`' in text
    plain = protocol.decode(len(body).to_bytes(4, "big") + b"\x00" + body)
    assert plain == protocol.decode(frame)


def test_protocol_doc_describes_payloads() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = " ".join(_section(text, "Payloads").split())
    key = protocol._payload.ENCODED_KEY
    assert f"under key **`{key}`**" in section and "under key **`p`**" in section
    assert "bytes (the CBOR encoding of any value) |" in text  # the types table
    for limit in ("MAX_DEPTH", "64 nested containers", "1024 bytes", "63 deep"):
        assert limit in section
    # The tags refused in a payload are those its decoder refuses.
    for tag in protocol._cbor.SEMANTIC_DECODERS:
        if tag not in (2, 3):
            assert f"{tag}" in section


def test_protocol_doc_bundle_example_is_real() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = _section(text, "Bundle example")
    match = re.search(r"whole frame \((\d+) bytes\):\n([0-9a-f]+) ([0-9a-f]+)\n", section)
    assert match
    frame = bytes.fromhex(match.group(2) + match.group(3))
    assert len(frame) == int(match.group(1))
    progress = protocol.Progress(mid=8, job_id="job-1", note="squaring")
    result = protocol.Result(mid=9, cid=7, job_id="job-1", payload=49)
    shown = (
        "Progress(mid=8, job_id='job-1', note='squaring')\n"
        "Result(mid=9, cid=7, job_id='job-1', payload=49)\n"
    )
    assert shown in section
    items = [protocol.encode_item(progress), protocol.encode_item(result)]
    assert protocol.bundle_frames(items, 1 << 20) == [frame]
    assert protocol.FrameDecoder().feed(frame) == [progress, result]
    # The payload 49 is the byte string h'1831', in the diagnostic and in the bytes shown.
    assert protocol.to_array(result)[-1] == bytes.fromhex("1831")
    assert ", true, h'1831']]" in section
    header = re.search(r"header  ([0-9a-f]{8}) 00 +length (\d+), no flags", section)
    assert header and int(header.group(1), 16) == int(header.group(2)) == len(frame) - 5
    maps = len(protocol.encode(progress)) + len(protocol.encode(result))
    assert f"take two frames and {maps} bytes" in section


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
