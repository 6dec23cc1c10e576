"""Published numbers appear beside the measured ones, with the difference."""

from reports.render import published_lines


def _rec(method, seed, base_acc, acc, drop=0.5):
    return {"method": method, "seed": seed, "status": "ok", "base_acc": base_acc, "acc": acc,
            "base_acc_val_selected": base_acc + 0.005, "target_kind": "flops", "target_drop": drop}


def test_published_numbers_sit_beside_the_mean_measured_numbers():
    records = [_rec("lorita-n2", 0, 0.93, 0.90), _rec("lorita-n2", 0, 0.93, 0.85, drop=0.7),
               _rec("lorita-n2", 1, 0.91, 0.88)]
    published = [
        {"method": "lorita-n2", "metric": "base_acc", "value": 0.9413, "target": None,
         "selection": "best test epoch", "source": "LoRITa logs", "note": "chosen on test"},
        {"method": "lorita-n2", "metric": "acc", "value": 0.90, "target": {"kind": "flops", "drop": 0.5},
         "selection": "final", "source": "x", "note": ""},
        {"method": "group-l2", "metric": "acc", "value": 0.93, "target": {"kind": "flops", "drop": 0.5},
         "selection": "final", "source": "tp", "note": ""},
    ]
    text = "\n".join(published_lines(records, published))
    assert "| lorita-n2 | base_acc | dense | 94.13 | 92.00 | -2.13 | 92.50 |" in text  # means over the seeds
    assert "| lorita-n2 | acc | flops 50% | 90.00 | 89.00 | -1.00 | – |" in text
    assert "| group-l2 | acc | flops 50% | 93.00 | – | – | – |" in text
    assert "chosen on test" in text
    assert published_lines(records, []) == []


def test_cost_counts_each_pretraining_once_and_every_fine_tune():
    from reports.render import cost_lines

    recs = [{"method": "m", "seed": s, "status": "ok", "pretrain_wall_s": 10.0, "pretrain_steps": 100,
             "finetune_wall_s": 1.0, "finetune_steps": 10, "gpu_s": None} for s in (0, 1) for _ in range(3)]
    text = "\n".join(cost_lines(recs))
    # 2 pre-trainings (one per seed) of 100 steps and 10 s, 6 fine-tunes of 10 steps and 1 s
    assert "| m | – | 2 (0) | 100 | 10.0 | 6 | 6.0 | – | – | – |" in text
    assert "In all: 260 optimizer steps and 26.0 s of training" in text


def test_iso_accuracy_marks_entries_whose_interval_crosses_the_tolerance():
    from reports import tables

    def rec(method, seed, drop, delta):
        return {"dataset": "d", "model": "m", "method": method, "family": "lorita", "n": 1, "target_kind": "params",
                "target_drop": drop, "seed": seed, "status": "ok", "base_acc": 0.9, "acc": 0.9 + delta,
                "delta_acc": delta, "params_drop": drop, "flops_drop": drop, "config_hash": "h"}
    records = [rec("steady", s, d, -0.002) for s in (0, 1) for d in (0.5, 0.7)]
    # "noisy" at 0.7: mean -0.6 pp but ±0.8 pp over seeds: inside the 1 pp line only by luck.
    records += [rec("noisy", 0, 0.5, -0.001), rec("noisy", 1, 0.5, -0.001),
                rec("noisy", 0, 0.7, 0.0), rec("noisy", 1, 0.7, -0.012)]
    iso = {r.method: r for r in tables.iso_accuracy(tables.rows(records))}
    assert iso["steady"].fragile == (False, False)
    assert iso["noisy"].fragile[1] is True  # the 1 pp column
    md = tables.iso_markdown(list(iso.values()))
    assert "70.0 (89.40)†" in md and "95 % t-interval of ΔAcc over seeds crosses the tolerance" in md
    assert r"$^\dagger$" in tables.iso_latex(list(iso.values()))
