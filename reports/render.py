"""A report folder: ``report.md`` (tables, figures, protocol), the tables as LaTeX and CSV, the figures.

Layout of ``out_dir``::

    report.md                      readable on GitHub; links everything below relatively
    tables/results.{md,tex,csv}    the paper-style table
    tables/iso_accuracy.{md,tex,csv}
    figures/*.png, figures/*.svg

Records of different configurations (config hashes) are reported as separate groups, never as
seeds of one cell; each group's budget, published numbers and recipe come from its own config.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.records.results import REFERENCE_PRETRAINING, atomic_write_text
from bench.records.sources import config_hash, flat
from reports import controls, health, latency, tables
from reports.tables import FAMILY_ORDER, latest, mean_or_none

DEFAULT_TITLE = "LoRITa vs structured pruning"
HEADLINE_PP = 1.0  # the headline names the methods within this many pp of the reference accuracy
Rec = Mapping[str, Any]


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


def configs_by_hash(records: Sequence[Rec], configs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each config keyed by the config hash of the records it describes.

    A config's own ``config_hash`` (set by ``reports.sources.load``) or its computed hash; a
    single config whose hash no record carries is taken to describe the records when they all
    share one hash (a config written by another version of the harness).
    """
    hashes = {r.get("config_hash") or "" for r in records}
    out: dict[str, Mapping[str, Any]] = {}
    for c in configs:
        out.setdefault(config_hash(c), c)
    if len(configs) == 1 and len(hashes) == 1 and not hashes & set(out):
        out = {hashes.pop(): configs[0]}
    return out


def differences(by_hash: Mapping[str, Mapping[str, Any]], hashes: Sequence[str]) -> dict[str, str]:
    """Per config hash, what differs from the other configs of the report ("budget.lr=0.02, …");
    "config not found" for a hash with no config.json or benchmark config beside its records."""
    flats = {h: flat({k: v for k, v in c.items() if k not in ("published", "config_hash")})
             for h, c in by_hash.items() if h in hashes}
    keys = sorted({k for f in flats.values() for k in f})
    varying = [k for k in keys if len({repr(f.get(k)) for f in flats.values()}) > 1]
    out = {}
    for h in hashes:
        if h not in flats:
            out[h] = "config not found"
        elif varying:
            out[h] = ", ".join(f"{k}={flats[h].get(k)}" for k in varying)
        else:
            out[h] = ""
    return out


def _group_key(r: Rec) -> tuple[str, str, str]:
    return (r.get("config_hash") or "", r["dataset"], r["model"])


def _names(methods: Sequence[str]) -> str:
    return ", ".join(methods) if methods else "none"


