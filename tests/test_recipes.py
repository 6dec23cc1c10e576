"""Each method's own recipe at the same step count, and recipes tuned on the validation split (issue 11.8)."""

import json
from dataclasses import replace

import pytest

from bench.catalog import PRESETS
from bench.catalog.budget import RECIPE_FIELDS, Target
from bench.catalog.protocol import PLAIN
from bench.catalog.registry import METHODS
from bench.cli import main
from bench.execution import runner, tune
from bench.execution.runner import plan
from bench.records.errors import UsageError
from bench.records.results import load_records
from reports.render import recipe_lines

CI = PRESETS.get("ci")
TINY = CI.override(budget=replace(CI.budget, epochs=3, finetune_epochs=1), latency_rounds=2, throughput_batch=4,
                   targets=(Target(kind="params", drop=0.5),))


def test_a_family_recipe_changes_its_methods_budget_not_their_steps():
    p = TINY.override(recipes={"pruning": {"lr": 0.05, "weight_decay": 5e-4}})
    pruning, lorita = p.budget_for(METHODS.get("l1-filter")), p.budget_for(METHODS.get("lorita-n1"))
    assert (pruning.lr, pruning.weight_decay) == (0.05, 5e-4) and lorita == p.budget
    assert (pruning.epochs, pruning.finetune_epochs, pruning.batch_size) == (p.budget.epochs, p.budget.finetune_epochs,
                                                                             p.budget.batch_size)
    # Another recipe trains another model: l1-filter no longer shares N=1's plain training.
    assert p.pretraining_of(METHODS.get("lorita-n1")) == PLAIN != p.pretraining_of(METHODS.get("l1-filter"))
    assert p.config_hash() != TINY.config_hash() and TINY.config_hash() == CI.override(
        targets=TINY.targets, budget=TINY.budget, latency_rounds=TINY.latency_rounds,
        throughput_batch=TINY.throughput_batch).config_hash()


@pytest.mark.parametrize(("recipes", "needle"), [
    ({"pruning": {"epochs": 5}}, "recipe for pruning sets epochs"),
    ({"pruning": {"batch_size": 32}}, "recipe for pruning sets batch_size"),
    ({"nonsense": {"lr": 0.1}}, "recipe for unknown family or method 'nonsense'"),
    ({"lorita": {"lr": -1}}, "bad budget: lr=-1"),
])
def test_a_recipe_that_would_change_the_steps_or_is_nonsense_is_refused(recipes, needle):
    with pytest.raises(UsageError, match=needle):
        TINY.override(recipes=recipes)


def test_a_fine_tuning_lr_alone_keeps_the_shared_training(tmp_path):
    p = TINY.override(recipes={"l1-filter": {"finetune_lr": 0.01}})
    assert p.pretraining_of(METHODS.get("l1-filter")) == PLAIN
    assert [j.methods for j in plan(p, set(), cache_dir=tmp_path)] == [("lorita-n1", "l1-filter"), ("lorita-n3",)]


def test_records_carry_each_methods_recipe_and_the_budget_rule_still_holds(tmp_path):
    p = TINY.override(recipes={"pruning": {"weight_decay": 0.003}})
    records = runner.run(p, tmp_path / "out", progress=False, echo=lambda s: None, cache_dir=tmp_path / "c")
    by = {r.method: r for r in records}
    assert by["l1-filter"].recipe["weight_decay"] == 0.003 and by["l1-filter"].recipe["source"] == "preset"
    assert by["lorita-n1"].recipe["weight_decay"] == CI.budget.weight_decay
    assert by["lorita-n1"].recipe["source"] == "preset budget"
    assert len({r.train_steps for r in records}) == 1
    # The reference stays the plain model of the preset's own budget (lorita-n1's), not l1-filter's.
    assert by["l1-filter"].ref_acc == by["lorita-n1"].base_acc
    assert by["l1-filter"].pretrain_id != by["lorita-n1"].pretrain_id


