"""Fixtures and parametrization of the benchmark suite.

The preset chosen with ``--preset`` (options and hooks: ``bench/suite/plugin.py``) is turned into
one ``cell`` per (method, target, seed, batch size) and one ``dense_cell`` per trained dense model
and batch size. Training happens once per (method, seed), lazily, in the session's ``Suite``,
through the trained-model cache (``--lorita-cache-dir``), so a re-run trains nothing.
"""

from __future__ import annotations

import pytest

from bench.suite.cells import Suite, cells, dense_cells
from bench.suite.plugin import SUITE


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    suite = metafunc.config.stash[SUITE]
    if "cell" in metafunc.fixturenames:
        metafunc.parametrize("cell", cells(suite.preset), ids=lambda c: c.id)
    if "dense_cell" in metafunc.fixturenames:
        metafunc.parametrize("dense_cell", dense_cells(suite.preset), ids=lambda c: c.id)


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Suite:
    """The session's preset, data and cache of trained models."""
    return request.config.stash[SUITE]