def intro_lines(rows: Sequence[tables.Row], labels: Mapping[str, str] | None = None) -> list[str]:
    """The opening: what LoRITa, N and the pruning baselines are, then this run's headline,
    computed from the rows: per target, which methods stay within ``HEADLINE_PP`` of the
    reference accuracy after fine-tuning and zero-shot, with the noise caveat."""
    lorita = list(dict.fromkeys(r.method for r in rows if r.family == "lorita"))
    pruning = list(dict.fromkeys(r.method for r in rows if r.family == "pruning"))
    lowrank = list(dict.fromkeys(r.method for r in rows if r.family == "lowrank"))
    controls = any(r.family in tables.UNRANKED for r in rows)
    lines = ["LoRITa (low-rank induced training) trains every compressible layer as a product of N matrices under "
             "weight decay, which drives the product to low rank; after training the N factors are merged into one "
             "weight and its SVD is truncated to meet the target, so the model is compressed with little loss and, "
             "ideally, no retraining. N = 1 is standard training followed by the same SVD truncation."
             + (f" LoRITa methods here: {_names(lorita)}." if lorita else "")
             + (f" The pruning baselines ({_names(pruning)}) start from the plainly trained reference model (or one "
                "trained with their sparsity regularizer) and remove the weights, neurons or channels that an "
                "importance criterion ranks lowest, through torch-pruning; they usually need fine-tuning to recover."
                if pruning else "")
             + (f" Low-rank training ({_names(lowrank)}; Khodak et al., ICLR 2021) trains two factors per layer at "
                "ranks fixed before training, one training per target: LoRITa's claim is that it need not fix them."
                if lowrank else "")
             + (" Controls (`scratch:M`: M's deployed architecture trained from scratch, same steps) are listed "
                "beside their cells under Controls, and never in this headline or a ranking." if controls else "")
             + " Every method then gets the same fine-tuning steps; accuracy is reported both before "
             "(zero-shot) and after fine-tuning.", ""]
    several = len({r.config_hash for r in rows}) > 1
    for (chash, dataset, model), block in tables._blocks(rows, ("config_hash", "dataset", "model")).items():
        ok = [r for r in block if r.status == "ok" and r.family not in tables.UNRANKED]
        if not ok:
            continue
        refs = [v for r in ok for v in r.values.get("ref_acc", ())]
        against = (f"the reference accuracy ({statistics.fmean(refs):.2f} %)" if refs
                   else "each method's own dense model (no reference accuracy recorded)")
        parts = []
        for stage, (_, dkey) in tables.STAGE_KEY.items():
            if not any(r.mean(dkey) is not None for r in ok):
                parts.append("Zero-shot accuracy was not recorded" if stage == "zero-shot" else "")
                continue
            per_target = []
            for (kind, drop), at in tables._blocks(ok, ("target_kind", "target_drop")).items():
                good = [r.method for r in at if r.mean(dkey) is not None and r.mean(dkey) >= -HEADLINE_PP - 1e-9]
                per_target.append(f"{kind} {drop * 100:g} %: {_names(good)}")
            parts.append(f"{'After fine-tuning' if stage == 'fine-tuned' else 'Zero-shot (before fine-tuning)'} — "
                         + "; ".join(per_target))
        seeds = max(r.ok_runs for r in ok)
        caveat = ("One seed: these are single runs, so no ranking between methods is statistically supported and "
                  "nothing is marked best for accuracy." if seeds < 2 else
                  f"{seeds} seeds: the lists use the mean over seeds; a bold value in the tables beats the runner-up "
                  "beyond the 95 % intervals, anything else is within the noise"
                  + (" (points where only one seed succeeded are never marked)." if any(r.ok_runs < 2 for r in ok)
                     else "."))
        title = tables.group_title(dataset, model, chash, several=several, labels=labels)
        lines += [f"**{title}.** Within {HEADLINE_PP:g} pp of {against}: "
                  + ". ".join(p for p in parts if p) + f". {caveat}", ""]
    return lines


def legend_lines(rows: Sequence[tables.Row]) -> list[str]:
    """Every column of the report's tables, named once."""
    tput = next((r.throughput_batch for r in rows if r.throughput_batch), None) or "T"
    return [
        "## How to read the tables", "",
        "- **Dense acc**: the method's own dense model before compression (LoRITa: the merged N-factor model; "
        "pruning: the model it prunes). **Ref acc** (under each table's heading): the one plainly trained dense "
        "model per seed that N = 1 and the pruning baselines start from; every ΔAcc is taken against it.",
        "- **Zero-shot acc (ΔAcc)**: top-1 test accuracy of the compressed model before any fine-tuning, and in "
        "parentheses its difference from the reference accuracy in percentage points. **Fine-tuned acc (ΔAcc)**: "
        "the same after the fine-tuning steps.",
        "- **FLOPs↓** / **Params↓**: reduction of the deployed model's FLOPs / parameters against the dense model, "
        "in percent.",
        f"- **Speed-up b=1** / **b={tput}**: dense latency / deployed latency at batch 1 and at batch {tput}; "
        "[lo, hi] is its 95 % interval: the A/B timing's bootstrap interval, joined with the interval over seeds when "
        "there are several (no interval: one seed and no A/B timing). Why a speed-up can be below 1×: a factorized "
        "layer runs two kernels instead of one and a pruned model still pays per-layer overheads; on small layers, "
        "at batch 1 and on CPU these overheads, not arithmetic, set the latency, so fewer FLOPs need not mean less "
        "time.",
        "- **Fine-tune s**: wall time of this target's fine-tuning; pre-training time is in the cost section, "
        "once per method and seed.",
        "- **± h**: with several seeds, the half-width of the 95 % Student-t interval of the mean over seeds "
        "(h = t·s/√k for k seeds; t = 12.7 for two seeds, 4.3 for three, so two seeds give wide intervals). "
        "Times are means without interval.",
        "- **Iso-accuracy**, *X↓ @ ΔAcc ≥ −t pp (acc)*: the largest X↓ among the swept targets whose mean ΔAcc "
        "stays within t pp of the reference, with the mean accuracy at that point; **Stage** says whether ΔAcc is "
        "zero-shot or fine-tuned.",
        "- **Bold**: best beyond the noise (rules in the protocol); no bold means no supported winner.", ""]


