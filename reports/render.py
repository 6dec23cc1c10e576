"""A report folder: ``report.md`` (tables, figures, protocol), the tables as LaTeX and CSV, the figures.

Layout of ``out_dir``::

    report.md                      readable on GitHub; links everything below relatively
    tables/results.{md,tex,csv}    the paper-style table
    tables/iso_accuracy.{md,tex,csv}
    figures/*.png, figures/*.svg
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.records.results import atomic_write_text
from reports import tables
from reports.tables import latest

DEFAULT_TITLE = "LoRITa vs structured pruning"


def _machine_line(machine: Mapping[str, Any]) -> str:
    cpu = machine.get("cpu") or {}
    parts = [f"CPU {cpu.get('brand_raw') or machine.get('processor') or machine.get('machine')}"
             + (f" ({cpu['count']} cores)" if cpu.get("count") else "")]
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}" + (f", driver {machine['gpu_driver']}" if machine.get("gpu_driver")
                                                   else ""))
    for key, name in (("torch", "torch"), ("cuda", "CUDA"), ("python_version", "Python")):
        if machine.get(key):
            parts.append(f"{name} {machine[key]}")
    return ", ".join(parts)


def protocol_lines(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None,
                   machines: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The "Protocol" section: budget, what each number means, counting convention, device, versions."""
    ok = [r for r in records if r.get("status") == "ok"]
    lines = ["## Protocol", ""]
    if config:
        b = config.get("budget", {})
        lines.append(f"- Budget (identical for every method): {b.get('epochs')} epochs in all = "
                     f"{b.get('epochs', 0) - b.get('finetune_epochs', 0)} before compression + "
                     f"{b.get('finetune_epochs')} fine-tuning after; {b.get('optimizer')} lr {b.get('lr')} "
                     f"(fine-tune {b.get('finetune_lr')}), {b.get('schedule')} schedule, batch "
                     f"{b.get('batch_size')}, weight decay {b.get('weight_decay')} "
                     f"({'coupled L2' if b.get('optimizer') == 'sgd' else 'decoupled'}).")
        seeds = config.get("seeds")
        if seeds:
            lines.append(f"- Seeds: {', '.join(map(str, seeds))}; with several seeds a cell shows mean ± "
                         "standard deviation.")
    steps = sorted({r["train_steps"] for r in ok if r.get("train_steps") is not None})
    if steps:
        lines.append(f"- Optimizer steps per method (train + fine-tune): {', '.join(map(str, steps))}. "
                     "\"Train s\" is the wall time of those steps.")
    lines += [
        "- Accuracy: top-1 on the test split, measured once at the end; nothing is selected on it "
        "(targets are met by counting, not by accuracy).",
        "- ΔAcc: accuracy of the compressed, fine-tuned model minus that of the same method's dense "
        "model before compression (for LoRITa, the merged model), in percentage points.",
        "- FLOPs↓ and Params↓: measured on the deployed model (LoRITa: the factorized model; pruning: "
        "the pruned model) with torch-pruning's counter; FLOPs = 2·MACs, so FLOPs↓ = MACs↓.",
        "- Bold: the best value of a column among the methods at the same target (none when more than "
        "half of them share it).",
        "- Iso-accuracy: the largest drop among the swept targets whose mean ΔAcc stays within the "
        "tolerance (no interpolation between targets).",
    ]
    devs = sorted({r["latency_device"] for r in ok if r.get("latency_device")})
    if devs:
        sources = {r.get("latency_source", "runner") for r in ok}
        how = ("pytest-benchmark (`benchmark.pedantic`: warm-up rounds, then the median of the timed rounds)"
               if sources == {"pytest-benchmark"} else
               "the runner (median of several rounds after warm-up)" if sources == {"runner"} else
               "pytest-benchmark where the benchmark JSON had both timings, else the runner")
        lines.append(f"- Speed-up: dense latency / deployed latency, both measured in the same run, eval mode, "
                     f"no grad, CUDA synchronized on GPU; timed by {how}; on {', '.join(devs)}.")
    for m in machines[:3]:
        lines.append(f"- Machine: {_machine_line(m)}.")
    vers = next((r.get("versions") for r in ok if r.get("versions")), None)
    if vers:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())) + ".")
    hashes = sorted({r.get("config_hash") for r in records if r.get("config_hash")})
    if hashes:
        lines.append(f"- Config hash{'es' if len(hashes) > 1 else ''}: {', '.join(f'`{h}`' for h in hashes)}.")
    return lines


