"""Verdicts you can trust: ΔAcc against the one reference model, zero-shot beside fine-tuned,
bold only beyond the noise (seed intervals, target tolerance, A/B speed-up intervals), configs
never pooled, and a report that explains itself (intro, legend, costs, memory, recipes)."""

import csv
import io
import json
import struct

import pytest

from bench.records.sources import config_hash
from reports import render, tables
from reports.render import cost_lines, intro_lines, published_lines

REF = 0.9611


def rec(method: str, acc: float, *, drop: float = 0.7, seed: int = 0, family: str | None = None,
        n: int | None = None, base: float = REF, ref: float | None = REF, chash: str = "cfg", **extra) -> dict:
    """A successful record; ``ref=None`` writes one as before ``ref_acc`` existed."""
    family = family or ("lorita" if method.startswith("lorita") else "pruning")
    if family == "lorita" and n is None:
        n = int(method.rsplit("n", 1)[1])
    r = {"dataset": "digits", "model": "fcn", "method": method, "family": family, "n": n, "target_kind": "params",
         "target_drop": drop, "seed": seed, "status": "ok", "reason": "", "base_acc": base, "acc": acc,
         "delta_acc": acc - (ref if ref is not None else base), "params_drop": drop, "flops_drop": drop,
         "config_hash": chash, "pretrain_steps": 289, "finetune_steps": 51, "train_steps": 340}
    if ref is not None:
        r["ref_acc"] = ref
    return {**r, **extra}


