"""Pruning baselines on every model family: they run, hit the measured target, keep the head."""

import re

import pytest
import torch
from torch import nn

from baselines import pruning
from bench.catalog.budget import Budget, Target
from bench.catalog.methods import Calib
from bench.catalog.models import build, head_of
from bench.catalog.registry import METHODS
from bench.records.errors import NotApplicable
from lorita.counting import count_macs_params

PRUNING = [e.name for e in METHODS if e.meta.get("family") == "pruning" and e.name != "magnitude-unstructured"]
FAMILIES = {
    "fcn": ((1, 8, 8), {"depth": 4, "width": 64}),
    "vgg16": ((3, 16, 16), {"width": 0.125}),
    "resnet20": ((3, 16, 16), {"width": 0.5}),
    "vit": ((3, 16, 16), {"embed_dim": 48, "depth": 2, "num_heads": 4}),
}


def _setup(family, num_classes=10):
    shape, options = FAMILIES[family]
    torch.manual_seed(0)
    model = build(family, num_classes, shape, options).eval()
    with torch.no_grad():  # random weights everywhere: BN scales start at exactly 1, a pure tie
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    x = torch.randn(16, *shape)
    calib = Calib(example=x[:1], batch_x=x, batch_y=torch.arange(16) % num_classes, num_classes=num_classes,
                  head=head_of(model, num_classes))
    return model, calib


def test_every_baseline_is_registered_with_its_paper():
    for name in ("l1-filter", "group-l2", "depgraph-sl", "bn-slimming", "taylor", "hessian", "lamp", "fpgm",
                 "random", "magnitude-unstructured"):
        entry = METHODS.entry(name)
        assert entry.meta["family"] == "pruning" and entry.meta["paper"] and entry.description


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", PRUNING)
def test_baseline_prunes_to_the_measured_target_and_still_runs(family, name):
    model, calib = _setup(family)
    method = METHODS.get(name)
    if method.skip_reason(model):
        assert name == "bn-slimming" and family in ("fcn", "vit")
        assert "BatchNorm" in method.skip_reason(model)
        return
    target = Target(kind="params" if name != "lamp" else "flops", drop=0.5)
    out = method.compress(model, target, calib)
    macs0, params0 = count_macs_params(model, calib.example)
    macs1, params1 = count_macs_params(out.model, calib.example)
    achieved = 1 - (params1 / params0 if target.kind == "params" else macs1 / macs0)
    assert abs(achieved - 0.5) <= 0.01, f"{name} on {family}: {achieved:.4f}"
    assert out.achieved_drop == pytest.approx(achieved)
    with torch.no_grad():
        assert out.model(calib.batch_x).shape == (16, 10)  # the head's width is never pruned
    assert out.model.get_submodule(calib.head).out_features == 10


def test_pruned_vit_loses_whole_heads_and_counts_what_it_runs():
    from timm.layers import Attention

    model, calib = _setup("vit")
    out = METHODS.get("group-l2").compress(model, Target(kind="flops", drop=0.4), calib)
    attns = [m for m in out.model.modules() if isinstance(m, Attention)]
    assert any(a.num_heads < 4 for a in attns)
    tokens = 1 + (16 // 4) ** 2
    for a in attns:
        assert a.qkv.out_features == 3 * a.num_heads * a.head_dim == 3 * a.attn_dim
        assert a.proj.in_features == a.attn_dim
    # Independent count: every Linear/Conv from its shape, plus attention's own products.
    expected = 0
    for m in out.model.modules():
        if isinstance(m, nn.Linear):
            rows = 1 if m is out.model.head else tokens
            expected += rows * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            expected += (16 // 4) ** 2 * m.in_channels * m.out_channels * 16
        elif isinstance(m, Attention):
            expected += tokens * m.attn_dim + m.num_heads * (2 * tokens * tokens * m.head_dim + tokens * tokens)
    counted, _ = count_macs_params(out.model, calib.example)
    # The counter adds biases, norms and activations on top of these products: a few percent.
    assert expected <= counted <= expected * 1.1
    with torch.no_grad():
        out.model(calib.batch_x)


def test_unstructured_magnitude_counts_zeros_and_claims_no_flops():
    model, calib = _setup("fcn")
    method = METHODS.get("magnitude-unstructured")
    out = method.compress(model, Target(kind="params", drop=0.7), calib)
    final = method.finalize(out.model)
    total = sum(p.numel() for p in model.parameters())
    kept = method.deployed_params(final, total)
    assert abs(1 - kept / total - 0.7) <= 0.01
    assert count_macs_params(final, calib.example)[0] == count_macs_params(model, calib.example)[0]
    assert "dense kernels" in out.note
    with pytest.raises(NotApplicable, match="FLOPs"):
        method.compress(model, Target(kind="flops", drop=0.5), calib)


def test_masks_keep_pruned_weights_at_zero_through_fine_tuning():
    from bench.catalog import data as data_mod
    from bench.execution.train import train

    d = data_mod.load("digits")
    torch.manual_seed(0)
    model = build("fcn", 10, d.input_shape, {"depth": 3, "width": 32})
    pruned, _ = pruning.magnitude_unstructured(model, 0.6)
    zeros_before = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, nn.Linear))
    train(pruned, d, Budget(epochs=2, finetune_epochs=0), epochs=1, lr=0.05, seed=0)
    pruning.make_permanent(pruned)
    zeros_after = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, nn.Linear))
    assert zeros_after >= zeros_before > 0


