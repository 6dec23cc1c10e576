"""Executors: the same records in process and through submitit's real local and debug clusters."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import replace

import pytest

from bench.catalog.budget import Target
from bench.catalog.registry import METHODS, PRESETS
from bench.cli import main
from bench.execution import executors, job, runner
from bench.execution.cache import checkpoint_key
from bench.execution.executors import ExecutorConfig
from bench.records.errors import UsageError
from bench.records.results import RESULTS, load_records

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit is an optional extra: pip install 'lorita-bench[slurm]'")
# The tiny grid: digits + FCN, 2 epochs (1 of them fine-tuning), two methods, two seeds.
TINY = PRESETS.get("ci").override(
    methods=("lorita-n1", "l1-filter"), seeds=(0, 1), targets=(Target(kind="params", drop=0.5),),
    budget=replace(PRESETS.get("ci").budget, epochs=2, finetune_epochs=1), latency_rounds=2, throughput_batch=8,
    chance_check=False)  # one epoch of training: a seed may still sit at chance, and these tests are about plumbing
MEASURED = ("acc", "base_acc", "val_acc", "params", "macs", "dense_params", "dense_macs", "train_steps", "layers")


def _by_job(records):
    return {(r.method, r.seed, r.target_kind, r.target_drop): r for r in records}


@needs_submitit
def test_submitit_local_equals_in_process_and_a_rerun_submits_only_the_failed_job(tmp_path):
    inproc = _by_job(runner.run(TINY, tmp_path / "inproc", progress=False, echo=lambda s: None,
                                cache_dir=tmp_path / "cache-inproc"))
    assert len(inproc) == 4 and all(r.status == "ok" for r in inproc.values())

    # A real failure inside one worker process: its checkpoint path is a directory the worker
    # can neither load nor move aside (the aside name is a non-empty directory), so that job
    # raises. Both methods train plainly, so one job (one checkpoint) serves both at a seed.
    cache = tmp_path / "cache-submitit"
    blocked = cache / f"{checkpoint_key(TINY, METHODS.get('l1-filter'), 1)}.pt"
    blocked.mkdir(parents=True)
    (blocked.parent / (blocked.name + ".corrupt") / "keep").mkdir(parents=True)
    said: list[str] = []
    out = tmp_path / "submitit-run"
    local = ExecutorConfig(kind="submitit", cluster="local")
    first = _by_job(runner.run(TINY, out, progress=True, echo=said.append, cache_dir=cache, executor=local))
    assert said[0].startswith("submitted 2 job(s) to submitit (local)"), said
    for method in ("l1-filter", "lorita-n1"):
        failed = first[(method, 1, "params", 0.5)]
        assert failed.status == "failed" and failed.reason.startswith("job ") and "OSError" in failed.reason, failed
    ok = sorted(k for k, r in first.items() if r.status == "ok")
    assert ok == sorted(k for k in inproc if k[1] != 1), first

    blocked.rmdir()
    said.clear()
    again = runner.run(TINY, out, progress=False, echo=said.append, cache_dir=cache, executor=local)
    assert len(said) == 1 and said[0].startswith("submitted 1 job(s) to submitit (local)"), said
    assert f"logs in {out / executors.SUBMITIT_FOLDER}" in said[0]
    latest = {}
    for r in again:  # the failed record stays in the append-only file; the new ok one follows it
        latest[(r.method, r.seed, r.target_kind, r.target_drop)] = r
    assert all(r.status == "ok" for r in latest.values()) and latest.keys() == inproc.keys()
    for key, r in latest.items():
        assert {f: getattr(r, f) for f in MEASURED} == {f: getattr(inproc[key], f) for f in MEASURED}, key


@needs_submitit
def test_debug_cluster_turns_a_raising_job_into_failed_records_and_the_rerun_runs_only_it(tmp_path, monkeypatch):
    real, calls = job.run_group, []

    def flaky(preset, work, data, seed, **kw):
        calls.append((tuple(m.name for m, _ in work), seed))
        if seed == 0:
            raise RuntimeError("boom")
        return real(preset, work, data, seed, **kw)
    monkeypatch.setattr(job, "run_group", flaky)
    debug = ExecutorConfig(kind="submitit", cluster="debug")
    first = _by_job(runner.run(TINY, tmp_path, progress=False, echo=lambda s: None, executor=debug))
    # One job per trained model: both plain methods of seed 0 fail together, seed 1's go on.
    assert [first[(m, 0, "params", 0.5)].reason for m in TINY.methods] == ["RuntimeError: boom"] * 2
    assert [r.status for k, r in sorted(first.items()) if k[1] == 1] == ["ok"] * 2
    assert sorted(calls) == [(TINY.methods, 0), (TINY.methods, 1)]

    calls.clear()
    monkeypatch.setattr(job, "run_group", lambda *a, **kw: calls.append((a[1], a[3])) or real(*a, **kw))
    runner.run(TINY, tmp_path, progress=False, echo=lambda s: None, executor=debug)
    assert [(tuple(m.name for m, _ in w), s) for w, s in calls] == [(TINY.methods, 0)]
    ok = [r for r in load_records(tmp_path / RESULTS) if r.status == "ok"]
    assert len(ok) == 4 and len({(r.method, r.seed) for r in ok}) == 4


def test_missing_submitit_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes ``import submitit`` raise ImportError
    assert main(["run", "--preset", "ci", "--out", str(tmp_path), "--executor", "submitit", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lorita-bench[slurm]" in err and "--executor local" in err
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--executor", "ray"], "unknown executor 'ray'; accepted: local, submitit"),
    (["--executor", "submitit", "--cluster", "k8s"], "unknown cluster 'k8s'; accepted: slurm, local, debug"),
    (["--executor", "submitit", "--max-parallel", "0"], "bad --max-parallel 0; accepted: an integer >= 1"),
    (["--cluster", "debug"], "--cluster given with --executor local"),
    (["--executor", "submitit", "--cluster", "local", "--slurm-partition", "gpu"],
     "--slurm-partition given with --cluster local"),
])
def test_bad_executor_options_are_one_line_naming_the_value(args, needle, tmp_path, capsys):
    assert main(["run", "--preset", "ci", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and "accepted" in err


@needs_submitit
def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    import submitit

    with pytest.raises(UsageError, match="--cluster slurm asked for, but SLURM's srun is not"):
        executors.resolve(ExecutorConfig(kind="submitit", cluster="slurm"))
    # submitit only checks that srun exists; a stub lets it render the script without a cluster.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    gpu_preset = TINY.override(device="cuda")
    config = ExecutorConfig(kind="submitit", cluster="slurm", slurm_partition="gpu", max_parallel=2, timeout_min=90)
    assert executors.resolve(config) == config
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(**executors._parameters(config, cuda=gpu_preset.device == "cuda"))
    # submitit renders the script at submission; render it here without a cluster to read it.
    script = ex._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90", "export PYTHONPATH="):
        assert line in script
    assert ex._executor.parameters["array_parallelism"] == 2


def test_config_refuses_nonsense_directly():
    with pytest.raises(UsageError, match="bad --timeout-min 0"):
        ExecutorConfig(kind="submitit", timeout_min=0)
    assert ExecutorConfig().runs_here and not ExecutorConfig(kind="submitit", cluster="slurm").runs_here
