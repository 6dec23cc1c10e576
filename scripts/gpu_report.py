"""The GPU evidence report: machine, step-time, latency and memory tables from what
``scripts/gpu-evidence.sh`` wrote (machine.json, steps.json, one run folder per preset).

Reads JSON only (no torch; run from the repository root with it on ``PYTHONPATH``, as
``gpu-evidence.sh`` does): ``python scripts/gpu_report.py OUT_DIR --epochs E --finetune F``
writes ``OUT_DIR/report.md``; each preset's own report (tables, figures) is in its folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.records.results import RESULTS, load_records
from reports.tables import speedup


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def machine_lines(m: dict[str, Any]) -> list[str]:
    gpu = m.get("gpu")
    where = (f"**{gpu}** ({m.get('gpu_memory_gib')} GiB, {m.get('multiprocessors')} SMs), driver {m.get('driver')}"
             if gpu else f"CPU {m.get('cpu')} (dry run, no GPU)")
    return [f"Machine: {where}; Python {m.get('python')}, torch {m.get('torch')} (CUDA {m.get('cuda')}), "
            f"torchvision {m.get('torchvision')}, timm {m.get('timm')}, torch-pruning {m.get('torch_pruning')}."]


def steps_table(steps: list[dict[str, Any]]) -> list[str]:
    if not steps:
        return ["(no step-time measurements)"]
    out = ["| Model | Batch | bf16 + channels-last | torch.compile | N=1 step ms | N=3 step ms | N=3/N=1 (median "
           "[IQR] of paired rounds) | Peak MiB N=1 | Peak MiB N=3 | Note |", "|" + "---|" * 10]
    for s in steps:
        note = (f"run {s['run']}: " if "run" in s else "") + s.get("note", "")
        out.append(f"| {s['model']} | {s['batch_size']} | {'yes' if s['amp'] else 'no'} | "
                   f"{'yes' if s['compile'] else 'no'} | {s['a_ms']:.2f} | {s['b_ms']:.2f} | "
                   f"{s['ratio']:.3f} [{s['ratio_q1']:.3f}, {s['ratio_q3']:.3f}] | {_f(s['peak_mem_n1_mb'], 0)} | "
                   f"{_f(s['peak_mem_n_mb'], 0)} | {note.rstrip(': ')} |")
    return out


def epoch_lines(preset: str, records: list[dict[str, Any]], epochs: int, finetune: int) -> list[str]:
    pre: dict[str, tuple[float, float | None]] = {}
    train_epochs = epochs - finetune
    for r in records:
        if r.get("status") == "ok" and r.get("pretrain_wall_s") and train_epochs > 0:
            val = r.get("pretrain_val_wall_s")
            pre.setdefault(r["method"], (r["pretrain_wall_s"] / train_epochs,
                                         val / train_epochs if val is not None else None))
    if not pre:
        return []
    # Records before pretrain_val_wall_s timed the validation pass inside the training time.
    return [f"- {preset}: epoch time (pre-training steps' wall time / {train_epochs} epochs; the validation "
            "pass timed apart, where recorded): " + ", ".join(
                f"{m} {s:.2f} s" + (f" + {v:.2f} s validation" if v is not None else " (validation included)")
                for m, (s, v) in pre.items())]


def _speedup(r: dict[str, Any], batch: str) -> str:
    """``reports.tables.speedup`` at batch "1" or "T", with its A/B interval where recorded."""
    value = speedup(r, batch)
    if value is None:
        return "–"
    lo, hi = r.get(f"speedup_b{batch}_lo"), r.get(f"speedup_b{batch}_hi")
    return f"{value:.2f}× [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{value:.2f}×"


def latency_table(records: list[dict[str, Any]]) -> list[str]:
    out = ["| Method | Target | Params↓ | FLOPs↓ | Acc (dense) | b=1 dense / deployed ms | b=1 speed-up | "
           "b=256 dense / deployed ms | b=256 speed-up | Theoretical (MACs) | Peak train MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("status") != "ok":
            out.append(f"| {r['method']} | {r['target_kind']}:{r['target_drop']:g} | {r['status']}: "
                       f"{r.get('reason', '')[:80]} |||||||||")
            continue
        b1, b256 = _speedup(r, "1"), _speedup(r, "T")
        theory = r["dense_macs"] / r["macs"] if r.get("macs") else None
        out.append(f"| {r['method']} | {r['target_kind']}:{r['target_drop']:g} | {100 * r['params_drop']:.1f} % | "
                   f"{100 * r['flops_drop']:.1f} % | {100 * r['acc']:.2f} % ({100 * r['base_acc']:.2f} %) | "
                   f"{_f(r.get('latency_dense_ms'), 3)} / {_f(r.get('latency_ms'), 3)} | {b1} | "
                   f"{_f(r.get('throughput_dense_ms'), 3)} / {_f(r.get('throughput_ms'), 3)} | {b256} | "
                   f"{_f(theory)}× | {_f(r.get('train_peak_mem_mb'), 0)} |")
    return out


def memory_lines(by_preset: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["| Preset | Method | Peak training MiB (pre-training) | Peak fine-tuning MiB (median over targets) |",
           "|---|---|---|---|"]
    for preset, records in by_preset.items():
        seen: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r.get("status") == "ok":
                seen.setdefault(r["method"], []).append(r)
        for method, rs in seen.items():
            ft = [r["finetune_peak_mem_mb"] for r in rs if r.get("finetune_peak_mem_mb") is not None]
            out.append(f"| {preset} | {method} | {_f(rs[0].get('train_peak_mem_mb'), 0)} | "
                       f"{_f(statistics.median(ft), 0) if ft else '–'} |")
    return out


def render(out_dir: Path, epochs: int, finetune: int) -> int:
    """Write ``out_dir/report.md``; returns the number of failed runs found."""
    machine = json.loads((out_dir / "machine.json").read_text()) if (out_dir / "machine.json").exists() else {}
    steps = json.loads((out_dir / "steps.json").read_text()) if (out_dir / "steps.json").exists() else []
    by_preset = {p.name: [r.to_dict() for r in load_records(p / RESULTS)] for p in sorted(out_dir.iterdir())
                 if (p / RESULTS).exists()}
    # A collapsed training ("diverged") is a failed run too, never a result.
    failed = sum(r.get("status") in ("failed", "diverged") for rs in by_preset.values() for r in rs)
    lines = ["# GPU evidence", "", *machine_lines(machine), "",
             f"Reduced budget, stated: every method trains {epochs - finetune} epoch(s) before compression and "
             f"fine-tunes {finetune} epoch(s) after, one seed (0), batch 128 on Fashion-MNIST padded to 32×32 "
             "(55k train / 5k validation / 10k test images). Accuracies at this budget show that the pipeline "
             "runs on a GPU, not the methods' converged accuracy. Latency: CUDA events, eval mode, median of the "
             "preset's rounds; speed-up = dense / deployed time; theoretical = dense MACs / deployed MACs.", "",
             "## Training-step time: what N costs", "",
             "One SGD step of the suite's loop on a fixed batch, N=3 and N=1 timed in alternating rounds "
             "(`bench/execution/steptime.py`).", "", *steps_table(steps), "", "## Epoch time", ""]
    for preset, records in by_preset.items():
        lines += epoch_lines(preset, records, epochs, finetune)
    lines += ["", "## Latency of dense and deployed models", ""]
    for preset, records in by_preset.items():
        lines += [f"### {preset}", "", f"Full report with figures: [{preset}/report.md]({preset}/report.md)", "",
                  *latency_table(records), ""]
    notes = out_dir / "notes.md"
    if notes.exists():  # what the person who ran it has to add (what was re-run, what was filled in after)
        lines += ["## Notes on this run", "", notes.read_text().strip(), ""]
    lines += ["## Peak memory per method (GPU: max_memory_allocated; CPU dry run: process peak RSS)", "",
              *memory_lines(by_preset), "",
              f"Failed runs: {failed}."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'report.md'} ({failed} failed run(s))")
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--finetune", type=int, required=True)
    args = ap.parse_args()
    return 1 if render(args.out_dir, args.epochs, args.finetune) else 0


if __name__ == "__main__":
    sys.exit(main())