@pytest.mark.parametrize("name", ["depgraph-sl", "bn-slimming"])
def test_sparse_learning_regularizer_changes_pre_training(name):
    from bench.catalog import data as data_mod
    from bench.execution.train import train

    d = data_mod.load("digits")
    shape = d.input_shape
    torch.manual_seed(0)
    base = build("vgg16", 10, shape, {"width": 0.0625})
    model, plain = base, build("vgg16", 10, shape, {"width": 0.0625})
    plain.load_state_dict(base.state_dict())
    calib = Calib(example=d.train_x[:1], batch_x=d.train_x[:8], batch_y=d.train_y[:8], num_classes=10,
                  head=head_of(model, 10))
    reg = METHODS.get(name).regularizer(model, calib)
    assert reg is not None
    budget = Budget(epochs=2, finetune_epochs=0, batch_size=256)
    a = train(model, d, budget, epochs=1, lr=0.05, seed=0, after_backward=reg)
    b = train(plain, d, budget, epochs=1, lr=0.05, seed=0)
    assert a.steps == b.steps  # the regularizer adds gradient, not steps
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), plain.parameters(), strict=True))
    assert diff > 1e-6
    assert METHODS.get("group-l2").regularizer(model, calib) is None


def test_every_method_uses_the_same_optimizer_steps_through_the_cli(tmp_path):
    from bench.cli import main
    from bench.records.results import load_records

    methods = ",".join(["lorita-n2", *PRUNING, "magnitude-unstructured"])
    assert main(["run", "--preset", "quick", "--out", str(tmp_path), "--no-progress", "--epochs", "3",
                 "--finetune-epochs", "1", "--methods", methods, "--targets", "params:0.5",
                 "--latency-rounds", "3", "--cache-dir", str(tmp_path / "ckpt")]) == 0
    records = {r.method: r for r in load_records(tmp_path / "results.jsonl")}
    assert records["bn-slimming"].status == "skipped"  # the FCN has no BatchNorm: skipped, not a crash
    ok = {m: r for m, r in records.items() if r.status == "ok"}
    assert set(ok) == set(records) - {"bn-slimming"}, {m: r.reason for m, r in records.items()}
    assert {r.train_steps for r in ok.values()} == {3 * 17}
    assert {(r.pretrain_steps, r.finetune_steps) for r in ok.values()} == {(2 * 17, 17)}


