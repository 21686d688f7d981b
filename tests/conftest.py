"""Settings shared by the whole suite: the Hypothesis profiles.

Two profiles, chosen by the environment when the suite starts:

- ``default`` (a developer's run): Hypothesis's own defaults (100 examples, a random seed,
  the example database in ``.hypothesis/``), without the per-example ``deadline`` and
  without the ``too_slow`` health check. The tests run inside Trio and under coverage; how
  long one example takes depends on the machine and the load, so timing it only produces
  flaky failures. A test that needs a different budget says so with its own
  ``@settings(max_examples=...)`` and a comment giving the reason.
- ``ci`` (``CI=true``, as the CI runner sets it): the same budget, plus Hypothesis's CI
  settings: derandomized (a run is reproducible from the commit alone), no example
  database, and the blob to reproduce a failure printed in the log.

``HYPOTHESIS_PROFILE=<name>`` picks a profile explicitly (as does pytest's
``--hypothesis-profile``).

And the leaders' data: every test gets its own ``ACTORS_DATA_DIR`` (a temporary directory),
so that a leader (or a cluster process the test starts) with the default data directory
journals there, never in the user's home, and two tests never share a journal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

_RELAXED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

settings.register_profile("default", **_RELAXED)
settings.register_profile("ci", settings.get_profile("ci"), **_RELAXED)


def _profile_from_environment() -> str:
    if "HYPOTHESIS_PROFILE" in os.environ:
        return os.environ["HYPOTHESIS_PROFILE"]
    return "ci" if os.environ.get("CI", "").lower() in ("true", "1") else "default"


settings.load_profile(_profile_from_environment())


@pytest.fixture(autouse=True, scope="module")
def _actors_module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for what a module's own fixtures start (a cluster serving a whole module)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACTORS_DATA_DIR", str(tmp_path_factory.mktemp("actors-module-data")))
        yield


@pytest.fixture(autouse=True)
def _actors_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's leaders journal in a directory of their own (see the module's text)."""
    monkeypatch.setenv("ACTORS_DATA_DIR", str(tmp_path_factory.mktemp("actors-data")))