def _table(md: str) -> list[dict[str, str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def _row(md: str, method: str) -> dict[str, str]:
    return next(r for r in _table(md) if r["Method"].split("<sup>")[0] == method)


# The quick report's case (issue 11): LoRITa N=3's own dense model is weaker (94.72 %), so against
# it ΔAcc looked small, and it took the bold "70.1 % params↓ at −1 pp" with 94.17 %, below the
# pruning methods' 95.28 % at the same drop.
QUICK = [rec("lorita-n3", 0.9417, drop=0.701, base=0.9472), rec("l1-filter", 0.9528, drop=0.700),
         rec("group-l2", 0.9528, drop=0.697)]


def test_delta_and_iso_accuracy_are_against_the_one_reference_model():
    rows = tables.rows(QUICK)
    md = tables.markdown(rows)
    n3 = _row(md, "lorita-n3")
    assert n3["Dense acc"] == "94.72"  # its own dense model, shown beside
    assert n3["Fine-tuned acc (ΔAcc)"] == "94.17 (-1.94)"  # against the reference, 96.11 %
    assert "Reference accuracy (the plainly trained dense model every ΔAcc is taken against): 96.11 %" in md
    iso = {r.method: r for r in tables.iso_accuracy(rows) if r.stage == "fine-tuned"}
    assert iso["lorita-n3"].within[1][2] is None  # not within 1 pp of the reference
    assert iso["l1-filter"].within[1][2] == pytest.approx(70.0)
    assert iso["l1-filter"].acc_at[1][1] == pytest.approx(95.28)
    assert "**" not in tables.iso_markdown(list(iso.values()))  # one seed: no best


def test_old_records_fall_back_to_the_methods_dense_model_and_the_report_says_so(tmp_path):
    old = [rec("lorita-n3", 0.9417, base=0.9472, ref=None), rec("l1-filter", 0.9528, ref=None)]
    rows = tables.rows(old)
    assert rows[0].mean("delta_acc") == pytest.approx(-0.55)
    text = render(old, tmp_path, plots=False).read_text()
    assert "No reference accuracy in these records" in text
    assert "**fallback**: records without `ref_acc`" in text and "all records here use the fallback" in text
    assert "Zero-shot accuracy was not recorded" in text


def _png_size(path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_zero_shot_and_fine_tuned_accuracy_appear_in_every_table_and_the_figure(tmp_path):
    from reports.plots import accuracy_vs_drop

    recs = [rec(m, acc, drop=d, acc_zero_shot=zs) for m, acc, zs in
            (("lorita-n3", 0.955, 0.953), ("l1-filter", 0.957, 0.80)) for d in (0.5, 0.7)]
    rows = tables.rows(recs)
    md = tables.markdown(rows)
    assert _row(md, "l1-filter")["Zero-shot acc (ΔAcc)"] == "80.00 (-16.11)"
    assert _row(md, "l1-filter")["Fine-tuned acc (ΔAcc)"] == "95.70 (-0.41)"
    iso = {(r.method, r.stage): r for r in tables.iso_accuracy(rows)}
    assert iso[("lorita-n3", "zero-shot")].within[1][2] == pytest.approx(70.0)
    assert iso[("l1-filter", "zero-shot")].within[1][2] is None
    assert "| l1-filter | – | zero-shot |" in tables.iso_markdown(list(iso.values()))
    line = next(csv.DictReader(io.StringIO(tables.to_csv(rows))))
    assert float(line["acc_zero_shot_pct_mean"]) == pytest.approx(95.3)
    assert float(line["delta_acc_zero_shot_pp_mean"]) == pytest.approx(-0.81)
    assert "Zero-shot acc" in tables.latex(rows)
    both = accuracy_vs_drop(recs, tmp_path / "both")[0]
    fine_only = accuracy_vs_drop([{k: v for k, v in r.items() if k != "acc_zero_shot"} for r in recs],
                                 tmp_path / "fine")[0]
    assert "bottom row: zero-shot" in both.caption and "no zero-shot accuracy" in fine_only.caption
    assert _png_size(both.png)[1] > 1.7 * _png_size(fine_only.png)[1]  # a second row of panels


def test_one_seed_marks_no_accuracy_best_and_the_report_says_no_ranking_is_supported(tmp_path):
    recs = [rec("lorita-n1", 0.96), rec("l1-filter", 0.90), rec("group-l2", 0.80)]
    md = tables.markdown(tables.rows(recs))
    for method in ("lorita-n1", "l1-filter", "group-l2"):
        assert "**" not in _row(md, method)["Fine-tuned acc (ΔAcc)"]
    text = render(recs, tmp_path, plots=False).read_text()
    assert "no ranking between methods is statistically supported" in text


def _three_seeds(method: str, accs: tuple[float, ...], **extra) -> list[dict]:
    return [rec(method, a, seed=s, **extra) for s, a in enumerate(accs)]


def test_accuracy_is_bold_only_when_the_seed_intervals_do_not_overlap():
    acc = tables._BY_KEY["acc"]
    clear = tables.rows(_three_seeds("lorita-n3", (0.950, 0.951, 0.952))
                        + _three_seeds("l1-filter", (0.900, 0.901, 0.902)))
    assert {clear[i].method for i in tables.best(clear, acc)} == {"lorita-n3"}
    # means 95.0 vs 95.0333: the better mean, but the intervals overlap: no winner
    close = tables.rows(_three_seeds("lorita-n3", (0.940, 0.950, 0.960))
                        + _three_seeds("l1-filter", (0.945, 0.955, 0.951)))
    assert tables.best(close, acc) == set()
    md = tables.markdown(clear)
    assert _row(md, "lorita-n3")["Fine-tuned acc (ΔAcc)"].startswith("**95.10 ± 0.25 (")
    close_md = tables.markdown(close)
    assert not any(_row(close_md, m)["Fine-tuned acc (ΔAcc)"].startswith("**") for m in ("lorita-n3", "l1-filter"))


def test_drops_closer_than_the_target_tolerance_are_ties():
    params = tables._BY_KEY["params_drop"]
    tie = tables.rows([rec("lorita-n3", 0.94, drop=0.701), rec("l1-filter", 0.95, drop=0.700)])
    assert tables.best(tie, params) == set()
    apart = tables.rows([rec("lorita-n3", 0.94, drop=0.75), rec("l1-filter", 0.95, drop=0.70)])
    assert {apart[i].method for i in tables.best(apart, params)} == {"lorita-n3"}
    loose = tables.rows([rec("lorita-n3", 0.94, drop=0.75, target_tolerance=0.1),
                         rec("l1-filter", 0.95, drop=0.70, target_tolerance=0.1)])
    assert tables.best(loose, params) == set()


def test_speedup_shows_its_ab_interval_and_is_bold_only_when_intervals_are_disjoint():
    sp = tables._BY_KEY["speedup_b1"]
    apart = tables.rows([rec("l1-filter", 0.95, speedup_b1=2.0, speedup_b1_lo=1.9, speedup_b1_hi=2.1),
                         rec("lorita-n3", 0.95, speedup_b1=1.5, speedup_b1_lo=1.4, speedup_b1_hi=1.6)])
    md = tables.markdown(apart)
    assert _row(md, "l1-filter")["Speed-up b=1"] == "**2.00× [1.90, 2.10]**"
    assert _row(md, "lorita-n3")["Speed-up b=1"] == "1.50× [1.40, 1.60]"
    close = tables.rows([rec("l1-filter", 0.95, speedup_b1=1.6, speedup_b1_lo=1.45, speedup_b1_hi=1.75),
                         rec("lorita-n3", 0.95, speedup_b1=1.5, speedup_b1_lo=1.4, speedup_b1_hi=1.6)])
    assert tables.best(close, sp) == set()
    # an old record: the ratio of the two medians, no interval, so no winner on one seed
    old = tables.rows([rec("l1-filter", 0.95, latency_dense_ms=2.0, latency_ms=1.0),
                       rec("lorita-n3", 0.95, latency_dense_ms=2.0, latency_ms=2.0)])
    assert _row(tables.markdown(old), "l1-filter")["Speed-up b=1"] == "2.00×"
    assert tables.best(old, sp) == set()


def test_a_missed_target_is_footnoted():
    md = tables.markdown(tables.rows([rec("l1-filter", 0.95, target_missed=True, target_tolerance=0.01)]))
    assert "l1-filter<sup>1</sup>" in md and "target missed" in md


CFG_A = {"dataset": "digits", "model": "fcn", "model_options": {"depth": 4, "width": 128}, "device": "cpu",
         "amp": True, "seeds": [0],
         "budget": {"epochs": 20, "finetune_epochs": 3, "optimizer": "sgd", "lr": 0.02, "finetune_lr": 0.002,
                    "schedule": "cosine", "batch_size": 64, "weight_decay": 0.01}}
CFG_B = {**CFG_A, "budget": {**CFG_A["budget"], "lr": 0.05}}


def test_configs_are_never_pooled_and_their_headings_say_what_differs(tmp_path):
    ha, hb = config_hash(CFG_A), config_hash(CFG_B)
    assert ha != hb
    recs = [rec("l1-filter", 0.95, chash=ha), rec("l1-filter", 0.80, chash=hb)]
    rows = tables.rows(recs)
    assert [(r.config_hash, r.runs) for r in rows] == sorted([(ha, 1), (hb, 1)])
    text = render(recs, tmp_path, configs=[CFG_A, CFG_B], plots=False).read_text()
    assert f"### digits / fcn · config `{ha}` (budget.lr=0.02)" in text
    assert f"### digits / fcn · config `{hb}` (budget.lr=0.05)" in text
    assert "## Configurations" in text and "reported separately" in text
    assert "± " not in text.split("## Results", 1)[1].split("## Iso-accuracy", 1)[0]  # never seeds of one cell


def test_cli_report_over_folders_of_different_configs_keeps_them_apart(tmp_path):
    from bench.cli import main

    for name, cfg, acc in (("a", CFG_A, 0.95), ("b", CFG_B, 0.80)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        (tmp_path / name / "results.jsonl").write_text(json.dumps(rec("l1-filter", acc, chash=config_hash(cfg)))
                                                       + "\n")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "R"),
                 "--no-plots"]) == 0
    text = (tmp_path / "R" / "report.md").read_text()
    for cfg in (CFG_A, CFG_B):
        assert f"### digits / fcn · config `{config_hash(cfg)}`" in text
    from reports import load

    assert [c["config_hash"] for c in load([tmp_path / "a", tmp_path / "b"]).configs] == [
        config_hash(CFG_A), config_hash(CFG_B)]


def test_config_hash_is_the_harness_hash_of_the_saved_config():
    from bench.catalog import PRESETS

    preset = PRESETS.get("quick")
    assert config_hash(json.loads(json.dumps(preset.to_dict()))) == preset.config_hash()


def test_published_numbers_match_only_records_of_their_own_config():
    ha, hb = config_hash(CFG_A), config_hash(CFG_B)
    recs = [rec("l1-filter", 0.93, drop=0.5, chash=ha), rec("l1-filter", 0.80, drop=0.5, chash=hb)]
    published = [{"method": "l1-filter", "metric": "acc", "value": 0.92, "target": {"kind": "params", "drop": 0.5},
                  "selection": "final", "source": "paper", "note": ""}]
    text = "\n".join(published_lines(recs, published, config=CFG_A))
    assert "| l1-filter | acc | params 50% | 92.00 | 93.00 | +1.00 |" in text
    assert f"budget (config `{ha}`)" in text


def test_report_opens_with_what_lorita_is_and_a_headline_computed_from_the_records():
    recs = [rec(m, acc, drop=d, acc_zero_shot=zs) for m, acc, zs, d in
            (("lorita-n3", 0.955, 0.953, 0.5), ("lorita-n3", 0.940, 0.935, 0.7),
             ("l1-filter", 0.958, 0.90, 0.5), ("l1-filter", 0.953, 0.85, 0.7))]
    text = "\n".join(intro_lines(tables.rows(recs)))
    assert "product of N matrices" in text and "N = 1 is standard training" in text
    assert "pruning baselines (l1-filter)" in text
    assert ("Within 1 pp of the reference accuracy (96.11 %): After fine-tuning — params 50 %: lorita-n3, l1-filter; "
            "params 70 %: l1-filter. Zero-shot (before fine-tuning) — params 50 %: lorita-n3; params 70 %: none."
            in text)
    assert "One seed" in text


def test_every_results_column_is_named_in_the_legend(tmp_path):
    recs = [rec("lorita-n3", 0.95, acc_zero_shot=0.94, throughput_batch=256, finetune_wall_s=1.0)]
    text = render(recs, tmp_path, plots=False).read_text()
    legend = text.split("## How to read the tables", 1)[1].split("## Results", 1)[0]
    for m in tables.TABLE_METRICS:
        assert f"**{m.header.split(' b=')[0]}" in legend, m.header
    results = text.split("## Results", 1)[1].split("## Iso-accuracy", 1)[0]
    assert "Train steps" not in results and "Train s" not in results  # one step/time definition
    assert "Optimizer steps per operating point: 340 = 289 pre-training + 51 fine-tuning" in text
    assert "Why a speed-up can be below 1×: a factorized layer runs two kernels" in legend


def test_cost_counts_trainings_run_shared_and_cached_and_shows_peak_memory():
    recs = []
    for method, pid, mem in (("lorita-n1", "plain", 100.0), ("l1-filter", "plain", 100.0),
                             ("lorita-n3", "lorita-n3", 180.0)):
        for seed in (0, 1):
            for drop in (0.5, 0.7):
                recs.append(rec(method, 0.95, drop=drop, seed=seed, pretrain_id=pid, pretrain_cached=seed == 1,
                                pretrain_wall_s=10.0, finetune_wall_s=1.0, train_peak_mem_mb=mem,
                                finetune_peak_mem_mb=90.0))
    text = "\n".join(cost_lines(recs))
    assert ("Trainings: 4 pre-trainings run (distinct config, pre-training identity and seed) for 6 (config, method, "
            "seed) combinations, so 2 were shared between methods; 2 of the 4 came from the checkpoint cache") in text
    assert "| lorita-n3 | lorita-n3 | 2 (1) | 289 | 10.0 | 4 | 4.0 | 180 | 90 | – |" in text
    # 4 pre-trainings counted once each, 12 fine-tunes
    assert f"In all: {4 * 289 + 12 * 51:,} optimizer steps and {4 * 10 + 12 * 1:.1f} s of training" in text
    assert "max_memory_allocated" in text


def test_gpu_seconds_count_a_pre_training_once_per_seed_and_a_reference_only_training_too():
    # Issue 19 item 12: gpu_s is one deployed model's pre-training plus its fine-tuning, so a sum over
    # targets counted the pre-training once per target; and a plain training made only to be the
    # reference (no method trains plainly) was missing from the cost.
    recs = [rec("lorita-n3", 0.95, drop=drop, seed=0, pretrain_id="lorita-n3", pretrain_wall_s=10.0,
                finetune_wall_s=1.0, gpu_s=11.0) for drop in (0.5, 0.7, 0.9)]
    ref = {"kind": "reference", "config_hash": recs[0].get("config_hash") or "", "dataset": recs[0]["dataset"],
           "model": recs[0]["model"], "seed": 0, "acc": 0.96, "train_steps": 289, "train_wall_s": 8.0, "cached": False}
    text = "\n".join(cost_lines(recs, [ref]))
    assert "| 3 | 3.0 | – | – | 13 |" in text  # 10 s of pre-training once + 3 × 1 s, not 3 × 11 s
    assert "Plus 1 plain training made only to be the reference" in text and "289 optimizer steps, 8.0 s" in text
    assert f"In all: {289 + 3 * 51 + 289:,} optimizer steps and {10 + 3 * 1 + 8:.1f} s of training" in text


def test_recipes_are_stated_per_method(tmp_path):
    tuned = {"optimizer": "sgd", "lr": 0.01, "finetune_lr": 0.001, "momentum": 0.9, "nesterov": True,
             "weight_decay": 0.001, "schedule": "cosine", "label_smoothing": 0.1, "source": "tuned",
             "grid": {"lr": [0.01, 0.05]}}
    recs = [rec("lorita-n3", 0.95, recipe=tuned), rec("l1-filter", 0.95, recipe={**tuned, "lr": 0.05,
                                                                                  "source": "preset", "grid": None})]
    text = render(recs, tmp_path, plots=False).read_text()
    assert "| lorita-n3 | sgd | 0.01 | 0.001 | 0.9 | True | 0.001 | cosine | 0.1 | tuned | lr ∈ {0.01, 0.05} |" in text
    assert "| l1-filter | sgd | 0.05 | 0.001 | 0.9 | True | 0.001 | cosine | 0.1 | preset | – |" in text
    step = render([rec("lorita-n3", 0.95, recipe={**tuned, "schedule": "step", "milestones": [0.5, 0.75],
                                                   "gamma": 0.2})], tmp_path / "step", plots=False).read_text()
    assert "| 0.001 | step at 0.5/0.75 ×0.2 | 0.1 |" in step


def test_method_colours_are_distinct_and_grouped_by_family():
    from reports import plots

    recs = [rec(f"lorita-n{n}", 0.9) for n in (1, 2, 3, 4)]
    recs += [rec(m, 0.9) for m in ("l1-filter", "group-l2", "taylor", "random", "depgraph-sl", "bn-slimming",
                                   "magnitude-unstructured")]
    styles = plots._styles(recs)
    colours = [s["color"] for s in styles.values()]
    assert len(set(colours)) == len(colours)
    assert all(styles[f"lorita-n{n}"]["color"] in plots.LORITA_COLORS for n in (1, 2, 3, 4))
    assert all(styles[m]["color"] in plots.PRUNING_COLORS for m in styles if not m.startswith("lorita"))
    from matplotlib.colors import to_rgb

    for c in colours:  # no grey or black: those are the reference's
        r, g, b = to_rgb(c)
        assert max(r, g, b) - min(r, g, b) > 0.15, c


def test_spectra_panels_are_titled_by_the_records_layer_names(tmp_path, monkeypatch):
    from reports import plots

    titles = []
    real_save = plots._save

    def keep(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_visible())
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", keep)
    recs = [rec("lorita-n3", 0.95, spectra={"1": [1.0, 0.5], "features.3": [1.0, 0.1, 0.01]})]
    assert plots.spectra(recs, tmp_path)
    assert titles == ["model[1] — #1 of 2, 2 σ", "features.3 — #2 of 2, 3 σ"]
