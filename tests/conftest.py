import pytest
import torch


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
