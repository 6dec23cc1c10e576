"""Harness overhead: one epoch of ``bench.execution.train.train`` against a minimal hand-written loop.

Same model, same data on the same device, same optimizer and schedule; the ratio
plain-median / harness-median goes in ``extra_info["throughput_ratio"]`` (target ≥ 0.95).
The two models are timed from identical weights each round (set up outside the timing).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bench.catalog import data as data_mod
from bench.catalog.budget import Budget
from bench.catalog.models import build
from bench.execution.train import train

BUDGET = Budget(epochs=2, finetune_epochs=0, batch_size=64, lr=0.02, weight_decay=0.01)
TARGET_RATIO = 0.95
_medians: dict[str, float] = {}


@pytest.fixture(scope="module")
def workload():
    d = data_mod.load("digits")
    torch.manual_seed(0)
    return d, build("fcn", d.num_classes, d.input_shape, {"depth": 4, "width": 128})


def _plain_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=BUDGET.lr, momentum=0.9, nesterov=True,
                          weight_decay=BUDGET.weight_decay)
    steps = -(-len(x) // BUDGET.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    order = torch.randperm(len(x))
    for i in range(0, len(x), BUDGET.batch_size):
        idx = order[i:i + BUDGET.batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def _rounds(benchmark) -> dict:
    return {"rounds": 15, "warmup_rounds": 2, "iterations": 1}


def test_harness_train_epoch(benchmark, workload):
    d, model = workload
    benchmark.group = "train-throughput/digits/fcn"
    benchmark.pedantic(lambda m: train(m, d, BUDGET, epochs=1, lr=BUDGET.lr, seed=0),
                       setup=lambda: ((copy.deepcopy(model),), {}), **_rounds(benchmark))
    if benchmark.stats is not None:
        _medians["harness"] = benchmark.stats.stats.median


def test_plain_loop_epoch(benchmark, workload):
    d, model = workload
    benchmark.group = "train-throughput/digits/fcn"
    benchmark.pedantic(lambda m: _plain_epoch(m, d.train_x, d.train_y),
                       setup=lambda: ((copy.deepcopy(model),), {}), **_rounds(benchmark))
    if benchmark.stats is None or "harness" not in _medians:
        return  # --benchmark-disable, or the harness benchmark was deselected
    ratio = benchmark.stats.stats.median / _medians["harness"]
    benchmark.extra_info["throughput_ratio"] = ratio
    benchmark.extra_info["target_ratio"] = TARGET_RATIO
    assert ratio >= TARGET_RATIO, f"harness runs at {ratio:.2f}× the plain loop's throughput"