def rule_lines(rows: Sequence[tables.Row]) -> list[str]:
    """The protocol's lines on ΔAcc's reference, intervals, ties and bold."""
    refs = {r.reference for r in rows if r.status == "ok"} - {""}
    tol = sorted({r.tolerance_pp for r in rows})
    lines = []
    if refs == {"ref"}:
        lines.append("- ΔAcc: accuracy of the compressed model (zero-shot or fine-tuned) minus that of the one "
                     "reference model of its (config, dataset, model, seed), the plainly trained dense model, in "
                     "percentage points; each method's own dense accuracy is shown beside it.")
    else:
        lines.append("- ΔAcc: accuracy of the compressed model minus that of the one reference model of its seed "
                     "(`ref_acc`); **fallback**: records without `ref_acc` (written before it existed) are compared "
                     "with the method's own dense model (`base_acc`), so a method with a weaker dense model looks "
                     "better there" + (" — all records here use the fallback." if refs == {"base"} else
                                       " — some records here use it."))
    lines += [
        "- Intervals: with k ≥ 2 seeds a mean carries its 95 % Student-t interval, mean ± t(k−1)·s/√k; a speed-up "
        "also its A/B bootstrap interval (dense and deployed timed in alternating rounds; median of per-round "
        "ratios), the union of both with several seeds.",
        f"- Ties: drops that differ by less than the target-landing tolerance ({', '.join(f'{t:g}' for t in tol)} pp) "
        "are ties; a point whose achieved drop misses its target by more than it is footnoted.",
        "- Bold (results): at most one row per column and target: the best mean, only when it beats the runner-up "
        "beyond the noise — accuracy: both have a 95 % interval (two or more seeds) and the intervals do not "
        "overlap; drops: the means differ by more than the tolerance and the seed intervals, where both exist, "
        "do not overlap; speed-ups: both have an interval and they do not overlap. With one seed nothing is "
        "marked for accuracy: no ranking is statistically supported.",
        "- Bold (iso-accuracy): the top entry of a column and stage, only when it exceeds the runner-up by more "
        "than the tolerance, both rest on two or more seeds and neither is † (within the noise).",
    ]
    return lines