def test_tune_picks_each_methods_recipe_by_validation_accuracy_from_one_grid(tmp_path):
    grid = {"weight_decay": (0.0, 0.01)}
    seen = []
    # l1-filter's own recipe (momentum 0.8) stays under every point: a point sets what it names.
    own = {"lorita-n1": {}, "l1-filter": {"momentum": 0.8}}
    tuned = tune.tune(TINY.override(methods=("lorita-n1", "l1-filter"), recipes={"l1-filter": own["l1-filter"]}),
                      tmp_path, grid, progress=False, echo=seen.append, cache_dir=tmp_path / "c")
    assert tuned.recipe_source == "tuned" and tuned.tune_grid == grid
    for method in ("lorita-n1", "l1-filter"):
        scores = {}
        for folder in (tmp_path / tune.TUNE_FOLDER).glob(f"{method}-*"):
            (r,) = load_records(folder / "results.jsonl")
            recipe = json.loads((folder / "config.json").read_text())["recipes"][method]
            assert recipe == {**own[method], "weight_decay": recipe["weight_decay"]}
            assert r.recipe["momentum"] == own[method].get("momentum", TINY.budget.momentum)
            scores[recipe["weight_decay"]] = r.val_acc
        assert len(scores) == 2  # every method searched the same two points
        best = max(scores, key=lambda wd: (scores[wd], -list(grid["weight_decay"]).index(wd)))
        assert tuned.recipes[method] == {**own[method], "weight_decay": best}


@pytest.mark.parametrize(("text", "grid"), [
    ("nesterov=True,false", {"nesterov": (True, False)}),  # booleans, not two truthy strings
    ("milestones=0.5/0.75,0.3", {"milestones": ((0.5, 0.75), (0.3,))}),
    ("gamma=0.2;schedule=step,cosine", {"gamma": (0.2,), "schedule": ("step", "cosine")}),
])
def test_a_tuning_grid_is_typed_by_the_budget_field_it_sets(text, grid):
    assert tune.parse_grid(text) == grid


@pytest.mark.parametrize(("text", "needle"), [
    ("nesterov=maybe", "nesterov='maybe'; accepted: true or false"),
    ("milestones=0.5/x", "milestones='0.5/x'; accepted: numbers joined by '/'"),
    ("milestones=1.5", r"milestones=\(1.5,\); accepted: a tuple of fractions"),
    ("lr=fast", "lr='fast'; accepted: a number"),
    ("gamma=2", "gamma=2.0; accepted: a number in"),
])
def test_a_tuning_grid_value_of_the_wrong_type_or_range_is_one_line_usage_error(text, needle):
    with pytest.raises(UsageError, match=needle) as err:
        tune.parse_grid(text)
    assert "\n" not in str(err.value)


def test_records_state_every_field_a_recipe_or_grid_may_set():
    p = TINY.override(recipes={"l1-filter": {"nesterov": False, "milestones": (0.3,), "gamma": 0.5}})
    recipe = p.recipe_of(METHODS.get("l1-filter"))
    assert set(RECIPE_FIELDS) <= set(recipe)
    assert (recipe["nesterov"], recipe["milestones"], recipe["gamma"]) == (False, [0.3], 0.5)


def test_cli_tune_records_the_grid_and_the_choice(tmp_path, capsys):
    args = ["run", "--preset", "ci", "--no-progress", "--epochs", "3", "--finetune-epochs", "1", "--methods",
            "lorita-n1", "--targets", "params:0.5", "--latency-rounds", "2", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "c"), "--tune-grid", "weight_decay=0,0.01"]
    assert main(args) == 0
    (r,) = load_records(tmp_path / "out" / "results.jsonl")
    assert r.recipe["source"] == "tuned" and r.recipe["grid"] == {"weight_decay": [0.0, 0.01]}
    assert "tuned: lorita-n1 {'weight_decay':" in capsys.readouterr().err
    assert main([*args[:-2], "--tune-grid", "epochs=1,2"]) == 2  # a grid may not change the steps
    assert main([*args[:-2], "--tune-grid", "milestones=0.5/x"]) == 2  # a one-line error, not a traceback


def test_report_says_when_lorita_trained_with_decoupled_weight_decay():
    rec = {"method": "lorita-n3", "family": "lorita", "n": 3, "status": "ok", "dataset": "d", "model": "m",
           "target_kind": "params", "target_drop": 0.5, "seed": 0, "config_hash": "h",
           "recipe": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "source": "preset budget"}}
    text = "\n".join(recipe_lines([rec]))
    assert "AdamW" in text and "Schatten" in text
    assert "AdamW" not in "\n".join(recipe_lines([{**rec, "recipe": {**rec["recipe"], "optimizer": "sgd"}}]))
