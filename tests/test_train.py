"""The training loop: augmentation as batched ops, schedules, seeding, CUDA fast paths, measurement windows."""

import copy
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


def test_training_draws_each_batch_as_a_per_batch_crop_flip_loop_would():
    # The epoch draws its permutation and every batch's shifts up front (so a GPU step loop never
    # waits on the host): the same numbers, in the same order, as drawing per batch.
    d = _cifar_like(n=40)
    budget = Budget(epochs=2, finetune_epochs=0, batch_size=16, schedule="constant", momentum=0.9,
                    nesterov=True, weight_decay=1e-3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    ref = copy.deepcopy(model)
    train(model, d, budget, epochs=2, lr=0.1, seed=5)
    gen = torch.Generator().manual_seed(5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for _ in range(2):
        order = torch.randperm(40, generator=gen)
        for i in range(0, 40, 16):
            idx = order[i:i + 16]
            x = augment_crop_flip(d.train_x[idx], gen)
            loss = F.cross_entropy(ref(x), d.train_y[idx], reduction="sum") * (1 / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_epoch_queues_its_steps_without_a_host_sync():
    from bench.execution import train as loop_mod

    d = _cifar_like(device="cuda")
    model = build("resnet20", 10, (3, 16, 16), {"width": 0.25}).cuda().to(memory_format=torch.channels_last)
    budget = Budget(epochs=1, finetune_epochs=0, batch_size=16)
    opt = loop_mod._optimizer(model, budget, 0.05)
    loop = loop_mod._Loop(model=model, forward=model, data=d, budget=budget, opt=opt,
                          sched=loop_mod._scheduler(opt, budget, 0.05, 1, 4), gen=torch.Generator().manual_seed(0),
                          nhwc=True, bf16=True, after_backward=None)
    torch.cuda.set_sync_debug_mode("error")  # any .item(), blocking copy or nonzero in the loop raises
    try:
        loss_sum, steps, _ = loop_mod._epoch(loop)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert steps == 4 and torch.isfinite(loss_sum)


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


class _CostlyToValidate(nn.Module):
    """A linear classifier on digits whose eval-mode forward (the validation pass) sleeps
    ``sleep_s`` and touches a 256 MiB scratch tensor, and which carries a 64 MiB buffer that a
    best-epoch copy duplicates: what a validation pass and ``keep_best`` cost, made large."""

    def __init__(self, sleep_s: float) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.register_buffer("ballast", torch.ones(16 * 2**20))
        self.sleep_s = sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            time.sleep(self.sleep_s)
            assert torch.ones(64 * 2**20).sum() > 0  # 256 MiB, written, then freed
        return self.fc(x.flatten(1))


def test_training_time_and_peak_memory_hold_the_steps_alone_whatever_the_progress_mode(monkeypatch):
    from bench.catalog import data as data_mod
    from bench.execution import progress

    try:  # the CPU peak is VmHWM, which only Linux's clear_refs resets between trainings
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("the peak resident size cannot be reset here")
    d = data_mod.load("digits")
    budget, sleep_s = Budget(epochs=2, finetune_epochs=0, lr=0.05), 0.4

    def run(*, progress_on: bool, terminal: bool, keep_best: bool):
        monkeypatch.setattr(progress, "interactive", lambda: terminal)
        torch.manual_seed(0)
        stats = train(_CostlyToValidate(sleep_s), d, budget, epochs=2, lr=0.05, seed=0, progress=progress_on,
                      keep_best=keep_best)
        return replace(stats, best_state=None)  # so the next training starts from the same resident size

    plain = run(progress_on=False, terminal=False, keep_best=False)
    assert plain.val_wall_s == 0 and plain.peak_mem_mb is not None
    # keep_best: two validation passes; a bar in a terminal: two; a line outside one: one at the end.
    for mode, passes in (({"progress_on": False, "terminal": False, "keep_best": True}, 2),
                         ({"progress_on": True, "terminal": True, "keep_best": False}, 2),
                         ({"progress_on": True, "terminal": False, "keep_best": False}, 1)):
        s = run(**mode)
        assert s.val_wall_s >= passes * sleep_s, mode  # the validation passes, timed apart
        assert s.wall_s < plain.wall_s + sleep_s / 2, (mode, s.wall_s, plain.wall_s)
        # Neither the 256 MiB of a validation pass nor the best epoch's 64 MiB copy is a training step's.
        assert s.peak_mem_mb < plain.peak_mem_mb + 32, (mode, s.peak_mem_mb, plain.peak_mem_mb)
        assert s.loss_curve == plain.loss_curve  # the same training, only observed differently


def test_step_time_pairs_n_against_1_on_cpu_without_a_memory_figure():
    from bench.execution import steptime

    r = steptime.n_vs_1("fcn", 2, device="cpu", batch_size=8, input_shape=(1, 8, 8),
                        options={"depth": 2, "width": 16}, rounds=3)
    assert r["rounds"] == 3 and r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"] and r["a_ms"] > 0
    assert r["peak_mem_n1_mb"] is None and r["peak_mem_n_mb"] is None  # CUDA's allocator only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_memory_holds_only_the_measured_model():
    from bench.execution import steptime

    # N=1 against N=1: one model measured twice must give one peak. Were the first model's weights,
    # gradients and momentum (3 × ~8 MiB here) still allocated, they would sit under the second.
    r = steptime.n_vs_1("fcn", 1, device="cuda", batch_size=8, input_shape=(1, 8, 8),
                        options={"depth": 4, "width": 1024}, rounds=2)
    assert r["peak_mem_n_mb"] == pytest.approx(r["peak_mem_n1_mb"], abs=1.0)
