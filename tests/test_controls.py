"""Controls and low-rank training: scratch:<method> trains the deployed architecture afresh for the same steps,
lowrank-fixed (Khodak et al.) fixes its ranks before training and lands on its targets, the report shows each
control beside its cell and the published numbers on the accuracy-vs-drop figure."""

import re
from dataclasses import replace

import pytest
import torch
from torch import nn

import lorita
from bench.catalog import PRESETS
from bench.catalog.budget import Target
from bench.catalog.controls import parse_controls
from bench.catalog.data import load
from bench.catalog.models import build
from bench.catalog.registry import METHODS
from bench.execution import job, runner
from bench.records.errors import UsageError
from lorita.lowrank import UniformRankRatio, densify, frobenius_decay
from reports import plots, tables
from reports.controls import control_lines, pairs

HALF = Target(kind="params", drop=0.5)


def _tiny(preset_name="ci", **changes):
    p = PRESETS.get(preset_name)
    return p.override(budget=replace(p.budget, epochs=3, finetune_epochs=1), latency_rounds=2, throughput_batch=8,
                      chance_check=False, targets=(HALF,), **changes)


def _shape(model: nn.Module) -> list[tuple]:
    return [(name, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
            for name, m in model.named_modules()]


FCN = {"model_options": {"depth": 3, "width": 32}}
VGG = {"model": "vgg16", "model_options": {"width": 0.0625}}


@pytest.mark.parametrize(("method", "model"), [("group-l2", FCN), ("lorita-n2", FCN), ("l1-filter", VGG),
                                               ("lorita-n1", VGG)])
def test_scratch_control_is_the_deployed_architecture_afresh_with_the_same_steps(method, model):
    preset = _tiny(**model)
    work = [(METHODS.get(method), [HALF]), (METHODS.get(f"scratch:{method}"), [HALF])]
    group = job.run_group(preset, work, load("digits"), 0, keep_models=True)
    ours, ctl = group.built[method], group.built[f"scratch:{method}"]
    a, b = ours.deployed[HALF], ctl.deployed[HALF]
    assert _shape(a) == _shape(b)  # layer by layer: the same modules, types and parameter shapes
    if method.startswith("lorita"):
        assert any(isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d) for m in b.modules())
    same = [torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)]
    assert not any(same)  # re-initialized and trained on its own: no weight carried over
    r, c = ours.record(HALF), ctl.record(HALF)
    assert (r.status, c.status) == ("ok", "ok"), (r.reason, c.reason)
    assert c.control_of == method and c.family == "control" and r.control_of is None
    assert c.train_steps == r.train_steps and c.pretrain_steps == r.pretrain_steps > 0
    assert c.finetune_steps == r.finetune_steps > 0
    assert (c.params, c.macs) == (r.params, r.macs) and c.pretrain_cached is False
    assert c.pretrain_curve != r.pretrain_curve  # its own training's curve, not the method's


def test_runner_plans_controls_in_their_method_s_job_only_at_control_targets(tmp_path):
    preset = PRESETS.get("quick").override(controls=("scratch:group-l2", "scratch:lorita-n2"),
                                           control_targets=(Target(kind="params", drop=0.7),))
    jobs = {j.pretraining: dict(j.work) for j in runner.plan(preset, set(), cache_dir=tmp_path)}
    assert jobs["plain"]["scratch:group-l2"] == (Target(kind="params", drop=0.7),)
    assert jobs["lorita-n2"]["scratch:lorita-n2"] == (Target(kind="params", drop=0.7),)
    assert jobs["plain"]["group-l2"] == preset.targets


