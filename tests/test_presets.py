"""Every paper preset runs end to end from real-format files in --data-dir (tiny data, CPU)."""

import numpy as np
import pytest
import torchvision.datasets as tvd
from realformat import idx_set, trust_written_cifar, write_cifar, write_idx

from bench.catalog import data
from bench.catalog.registry import PRESETS
from bench.cli import main
from bench.records.results import load_records

PAPER = {"mnist-fcn": ("width=32", None), "fashion-mnist-fcn": ("width=32", None),
         "cifar10-vgg16": ("width=0.0625", tvd.CIFAR10), "cifar10-resnet20": ("width=0.5", tvd.CIFAR10),
         "cifar10-vit": ("embed_dim=24,depth=1,num_heads=2", tvd.CIFAR10),
         "cifar100-vgg16": ("width=0.0625", tvd.CIFAR100), "fashion-mnist-vgg16": ("width=0.0625", None),
         "fashion-mnist-resnet20": ("width=0.5", None),
         "fashion-mnist-vit": ("embed_dim=24,depth=1,num_heads=2", None),
         "fashion-mnist-cpu-vgg16": ("width=0.0625", None)}


@pytest.mark.parametrize("preset", PAPER)
def test_paper_preset_runs_end_to_end_from_real_format_files(preset, tmp_path, monkeypatch):
    options, cifar = PAPER[preset]
    monkeypatch.setattr(data, "VAL_SIZE", 100 if cifar is tvd.CIFAR100 else 20)  # stratified: ≥ 1 per class
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    if cifar is None:
        folder = "MNIST" if preset.startswith("mnist") else "FashionMNIST"
        write_idx(root / folder / "raw", idx_set(rng, n_train=80))
    else:
        write_cifar(root, 100 if cifar is tvd.CIFAR100 else 10, rng)
        trust_written_cifar(monkeypatch, cifar, root)
    out = tmp_path / "out"
    code = main(["run", "--preset", preset, "--data-dir", str(root), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--epochs", "2", "--finetune-epochs", "1", "--methods", "lorita-n2,l1-filter",
                 "--targets", "params:0.5", "--model-options", options, "--latency-rounds", "3",
                 "--throughput-batch", "8", "--cache-dir", str(tmp_path / "ckpt")])
    assert code == 0
    records = load_records(out / "results.jsonl")
    assert [r.status for r in records] == ["ok", "ok"], [r.reason for r in records]
    # Widths this tiny make one channel worth ~3% of the net; the 1 pp landing is tested at
    # realistic widths in test_baselines / test_lorita.
    assert all(abs(r.params_drop - 0.5) <= 0.03 for r in records), [(r.method, r.params_drop) for r in records]
    assert records[0].dataset == PRESETS.get(preset).dataset


def test_cuda_preset_on_a_machine_without_cuda_is_a_clear_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "--preset", "cifar10-vgg16", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
