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