def protocol_lines(records: Sequence[Rec], config: Mapping[str, Any] | None,
                   machines: Sequence[Mapping[str, Any]] = (), *,
                   configs: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The "Protocol" section: budget per config, recipes, what each number means, the ranking
    rules, counting convention, latency, device, versions.

    ``configs`` maps config hashes to their configs (several configs: a budget line each);
    ``config`` alone is the single config of a one-config report.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    hashes = sorted({r.get("config_hash") or "" for r in records})
    by_hash = dict(configs or {})
    if config is not None and not by_hash:
        by_hash = {hashes[0] if len(hashes) == 1 else config_hash(config): config}
    lines = ["## Protocol", ""]
    for h, c in by_hash.items():
        b = c.get("budget", {})
        which = f" of config `{h}`" if len(hashes) > 1 else ""
        lines.append(f"- Budget{which} (identical number of optimizer steps for every method): {b.get('epochs')} "
                     f"epochs in all = {b.get('epochs', 0) - b.get('finetune_epochs', 0)} before compression + "
                     f"{b.get('finetune_epochs')} fine-tuning after; {b.get('optimizer')} lr {b.get('lr')} "
                     f"(fine-tune {b.get('finetune_lr')}), {b.get('schedule')} schedule, batch "
                     f"{b.get('batch_size')}, weight decay {b.get('weight_decay')} "
                     f"({'coupled L2' if b.get('optimizer') == 'sgd' else 'decoupled'}).")
    seeds = sorted({r["seed"] for r in records})
    if seeds:
        lines.append(f"- Seeds: {', '.join(map(str, seeds))}; with several seeds a cell shows the mean ± the "
                     "half-width of its 95 % t-interval.")
    pre = sorted({r["pretrain_steps"] for r in ok if r.get("pretrain_steps") is not None})
    fine = sorted({r["finetune_steps"] for r in ok if r.get("finetune_steps") is not None})
    total = sorted({r["train_steps"] for r in ok if r.get("train_steps") is not None})
    if total:
        split = (f" = {', '.join(map(str, pre))} pre-training + {', '.join(map(str, fine))} fine-tuning"
                 if pre and fine else "")
        lines.append(f"- Optimizer steps per operating point: {', '.join(map(str, total))}{split} (the budget "
                     "rule: identical for every method). The cost section counts the steps actually run, each "
                     "pre-training once.")
    lines += [
        "- Accuracy: top-1 on the test split, measured once at the end; nothing is selected on it "
        "(targets are met by counting, not by accuracy).",
        *rule_lines(tables.rows(records)),
        "- FLOPs↓ and Params↓: measured on the deployed model (LoRITa: the factorized model; pruning: "
        "the pruned model) with torch-pruning's counter; FLOPs = 2·MACs, so FLOPs↓ = MACs↓.",
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
        # A speed-up read from a benchmark JSON is the ratio of pytest-benchmark's medians, not A/B.
        ab = [r.get("speedup_b1") is not None and r.get("latency_source") != "pytest-benchmark" for r in ok]
        if any(ab):
            lines.append("- Speed-up: dense and deployed models timed in alternating rounds in one process (A/B, so "
                         "drift hits both), the median of the per-round ratios dense/deployed with a 95 % bootstrap "
                         "interval; eval mode, no grad, CUDA synchronized on GPU; on " + ", ".join(devs) + "."
                         + (f" The latencies under All runs were timed by {how}." if all(ab) else
                            f" Records without the A/B timing: dense latency / deployed latency timed by {how}, no "
                            "interval."))
        else:
            lines.append(f"- Speed-up: dense latency / deployed latency, both measured in the same run, eval mode, "
                         f"no grad, CUDA synchronized on GPU; timed by {how}; on {', '.join(devs)}; no interval "
                         "(the records predate the A/B timing).")
    for m in machines[:3]:
        lines.append(f"- Machine: {_machine_line(m)}.")
    vers = next((r.get("versions") for r in ok if r.get("versions")), None)
    if vers:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())) + ".")
    hashes = [h for h in hashes if h]
    if hashes:
        lines.append(f"- Config hash{'es' if len(hashes) > 1 else ''}: {', '.join(f'`{h}`' for h in hashes)}"
                     + ("; each configuration is reported separately, never pooled." if len(hashes) > 1 else "."))
    return [*lines, "", *recipe_lines(records, by_hash), *health.decay_lines(records),
            *health.protection_lines(records)]


RECIPE_FIELDS = (("optimizer", "Optimizer"), ("lr", "lr"), ("finetune_lr", "Fine-tune lr"),
                 ("momentum", "Momentum"), ("nesterov", "Nesterov"), ("weight_decay", "Weight decay"),
                 ("schedule", "Schedule"), ("label_smoothing", "Label smoothing"), ("source", "Source"))


