"""What decides whether a verdict is about the methods, not the protocol: trainings that collapsed
(listed under failures, never ranked), the decay budget each method's training gave weight decay,
and the layers every method left alone and how LoRITa spent its target across the others.

Pure functions from records (dicts as stored in results.jsonl) to Markdown lines; no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.records.decay import MIN_DECAY_BUDGET, OFFICIAL_DECAY_BUDGET, OFFICIAL_RECIPE, kept_fraction
from reports import tables
from reports.plots import layer_name
from reports.tables import FAMILY_ORDER, latest, mean_or_none

Rec = Mapping[str, Any]
DIVERGED = "diverged"
CURVE_POINTS = 8  # epochs shown of a failed training's curve (first, last and evenly between)


def _order(r: Rec) -> tuple:
    return (r.get("config_hash") or "", FAMILY_ORDER.get(r.get("family", ""), 9), r.get("n") or 0, r["method"])


def _sampled(values: Sequence[float]) -> list[tuple[int, float]]:
    """(1-based epoch, value) for at most ``CURVE_POINTS`` epochs: the first, the last, evenly between."""
    n = len(values)
    if n <= CURVE_POINTS:
        return list(enumerate(values, 1))
    picks = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})
    return [(i + 1, values[i]) for i in picks]


def _curve_text(curve: Mapping[str, Any]) -> str:
    loss = [v for v in curve.get("loss") or [] if isinstance(v, int | float)]
    val = [v for v in curve.get("val_acc") or [] if isinstance(v, int | float)]
    parts = []
    if loss:
        parts.append("loss " + ", ".join(f"ep{e} {v:.3g}" for e, v in _sampled(loss)))
    if val:
        parts.append("val acc " + ", ".join(f"ep{e} {v * 100:.1f} %" for e, v in _sampled(val)))
    return "; ".join(parts) or "no curve recorded"


def _recipe_text(recipe: Mapping[str, Any] | None) -> str:
    if not isinstance(recipe, Mapping) or not recipe:
        return "the run's budget (no recipe recorded)"
    keys = ("optimizer", "lr", "weight_decay", "momentum", "schedule", "label_smoothing")
    return ", ".join(f"{k} {recipe[k]}" for k in keys if recipe.get(k) is not None)


def failure_lines(records: Sequence[Rec]) -> list[str]:
    """"Failed trainings": every training that collapsed (status "diverged": non-finite loss, or a
    dense model at chance on validation), once per (config, pre-training, seed), with the methods
    it took down, the recipe that produced it and its curve. These records appear nowhere else in
    the report: not in the tables, the rankings, the iso-accuracy table or the figures."""
    bad = [r for r in latest(records) if r.get("status") == DIVERGED]
    if not bad:
        return []
    groups: dict[tuple, list[Rec]] = {}
    for r in sorted(bad, key=_order):
        groups.setdefault((r.get("config_hash") or "", r.get("pretrain_id") or r["method"], r["seed"]), []).append(r)
    lines = ["## Failed trainings", "",
             "These trainings collapsed (a non-finite loss, or a dense model at or near chance accuracy on the "
             "validation split), so their methods have no result at these points: they are not ranked, not marked, "
             "and not drawn in the iso-accuracy table or the figures. The recipe and the curve say what happened.", ""]
    for (_, pretrain, seed), rs in groups.items():
        methods = list(dict.fromkeys(r["method"] for r in rs))
        targets = sorted({f"{r['target_kind']} {r['target_drop'] * 100:g}%" for r in rs})
        first = rs[0]
        lines.append(f"- **{', '.join(methods)}** (pre-training `{pretrain}`, seed {seed}, {first['dataset']} / "
                     f"{first['model']}; {len(targets)} target{'s' if len(targets) != 1 else ''}): "
                     f"{tables._md_escape(first.get('reason') or 'no reason recorded')}. Recipe: "
                     f"{_recipe_text(first.get('recipe'))}. Curve: {_curve_text(first.get('pretrain_curve') or {})}.")
    return [*lines, ""]


def decay_lines(records: Sequence[Rec]) -> list[str]:
    """"Decay budget": per method, Σₜ lrₜ·wd/(1−momentum) (decoupled: Σₜ lrₜ·wd) of its pre-training
    and its fine-tuning, what an unsupported direction keeps of its size, the official recipe's value
    beside it, and a plain warning where LoRITa's pre-training budget is below ``MIN_DECAY_BUDGET``."""
    recs = [r for r in latest(records) if r.get("status") in ("ok", DIVERGED)
            and r.get("pretrain_decay_budget") is not None]
    if not recs:
        return []
    several = len({r.get("config_hash") for r in recs}) > 1
    head = [*(["Config"] if several else []), "Method", "Pre-training budget", "Direction kept", "Fine-tune budget"]
    lines = ["### Decay budget", "",
             "How far weight decay could act: Σₜ lrₜ·wd/(1−momentum) over the optimizer steps (SGD, coupled L2), "
             "Σₜ lrₜ·wd (AdamW, decoupled). A direction of a weight that no gradient supports keeps about e^(−budget) "
             "of its size; LoRITa's low rank needs that room. The "
             f"{OFFICIAL_RECIPE} gives {OFFICIAL_DECAY_BUDGET:.1f}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * (1 + several) + "--:|" * 3]
    groups: dict[tuple, list[Rec]] = {}
    for r in sorted(recs, key=_order):
        groups.setdefault((r.get("config_hash") or "", r["method"]), []).append(r)
    low: list[tuple[str, float]] = []
    for (h, method), rs in groups.items():
        pre = mean_or_none([r["pretrain_decay_budget"] for r in rs])
        fine = mean_or_none([r["finetune_decay_budget"] for r in rs if r.get("finetune_decay_budget") is not None])
        cells = [*([f"`{h}`"] if several else []), method, f"{pre:.3g}", f"{kept_fraction(pre) * 100:.0f} %",
                 "–" if fine is None else f"{fine:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
        if rs[0].get("family") == "lorita" and pre < MIN_DECAY_BUDGET:
            low.append((method, pre))
    if low:
        worst = max(b for _, b in low)
        lines += ["", f"**Warning: at this budget N > 1 cannot be expected to differ from N = 1.** LoRITa's "
                  f"pre-training decay budget is {', '.join(f'{b:.3g} ({m})' for m, b in low)}, below "
                  f"{MIN_DECAY_BUDGET:g}: an unsupported direction still keeps {kept_fraction(worst) * 100:.0f} % "
                  "of its size, against {kept_fraction(OFFICIAL_DECAY_BUDGET) * 100:.1f} % under the official recipe. "
                  "Differences between N here come from initialization and optimization, not from the low-rank "
                  "bias of weight decay; lengthen the training or raise lr·wd (for every method alike)."]
    return [*lines, ""]


def protection_lines(records: Sequence[Rec]) -> list[str]:
    """"Protected layers and rank allocation": the layers no method changed (one list for every
    method), and for each LoRITa row the allocation its target used and, where it was chosen on
    validation ("auto"), each candidate's zero-shot validation accuracy."""
    ok = [r for r in latest(records) if r.get("status") == "ok"]
    lines: list[str] = []
    protected = sorted({tuple(r.get("protected") or ()) for r in ok if "protected" in r})
    if protected:
        lines += ["### Protected layers and rank allocation", ""]
        for p in protected:
            names = ", ".join(f"`{layer_name(n)}`" for n in p) or "none"
            lines.append("- Protected layers (no method changes them: LoRITa keeps them at full rank, pruning "
                         f"passes them as ignored layers): {names}.")
    lor = [r for r in ok if r.get("family") == "lorita" and r.get("allocation")]
    if not lor:
        return [*lines, ""] if lines else []
    if not lines:
        lines += ["### Protected layers and rank allocation", ""]
    lines += ["- Rank allocation of each LoRITa row: *global* is the paper's one threshold on σ/σ_max over every "
              "layer; *min-share* the same threshold over the layers whose truncation to rank 1 would save at least "
              "1 % of the model (params, or MACs for a FLOPs target), the others kept at full rank. Where the run "
              "chose (*auto*), the zero-shot validation accuracy of each candidate that lands on the target "
              "decided (–: it missed the target and did not compete); the test split never did.", "",
              "| Method | Target | Used (seeds) | Val acc, global | Val acc, min-share |", "|---|---|---|--:|--:|"]
    groups: dict[tuple, list[Rec]] = {}
    for r in sorted(lor, key=lambda r: (*_order(r), r["target_kind"], r["target_drop"])):
        key = (r.get("config_hash") or "", r["method"], r["target_kind"], r["target_drop"])
        groups.setdefault(key, []).append(r)
    for (_, method, kind, drop), rs in groups.items():
        used: dict[str, int] = {}
        for r in rs:
            used[r["allocation"]] = used.get(r["allocation"], 0) + 1
        scores = {a: mean_or_none([r["allocation_val_acc"][a] for r in rs if a in (r.get("allocation_val_acc") or {})])
                  for a in ("global", "min-share")}
        lines.append(f"| {method} | {kind} {drop * 100:g}% | {', '.join(f'{a} ({k})' for a, k in used.items())} | "
                     + " | ".join("–" if v is None else f"{v * 100:.2f}" for v in scores.values()) + " |")
    return [*lines, ""]
