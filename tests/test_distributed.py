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
    torch.manual_seed(0)
    model = build("fcn", 10, (1, 8, 8), {"depth": 3, "width": 64})
    stats = train(model, data_mod.load("digits"), BUDGET, epochs=2, lr=BUDGET.lr, seed=0)
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "steps": stats.steps}, sys.argv[1])
""")


def _torchrun(args, tmp_path, timeout=300):
    # Loopback only (this sandbox has no other network), one thread per rank on 2 cores.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


def test_two_processes_train_the_same_model_as_one(tmp_path):
    (tmp_path / "tests_distributed_budget.py").write_text(
        "from bench.catalog.budget import Budget\n"
        "BUDGET = Budget(epochs=2, finetune_epochs=0, batch_size=64, lr=0.02, weight_decay=0.01)\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = _torchrun(["script.py", str(tmp_path / "ddp.pt")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
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
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.count("report:") == 1  # rank 0 alone reports
    ddp = load_records(tmp_path / "ddp" / "results.jsonl")
    assert main([*args[2:-4], "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "ckpt-one")]) == 0
    one = load_records(tmp_path / "one" / "results.jsonl")
    assert [(r.method, r.status, r.params, r.macs, r.train_steps) for r in ddp] == [
        (r.method, r.status, r.params, r.macs, r.train_steps) for r in one]
    assert all(abs(a.acc - b.acc) <= 0.02 for a, b in zip(ddp, one, strict=True))
