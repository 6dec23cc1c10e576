"""The harness: registry, budget, records, data splits, training, and the paper's claim on digits."""

import json
import os
from dataclasses import replace

import pytest
import torch

import lorita
from bench.catalog import data as data_mod
from bench.catalog.budget import Budget, Target, parse_targets
from bench.catalog.models import build
from bench.catalog.presets import QUICK_BUDGET
from bench.catalog.registry import PRESETS, Registry
from bench.execution.runner import BudgetMismatch, check_budget
from bench.execution.train import accuracy, train
from bench.records.errors import UsageError
from bench.records.results import Record, append_record, load_records


def test_registry_refuses_a_second_entry_under_the_same_name():
    reg = Registry("widget")
    reg.add("a", 1, description="one")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2, description="two")
    assert reg.get("a") == 1


def test_unknown_name_lists_close_matches_and_every_accepted_name():
    reg = Registry("widget")
    for name in ("lorita-n1", "lorita-n2", "l1-filter"):
        reg.add(name, name, description="")
    with pytest.raises(UsageError) as err:
        reg.get("lorita-n5")
    msg = str(err.value)
    assert "unknown widget 'lorita-n5'" in msg and "did you mean" in msg
    assert "accepted: l1-filter, lorita-n1, lorita-n2" in msg


@pytest.mark.parametrize(("changes", "field"), [
    ({"epochs": 0}, "epochs"), ({"finetune_epochs": 40}, "finetune_epochs"),
    ({"optimizer": "lion"}, "optimizer"), ({"schedule": "linear"}, "schedule"), ({"lr": 0}, "lr"),
])
def test_bad_budget_names_the_field_and_what_is_accepted(changes, field):
    with pytest.raises(UsageError, match=rf"bad budget: {field}=.*accepted"):
        replace(QUICK_BUDGET, **changes)


def test_targets_parse_and_refuse_nonsense():
    assert parse_targets("params:0.5,0.7") == (Target(kind="params", drop=0.5), Target(kind="params", drop=0.7))
    assert parse_targets("params:0.5,flops:0.3")[1] == Target(kind="flops", drop=0.3)
    for bad in ("0.5", "latency:0.5", "params:1.5", "params:x", ""):
        with pytest.raises(UsageError, match="accepted"):
            parse_targets(bad)


def _record(**kw):
    base = {"dataset": "digits", "model": "fcn", "method": "lorita-n1", "family": "lorita", "n": 1,
            "target_kind": "params", "target_drop": 0.5, "seed": 0, "train_steps": 100}
    return Record(**{**base, **kw})


def test_records_append_atomically_and_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    first = _record(acc=0.9, layers={"1": 4})
    append_record(path, first)
    assert load_records(path) == [first]
    before = path.read_bytes()

    def crash(*_args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "write", crash)  # one write per record: it fails whole or not at all
    with pytest.raises(OSError):
        append_record(path, _record(method="lorita-n2"))
    assert path.read_bytes() == before  # the interrupted append left the old records whole
    # and nothing behind but the lock file beside the records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl", "results.jsonl.lock"]


def test_mismatched_optimizer_steps_void_the_comparison():
    check_budget([_record(), _record(method="l1-filter", family="pruning")])
    with pytest.raises(BudgetMismatch, match="different optimizer steps"):
        check_budget([_record(), _record(method="l1-filter", family="pruning", train_steps=90)])


def test_digits_splits_are_fixed_disjoint_and_normalized_on_train():
    a, b = data_mod.load("digits"), data_mod.load("digits")
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.val_y, b.val_y)
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (1077, 360, 360)
    flat = [t.flatten(1) for t in (a.train_x, a.val_x, a.test_x)]
    rows = [{tuple(r.tolist()) for r in f} for f in flat]
    assert not (rows[0] & rows[2]) or len(rows[0] & rows[2]) < 5  # digits has a few exact duplicates
    assert abs(float(a.train_x.mean())) < 1e-5 and abs(float(a.train_x.std()) - 1) < 1e-3
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10


@pytest.fixture(scope="module")
def trained():
    """LoRITa N=1..4 trained on digits under the quick preset's budget, merged."""
    d = data_mod.load("digits")
    out = {}
    for n in (1, 2, 3, 4):
        torch.manual_seed(0)
        model = lorita.overparameterize(build("fcn", 10, d.input_shape, {"depth": 4, "width": 128}), n)
        stats = train(model, d, QUICK_BUDGET, epochs=QUICK_BUDGET.train_epochs, lr=QUICK_BUDGET.lr, seed=0)
        out[n] = (lorita.merge(model), stats)
    return d, out


def test_every_n_trains_well_above_chance_on_digits(trained):
    d, out = trained
    for n, (model, stats) in out.items():
        assert accuracy(model, d.val_x, d.val_y) > 0.85, f"N={n} did not train"
        assert stats.steps == QUICK_BUDGET.train_epochs * 17


def test_paper_claim_more_factors_give_lower_effective_rank(trained):
    # Measure: entropy effective rank (Roy & Vetterli 2007) of each merged hidden weight,
    # averaged over the layers; same weight decay, epochs and initial weights for every N.
    _, out = trained

    def mean_erank(model):
        ranks = [lorita.effective_rank(s) for s in lorita.spectra(model).values()]
        return sum(ranks) / len(ranks)

    e1, e3 = mean_erank(out[1][0]), mean_erank(out[3][0])
    assert e3 < 0.7 * e1, f"N=3 effective rank {e3:.1f} not clearly below N=1's {e1:.1f}"
    assert mean_erank(out[4][0]) < mean_erank(out[2][0]) < e1


def test_quick_preset_compares_lorita_with_the_baselines_at_three_targets():
    p = PRESETS.get("quick")
    assert p.methods[:4] == ("lorita-n1", "lorita-n2", "lorita-n3", "l1-filter")
    assert {"group-l2", "taylor", "random", "magnitude-unstructured"} <= set(p.methods)
    assert [t.drop for t in p.targets] == [0.5, 0.7, 0.9] and p.dataset == "digits"


def test_budget_digest_changes_with_any_field():
    assert Budget().digest() != Budget(lr=0.03).digest()
    assert json.dumps(Budget().digest())
