"""Verdicts the methods decide, not the protocol (issue 18): one protected-layer list for every method,
a rank allocation that does not starve small layers, collapsed trainings that are never ranked, and the
decay budget in every record and report."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from realformat import idx_set, write_idx
from torch import nn

import lorita
from bench.catalog import data, registry
from bench.catalog.budget import Budget, decay_budget
from bench.catalog.registry import PRESETS
from bench.cli import main
from bench.execution.train import planned_lr_sum, train
from bench.records import decay
from bench.records.results import load_records
from reports import render

FAST = ["--no-progress", "--latency-rounds", "2", "--throughput-batch", "4"]


@pytest.fixture
def fashion(tmp_path, monkeypatch):
    """Tiny Fashion-MNIST in the real IDX format (60 train, 20 val of them, 20 test)."""
    monkeypatch.setattr(data, "VAL_SIZE", 20)
    root = tmp_path / "data"
    write_idx(root / "FashionMNIST" / "raw", idx_set(np.random.default_rng(0), n_train=80))
    return root


def _run_vgg(tmp_path, root, *extra):
    out = tmp_path / "out"
    code = main(["run", "--preset", "fashion-mnist-vgg16", "--data-dir", str(root), "--out", str(out),
                 "--device", "cpu", "--epochs", "2", "--finetune-epochs", "1", "--model-options", "width=0.125",
                 "--methods", "lorita-n1,lorita-n2,l1-filter,group-l2", "--targets", "params:0.7",
                 "--cache-dir", str(tmp_path / "ckpt"), *FAST, *extra])
    assert code == 0
    records = load_records(out / "results.jsonl")
    assert {r.status for r in records} == {"ok"}, [(r.method, r.reason) for r in records]
    return records


def test_no_method_changes_a_protected_layer_of_vgg16_at_params_70(tmp_path, fashion):
    records = _run_vgg(tmp_path, fashion)
    assert {r.method for r in records} == {"lorita-n1", "lorita-n2", "l1-filter", "group-l2"}
    for r in records:
        assert r.protected == ["classifier"], r.method
        # LoRITa: the head keeps its full rank (10); pruning: its 10 outputs (the classes).
        assert r.layers["classifier"] == r.layers_full["classifier"] == 10, (r.method, r.layers)
        assert abs(r.params_drop - 0.7) <= 0.03, (r.method, r.params_drop)


def test_a_protected_list_given_by_the_user_applies_to_every_method(tmp_path, fashion):
    records = _run_vgg(tmp_path, fashion, "--protect", "@head,features.0")
    for r in records:
        assert r.protected == ["features.0", "classifier"], r.method
        for layer in ("features.0", "classifier"):
            assert r.layers[layer] == r.layers_full[layer], (r.method, layer, r.layers[layer])
    assert any(r.layers["features.3"] < r.layers_full["features.3"] for r in records)  # the others are cut


def test_a_protected_pattern_that_names_no_layer_is_refused_before_training(tmp_path, fashion, capsys):
    code = main(["run", "--preset", "fashion-mnist-vgg16", "--data-dir", str(fashion), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--model-options", "width=0.125", "--protect", "@head,fc9", *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "'fc9' names no Linear or Conv2d layer" in err and "features.0" in err and "@head" in err


def test_truncate_keeps_excluded_layers_dense_and_still_lands_on_the_whole_model_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    plan = lorita.truncate(model, lorita.TargetParamsDrop(drop=0.5), exclude=["4"])
    assert plan.protected == ("4",)
    head = {lp.name: lp for lp in plan.layers}["4"]
    assert head.rank == head.full_rank == 10 and not head.factored
    deployed = lorita.factorize(model, plan)
    assert type(deployed[4]) is nn.Linear and torch.equal(deployed[4].weight, model[4].weight)
    params = sum(p.numel() for p in deployed.parameters())
    assert abs(1 - params / sum(p.numel() for p in model.parameters()) - 0.5) <= 0.01


def test_min_share_allocation_never_cuts_a_layer_that_cannot_save_its_share():
    torch.manual_seed(0)
    # A 9-input first layer (like VGG's first conv on one channel) beside two wide ones.
    model = nn.Sequential(nn.Linear(9, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    with torch.no_grad():  # a fast-decaying spectrum, as training leaves it: the global threshold cuts it
        u, _, vh = torch.linalg.svd(model[0].weight, full_matrices=False)
        model[0].weight.copy_(u @ torch.diag(0.2 ** torch.arange(9.0)) @ vh)
    everything = lorita.truncate(model, lorita.TargetParamsDrop(drop=0.6))
    spared = lorita.truncate(model, lorita.TargetParamsDrop(drop=0.6, allocation="min-share", min_share=0.05))
    first = model[0].weight.shape
    # Cutting the 9-input layer to rank 1 saves 9·256 - 265 weights: 1.5 % of the model, below 5 %.
    assert (first[0] * first[1] - (first[0] + first[1])) / sum(p.numel() for p in model.parameters()) < 0.05
    assert spared.ranks["0"] == 9
    assert everything.ranks["0"] < 9  # the global rule does cut it
    for plan in (everything, spared):
        deployed = lorita.factorize(model, plan)
        drop = 1 - sum(p.numel() for p in deployed.parameters()) / sum(p.numel() for p in model.parameters())
        assert abs(drop - 0.6) <= 0.01


@pytest.mark.parametrize(("allocation", "min_share"), [("greedy", 0.01), ("min-share", 1.0), ("global", -0.1)])
def test_bad_allocations_are_refused(allocation, min_share):
    with pytest.raises(ValueError):
        lorita.TargetFlopsDrop(drop=0.5, allocation=allocation, min_share=min_share)


def _ci(tmp_path, *extra, preset="ci"):
    out = tmp_path / "out"
    code = main(["run", "--preset", preset, "--out", str(out), "--epochs", "6", "--finetune-epochs", "1",
                 "--methods", "lorita-n1,lorita-n3", "--targets", "params:0.5", "--cache-dir", str(tmp_path / "c"),
                 *FAST, *extra])
    return code, out


@pytest.mark.parametrize(("recipe", "why"), [
    ({"lr": 1e6}, "non-finite loss"),  # blows up
    ({"weight_decay": 50.0}, "collapsed"),  # decays every weight to nothing: a constant prediction
])
def test_a_collapsed_training_is_diverged_and_reported_only_under_failures(tmp_path, monkeypatch, recipe, why):
    preset = replace(PRESETS.get("ci"), recipes={"lorita-n3": recipe})
    monkeypatch.setitem(registry.PRESETS._entries, "ci-collapse", registry.Entry("ci-collapse", preset, "test"))
    code, out = _ci(tmp_path, preset="ci-collapse")
    assert code == 0
    records = {r.method: r for r in load_records(out / "results.jsonl")}
    bad, good = records["lorita-n3"], records["lorita-n1"]
    assert good.status == "ok"
    assert bad.status == "diverged" and why in bad.reason, bad.reason
    assert bad.pretrain_curve["loss"], "the curve rides along"
    assert bad.recipe["lr"] == recipe.get("lr", preset.budget.lr)
    text = (out / "report.md").read_text()
    failures = text.split("## Failed trainings", 1)[1].split("\n## ", 1)[0]
    assert "**lorita-n3**" in failures and "Curve: loss ep1" in failures and "Recipe: optimizer sgd" in failures
    rest = text.replace(failures, "")
    assert "| lorita-n3 |" not in rest  # not in the results, iso-accuracy or all-runs tables
    csv = (out / "tables" / "results.csv").read_text()
    assert "lorita-n3" not in csv and "lorita-n1" in csv
    # A resumed run does not train it again: the collapse is a result about its recipe.
    code, _ = _ci(tmp_path, preset="ci-collapse")
    assert code == 0 and len(load_records(out / "results.jsonl")) == 2


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_training_records_the_lr_sum_its_schedule_predicts(schedule):
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    splits = data.Splits(name="toy", num_classes=3, augment=None, train_x=x, train_y=y, val_x=x[:9], val_y=y[:9],
                         test_x=x[:9], test_y=y[:9])
    budget = Budget(epochs=3, finetune_epochs=1, batch_size=16, schedule=schedule, lr=0.1)
    stats = train(nn.Linear(6, 3), splits, budget, epochs=3, lr=0.1, seed=0)
    assert stats.lr_sum == pytest.approx(planned_lr_sum(budget, lr=0.1, epochs=3, per_epoch=3), rel=1e-9)
    assert len(stats.loss_curve) == 3


def test_every_record_carries_its_decay_budget_and_the_report_warns_below_the_threshold(tmp_path):
    code, out = _ci(tmp_path)
    assert code == 0
    records = load_records(out / "results.jsonl")
    b = PRESETS.get("ci").budget
    expect = decay_budget(b, planned_lr_sum(b, lr=b.lr, epochs=5, per_epoch=math.ceil(len(
        data.load("digits").train_x) / b.batch_size)))
    for r in records:
        assert r.pretrain_decay_budget == pytest.approx(expect, rel=1e-9)
        assert r.finetune_decay_budget is not None and 0 < r.finetune_decay_budget < r.pretrain_decay_budget
    text = (out / "report.md").read_text()
    assert "### Decay budget" in text and f"{expect:.3g}" in text
    assert expect < decay.MIN_DECAY_BUDGET
    assert "N > 1 cannot be expected to differ from N = 1" in text
    # The same records with room for weight decay: no warning.
    roomy = [{**r.to_dict(), "pretrain_decay_budget": 1.2} for r in records]
    render(roomy, tmp_path / "roomy", plots=False)
    assert "cannot be expected" not in (tmp_path / "roomy" / "report.md").read_text()


def test_official_decay_budget_is_the_repro_recipe_s():
    b = PRESETS.get("repro-lorita-cifar10-vgg16").budget
    lr_sum = planned_lr_sum(b, lr=b.lr, epochs=b.train_epochs, per_epoch=math.ceil(50_000 / b.batch_size))
    assert decay_budget(b, lr_sum) == pytest.approx(decay.OFFICIAL_DECAY_BUDGET, abs=0.005)


@pytest.mark.parametrize(("preset", "n_train"), [("fashion-mnist-vgg16", 55_000), ("fashion-mnist-resnet20", 55_000),
                                                 ("fashion-mnist-vit", 55_000), ("fashion-mnist-cpu-vgg16", 10_000)])
def test_shortened_presets_keep_room_for_weight_decay(preset, n_train):
    p = PRESETS.get(preset)
    for method in p.methods:  # each method's own recipe included (AdamW: LoRITa at lr/N, wd ×N)
        b = p.budget_for(registry.METHODS.get(method))
        lr_sum = planned_lr_sum(b, lr=b.lr, epochs=b.train_epochs, per_epoch=math.ceil(n_train / b.batch_size))
        assert decay_budget(b, lr_sum) >= 0.6, method


def test_clipped_points_at_one_target_get_one_readable_label():
    from matplotlib.figure import Figure

    from reports.plots import _label_clipped

    ax = Figure().subplots()
    ax.set_xlim(0, 100)
    _label_clipped(ax, [(70.0, "lorita-n1", 20.8), (70.2, "lorita-n2", 21.1), (70.1, "lorita-n3", 21.4),
                        (50.0, "random", 12.0)], floor=70.0)
    texts = sorted(a.get_text() for a in ax.texts)
    assert texts == ["lorita-n3 21.4%\nlorita-n2 21.1%\nlorita-n1 20.8%", "random 12.0%"]


def test_auto_allocation_never_picks_a_candidate_that_misses_the_target():
    from bench.catalog.budget import Target
    from bench.catalog.protocol import Calib

    torch.manual_seed(0)
    # Forty small layers (each can save 0.4 % of the model, below min-share's 1 %) and two big ones:
    # min-share can cut at most ~79 % of the parameters, so at 90 % only the global rule lands.
    model = nn.Sequential(*(nn.Linear(40, 40) for _ in range(40)), nn.Linear(40, 512), nn.Linear(512, 512),
                          nn.Linear(512, 10))
    x, y = torch.randn(64, 40), torch.arange(64) % 10
    calib = Calib(example=x[:1], batch_x=x, batch_y=y, num_classes=10, head="42", protected=("42",),
                  allocation="auto", val_x=x, val_y=y)
    out = registry.METHODS.get("lorita-n1").compress(model, Target(kind="params", drop=0.9), calib)
    assert out.allocation == "global" and set(out.allocation_val_acc) == {"global"}
    assert abs(out.achieved_drop - 0.9) <= 0.01
    assert out.layers["42"] == 10  # the protected head
