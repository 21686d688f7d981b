"""The code the protocol generates at import shows its source: each generated function's
text is registered in ``linecache`` under a file name of its own (as attrs does), so that a
traceback through it, ``inspect.getsource`` and debuggers show its lines."""

from __future__ import annotations

import inspect
import linecache
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import protocol
from protocol import InvalidField, InvalidSubject, Submit
from protocol._bundle import FROM_ARRAY, ITEM, TO_ARRAY
from protocol._fastcodec import (
    CHECKED,
    FROM_WIRE,
    TO_WIRE,
    TO_WIRE_PLAIN,
    _compile,
    build_from_wire,
)


def generated_functions() -> Iterator[Callable[..., Any]]:
    for table in (TO_WIRE, TO_WIRE_PLAIN, FROM_WIRE, CHECKED, TO_ARRAY, FROM_ARRAY, ITEM):
        yield from table.values()


def last_frame(exc: BaseException) -> traceback.FrameSummary:
    return traceback.extract_tb(exc.__traceback__)[-1]


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_a_traceback_through_a_generated_decoder_shows_the_line() -> None:
    with pytest.raises(InvalidField) as info:
        protocol.from_wire({"t": Submit.KIND, "i": 1, "s": "a.b"})  # no job_id
    frame = last_frame(info.value)
    assert frame.filename == "<protocol generated from_wire protocol._messages.Submit>"
    text = formatted(info.value)
    assert f'File "{frame.filename}", line {frame.lineno}, in from_wire\n' in text
    assert (
        "    raise InvalidField(\"Submit is missing field 'job_id' (key 'j')\") from None\n" in text
    )


def test_a_traceback_through_a_generated_bundle_decoder_shows_the_line() -> None:
    with pytest.raises(InvalidField, match=r"Submit\.mid must be >= 0") as info:
        protocol.message_of([Submit.KIND, -1, "j", "a.b"])
    frame = last_frame(info.value)
    assert frame.filename == "<protocol generated from_array protocol._messages.Submit>"
    assert "    raise InvalidField(f'bad Submit: {exc}') from None\n" in formatted(info.value)


def test_a_traceback_through_a_generated_constructor_shows_the_call_that_failed() -> None:
    # (the validator raises; the generated frame is the one before it)
    with pytest.raises(InvalidSubject) as info:
        Submit.checked(mid=1, job_id="j", subject="a..b")
    frames = traceback.extract_tb(info.value.__traceback__)
    generated = [f for f in frames if f.filename.startswith("<protocol generated")]
    assert [f.filename for f in generated] == [
        "<protocol generated checked protocol._messages.Submit>"
    ]
    assert generated[0].line == "_val2(_inst, _attr2, f2)"  # f2: the subject
    assert "\n    _val2(_inst, _attr2, f2)\n" in formatted(info.value)


def test_every_generated_function_has_its_own_source_in_linecache() -> None:
    functions = list(generated_functions())
    filenames = [func.__code__.co_filename for func in functions]
    assert len(set(filenames)) == len(functions)
    linecache.checkcache()  # (what traceback does before reading lines: they must stay)
    for func, filename in zip(functions, filenames, strict=True):
        assert filename.startswith("<protocol generated ") and filename.endswith(">")
        assert linecache.getline(filename, 1).startswith(f"def {func.__code__.co_name}(")
        assert inspect.getsource(func) == "".join(linecache.getlines(filename))


def test_building_again_reuses_the_entry_of_the_same_source() -> None:
    again = build_from_wire(Submit)
    assert again.__code__.co_filename == FROM_WIRE[Submit.KIND].__code__.co_filename


def test_a_different_source_under_a_taken_name_gets_a_name_of_its_own() -> None:
    class Twin:
        pass

    first = _compile("def f():\n    raise KeyError('first')\n", "f", {}, Twin)
    second = _compile("def f():\n    raise KeyError('second')\n", "f", {}, Twin)
    try:
        base = f"<protocol generated f {__name__}.{Twin.__qualname__}>"
        assert first.__code__.co_filename == base
        assert second.__code__.co_filename == base[:-1] + "-1>"
        for func, word in ((first, "first"), (second, "second")):
            with pytest.raises(KeyError) as info:
                func()
            assert f"    raise KeyError('{word}')\n" in formatted(info.value)
    finally:
        for func in (first, second):
            linecache.cache.pop(func.__code__.co_filename, None)
