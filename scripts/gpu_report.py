"""The GPU evidence report, written from what ``scripts/gpu-evidence.sh`` left in its folder and nothing else:
machine.json, stages.jsonl (every stage's limit, time and exit status), steps.json (N-factor vs N=1 step
times) and one run folder per preset and K (results.jsonl, config.json).

Every number and setting in the text comes from those files (seeds, batch sizes, epochs, N, K, latency
modes and batches), so the report cannot disagree with its inputs; a stage that ran out of time is
reported as not finished. Reads JSON only (no torch; run from the repository root with it on
``PYTHONPATH``, as ``gpu-evidence.sh`` does): ``python scripts/gpu_report.py OUT_DIR`` writes
``OUT_DIR/report.md``; each run folder has its own full report (tables, figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.records.results import CONFIG, RESULTS, load_records
from reports import latency
from reports.tables import latest, mean_or_none

Rec = Mapping[str, Any]
# The goals the closing note measures against (issue 20).
GOAL_EFFICIENCY, GOAL_STEP_RATIO, GOAL_EPOCH_S, EFFICIENCY_BATCH = 0.6, 1.15, 0.75, 256


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def machine_lines(m: Mapping[str, Any]) -> list[str]:
    gpu = m.get("gpu")
    where = (f"**{gpu}** ({m.get('gpu_memory_gib')} GiB, {m.get('multiprocessors')} SMs), driver {m.get('driver')}"
             if gpu else f"CPU {m.get('cpu')} (dry run, no GPU)")
    return [f"Machine: {where}; Python {m.get('python')}, torch {m.get('torch')} (CUDA {m.get('cuda')}), "
            f"torchvision {m.get('torchvision')}, timm {m.get('timm')}, torch-pruning {m.get('torch_pruning')}, "
            f"onnxruntime {m.get('onnxruntime', 'not installed')}."]


def stage_lines(stages: Sequence[Rec]) -> list[str]:
    """One row per stage: its limit, the time it took and whether it finished."""
    if not stages:
        return ["(no stage log: stages.jsonl is missing)"]
    out = ["| Stage | Limit s | Took s | Status |", "|---|--:|--:|---|"]
    for s in stages:
        out.append(f"| {s['stage']} | {s.get('limit_s') or '–'} | {s.get('seconds', '–')} | {stage_status(s)} |")
    return out


def stage_status(s: Rec) -> str:
    if s.get("timed_out"):
        return f"**not finished**: stopped at its limit of {s.get('limit_s')} s"
    return "finished" if s.get("rc") == 0 else f"**failed** (exit {s.get('rc')})"


def config_lines(name: str, config: Rec, records: Sequence[Rec]) -> list[str]:
    """What one run folder ran, from its config.json and records (no setting written here by hand)."""
    b = config.get("budget", {})
    pre = b.get("epochs", 0) - b.get("finetune_epochs", 0)
    decay = mean_or_none([r["pretrain_decay_budget"] for r in records if r.get("pretrain_decay_budget") is not None])
    targets = _join(f"{t['kind']}:{t['drop']:g}" for t in config.get("targets", ()))
    sweep = sorted({1, config.get("throughput_batch", 1), *config.get("latency_sweep", ())})
    return [f"- [{name}]({name}/report.md): {config.get('dataset')} / {config.get('model')}, methods "
            f"{_join(config.get('methods', ()))} at {targets}; seeds {_join(config.get('seeds', ()))}; "
            f"{pre} epoch(s) before compression and {b.get('finetune_epochs')} of fine-tuning per target at batch "
            f"{b.get('batch_size')}, {b.get('optimizer')} lr {b.get('lr')}, weight decay {b.get('weight_decay')} "
            f"(decay budget {_f(decay)}); deployed ranks and widths rounded to K = {config.get('round_to', 1)}; "
            f"latency modes {_join(config.get('latency_modes', ('eager-fp32',)))} at batches {_join(sweep)}, "
            f"{config.get('latency_rounds')} A/B rounds each."]


def accuracy_table(records: Sequence[Rec]) -> list[str]:
    """Zero-shot and fine-tuned test accuracy and drops per (method, target, K), mean over seeds."""
    groups: dict[tuple, list[Rec]] = {}
    for r in records:
        key = (r["method"], f"{r['target_kind']}:{r['target_drop']:g}", r.get("round_to") or 1)
        groups.setdefault(key, []).append(r)
    out = ["| Method | Target | K | Seeds ok | Ref acc | Zero-shot acc | Fine-tuned acc | Params↓ | FLOPs↓ | Status |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for (method, target, k), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]

        def pct(key: str, rows: Sequence[Rec] = ok) -> str:
            m = mean_or_none([r[key] for r in rows if r.get(key) is not None])
            return "–" if m is None else f"{100 * m:.2f}"
        bad = sorted({f"{r['status']}: {r.get('reason', '')[:60]}" for r in rs if r.get("status") != "ok"})
        out.append(f"| {method} | {target} | {k} | {len(ok)}/{len(rs)} | {pct('ref_acc')} | {pct('acc_zero_shot')} "
                   f"| {pct('acc')} | {pct('params_drop')} | {pct('flops_drop')} | {'; '.join(bad) or 'ok'} |")
    return out


def steps_table(steps: Sequence[Rec]) -> list[str]:
    if not steps:
        return ["(no step-time measurements)"]
    out = ["| Model | Batch | N | bf16 + channels-last | torch.compile | N=1 step ms | N step ms | N/N=1 (median "
           "[IQR] of paired rounds) | Peak MiB N=1 | Peak MiB N |", "|" + "---|" * 10]
    for s in steps:
        out.append(f"| {s['model']} | {s['batch_size']} | {s['n']} | {'yes' if s['amp'] else 'no'} | "
                   f"{'yes' if s['compile'] else 'no'} | {s['a_ms']:.2f} | {s['b_ms']:.2f} | "
                   f"{s['ratio']:.3f} [{s['ratio_q1']:.3f}, {s['ratio_q3']:.3f}] | {_f(s['peak_mem_n1_mb'], 0)} | "
                   f"{_f(s['peak_mem_n_mb'], 0)} |")
    return out


def epoch_seconds(records: Sequence[Rec], config: Rec) -> dict[str, tuple[float, float | None]]:
    """Per method, (pre-training steps' wall time, its validation passes' time) per pre-training epoch,
    means over the seeds that trained (not loaded from the cache); validation ``None`` for records
    from before ``pretrain_val_wall_s``, whose training time included it."""
    b = config.get("budget", {})
    pre = b.get("epochs", 0) - b.get("finetune_epochs", 0)
    if pre <= 0:
        return {}
    by: dict[str, list[tuple[float, float | None]]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("pretrain_wall_s") and not r.get("pretrain_cached"):
            val = r.get("pretrain_val_wall_s")
            by.setdefault(r["method"], []).append((r["pretrain_wall_s"] / pre, None if val is None else val / pre))
    return {m: (statistics.fmean(s for s, _ in v),
                None if any(x is None for _, x in v) else statistics.fmean(x for _, x in v)) for m, v in by.items()}


def closing_lines(machine: Rec, runs: Mapping[str, tuple[Rec, list[Rec]]], steps: Sequence[Rec],
                  stages: Sequence[Rec]) -> list[str]:
    """The closing note: measured/theoretical at batch 256 at 50 % FLOPs↓, step ratios, epoch time, against the
    goals; on a dry run, that the GPU numbers are still to be taken."""
    lines = ["## Closing note", ""]
    if not machine.get("gpu"):
        lines += ["This is a CPU dry run of the script: every number above is a CPU number from a tiny "
                  "configuration, and the GPU numbers (measured/theoretical speed-up, N=3/N=1 step ratios, epoch "
                  "time) are still to be taken on a GPU with `scripts/gpu-evidence.sh`.", ""]
    records = [r for _, rs in runs.values() for r in rs]
    at = [c for c in latency.cells(records) if c.batch == EFFICIENCY_BATCH and c.target == "flops 50%"]
    for c in at:
        verdict = "meets" if c.efficiency is not None and c.efficiency >= GOAL_EFFICIENCY else "misses"
        lines.append(f"- {c.dataset}/{c.model} {c.method} at 50 % FLOPs↓, K={c.round_to}, {c.mode}, batch "
                     f"{c.batch}: measured {_f(c.speedup)}× of theoretical {_f(c.theoretical)}×, measured / "
                     f"theoretical {_f(c.efficiency)} ({verdict} the goal ≥ {GOAL_EFFICIENCY}).")
    if not at:
        lines.append(f"- No record was timed at batch {EFFICIENCY_BATCH} at 50 % FLOPs↓: measured / theoretical "
                     "there is not known from this run.")
    for s in steps:
        verdict = "meets" if s["ratio"] <= GOAL_STEP_RATIO else "misses"
        lines.append(f"- {s['model']} N={s['n']}/N=1 training step at batch {s['batch_size']}, "
                     f"{'compiled' if s['compile'] else 'eager'}: {s['ratio']:.2f}× ({verdict} the goal ≤ "
                     f"{GOAL_STEP_RATIO}×).")
    for name, (config, rs) in runs.items():
        secs = epoch_seconds(rs, config)
        if secs and config.get("model") == "vgg16":
            lines.append(f"- {name}: epoch time (pre-training steps' wall time per epoch, the validation pass timed "
                         f"apart where recorded; the goal ≤ {GOAL_EPOCH_S} s counts training steps only): "
                         + ", ".join(f"{m} {s:.2f} s" + (f" + {v:.2f} s validation" if v is not None
                                                         else " (validation included)")
                                     for m, (s, v) in secs.items()) + ".")
    unfinished = [s["stage"] for s in stages if s.get("rc") != 0]
    lines += ["", f"Failed runs: {sum(r.get('status') in ('failed', 'diverged') for r in records)}. Stages not "
              f"finished: {_join(unfinished) if unfinished else 'none'}."]
    return lines


def _load(out_dir: Path) -> tuple[Rec, list[Rec], list[Rec], dict[str, tuple[Rec, list[Rec]]]]:
    def read(name: str, default: Any) -> Any:
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else default
    stages_path = out_dir / "stages.jsonl"
    stages = [json.loads(line) for line in stages_path.read_text().splitlines() if line.strip()] \
        if stages_path.exists() else []
    runs = {p.name: (json.loads((p / CONFIG).read_text()) if (p / CONFIG).exists() else {},
                     latest([r.to_dict() for r in load_records(p / RESULTS)]))
            for p in sorted(out_dir.iterdir()) if (p / RESULTS).exists()}
    return read("machine.json", {}), read("steps.json", []), stages, runs


def render(out_dir: Path) -> int:
    """Write ``out_dir/report.md``; returns the number of failed runs plus stages that did not finish."""
    machine, steps, stages, runs = _load(out_dir)
    records = [r for _, rs in runs.values() for r in rs]
    lines = ["# GPU evidence", "", *machine_lines(machine), "",
             "Written by `scripts/gpu_report.py` from the script's own outputs; nothing below was edited by hand.",
             "", "## Stages", "", *stage_lines(stages), "", "## Runs", ""]
    for name, (config, rs) in runs.items():
        lines += config_lines(name, config, rs)
    lines += ["", "## Accuracy before and after fine-tuning", "",
              "Test accuracy (%) of the compressed model before fine-tuning (zero-shot) and after, mean over the "
              "seeds that finished; Ref acc: the plainly trained dense model every method starts from or is "
              "compared with.", "", *accuracy_table(records), "",
              "## Training-step time: what N costs", "",
              "One SGD step of the suite's loop on a fixed batch, N factors and N=1 timed in alternating rounds "
              "(`bench/execution/steptime.py`).", "", *steps_table(steps), ""]
    lines += latency.latency_lines(records) or ["## Latency", "", "(no latency sweep in the records)", ""]
    notes = out_dir / "notes.md"
    if notes.exists():  # what the person who ran it adds; the tables above stay the script's
        lines += ["## Notes on this run", "", notes.read_text().strip(), ""]
    lines += closing_lines(machine, runs, steps, stages)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    failed = sum(r.get("status") in ("failed", "diverged") for r in records)
    unfinished = sum(s.get("rc") != 0 for s in stages)
    print(f"wrote {out_dir / 'report.md'} ({failed} failed run(s), {unfinished} stage(s) not finished)")
    return failed + unfinished


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    return 1 if render(args.out_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
