"""torchrun with 2 CPU processes (gloo) trains the same model as 1 process, and writes once."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.catalog import data as data_mod
from bench.catalog.budget import Budget
from bench.catalog.models import build
from bench.cli import main
from bench.execution.train import train
from bench.records.results import load_records

ROOT = Path(__file__).resolve().parents[1]
BUDGET = Budget(epochs=2, finetune_epochs=0, batch_size=64, lr=0.02, weight_decay=0.01)
SCRIPT = textwrap.dedent("""
    import sys, torch
    from bench.catalog import data as data_mod
    from bench.execution import distributed
    from bench.catalog.models import build
    from bench.execution.train import train
    from tests_distributed_budget import BUDGET
    distributed.setup_from_env("cpu")
    try:
        torch.manual_seed(0)
        model = build("fcn", 10, (1, 8, 8), {"depth": 3, "width": 64})
        stats = train(model, data_mod.load("digits"), BUDGET, epochs=2, lr=BUDGET.lr, seed=0)
        if distributed.is_main():
            torch.save({"state": model.state_dict(), "steps": stats.steps}, sys.argv[1])
    finally:  # a process group alive at interpreter exit can abort the rank (see distributed.teardown)
        distributed.teardown()
""")


def _torchrun(args, tmp_path, timeout=300):
    """torchrun with 2 ranks; each rank's stdout and stderr also land in a log file (see ``_ranks``)."""
    # Loopback only (this sandbox has no other network), one thread per rank on 2 cores.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--log-dir", str(tmp_path / "torchrun-logs"), "--tee", "3", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def _ranks(proc, tmp_path) -> str:
    """A failure message with torchrun's own tail and every rank's stderr (which one failed first)."""
    parts = [f"torchrun exit {proc.returncode}; its stderr ends:\n{proc.stderr[-3000:]}"]
    for log in sorted((tmp_path / "torchrun-logs").glob("**/stderr.log")):
        parts.append(f"--- {log.relative_to(tmp_path)}:\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def test_two_processes_train_the_same_model_as_one(tmp_path):
    (tmp_path / "tests_distributed_budget.py").write_text(
        "from bench.catalog.budget import Budget\n"
        "BUDGET = Budget(epochs=2, finetune_epochs=0, batch_size=64, lr=0.02, weight_decay=0.01)\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = _torchrun(["script.py", str(tmp_path / "ddp.pt")], tmp_path)
    assert proc.returncode == 0, _ranks(proc, tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.manual_seed(0)
    model = build("fcn", 10, (1, 8, 8), {"depth": 3, "width": 64})
    stats = train(model, data_mod.load("digits"), BUDGET, epochs=2, lr=BUDGET.lr, seed=0)
    assert ddp["steps"] == stats.steps  # the same optimizer steps: each rank takes half of each batch
    for name, w in model.state_dict().items():
        assert torch.allclose(ddp["state"][name], w, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_cli_under_torchrun_writes_each_record_once(tmp_path):
    args = ["-m", "bench.cli", "run", "--preset", "quick", "--methods", "lorita-n2,l1-filter", "--epochs", "3",
            "--finetune-epochs", "1", "--targets", "params:0.5", "--no-progress", "--latency-rounds", "3",
            "--out", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "ckpt-ddp")]
    proc = _torchrun(args, tmp_path)
    assert proc.returncode == 0, _ranks(proc, tmp_path)
    assert proc.stdout.count("report:") == 1  # rank 0 alone reports
    ddp = load_records(tmp_path / "ddp" / "results.jsonl")
    assert main([*args[2:-4], "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "ckpt-one")]) == 0
    one = load_records(tmp_path / "one" / "results.jsonl")
    assert [(r.method, r.status, r.params, r.macs, r.train_steps) for r in ddp] == [
        (r.method, r.status, r.params, r.macs, r.train_steps) for r in one]
    assert all(abs(a.acc - b.acc) <= 0.02 for a, b in zip(ddp, one, strict=True))


def test_a_failing_rank_shows_in_the_failure_message_with_the_other(tmp_path):
    (tmp_path / "fail.py").write_text(textwrap.dedent("""
        import os, sys
        print(f"rank {os.environ['RANK']} here", file=sys.stderr)
        if os.environ["RANK"] == "1":
            raise SystemExit("rank 1 gives up")
    """))
    proc = _torchrun(["fail.py"], tmp_path, timeout=120)
    message = _ranks(proc, tmp_path)
    assert proc.returncode != 0
    assert "rank 0 here" in message and "rank 1 here" in message and "rank 1 gives up" in message


def test_every_rank_hashes_one_configuration_whatever_its_cuda_index():
    from bench.catalog import PRESETS

    preset = PRESETS.get("cifar10-vgg16")
    hashes = {preset.override(device=d).config_hash() for d in ("cuda", "cuda:0", "cuda:1", "cuda:7")}
    assert len(hashes) == 1
    assert preset.override(device="cpu").config_hash() not in hashes
