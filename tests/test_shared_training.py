"""One training per distinct model, one reference per seed, zero-shot accuracy, A/B latency, the budget rule."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from bench.catalog import PRESETS
from bench.catalog.budget import Target
from bench.catalog.data import load
from bench.catalog.evaluate import accuracy
from bench.catalog.protocol import PLAIN
from bench.catalog.registry import METHODS
from bench.execution import measure, runner
from bench.execution.job import run_group
from bench.execution.runner import BudgetMismatch, check_budget, plan
from bench.records.results import Record, load_records


def test_fashion_mnist_fcn_trains_four_models_per_seed_not_eight_plus_one_per_target_for_lowrank_fixed(tmp_path):
    preset = PRESETS.get("fashion-mnist-fcn")
    jobs = plan(preset, set(), cache_dir=tmp_path)
    assert [j.pretraining for j in jobs] == [PLAIN, "lorita-n2", "lorita-n3",
                                             *(f"lowrank-fixed:{t}" for t in preset.targets),
                                             "depgraph-sl:group-norm(reg=0.0005)"]
    assert all(j.work == (("lowrank-fixed", (t,)),) for j, t in zip(jobs[3:6], preset.targets, strict=True))
    plain = jobs[0]
    assert set(plain.methods) == {"lorita-n1", "l1-filter", "group-l2", "taylor", "random"}
    assert all(targets == preset.targets for _, targets in plain.work)


def test_every_plain_method_names_the_same_pretraining_and_regularized_ones_their_own():
    at = Target(kind="params", drop=0.5)
    plain = {e.name for e in METHODS if e.obj.family != "control" and e.obj.for_target(at).pretraining() == PLAIN}
    assert {"lorita-n1", "l1-filter", "group-l2", "taylor", "hessian", "lamp", "fpgm", "random",
            "magnitude-unstructured"} == plain
    assert len({METHODS.get(m).pretraining() for m in ("lorita-n2", "lorita-n3", "depgraph-sl", "bn-slimming")}) == 4


def test_a_seed_without_a_plain_method_gets_a_reference_only_job_until_its_reference_is_recorded(tmp_path):
    preset = PRESETS.get("ci").override(methods=("lorita-n3",), seeds=(0, 1))
    jobs = plan(preset, set(), cache_dir=tmp_path)
    assert [(j.pretraining, j.seed, j.methods) for j in jobs] == [
        (PLAIN, 0, ()), ("lorita-n3", 0, ("lorita-n3",)), (PLAIN, 1, ()), ("lorita-n3", 1, ("lorita-n3",))]
    jobs = plan(preset, set(), cache_dir=tmp_path, references=frozenset({0}))
    assert [(j.pretraining, j.seed) for j in jobs] == [("lorita-n3", 0), (PLAIN, 1), ("lorita-n3", 1)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The ci preset on digits, shortened: LoRITa N=1 and L1 share one training, N=3 has its own."""
    tmp = tmp_path_factory.mktemp("shared")
    ci = PRESETS.get("ci")
    preset = ci.override(budget=replace(ci.budget, epochs=3, finetune_epochs=1), latency_rounds=4,
                         throughput_batch=16, targets=(Target(kind="params", drop=0.5),))
    records = runner.run(preset, tmp / "out", progress=False, echo=lambda s: None, cache_dir=tmp / "cache")
    return preset, records, tmp


def test_methods_sharing_a_pretraining_compress_one_trained_model(tiny_run):
    _, records, tmp = tiny_run
    by = {r.method: r for r in records}
    assert {r.status for r in records} == {"ok"}, [r.reason for r in records]
    assert len(list((tmp / "cache").glob("*[0-9a-f].pt"))) == 2  # plain and lorita-n3, not three
    # One trained model: the same dense model under both methods, so the same dense accuracy and spectra.
    assert by["lorita-n1"].base_acc == by["l1-filter"].base_acc and by["lorita-n1"].spectra == by["l1-filter"].spectra
    assert (by["lorita-n1"].pretrain_id, by["lorita-n3"].pretrain_id) == (PLAIN, "lorita-n3")


def test_every_record_is_measured_against_the_one_plain_reference(tiny_run):
    records = tiny_run[1]
    ref = next(r.base_acc for r in records if r.method == "lorita-n1")
    for r in records:
        assert r.ref_acc == ref and r.delta_acc == pytest.approx(r.acc - ref)
    # N=3's own dense accuracy stays beside the reference: that of its own trained model, reloaded
    # from the cache and measured here, not the reference's.
    preset, _, tmp = tiny_run
    n3 = next(r for r in records if r.method == "lorita-n3")
    data = load(preset.dataset)
    group = run_group(preset, [(METHODS.get("lorita-n3"), list(preset.targets))], data, 0, cache_dir=tmp / "cache",
                      keep_models=True)
    built = group.built["lorita-n3"]
    assert built.records[0].pretrain_cached  # the very model the run trained
    assert n3.base_acc == accuracy(built.dense, data.test_x, data.test_y)


