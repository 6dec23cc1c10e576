"""The training loop: augmentation as batched ops, schedules, seeding, CUDA fast paths."""

import pytest
import torch
import torch.nn.functional as F

from bench.catalog.budget import Budget
from bench.catalog.data import Splits
from bench.catalog.models import build
from bench.execution.train import augment_crop_flip, steps_per_epoch, train


def test_crop_flip_equals_the_per_image_definition():
    x = torch.randn(16, 3, 8, 8)
    out = augment_crop_flip(x, torch.Generator().manual_seed(3), pad=2)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (16,), generator=g)
    dx = torch.randint(0, 5, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    assert flip.any() and not flip.all()


def _cifar_like(n=64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Splits(name="synthetic", num_classes=10, train_x=x.to(device), train_y=y.to(device),
                  val_x=x[:16].to(device), val_y=y[:16].to(device), test_x=x[:16].to(device),
                  test_y=y[:16].to(device), augment="crop-flip")


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_every_schedule_trains_the_same_number_of_steps_deterministically(schedule):
    d = _cifar_like()
    budget = Budget(epochs=3, finetune_epochs=0, batch_size=16, schedule=schedule, lr=0.01)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build("resnet20", 10, (3, 16, 16), {"width": 0.25})
        stats = train(model, d, budget, epochs=2, lr=budget.lr, seed=7)
        assert stats.steps == 2 * steps_per_epoch(64, 16)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])  # same seed, same result


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_trains_with_bf16_autocast_channels_last_and_on_device_augmentation():
    d = _cifar_like(device="cuda")
    torch.manual_seed(0)
    model = build("resnet20", 10, (3, 16, 16), {"width": 0.5}).cuda()
    stats = train(model, d, Budget(epochs=2, finetune_epochs=0, batch_size=16), epochs=2, lr=0.05, seed=0,
                  amp=True, channels_last=True)
    assert stats.steps == 8
    assert all(p.is_contiguous() for p in model.parameters())  # restored after training


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_with_torch_compile():
    d = _cifar_like(device="cuda")
    model = build("resnet20", 10, (3, 16, 16), {"width": 0.25}).cuda()
    stats = train(model, d, Budget(epochs=1, finetune_epochs=0, batch_size=32), epochs=1, lr=0.05, seed=0,
                  compile=True)
    assert stats.steps == 2


def test_keep_best_returns_the_validation_selected_epoch():
    from bench.catalog import data as data_mod
    from bench.execution.train import accuracy

    d = data_mod.load("digits")
    torch.manual_seed(0)
    model = build("fcn", 10, d.input_shape, {"depth": 3, "width": 32})
    stats = train(model, d, Budget(epochs=4, finetune_epochs=0, lr=0.05), epochs=4, lr=0.05, seed=0, keep_best=True)
    assert 1 <= stats.best_epoch <= 4
    last_val = accuracy(model, d.val_x, d.val_y)
    assert stats.best_val_acc >= last_val
    model.load_state_dict(stats.best_state)
    assert accuracy(model, d.val_x, d.val_y) == stats.best_val_acc
