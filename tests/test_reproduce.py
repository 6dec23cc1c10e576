"""Reproduction presets: the published recipes and numbers, and a run of each protocol shape on tiny CIFAR files."""

from dataclasses import replace

import numpy as np
import pytest
import torchvision.datasets as tvd
from realformat import trust_written_cifar, write_cifar

from bench.catalog import data
from bench.catalog.budget import Target
from bench.catalog.presets import Published
from bench.catalog.registry import PRESETS
from bench.execution import runner


def test_lorita_presets_carry_the_official_recipe_and_the_logged_best_accuracies():
    expected = {"repro-lorita-cifar10-vgg16": {"lorita-n2": 0.9413, "lorita-n3": 0.9361},
                "repro-lorita-cifar10-resnet20": {"lorita-n2": 0.9233, "lorita-n3": 0.9162}}
    for name, numbers in expected.items():
        entry = PRESETS.entry(name)
        b = entry.obj.budget
        assert (b.optimizer, b.lr, b.momentum, b.nesterov, b.weight_decay, b.batch_size, b.label_smoothing,
                b.epochs, b.finetune_epochs) == ("sgd", 0.01, 0.9, False, 1e-3, 128, 0.1, 300, 0)
        assert entry.obj.methods == ("lorita-n1", "lorita-n2", "lorita-n3") and entry.obj.dataset == "cifar10"
        assert {p.method: p.value for p in entry.meta["published"]} == numbers
        assert all(p.metric == "base_acc" and "test set" in p.selection for p in entry.meta["published"])


def test_torch_pruning_preset_has_its_schedule_and_the_published_table():
    entry = PRESETS.entry("repro-tp-cifar10-resnet56")
    p, b = entry.obj, entry.obj.budget
    assert (b.train_epochs, b.finetune_epochs, b.lr, b.finetune_lr) == (200, 100, 0.1, 0.01)
    # Milestones are fractions of each phase: pre-training's fall exactly on epochs 120/150/180.
    assert [round(m * b.train_epochs) for m in b.milestones] == [120, 150, 180]
    assert [round(m * b.finetune_epochs) for m in b.milestones] == [60, 75, 90]  # published: 60/80
    (target,) = p.targets
    assert target.kind == "flops" and 1 / (1 - target.drop) == pytest.approx(2.11)
    published = {(x.method, x.metric): x.value for x in entry.meta["published"]}
    assert published == {("group-l2", "base_acc"): 0.9353, ("l1-filter", "base_acc"): 0.9353,
                         ("group-l2", "acc"): 0.9346, ("l1-filter", "acc"): 0.9293}
    assert set(p.methods) == {"group-l2", "l1-filter", "depgraph-sl"}


def test_paper_aliases_are_the_same_configurations():
    for alias, of in (("paper-mnist-fcn", "mnist-fcn"), ("paper-cifar10-vit", "cifar10-vit"),
                      ("paper-cifar100-vgg16", "cifar100-vgg16")):
        assert PRESETS.get(alias) == PRESETS.get(of)


def test_published_numbers_refuse_nonsense():
    from bench.records.errors import UsageError

    with pytest.raises(UsageError, match=r"bad published value 94\.13"):
        Published(method="lorita-n2", metric="base_acc", value=94.13, selection="x", source="y")
    with pytest.raises(UsageError, match="bad published metric 'top1'"):
        Published(method="lorita-n2", metric="top1", value=0.9, selection="x", source="y")


@pytest.mark.parametrize(("preset", "options", "methods"), [
    ("repro-lorita-cifar10-resnet20", {"width": 0.25}, ("lorita-n1", "lorita-n2")),
    ("repro-tp-cifar10-resnet56", {"width": 0.25}, ("group-l2",)),
])
def test_repro_protocol_runs_end_to_end_from_real_format_cifar(preset, options, methods, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "VAL_SIZE", 20)
    root = tmp_path / "data"
    write_cifar(root, 10, np.random.default_rng(0))
    trust_written_cifar(monkeypatch, tvd.CIFAR10, root)
    p = PRESETS.get(preset)
    finetune = 1 if p.budget.finetune_epochs else 0  # LoRITa's recipe does not fine-tune after truncation
    # The runner, not the CLI: the report's figures would cost more than the run at these sizes.
    tiny = p.override(device="cpu", methods=methods, model_options=options, latency_rounds=2, throughput_batch=4,
                      budget=replace(p.budget, epochs=2, finetune_epochs=finetune),
                      targets=None if finetune else (Target(kind="params", drop=0.5),))
    records = runner.run(tiny, tmp_path / "out", data_dir=root, progress=False, echo=lambda s: None,
                         cache_dir=tmp_path / "ckpt")
    assert records and all(r.status == "ok" for r in records), [r.reason for r in records]
    assert all((r.finetune_steps == 0) == (finetune == 0) for r in records)
    if preset.startswith("repro-tp"):
        assert all(1 / (1 - r.flops_drop) == pytest.approx(2.11, abs=0.15) for r in records)