def test_a_rerun_trains_nothing_and_finds_the_reference_in_the_records(tiny_run):
    preset, records, tmp = tiny_run
    wider = preset.override(targets=(Target(kind="params", drop=0.5), Target(kind="params", drop=0.7)),
                            methods=("lorita-n3",))
    new = runner.run(wider, tmp / "out", progress=False, echo=lambda s: None, cache_dir=tmp / "cache")
    added = [r for r in new if r.target_drop == 0.7]
    assert len(added) == 1 and added[0].pretrain_cached is True
    assert added[0].ref_acc == next(r.base_acc for r in records if r.method == "lorita-n1")
    assert len(load_records(tmp / "out" / "results.jsonl")) == 4


def test_zero_shot_accuracy_is_the_compressed_model_before_fine_tuning(tmp_path):
    ci = PRESETS.get("ci")
    preset = ci.override(methods=("lorita-n1",), budget=replace(ci.budget, epochs=3, finetune_epochs=1),
                         latency_rounds=2, throughput_batch=4, targets=(Target(kind="params", drop=0.8),))
    # Two fine-tunings of one trained model (another fine-tuning lr keeps the pre-training): what they
    # do differs, what the compressed model scored before either must not.
    runs = [runner.run(preset.override(recipes={"lorita-n1": {"finetune_lr": lr}}), tmp_path / f"out{lr}",
                       progress=False, echo=lambda s: None, cache_dir=tmp_path / "c") for lr in (0.002, 0.2)]
    (a,), (b,) = runs
    assert a.finetune_steps == b.finetune_steps > 0 and b.pretrain_cached
    assert (a.acc_zero_shot, a.val_acc_zero_shot) == (b.acc_zero_shot, b.val_acc_zero_shot)
    assert (a.acc, a.val_acc) != (b.acc, b.val_acc)  # the fine-tunings did differ


def _ok(method, target_drop, steps, seed=0):
    return Record(dataset="digits", model="fcn", method=method, family="pruning", n=None, target_kind="params",
                  target_drop=target_drop, seed=seed, train_steps=steps, config_hash="c")


def test_budget_rule_checks_every_target_and_seed_not_one_per_method():
    check_budget([_ok("l1-filter", 0.5, 340), _ok("l1-filter", 0.8, 340), _ok("lorita-n1", 0.5, 340)])
    # The same method with a different step count at one target: the old check kept one value per method.
    with pytest.raises(BudgetMismatch, match=r"l1-filter params:0\.8 seed 0"):
        check_budget([_ok("l1-filter", 0.5, 340), _ok("l1-filter", 0.8, 341), _ok("lorita-n1", 0.5, 340)])
    with pytest.raises(BudgetMismatch):
        check_budget([_ok("l1-filter", 0.5, 340), _ok("l1-filter", 0.5, 339, seed=1)])


def test_ab_latency_pairs_rounds_and_brackets_its_speedup():
    torch.manual_seed(0)
    dense = nn.Sequential(*(nn.Linear(384, 384) for _ in range(6)))
    small = nn.Sequential(nn.Linear(384, 8), nn.Linear(8, 384))
    p = measure.latency_ab(dense, small, (384,), batch_size=64, rounds=12, warmup=2)
    assert p.dense.rounds == p.deployed.rounds == 12 and p.dense.device == p.deployed.device
    assert p.speedup_lo <= p.speedup <= p.speedup_hi
    assert p.speedup > 2  # ~36× fewer MACs
    same = measure.latency_ab(dense, dense, (384,), batch_size=8, rounds=8, warmup=1)
    assert same.speedup_lo <= same.speedup <= same.speedup_hi


def test_bootstrap_interval_is_reproducible_and_ordered():
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.8]
    lo, hi = measure.bootstrap_median_interval(values)
    assert (lo, hi) == measure.bootstrap_median_interval(values) and lo <= 1.0 <= hi


def test_a_run_without_a_plain_method_still_measures_against_the_plain_reference(tmp_path):
    ci = PRESETS.get("ci")
    preset = ci.override(methods=("lorita-n3",), budget=replace(ci.budget, epochs=3, finetune_epochs=1),
                         latency_rounds=2, throughput_batch=4, targets=(Target(kind="params", drop=0.5),))
    (r,) = runner.run(preset, tmp_path / "out", progress=False, echo=lambda s: None, cache_dir=tmp_path / "c")
    # The reference-only job trained the plain model (its own checkpoint) and measured it.
    plain = runner.run(preset.override(methods=("lorita-n1",)), tmp_path / "out", progress=False,
                       echo=lambda s: None, cache_dir=tmp_path / "c")
    n1 = next(x for x in plain if x.method == "lorita-n1")
    assert n1.pretrain_cached is True and r.ref_acc == n1.base_acc and r.pretrain_id == "lorita-n3"
