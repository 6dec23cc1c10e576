"""One benchmark per preset cell: the deployed model's forward pass, and each dense reference's.

Nothing is trained inside a timed function: ``suite.trained`` trains a (method, seed) once, on
its first cell, and every later cell of that method reuses it.
"""

from __future__ import annotations

import pytest

from bench.records.results import Record
from bench.suite.cells import Cell, DenseCell, Suite, dense_info, extra_info, time_forward


def _usable(record: Record) -> None:
    if record.status == "skipped":
        pytest.skip(f"{record.method}: {record.reason}")
    if record.status != "ok":
        pytest.fail(f"{record.method} at {record.target_kind}:{record.target_drop:g}: {record.status}: "
                    f"{record.reason}", pytrace=False)


def test_deployed(benchmark, cell: Cell, suite: Suite) -> None:
    trained = suite.trained(cell.method, cell.seed)
    record = trained.record(cell.target)
    _usable(record)
    benchmark.group = suite.group(cell.batch)
    benchmark.extra_info.update(extra_info(record, trained.spectra, "deployed", cell.batch, suite.name))
    time_forward(benchmark, trained.deployed[cell.target], suite.example(cell.batch), rounds=suite.rounds)


def test_dense(benchmark, dense_cell: DenseCell, suite: Suite) -> None:
    trained = suite.trained(dense_cell.method, dense_cell.seed)
    ok = [r for r in trained.records if r.status == "ok"]
    if not ok or trained.dense is None:
        _usable(trained.records[0])
        pytest.fail(f"{dense_cell.method}: no dense model was kept", pytrace=False)
    benchmark.group = suite.group(dense_cell.batch)
    benchmark.extra_info.update(dense_info(ok[0], dense_cell.batch, suite.name))
    time_forward(benchmark, trained.dense, suite.example(dense_cell.batch), rounds=suite.rounds)