def test_controls_option_names_controls_of_the_run_s_methods():
    methods = ("lorita-n1", "group-l2", "magnitude-unstructured")
    # Unstructured sparsity keeps the dense shape: nothing to train from scratch.
    assert parse_controls("scratch", methods) == ("scratch:lorita-n1", "scratch:group-l2")
    assert parse_controls("scratch:group-l2", methods) == ("scratch:group-l2",)
    for bad in ("scratch:taylor", "retrain", "scratch:nope"):
        with pytest.raises(UsageError, match="accepted"):
            parse_controls(bad, methods)
    with pytest.raises(UsageError, match="control"):
        PRESETS.get("quick").override(controls=("scratch:depgraph-sl",))
    with pytest.raises(UsageError, match="not targets of this run"):
        PRESETS.get("quick").override(controls=("scratch:group-l2",), control_targets=(Target(kind="flops", drop=.5),))


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_uniform_rank_ratio_fixes_ranks_from_shapes_alone_and_meets_the_target(kind):
    shape = (1, 8, 8)
    example = torch.zeros(1, *shape)
    torch.manual_seed(0)
    a, b = build("vgg16", 10, shape, {"width": 0.125}), build("vgg16", 10, shape, {"width": 0.125})
    policy = UniformRankRatio(drop=0.5, kind=kind)
    plan = lorita.truncate(a, policy, example, exclude=("classifier",))
    assert plan.ranks == lorita.truncate(b, policy, example, exclude=("classifier",)).ranks  # weights do not matter
    deployed = lorita.factorize(a, plan)
    macs0, params0 = lorita.count_macs_params(a, example)
    macs1, params1 = lorita.count_macs_params(deployed, example)
    got = 1 - (params1 / params0 if kind == "params" else macs1 / macs0)
    assert abs(got - 0.5) <= 0.01


def test_frobenius_decay_replaces_the_factors_decay_by_the_product_s():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    model = lorita.factorize(dense, lorita.truncate(dense, lorita.RankRatio(ratio=0.5), torch.zeros(1, 3, 6, 6)))
    factors = [m for m in model.modules() if isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d)]
    assert len(factors) == 2
    lam = 0.1
    penalty = sum(0.5 * lam * (f[1].weight.flatten(1) @ f[0].weight.flatten(1)).square().sum() for f in factors)
    expected = torch.autograd.grad(penalty, [p for f in factors for p in (f[0].weight, f[1].weight)])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    frobenius_decay(model, lam, coupled=True)(model)
    got = [p.grad for f in factors for p in (f[0].weight, f[1].weight)]
    # Coupled SGD adds λ·p to each gradient afterwards: the hook already took it off the factors.
    for g, e, p in zip(got, expected, [p for f in factors for p in (f[0].weight, f[1].weight)], strict=True):
        torch.testing.assert_close(g + lam * p, e)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(densify(model).double()(x), model.double()(x))


@pytest.mark.parametrize(("preset_name", "changes", "targets"), [
    ("quick", {"model_options": {"depth": 3, "width": 64}}, (HALF, Target(kind="params", drop=0.7))),
    ("quick", {"model": "vgg16", "model_options": {"width": 0.125}}, (HALF, Target(kind="flops", drop=0.5))),
])
def test_lowrank_fixed_trains_once_per_target_and_lands_on_it(tmp_path, preset_name, changes, targets):
    preset = _tiny(preset_name, methods=("lowrank-fixed",), **changes).override(targets=targets)
    records = runner.run(preset, tmp_path / "out", progress=False, echo=lambda s: None, cache_dir=tmp_path / "c")
    assert [r.status for r in records] == ["ok", "ok"], [r.reason for r in records]
    # The plain reference (every ΔAcc is taken against it) and one training per target.
    assert len(list((tmp_path / "c").glob("*[0-9a-f].pt"))) == 1 + len(targets)
    for r, t in zip(sorted(records, key=lambda r: r.target_drop), targets, strict=True):
        got = r.params_drop if t.kind == "params" else r.flops_drop
        assert abs(got - t.drop) <= r.target_tolerance and not r.target_missed
        assert r.ranks_fixed_before_training is True and r.pretrain_id == f"lowrank-fixed:{t}"
        assert "fixed before training" in r.note and r.family == "lowrank"
        assert any(rank < r.layers_full[name] for name, rank in r.layers.items())
    assert len({r.train_steps for r in records}) == 1


