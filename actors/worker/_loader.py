"""Load objects named ``"module:Attribute"``, the way configuration files and the CLI name them.

A worker class is named by the module it lives in and its attribute path inside that
module, such as ``"examples.square:Square"`` or ``"pkg.mod:Outer.Inner"``. The module is
imported from ``sys.path`` as usual (``python -m`` puts the current directory first).

Every failure is a :class:`ConfigError` whose message says which of the three things went
wrong: the module could not be imported, it has no such attribute, or the attribute is not
what was asked for (a :class:`~actors.Worker` subclass).
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import TYPE_CHECKING, Any

from .._checks import ConfigError

if TYPE_CHECKING:
    from ._worker import Worker

#: ``module.path:Attr.path``: Python identifiers separated by dots on both sides.
_SPEC_RE = re.compile(r"^(?P<module>\w+(?:\.\w+)*):(?P<attr>\w+(?:\.\w+)*)$")


def split_spec(spec: Any) -> tuple[str, str]:
    """Split ``"module:Attribute"`` into its two parts, checking the shape only.

    Raises:
      ConfigError: ``spec`` is not a string of the form ``module.path:Attr.path``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"expected 'module:Attribute', got {type(spec).__name__} {spec!r}")
    match = _SPEC_RE.match(spec)
    if match is None:
        raise ConfigError(
            f"expected 'module:Attribute' (for example 'examples.square:Square'), got {spec!r}"
        )
    return match["module"], match["attr"]


def load_object(spec: str) -> Any:
    """Import the module named in ``spec`` and return the attribute it names.

    Args:
      spec: ``"module.path:Attr"``; the attribute may be dotted (``"mod:Outer.Inner"``).

    Returns:
      The object found.

    Raises:
      ConfigError: the name is malformed, the module is not found or fails while it is
        imported (its own error is quoted), or the attribute does not exist (close names
        are suggested).
    """
    module_name, attr_path = split_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ConfigError(
                f"cannot load {spec!r}: no module named {exc.name!r} "
                "(is it on sys.path? modules are imported relative to the current directory)"
            ) from None
        raise ConfigError(
            f"cannot load {spec!r}: importing module {module_name!r} failed: {exc}"
        ) from exc
    except Exception as exc:
        # Running user code at import can raise anything (SyntaxError included); the user
        # needs to see it named, not a traceback from inside the loader.
        raise ConfigError(
            f"cannot load {spec!r}: importing module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    walked = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            hint = ""
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            if close:
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)"
            raise ConfigError(
                f"cannot load {spec!r}: {walked!r} has no attribute {part!r}{hint}"
            ) from None
        walked = f"{walked}.{part}" if walked != module_name else f"{module_name}:{part}"
    return obj


def load_worker_class(spec: str) -> type[Worker]:
    """Load ``spec`` and check that it is a subclass of :class:`~actors.Worker`.

    Raises:
      ConfigError: as for :func:`load_object`, or the object is not a ``Worker`` subclass
        (an instance, a function, the ``Worker`` base class itself, ...).
    """
    from ._worker import Worker  # imported late: the worker module pulls in the runtime

    obj = load_object(spec)
    if not isinstance(obj, type):
        raise ConfigError(
            f"{spec!r} is {_describe(obj)}, not a Worker subclass "
            "(name the class, not an instance or a function)"
        )
    if obj is Worker:
        raise ConfigError(f"{spec!r} is the Worker base class itself; name your subclass")
    if not issubclass(obj, Worker):
        raise ConfigError(f"{spec!r} is the class {obj.__qualname__!r}, not a Worker subclass")
    return obj


def worker_spec(cls: type) -> str:
    """The ``"module:Class"`` name under which another process can import ``cls``.

    Raises:
      ConfigError: ``cls`` is defined in ``__main__`` or inside a function, where no other
        process can import it.
    """
    module = cls.__module__
    qualname = cls.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise ConfigError(
            f"worker class {qualname!r} (module {module!r}) cannot be imported by another "
            "process: define it at the top level of an importable module, or run in process"
        )
    return f"{module}:{qualname}"


def _describe(obj: Any) -> str:
    """A short phrase for what ``obj`` is, for error messages."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the {type(obj).__name__} {obj.__qualname__!r}"
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {type(obj).__name__} ({text})"
