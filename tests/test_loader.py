"""Loading objects and worker classes by ``"module:Attribute"`` name."""

from __future__ import annotations

import pytest

from actors.worker._loader import (
    ConfigError,
    load_object,
    load_worker_class,
    split_spec,
    worker_spec,
)
from actors.worker._worker import Worker
from tests import workers


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A directory on sys.path with a few throw-away modules (removed after the test)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "loader_boom.py").write_text("raise RuntimeError('kaboom at import')\n")
    (tmp_path / "loader_syntax.py").write_text("def broken(:\n")
    (tmp_path / "loader_needs.py").write_text("import loader_missing_dependency\n")
    (tmp_path / "loader_nested.py").write_text(
        "from actors.worker import _worker\n"
        "class Outer:\n"
        "    class Inner(_worker.Worker):\n"
        "        subjects = ['a.b']\n"
    )
    for name in ("loader_boom", "loader_syntax", "loader_needs", "loader_nested"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    return tmp_path


def test_loads_a_worker_class():
    assert load_worker_class("tests.workers:Echo") is workers.Echo
    assert load_object("tests.workers:INSTANCE") is workers.INSTANCE


def test_loads_a_nested_attribute(modules):
    cls = load_worker_class("loader_nested:Outer.Inner")
    assert cls.__qualname__ == "Outer.Inner"
    assert issubclass(cls, Worker)


@pytest.mark.parametrize(
    "spec", ["tests.workers", "tests.workers:", ":Echo", "a b:C", "a:B:C", "a..b:C", ""]
)
def test_malformed_names_are_refused(spec):
    with pytest.raises(ConfigError, match=r"expected 'module:Attribute'.*got"):
        load_object(spec)


def test_a_non_string_name_is_refused():
    with pytest.raises(ConfigError, match="expected 'module:Attribute', got int 3"):
        split_spec(3)


def test_missing_module():
    with pytest.raises(ConfigError) as info:
        load_object("no_such_module_xyz:Thing")
    assert info.value.message.startswith(
        "cannot load 'no_such_module_xyz:Thing': no module named 'no_such_module_xyz'"
    )


def test_missing_submodule_names_the_missing_part():
    with pytest.raises(ConfigError, match=r"no module named 'tests\.nope'"):
        load_object("tests.nope:Thing")


def test_module_whose_own_import_fails_is_reported_as_such(modules):
    with pytest.raises(ConfigError) as info:
        load_object("loader_needs:Thing")
    assert "importing module 'loader_needs' failed" in info.value.message
    assert "loader_missing_dependency" in info.value.message


def test_module_that_raises_at_import(modules):
    with pytest.raises(
        ConfigError, match=r"importing module 'loader_boom' failed: RuntimeError: kaboom at import"
    ):
        load_object("loader_boom:Thing")


def test_module_with_a_syntax_error(modules):
    with pytest.raises(ConfigError, match=r"importing module 'loader_syntax' failed: SyntaxError"):
        load_object("loader_syntax:Thing")


def test_missing_attribute_suggests_close_names():
    with pytest.raises(ConfigError) as info:
        load_object("tests.workers:Ecko")
    assert info.value.message == (
        "cannot load 'tests.workers:Ecko': 'tests.workers' has no attribute 'Ecko' (did you mean 'Echo'?)"
    )


def test_missing_nested_attribute_names_the_parent(modules):
    with pytest.raises(
        ConfigError,
        match=r"'loader_nested:Outer' has no attribute 'Innr' \(did you mean 'Inner'\?\)",
    ):
        load_object("loader_nested:Outer.Innr")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "tests.workers:NotAWorker",
            "'tests.workers:NotAWorker' is the class 'NotAWorker', not a Worker subclass",
        ),
        (
            "tests.workers:not_a_class",
            "'tests.workers:not_a_class' is the function 'not_a_class', not a Worker subclass",
        ),
        (
            "tests.workers:INSTANCE",
            "'tests.workers:INSTANCE' is a Echo (<tests.workers.Echo object",
        ),
        (
            "actors.worker._worker:Worker",
            "'actors.worker._worker:Worker' is the Worker base class itself",
        ),
    ],
)
def test_things_that_are_not_worker_classes(spec, expected):
    with pytest.raises(ConfigError) as info:
        load_worker_class(spec)
    assert info.value.message.startswith(expected)


def test_worker_spec_round_trips():
    assert worker_spec(workers.Echo) == "tests.workers:Echo"
    assert load_worker_class(worker_spec(workers.Sleepy)) is workers.Sleepy


def test_worker_spec_refuses_classes_other_processes_cannot_import():
    class Local(Worker):
        subjects = ["x"]

    with pytest.raises(ConfigError, match="cannot be imported by another process"):
        worker_spec(Local)
