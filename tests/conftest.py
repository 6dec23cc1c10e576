import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # tox runs the tests on two xdist workers over CI's two cores: one intra-op thread each (and in
    # the processes they start), or four threads fight over two cores and small steps slow down
    # many times. Results do not depend on the thread count (see reference/README.md).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never read or fill the user's checkpoint cache from tests.
    monkeypatch.setenv("LORITA_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "checkpoints"))


@pytest.fixture
def count_training(monkeypatch):
    """The epochs of every ``train`` call a job makes (pre-training, then each fine-tuning)."""
    from bench.execution import job

    calls = []
    real = job.train

    def counting(model, data, budget, *, epochs, **kw):
        calls.append(epochs)
        return real(model, data, budget, epochs=epochs, **kw)
    monkeypatch.setattr(job, "train", counting)
    return calls
