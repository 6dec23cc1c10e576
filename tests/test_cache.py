"""Trained-model cache: reuse across runs, atomic writes, corrupt checkpoints retrained."""

import logging

import pytest
import torch

from bench.cli import main
from bench.execution import cache
from bench.records.results import load_records

ARGS = ["run", "--preset", "quick", "--no-progress", "--epochs", "3", "--finetune-epochs", "1",
        "--methods", "lorita-n2,l1-filter", "--targets", "params:0.5"]


def test_a_second_run_reuses_trained_models_and_gets_the_same_numbers(tmp_path, count_training):
    ckpts = tmp_path / "ckpt"
    assert main([*ARGS, "--out", str(tmp_path / "a"), "--cache-dir", str(ckpts)]) == 0
    assert count_training == [2, 1, 2, 1]  # pre-train + fine-tune per method
    assert len(_trained(ckpts)) == 2 and len(list(ckpts.glob("*.best.pt"))) == 2
    count_training.clear()
    assert main([*ARGS, "--out", str(tmp_path / "b"), "--cache-dir", str(ckpts)]) == 0
    assert count_training == [1, 1]  # only the fine-tunes: the trained models came from the cache
    a, b = (load_records(tmp_path / d / "results.jsonl") for d in "ab")
    assert [(r.method, r.acc, r.params, r.train_steps, r.base_acc_val_selected, r.best_val_epoch) for r in a] == [
        (r.method, r.acc, r.params, r.train_steps, r.base_acc_val_selected, r.best_val_epoch) for r in b]
    assert all(r.base_acc_val_selected is not None and 1 <= r.best_val_epoch <= 2 for r in a)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_checkpoint_is_reported_and_retrained(tmp_path, count_training, caplog, damage):
    ckpts = tmp_path / "ckpt"
    assert main([*ARGS, "--methods", "lorita-n2", "--out", str(tmp_path / "a"), "--cache-dir", str(ckpts)]) == 0
    # The plain reference model is trained too (lorita-n2 alone has no plain method to share it):
    # damage LoRITa's checkpoint, the larger one (its factors).
    assert len(_trained(ckpts)) == 2
    path = max(_trained(ckpts), key=lambda p: p.stat().st_size)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        # Flip bytes inside the largest tensor's storage: the zip container may still read.
        path.write_bytes(raw[:-2000] + bytes(b ^ 0xFF for b in raw[-2000:-1000]) + raw[-1000:])
    else:
        path.write_bytes(b"not a checkpoint")
    count_training.clear()
    with caplog.at_level(logging.WARNING, logger="bench.execution.cache"):
        assert main([*ARGS, "--methods", "lorita-n2", "--out", str(tmp_path / "b"), "--cache-dir", str(ckpts)]) == 0
    assert count_training == [2, 1]  # retrained, not silently used
    assert "corrupt checkpoint" in caplog.text
    assert path.exists() and path.with_suffix(".pt.corrupt").exists()
    assert cache.load(path, _model_for(path)) is not None  # the rewritten checkpoint is sound


def _trained(folder):
    return [p for p in folder.glob("*.pt") if not p.name.endswith(".best.pt")]


def _model_for(path):
    import lorita
    from bench.catalog.models import build
    model = lorita.overparameterize(build("fcn", 10, (1, 8, 8), {"depth": 4, "width": 128}), 2)
    return model


def test_checkpoint_round_trip_and_key_sensitivity(tmp_path):
    model = torch.nn.Linear(3, 2)
    cache.save(tmp_path / "m.pt", model, {"stats": {"steps": 1}})
    other = torch.nn.Linear(3, 2)
    assert cache.load(tmp_path / "m.pt", other) == {"stats": {"steps": 1}}
    assert torch.equal(other.weight, model.weight)
    assert cache.load(tmp_path / "absent.pt", other) is None
    assert cache.cache_key({"a": 1, "b": 2}) == cache.cache_key({"b": 2, "a": 1})
    assert cache.cache_key({"a": 1}) != cache.cache_key({"a": 2})


def test_a_diverging_run_is_a_diverged_record_and_the_suite_goes_on(tmp_path):
    code = main([*ARGS, "--methods", "lorita-n3,l1-filter", "--lr", "1e6", "--out", str(tmp_path),
                 "--cache-dir", str(tmp_path / "ckpt")])
    assert code == 0
    recs = {r.method: r for r in load_records(tmp_path / "results.jsonl")}
    assert recs["lorita-n3"].status == "diverged" and "non-finite loss" in recs["lorita-n3"].reason
