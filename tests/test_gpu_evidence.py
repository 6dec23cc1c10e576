"""The GPU evidence script, dry-run on CPU: real-format Fashion-MNIST files, tiny models, one short step."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from realformat import idx_set, write_idx

ROOT = Path(__file__).resolve().parents[1]
TINY = {"STEP_OPTIONS": "vgg16:width=0.0625;resnet20:width=0.25;vit:embed_dim=24;vit:depth=1;vit:num_heads=2",
        "STEP_MODELS": "vgg16,vit", "COMPILE_MODELS": "", "STEP_ROUNDS": "2", "STEP_BATCH": "4", "STEPS_PER_ROUND": "1",
        "EPOCHS": "2", "FINETUNE": "1", "METHODS": "lorita-n2,group-l2", "TARGETS": "flops:0.5",
        "PRESETS": "fashion-mnist-vgg16",
        # Random labels: chance is all a model can reach, so the chance check would call every training diverged.
        "PRESET_ARGS": "--model-options width=0.0625 --latency-rounds 2 --throughput-batch 4 --no-chance-check"}


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # 5000 images go to the validation split (the real VAL_SIZE), 100 are left to train on.
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", idx_set(np.random.default_rng(0), n_train=5100))
    full_env = {**os.environ, **TINY, "DATA_DIR": str(tmp_path / "data"), "PYTHON": "python", **env}
    full_env["PATH"] = f"{Path(os.sys.executable).parent}:{full_env['PATH']}"
    return subprocess.run(["bash", "scripts/gpu-evidence.sh", str(tmp_path / "out"), "cpu"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_gpu_evidence_dry_run_on_cpu_writes_its_report(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    steps = json.loads((out / "steps.json").read_text())
    assert [s["model"] for s in steps] == ["vgg16", "vit"] and all(s["ratio"] > 0 for s in steps)
    records = [json.loads(line) for line in (out / "fashion-mnist-vgg16" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"], [r["reason"] for r in records]
    assert all(r["dataset"] == "fashion-mnist-32" and r["throughput_batch"] == 4 for r in records)
    assert all(r["train_peak_mem_mb"] is None or r["train_peak_mem_mb"] > 0 for r in records)
    report = (out / "report.md").read_text()
    assert "dry run, no GPU" in report and "N=3/N=1" in report and "| lorita-n2 | flops:0.5 |" in report
    assert (out / "fashion-mnist-vgg16" / "report.md").exists()


def test_gpu_evidence_exits_nonzero_when_a_run_fails(tmp_path):
    proc = _run(tmp_path, STEP_MODELS="fcn", PRESETS="no-such-preset")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "unknown preset 'no-such-preset'" in proc.stderr
