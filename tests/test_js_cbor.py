"""The golden CBOR vectors shared with the JavaScript codec (``clients/js/src/cbor.js``).

``tests/data/cbor_vectors.json`` is written by ``tests/data/gen_cbor_vectors.py`` from
cbor2. Here: the file is up to date with its generator; cbor2 decodes each vector to the
value it describes and, where the vector says so, encodes that value to the same bytes;
the Python side refuses each invalid vector; and Node's test runner passes
``clients/js/test/cbor.test.js``, which checks the same vectors in JavaScript.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import pytest

import protocol

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
JS_TEST = ROOT / "clients" / "js" / "test" / "cbor.test.js"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_cbor_vectors", DATA / "gen_cbor_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
VECTORS = json.loads((DATA / "cbor_vectors.json").read_text(encoding="utf-8"))


def test_file_is_up_to_date() -> None:
    expected = GEN.render(GEN.build_vectors())
    assert (DATA / "cbor_vectors.json").read_text(encoding="utf-8") == expected, (
        "tests/data/cbor_vectors.json is out of date: run python tests/data/gen_cbor_vectors.py"
    )


def test_enough_vectors() -> None:
    vectors = VECTORS["vectors"]
    assert len(vectors) >= 60
    assert sum("js" in v["encode"] for v in vectors) >= 60
    kinds = {v["name"].split()[1] for v in vectors if v["name"].startswith("message ")}
    assert kinds == {cls.__name__ for cls in protocol.MESSAGE_TYPES.values()}
    assert len({v["name"] for v in vectors}) == len(vectors)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_python_side(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert GEN.describe(cbor2.loads(data)) == vector["value"]
    if "py" in vector["encode"]:
        assert GEN.dumps(GEN.build(vector["value"])) == data
    else:
        assert "js" not in vector["encode"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_python_side_refuses(vector: dict[str, Any]) -> None:
    with pytest.raises(protocol.InvalidPayload):
        protocol.decode_payload(protocol.Encoded(bytes.fromhex(vector["hex"])))


def test_javascript_side() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript codec's tests need Node >= 20")
    proc = subprocess.run(
        [node, "--test", str(JS_TEST)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"node --test failed:\n{proc.stdout[-20000:]}\n{proc.stderr}"