def test_hessian_importance_averages_every_per_sample_squared_gradient():
    import torch_pruning as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    # More samples than the 32 the criterion once stopped at, the last ones unlike the first.
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    x[32:] *= 4

    def saliency(n):
        # Independent OBD diagonal: the mean over n samples of each weight's squared gradient.
        h = [torch.zeros_like(model[0].weight), torch.zeros_like(model[2].weight)]
        for i in range(n):
            loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
            for acc, g in zip(h, torch.autograd.grad(loss, [model[0].weight, model[2].weight]), strict=True):
                acc += g.pow(2) / n
        # Saliency of hidden unit c: its row of layer 1 plus its column of layer 2 (the group's two members).
        with torch.no_grad():
            s = (model[0].weight ** 2 * h[0]).sum(1) + (model[2].weight ** 2 * h[1]).sum(0)
        return s / s.sum()

    expected = saliency(40)
    assert not torch.allclose(saliency(32), expected, rtol=1e-2)  # the last 8 samples matter here

    importance = pruning.BASELINES["hessian"].importance()
    pruning._gradients(model, importance, "hessian", x, y)
    group = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1]).get_pruning_group(
        model[0], tp.prune_linear_out_channels, idxs=list(range(5)))
    got = importance(group)
    # The criterion's group mean and mean normalizer scale every unit alike.
    assert torch.allclose(got / got.sum(), expected, rtol=1e-4, atol=1e-7)


def _vit_pruned_with_heads(name, *, heads, depth, drop):
    from timm.layers import Attention

    torch.manual_seed(0)
    model = build("vit", 10, (1, 8, 8), {"embed_dim": 8 * heads, "depth": depth, "num_heads": heads}).eval()
    x = torch.randn(16, 1, 8, 8)
    calib = Calib(example=x[:1], batch_x=x, batch_y=torch.arange(16) % 10, num_classes=10,
                  head=head_of(model, 10))
    out = METHODS.get(name).compress(model, Target(kind="params", drop=drop), calib)
    assert abs(out.achieved_drop - drop) <= 0.01
    with torch.no_grad():
        assert out.model(x).shape == (16, 10)
    return [a.num_heads for a in out.model.modules() if isinstance(a, Attention)]


@pytest.mark.parametrize("name", ["group-l2", "depgraph-sl", "taylor"])
def test_global_head_ranking_keeps_a_head_in_every_block(name):
    # The cifar10-vit shape that emptied blocks: 3 heads per block, a drop that removes 2 of 3.
    # floor(0.7 · 3) = 2 of every 3 heads go, ranked across the 8 blocks: one left in each.
    assert _vit_pruned_with_heads(name, heads=3, depth=8, drop=0.7) == [1] * 8


def test_head_count_survives_floating_point_ratios():
    # 4/5 in floating point asks torch-pruning for one head more than 4 of every 5.
    assert _vit_pruned_with_heads("group-l2", heads=5, depth=4, drop=0.82) == [1] * 4


@pytest.mark.parametrize("old", ["version", "attention"])
def test_a_timm_too_old_for_vit_heads_fails_with_one_clear_line(monkeypatch, old):
    import timm
    import timm.layers

    model, calib = _setup("vit")
    if old == "version":  # an older timm whose Attention reshapes to the input width
        monkeypatch.setattr(timm, "__version__", "1.0.22")
        installed = "1.0.22"
    else:  # before 1.0.16 ViTs use a private class and timm.layers has no Attention
        monkeypatch.delattr(timm.layers, "Attention")
        installed = timm.__version__
    message = rf"^timm {re.escape(installed)} is installed, but .* needs timm>=1\.0\.23 [^\n]*$"
    with pytest.raises(ImportError, match=message):
        count_macs_params(model, calib.example)
    with pytest.raises(ImportError, match=message):
        METHODS.get("group-l2").compress(model, Target(kind="params", drop=0.5), calib)
    fcn, fcn_calib = _setup("fcn")  # a model without timm modules never looks at timm
    count_macs_params(fcn, fcn_calib.example)


def test_pyproject_timm_floor_is_the_one_the_code_checks():
    from pathlib import Path

    from lorita.counting import TIMM_FLOOR

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.findall(r'"timm>=([^"]+)"', pyproject) == [TIMM_FLOOR]


def test_pruning_leaves_no_layers_in_torch_prunings_shared_defaults():
    import inspect

    import torch_pruning as tp

    model, calib = _setup("vit")
    METHODS.get("group-l2").compress(model, Target(kind="params", drop=0.5), calib)
    METHODS.get("depgraph-sl").regularizer(model, calib)
    for pruner in (tp.pruner.BasePruner, tp.pruner.GroupNormPruner):
        defaults = inspect.signature(pruner.__init__).parameters
        assert defaults["out_channel_groups"].default == {} and defaults["in_channel_groups"].default == {}