def _rec(method, seed, acc, **extra):
    return {"dataset": "digits", "model": "fcn", "method": method, "family": extra.pop("family", "pruning"),
            "n": None, "target_kind": "params", "target_drop": 0.5, "seed": seed, "status": "ok", "acc": acc,
            "base_acc": 0.96, "ref_acc": 0.96, "params_drop": 0.5, "flops_drop": 0.5, "config_hash": "h", **extra}


def test_report_shows_each_control_beside_its_cell_with_a_paired_interval_and_never_ranks_it():
    recs = [_rec("group-l2", s, 0.90 + 0.01 * s) for s in range(3)]
    recs += [_rec("taylor", s, 0.80 + 0.01 * s) for s in range(3)]
    recs += [_rec("scratch:group-l2", s, 0.95 + 0.01 * s, family="control", control_of="group-l2") for s in range(3)]
    (p,) = pairs(recs)
    assert (p.method, p.control) == ("group-l2", "scratch:group-l2")
    assert p.diffs == pytest.approx((-5.0, -5.0, -5.0)) and p.interval()[1] < 0
    text = "\n".join(control_lines(recs))
    assert re.search(r"\| group-l2 \| params 50% \| 91\.00 ± [\d.]+ \| 96\.00 ± [\d.]+ \| "
                     r"-5\.00 \[-5\.00, -5\.00\] \| 3 \| from scratch is better", text)
    block = [r for r in tables.rows(recs)]
    acc = next(m for m in tables.METRICS if m.key == "acc")
    (best,) = tables.best(block, acc)
    assert block[best].method == "group-l2"  # the control is more accurate, and never marked best


def test_accuracy_vs_drop_figure_shows_published_numbers_as_hollow_markers(tmp_path):
    recs = [_rec(m, s, a + 0.01 * s, acc_zero_shot=0.5) for m, a in (("group-l2", 0.9), ("l1-filter", 0.88))
            for s in range(2)]
    published = {"h": [
        {"method": "group-l2", "metric": "acc", "value": 0.9346, "target": {"kind": "flops", "drop": 0.5},
         "speed_up": 2.11, "source": "Torch-Pruning benchmarks, ResNet-56 table", "selection": "", "note": ""},
        {"method": "l1-filter", "metric": "base_acc", "value": 0.9353, "target": None, "speed_up": None,
         "source": "Torch-Pruning benchmarks (x)", "selection": "", "note": ""}]}
    points = plots.published_points(published["h"])
    assert ("flops_drop", pytest.approx((1 - 1 / 2.11) * 100), pytest.approx(93.46),
            "group-l2, Torch-Pruning benchmarks (published, their protocol)") in points
    assert {(k, x) for k, x, _, label in points if label.startswith("l1-filter")} == {("flops_drop", 0.0),
                                                                                       ("params_drop", 0.0)}
    (fig,) = plots.accuracy_vs_drop(recs, tmp_path, published)
    svg = fig.svg.read_text()
    # matplotlib writes every text of the figure as a comment beside its glyphs: the legend names both.
    assert "group-l2, Torch-Pruning benchmarks (published, their protocol)" in svg
    assert "l1-filter, Torch-Pruning benchmarks (published, their protocol)" in svg
    (plain,) = plots.accuracy_vs_drop(recs, tmp_path / "none")
    assert "published, their protocol" not in plain.svg.read_text()


def test_benchmark_suite_trains_lowrank_fixed_once_per_target_beside_the_shared_trainings():
    from bench.suite.cells import Suite

    preset = _tiny(methods=("lorita-n1", "lowrank-fixed"), model_options={"depth": 3, "width": 32}).override(
        targets=(HALF, Target(kind="params", drop=0.7)))
    suite = Suite(preset, "tiny")
    built = suite.trained("lowrank-fixed", 0)
    assert [r.status for r in built.records] == ["ok", "ok"], [r.reason for r in built.records]
    assert [r.pretrain_id for r in built.records] == [f"lowrank-fixed:{t}" for t in preset.targets]
    assert set(built.deployed) == set(preset.targets) and all(r.ref_acc is not None for r in built.records)
