"""The GPU evidence script, dry-run on CPU: real-format Fashion-MNIST files, tiny models, one short step."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from realformat import idx_set, write_idx

from bench.records.sources import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = {"STEP_OPTIONS": "vgg16:width=0.0625;resnet20:width=0.25;vit:embed_dim=24;vit:depth=1;vit:num_heads=2",
        "STEP_MODELS": "vgg16,vit", "COMPILE_MODELS": "", "STEP_ROUNDS": "2", "STEP_BATCH": "4", "STEPS_PER_ROUND": "1",
        "EPOCHS": "2", "FINETUNE": "1", "METHODS": "lorita-n2,group-l2", "TARGETS": "flops:0.5", "SEEDS": "0",
        "LATENCY_SWEEP": "2", "LATENCY_ROUNDS": "2", "THROUGHPUT_BATCH": "4",
        # Random labels: chance is all a model can reach, so the chance check would call every training diverged.
        "PRESET_ARGS": "--model-options width=0.125 --no-chance-check"}


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # 5000 images go to the validation split (the real VAL_SIZE), 100 are left to train on.
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", idx_set(np.random.default_rng(0), n_train=5100))
    full_env = {**os.environ, **TINY, "DATA_DIR": str(tmp_path / "data"), "PYTHON": "python", **env}
    full_env["PATH"] = f"{Path(os.sys.executable).parent}:{full_env['PATH']}"
    return subprocess.run(["bash", "scripts/gpu-evidence.sh", str(tmp_path / "out"), "cpu"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)


def _records(folder: Path) -> list[dict]:
    return read_jsonl(folder / "results.jsonl")  # the records, without the folder's reference lines


def test_gpu_evidence_dry_run_on_cpu_writes_its_report_and_shows_a_stage_out_of_time(tmp_path):
    # One run (the script costs a minute on 2 cores): every stage but the compiled step time, which is
    # given 1 s and must show as not finished, with the script failing for it.
    proc = _run(tmp_path, COMPILE_MODELS="vgg16", COMPILE_TIMEOUT="1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    steps = json.loads((out / "steps.json").read_text())
    assert [s["model"] for s in steps] == ["vgg16", "vit"] and all(s["ratio"] > 0 for s in steps)
    k8, k1 = _records(out / "fashion-mnist-vgg16-k8"), _records(out / "fashion-mnist-vgg16-k1")
    assert [r["status"] for r in k8 + k1] == ["ok"] * 4, [r["reason"] for r in k8 + k1]
    assert all(r["dataset"] == "fashion-mnist-32" and r["throughput_batch"] == 4 for r in k8)
    assert {r["round_to"] for r in k8} == {8} and {r["round_to"] for r in k1} == {1}
    assert all({(e["mode"], e["batch"]) for e in r["latency_sweep"]}
               == {(m, b) for m in ("deploy", "eager-fp32") for b in (1, 2, 4)} for r in k8)
    # The preset's decay budget is kept at the shortened pre-training: its weight decay, scaled.
    assert {r["recipe"]["weight_decay"] for r in k8} == {2.5e-3 * 12 / 1}
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [(s["rc"], s["timed_out"]) for s in stages] == [(0, False)] * 3 + [(124, True)]
    report = (out / "report.md").read_text()
    assert "dry run, no GPU" in report and "still to be taken" in report
    assert "| step time, N=3 vs N=1, torch.compile | 1 |" in report
    assert "**not finished**: stopped at its limit of 1 s" in report
    assert "Stages not finished: step time, N=3 vs N=1, torch.compile." in report
    assert "| lorita-n2 | flops:0.5 | 8 | 1/1 |" in report and "| lorita-n2 | flops:0.5 | 1 | 1/1 |" in report
    assert "## Rounded to K" in report and "| vgg16 | 4 | 3 |" in report  # N and batch from steps.json
    assert "seeds 0;" in report and "rounded to K = 8" in report and "at batches 1, 2, 4" in report
    assert (out / "fashion-mnist-vgg16-k8" / "report.md").exists()