def _recipe_cell(rec: Mapping[str, Any], key: str) -> str:
    if key == "schedule" and rec.get("schedule") == "step" and rec.get("milestones") is not None:
        # a step schedule is its milestones and factor too (records state them since the typed tune grid)
        return f"step at {'/'.join(f'{m:g}' for m in rec['milestones'])} ×{rec.get('gamma', 0.1):g}"
    return "–" if rec.get(key) is None else str(rec.get(key))


def recipe_lines(records: Sequence[Rec], by_hash: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """"Recipes": the optimizer settings each method used (records' ``recipe``), or a line saying
    that every method used the budget's, when no record carries one."""
    recs = [r for r in latest(records) if r.get("status") == "ok"]
    have = [r for r in recs if isinstance(r.get("recipe"), Mapping)]
    if not have:
        return ["### Recipes", "", "Every method used the budget's optimizer settings above (the records carry "
                "no per-method `recipe`).", ""]
    several = len({r.get("config_hash") for r in have}) > 1
    head = [*(["Config"] if several else []), "Method", *(name for _, name in RECIPE_FIELDS), "Tuning grid"]
    lines = ["### Recipes", "", "Per-method hyper-parameters (methods may use their own lr and weight decay; the "
             "number of optimizer steps is the same for all). *preset*: the method's published recipe; *tuned*: "
             "chosen on the validation split from the grid shown.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    seen: dict[tuple, Mapping[str, Any]] = {}
    for r in sorted(have, key=lambda r: (r.get("config_hash") or "", FAMILY_ORDER.get(r.get("family", ""), 9),
                                         r.get("n") or 0, r["method"])):
        seen.setdefault((r.get("config_hash") or "", r["method"]), r["recipe"])
    for (h, method), rec in seen.items():
        grid = rec.get("grid")
        grid_text = ", ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" if isinstance(v, list | tuple) else f"{k}={v}"
                              for k, v in grid.items()) if isinstance(grid, Mapping) and grid else "–"
        cells = [*([f"`{h}`"] if several else []), method,
                 *(_recipe_cell(rec, k) for k, _ in RECIPE_FIELDS), grid_text]
        lines.append("| " + " | ".join(tables._md_escape(c) for c in cells) + " |")
    adamw = sorted({method for (_, method), rec in seen.items() if rec.get("optimizer") == "adamw"
                    and any(r["method"] == method and r.get("family") == "lorita" for r in have)})
    if adamw:
        lines += ["", f"Note: {', '.join(adamw)} trained with AdamW. Its decoupled weight decay is not the "
                  "regularizer LoRITa's theory is stated for: coupled L2 (SGD's weight decay) on N factors acts as a "
                  "Schatten-(2/N) penalty on their product; with AdamW that equivalence does not hold."]
    return [*lines, ""]


def _summary(records: Sequence[Rec]) -> str:
    status = {s: sum(r.get("status") == s for r in records) for s in ("ok", "failed", "skipped", "diverged")}
    models = sorted({f"{r['dataset']} / {r['model']}" for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    hashes = sorted({r.get("config_hash") or "" for r in records})
    text = (f"{len(records)} runs on {', '.join(models)}"
            + (f" in {len(hashes)} configurations ({', '.join(f'`{h}`' for h in hashes)}), reported separately"
               if len(hashes) > 1 else "")
            + f": {len(methods)} methods ({', '.join(methods)}), seeds {', '.join(map(str, seeds))}; "
            f"{status['ok']} ok")
    if status["failed"] or status["skipped"]:
        text += f", {status['failed']} failed, {status['skipped']} skipped (reasons in the tables)"
    if status["diverged"]:
        text += f", {status['diverged']} of collapsed trainings (under Failed trainings, never ranked)"
    return text + "."


def published_lines(records: Sequence[Rec], published: Sequence[Mapping[str, Any]], *,
                    config: Mapping[str, Any] | None = None) -> list[str]:
    """A "published vs measured" section: each published number beside the suite's own.

    ``published`` holds dicts with method, metric ("base_acc" or "acc"), value (a fraction),
    target ({kind, drop} or None), selection, source and note, as the presets register them.
    A published number belongs to its ``config`` (a preset: dataset, model and budget), so only
    records of that config are matched: those with its config hash, or, for records without a
    hash, with its dataset and model. The measured number is the mean over seeds of the
    matching ok records (– when none).
    """
    if not published:
        return []
    if config is not None:
        h = config.get("config_hash") or config_hash(config)
        records = [r for r in records if (r.get("config_hash") == h if r.get("config_hash") else
                                          (r.get("dataset"), r.get("model")) == (config.get("dataset"),
                                                                                 config.get("model")))]
    lines = ["## Published vs measured", ""]
    if config is not None:
        lines += [f"Matched on method, target, dataset ({config.get('dataset')}), model ({config.get('model')}) and "
                  f"budget (config `{config.get('config_hash') or config_hash(config)}`).", ""]
    lines += ["| Method | Metric | Target | Published | Measured | Δ (pp) | Measured, val-selected | "
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


def _fmt(v: float | None, f: str) -> str:
    return "–" if v is None else format(v, f)


def _reference_only(ok: Sequence[Rec], references: Sequence[Mapping[str, Any]]) -> tuple[list[str], int, float]:
    """The line on the plain trainings made only to be the reference (reference lines whose training
    no ok record carries), with their optimizer steps and seconds; no line when there are none."""
    plain = {(r.get("config_hash") or "", r["seed"]) for r in ok if r.get("pretrain_id") == REFERENCE_PRETRAINING}
    hashes = {r.get("config_hash") or "" for r in ok}
    extra = [ref for ref in references if (ref.get("config_hash") or "") in hashes
             and ((ref.get("config_hash") or ""), ref["seed"]) not in plain and ref.get("train_steps") is not None]
    if not extra:
        return [], 0, 0.0
    steps, secs = sum(r["train_steps"] for r in extra), sum(r.get("train_wall_s") or 0.0 for r in extra)
    return (["", f"Plus {len(extra)} plain training{'s' if len(extra) != 1 else ''} made only to be the reference "
             f"(no method of the run trains plainly): {steps:,} optimizer steps, {secs:.1f} s "
             f"({sum(bool(r.get('cached')) for r in extra)} from the checkpoint cache)."], steps, secs)


def _cost_cells(method: str, rs: Sequence[Rec]) -> list[str]:
    """One method's row of the cost table (without the config column), from its ok records ``rs``."""
    by_seed = {r["seed"]: r for r in rs}
    pre_steps = mean_or_none([r["pretrain_steps"] for r in by_seed.values() if r.get("pretrain_steps") is not None])
    pre_s = mean_or_none([r["pretrain_wall_s"] for r in by_seed.values() if r.get("pretrain_wall_s") is not None])
    fine_s = [r["finetune_wall_s"] for r in rs if r.get("finetune_wall_s") is not None]
    mem = mean_or_none([r["train_peak_mem_mb"] for r in by_seed.values() if r.get("train_peak_mem_mb") is not None])
    fmem = mean_or_none([r["finetune_peak_mem_mb"] for r in rs if r.get("finetune_peak_mem_mb") is not None])
    # gpu_s is one deployed model's pre-training plus its fine-tuning: summed over targets it would
    # count the pre-training once per target, so here a seed's pre-training counts once.
    on_gpu = [r for r in rs if r.get("gpu_s") is not None]
    gpu = ([r.get("pretrain_wall_s") or 0.0 for r in {r["seed"]: r for r in on_gpu}.values()]
           + [r.get("finetune_wall_s") or 0.0 for r in on_gpu])
    ncached = sum(bool(r.get("pretrain_cached")) for r in by_seed.values())
    pid = next((r["pretrain_id"] for r in rs if r.get("pretrain_id")), "–")
    return [method, pid, f"{len(by_seed)} ({ncached})", _fmt(pre_steps, ".0f"), _fmt(pre_s, ".1f"), str(len(rs)),
            f"{sum(fine_s):.1f}" if fine_s else "–", _fmt(mem, ",.0f"), _fmt(fmem, ",.0f"),
            f"{sum(gpu):.0f}" if gpu else "–"]


def cost_lines(records: Sequence[Rec], references: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """"Cost of the comparison": trainings run and shared, cache hits, and per method its
    pre-training (once per seed), fine-tuning (once per target) and peak training memory; with
    ``references`` (reference lines), also the plain trainings made only to be the reference.

    A pre-training is identified by (config hash, ``pretrain_id``, seed): methods sharing a
    ``pretrain_id`` share one trained model, counted once in the totals; records without
    ``pretrain_id`` count one pre-training per (config, method, seed). A pre-training loaded
    from the checkpoint cache (``pretrain_cached``) is counted at what it cost when it ran.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return []
    ids = {(r.get("config_hash") or "", r.get("pretrain_id") or f"method:{r['method']}", r["seed"]) for r in ok}
    per_method = {(r.get("config_hash") or "", r["method"], r["seed"]) for r in ok}
    cached = {(r.get("config_hash") or "", r.get("pretrain_id") or f"method:{r['method']}", r["seed"])
              for r in ok if r.get("pretrain_cached")}
    lines = ["## Cost of the comparison", ""]
    shared = len(per_method) - len(ids)
    lines.append(f"Trainings: {len(ids)} pre-training{'s' if len(ids) != 1 else ''} run (distinct config, "
                 f"pre-training identity and seed) for {len(per_method)} (config, method, seed) combinations, so "
                 f"{shared} {'was' if shared == 1 else 'were'} shared between methods"
                 + ("" if any(r.get("pretrain_id") for r in ok) else
                    " (records without `pretrain_id`: each method counted as its own pre-training)")
                 + f"; {len(cached)} of the {len(ids)} came from the checkpoint cache (counted at what they cost "
                 "when they ran).")
    timed = [r for r in ok if r.get("pretrain_wall_s") is not None]
    several = len({r.get("config_hash") for r in ok}) > 1
    head = [*(["Config"] if several else []), "Method", "Pre-training", "Seeds (cached)", "Pre-train steps / seed",
            "Pre-train s / seed", "Fine-tunes", "Fine-tune s (all)", "Peak train MiB", "Peak fine-tune MiB",
            "GPU-s"]
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + ("---|" if several else "") + "---|"
              + "--:|" * (len(head) - 2 - several)]
    groups: dict[tuple, list[Rec]] = {}
    for r in sorted(ok, key=lambda r: (r.get("config_hash") or "", FAMILY_ORDER.get(r.get("family", ""), 9),
                                       r.get("n") or 0, r["method"])):
        groups.setdefault((r.get("config_hash") or "", r["method"]), []).append(r)
    total_steps, total_s = 0, 0.0
    counted: set[tuple] = set()
    for (h, method), rs in groups.items():
        for r in {r["seed"]: r for r in rs}.values():
            key = (h, r.get("pretrain_id") or f"method:{method}", r["seed"])
            if key not in counted:
                counted.add(key)
                total_steps += r.get("pretrain_steps") or 0
                total_s += r.get("pretrain_wall_s") or 0.0
        total_steps += sum(r.get("finetune_steps") or 0 for r in rs)
        total_s += sum(r["finetune_wall_s"] for r in rs if r.get("finetune_wall_s") is not None)
        cells = [*([f"`{h}`"] if several else []), *_cost_cells(method, rs)]
        lines.append("| " + " | ".join(tables._md_escape(c) for c in cells) + " |")
    extra, steps, secs = _reference_only(ok, references)
    lines += extra
    total_steps, total_s = total_steps + steps, total_s + secs
    lines += ["", f"In all: {total_steps:,} optimizer steps and {total_s:.1f} s of training"
              + ("" if timed else " (no record carries wall times)")
              + ", each shared pre-training counted once. Peak memory: the mean over seeds of CUDA "
              "`max_memory_allocated` during pre-training (fine-tuning), or on CPU the process's peak resident "
              "set size during it (the data set included, so CPU figures differ little between methods); "
              "LoRITa's N factors show up there.", ""]
    return lines


def render(records: Sequence[Rec], out_dir: Path, *, config: Mapping[str, Any] | None = None,
           configs: Sequence[Mapping[str, Any]] = (), title: str = DEFAULT_TITLE,
           machines: Sequence[Mapping[str, Any]] = (), plots: bool = True,
           references: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write the report folder for ``records`` (dicts as stored in results.jsonl); returns report.md's path.

    ``config`` / ``configs`` are the resolved presets of the runs (budget, published numbers;
    ``reports.sources.Loaded.configs``), matched to records by config hash; records of
    different config hashes become separate groups of every table and figure. ``machines`` is
    the pytest-benchmark machine_info of benchmark sources. ``plots=False`` skips the figures
    (the only slow part: matplotlib). ``references`` are the reference lines of the sources
    (``Loaded.references``), whose training the cost section counts where no record does.
    Never trains or measures; imports no torch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = latest(records)
    hashes = sorted({r.get("config_hash") or "" for r in records})
    by_hash = configs_by_hash(records, [c for c in (config, *configs) if c])
    labels = differences(by_hash, hashes) if len(hashes) > 1 else {}
    rows = tables.rows(records)
    iso = tables.iso_accuracy(rows)
    results_md, iso_md = tables.markdown(rows, labels=labels), tables.iso_markdown(iso, labels=labels)
    atomic_write_text(out_dir / "tables" / "results.md", results_md)
    atomic_write_text(out_dir / "tables" / "results.tex", tables.latex(rows, labels=labels))
    atomic_write_text(out_dir / "tables" / "results.csv", tables.to_csv(rows))
    atomic_write_text(out_dir / "tables" / "iso_accuracy.md", iso_md)
    atomic_write_text(out_dir / "tables" / "iso_accuracy.tex", tables.iso_latex(iso))
    atomic_write_text(out_dir / "tables" / "iso_accuracy.csv", tables.iso_csv(iso))

    text = [f"# {title}", "", *intro_lines(rows, labels), _summary(records) if records else "No records.", "",
            *health.failure_lines(records)]
    if len(hashes) > 1:
        text += ["## Configurations", "", "The records come from several configurations; each is reported on its "
                 "own (a configuration is what determines a trained model: dataset, model, budget, device).", ""]
        text += [f"- `{h or 'unknown'}`: {labels.get(h) or 'no difference in the known configs'}" for h in hashes]
        text.append("")
    text += [*legend_lines(rows),
             "## Results", "",
             "Accuracies and drops in percent, ΔAcc in percentage points. Also as [LaTeX](tables/results.tex) and "
             "[CSV](tables/results.csv).", "",
             results_md,
             "## Iso-accuracy", "",
             "Largest FLOPs↓ and Params↓ each method reaches while its accuracy stays within 0.5 pp and within "
             "1 pp of the reference accuracy, zero-shot and after fine-tuning, with the accuracy reached there. "
             "Also as [LaTeX](tables/iso_accuracy.tex) and [CSV](tables/iso_accuracy.csv).", "",
             iso_md, *controls.control_lines(records)]
    deployed = latency.latency_lines(records)
    if deployed:
        atomic_write_text(out_dir / "tables" / "latency.md", "\n".join(deployed))
        text += deployed
    if plots:
        from reports.plots import render_all

        published = {h: c["published"] for h, c in by_hash.items() if c and c.get("published")}
        figures, skipped = render_all(records, out_dir / "figures", published)
        text += ["## Figures", ""]
        for fig in figures:
            png, svg = fig.png.relative_to(out_dir).as_posix(), fig.svg.relative_to(out_dir).as_posix()
            text += [f"### {fig.title}", "", f"![{fig.title}]({png})", "", f"{fig.caption} ([SVG]({svg}))", ""]
        text += [f"- {line}" for line in skipped] + ([""] if skipped else [])
    for h in hashes:
        c = by_hash.get(h)
        if c and c.get("published"):
            text += published_lines(records, c["published"], config={**c, "config_hash": h})
    text += cost_lines(records, references)
    text += [*protocol_lines(records, None, machines, configs=by_hash), "## All runs", "",
             tables.runs_markdown(records)]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(text))
    return path