def _summary(records: Sequence[Mapping[str, Any]]) -> str:
    status = {s: sum(r.get("status") == s for r in records) for s in ("ok", "failed", "skipped")}
    models = sorted({f"{r['dataset']} / {r['model']}" for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    text = (f"{len(records)} runs on {', '.join(models)}: {len(methods)} methods ({', '.join(methods)}), "
            f"seeds {', '.join(map(str, seeds))}; {status['ok']} ok")
    if status["failed"] or status["skipped"]:
        text += f", {status['failed']} failed, {status['skipped']} skipped (reasons in the tables)"
    return text + "."


def published_lines(records: Sequence[Mapping[str, Any]], published: Sequence[Mapping[str, Any]]) -> list[str]:
    """A "published vs measured" section: each published number beside the suite's own.

    ``published`` holds dicts with method, metric ("base_acc" or "acc"), value (a fraction),
    target ({kind, drop} or None), selection, source and note, as the presets register them.
    The measured number is the mean over seeds of the matching ok records (– when none).
    """
    if not published:
        return []
    lines = ["## Published vs measured", "",
             "| Method | Metric | Target | Published | Measured | Δ (pp) | Measured, val-selected | "
             "Published selection | Source |",
             "|---|---|---|--:|--:|--:|--:|---|---|"]
    notes = []
    for p in published:
        target = p.get("target")
        rs = [r for r in records if r.get("status") == "ok" and r["method"] == p["method"]
              and (target is None or (r["target_kind"], r["target_drop"]) == (target["kind"], target["drop"]))]
        values = [r[p["metric"]] for r in rs if r.get(p["metric"]) is not None]
        # base_acc is the same for every target of a (method, seed): one value per seed.
        if p["metric"] == "base_acc":
            values = list({r["seed"]: r["base_acc"] for r in rs if r.get("base_acc") is not None}.values())
        measured = sum(values) / len(values) if values else None
        # The dense model's best-on-validation epoch (test accuracy), beside the last epoch's.
        selected = list({r["seed"]: r["base_acc_val_selected"] for r in rs
                         if p["metric"] == "base_acc" and r.get("base_acc_val_selected") is not None}.values())
        where = f"{target['kind']} {target['drop'] * 100:g}%" if target else "dense"
        shown = f"{measured * 100:.2f}" if measured is not None else "–"
        diff = f"{(measured - p['value']) * 100:+.2f}" if measured is not None else "–"
        sel = f"{sum(selected) / len(selected) * 100:.2f}" if selected else "–"
        lines.append(f"| {p['method']} | {p['metric']} | {where} | {p['value'] * 100:.2f} | {shown} | {diff} | "
                     f"{sel} | {p['selection']} | {p['source']} |")
        if p.get("note"):
            notes.append(f"- {p['method']}: {p['note']}")
    lines += ["", "Measured: test accuracy of the last epoch (compression starts from it); val-selected: test "
              "accuracy of the epoch with the best validation accuracy. Nothing is chosen on the test split; a "
              "published number chosen on the test set is an upper bound for both.", *notes, ""]
    return lines


def cost_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """"Cost of the comparison": per method, optimizer steps and training time over all its runs.

    Pre-training is counted once per (method, seed), fine-tuning once per target; a
    pre-training reused from the checkpoint cache is counted at what it cost when it ran.
    """
    ok = [r for r in records if r.get("status") == "ok" and r.get("pretrain_wall_s") is not None]
    if not ok:
        return []
    lines = ["## Cost of the comparison", "",
             "| Method | Trainings | Optimizer steps | Train time (s) | GPU-seconds |", "|---|--:|--:|--:|--:|"]
    for method in dict.fromkeys(r["method"] for r in ok):
        rs = [r for r in ok if r["method"] == method]
        pre = {r["seed"]: (r["pretrain_wall_s"], r["pretrain_steps"]) for r in rs}
        steps = sum(s for _, s in pre.values()) + sum(r["finetune_steps"] for r in rs)
        wall = sum(w for w, _ in pre.values()) + sum(r["finetune_wall_s"] for r in rs)
        gpu = [r["gpu_s"] for r in rs if r.get("gpu_s") is not None]
        gpu_s = f"{sum(gpu):.0f}" if gpu else "–"
        lines.append(f"| {method} | {len(pre)} | {steps} | {wall:.1f} | {gpu_s} |")
    return [*lines, ""]


def render(records: Sequence[Mapping[str, Any]], out_dir: Path, *, config: Mapping[str, Any] | None = None,
           title: str = DEFAULT_TITLE, machines: Sequence[Mapping[str, Any]] = (), plots: bool = True) -> Path:
    """Write the report folder for ``records`` (dicts as stored in results.jsonl); returns report.md's path.

    ``config`` is the resolved preset (for the budget in the protocol), ``machines`` the
    pytest-benchmark machine_info of benchmark sources. ``plots=False`` skips the figures
    (the only slow part: matplotlib). Never trains or measures; imports no torch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = latest(records)
    rows = tables.rows(records)
    iso = tables.iso_accuracy(rows)
    results_md, iso_md = tables.markdown(rows), tables.iso_markdown(iso)
    atomic_write_text(out_dir / "tables" / "results.md", results_md)
    atomic_write_text(out_dir / "tables" / "results.tex", tables.latex(rows))
    atomic_write_text(out_dir / "tables" / "results.csv", tables.to_csv(rows))
    atomic_write_text(out_dir / "tables" / "iso_accuracy.md", iso_md)
    atomic_write_text(out_dir / "tables" / "iso_accuracy.tex", tables.iso_latex(iso))
    atomic_write_text(out_dir / "tables" / "iso_accuracy.csv", tables.iso_csv(iso))

    text = [f"# {title}", "", _summary(records) if records else "No records.", "",
            "## Results", "",
            "Accuracies and drops in percent, ΔAcc in percentage points; speed-ups are dense / deployed "
            "latency. Also as [LaTeX](tables/results.tex) and [CSV](tables/results.csv).", "",
            results_md,
            "## Iso-accuracy", "",
            "Largest FLOPs↓ and Params↓ each method reaches while its accuracy stays within 0.5 pp and "
            "within 1 pp of its dense model. Also as [LaTeX](tables/iso_accuracy.tex) and "
            "[CSV](tables/iso_accuracy.csv).", "",
            iso_md]
    if plots:
        from reports.plots import render_all

        figures, skipped = render_all(records, out_dir / "figures")
        text += ["## Figures", ""]
        for fig in figures:
            png, svg = fig.png.relative_to(out_dir).as_posix(), fig.svg.relative_to(out_dir).as_posix()
            text += [f"### {fig.title}", "", f"![{fig.title}]({png})", "", f"{fig.caption} ([SVG]({svg}))", ""]
        text += [f"- {line}" for line in skipped] + ([""] if skipped else [])
    text += published_lines(records, (config or {}).get("published", ()))
    text += cost_lines(records)
    text += [*protocol_lines(records, config, machines), "", "## All runs", "", tables.runs_markdown(records)]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(text))
    return path
