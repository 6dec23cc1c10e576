"""Regression history: a store of runs by commit in pytest-benchmark's layout, series per cell, and
changes found at the commit where they start, beyond the noise and nowhere else.

The synthetic history is built from the real shapes: each commit's records are the committed
reference (``reference/ci.jsonl``) with noise of the observed size, and its timings a
pytest-benchmark JSON as the suite saves it (``machine_info``, ``commit_info``, ``benchmarks[]``
with full ``stats`` and the Record in ``extra_info``), with the records kept beside it.
"""

import hashlib
import json
import math
import os
import random
import shlex
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bench.cli import main
from bench.records.errors import UsageError
from bench.records.history import (
    MEASURE,
    Cell,
    Point,
    build_series,
    fit,
    keep_records,
    load_history,
    records_path,
    saved_run,
    storage_folder,
)
from bench.records.sources import read_jsonl
from reports.history import render_history

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = read_jsonl(ROOT / "reference" / "ci.jsonl")  # the records (its reference line filled into them)
MACHINE_ID = "Linux-CPython-3.12-64bit"  # pytest-benchmark's folder name for this platform
MACHINE = {"python_implementation": "CPython", "python_version": "3.12.3", "python_compiler": "GCC 13.2.0",
           "release": "6.8.0-45-generic", "system": "Linux", "machine": "x86_64", "processor": "x86_64",
           "cpu": {"python_version": "3.12.3.final.0 (64 bit)", "cpuinfo_version": [9, 0, 0], "arch": "X86_64",
                   "bits": 64, "count": 2, "arch_string_raw": "x86_64", "vendor_id_raw": "GenuineIntel",
                   "brand_raw": "Intel(R) Xeon(R) CPU @ 2.20GHz", "l2_cache_size": 524288, "stepping": 0,
                   "model": 85, "family": 6, "flags": ["avx", "avx2", "avx512f", "fma", "sse4_2"]},
           "torch": "2.14.1", "timing_cpu_threads": 1, "cuda": "12.8"}
COMMITS = 12
TEST_IMAGES = 360  # the ci preset's test split: its accuracies move in steps of 1/360
# Noise of the observed size: the run-to-run spread (standard deviation of the log) of seven ci
# runs at two commits on this 2-core machine (pytest bench --preset ci --benchmark-autosave).
# Accuracy: CPU training is deterministic, and commits that touched the training moved the
# reference's accuracies by one test image (0.28 pp) at most: 0.3 pp, in whole test images.
ACC_NOISE = 0.003
# pytest-benchmark's median forward time, (run-to-run spread, IQR / median within a run), per
# (timed model, batch): unpaired, it moves with whatever else the machine does.
LATENCY_NOISE = {("deployed", 1): (0.19, 0.32), ("deployed", 256): (0.13, 0.26), ("dense", 1): (0.115, 0.42),
                 ("dense", 256): (0.11, 0.21)}
# The A/B speed-ups (dense and deployed in alternating rounds), whose bootstrap intervals match
# their run-to-run spread; the paired training-step ratios; the timed training functions.
SPEEDUP_NOISE = {"b1": 0.025, "bT": 0.05}
RATIO_NOISE = 0.015
STEP_NOISE, STEP_IQR = 0.05, 0.045
ACC_CELL = ("lorita-n3", 0.8)  # 2 pp less accuracy after fine-tuning from commit 7 on
LATENCY_CELL = ("l1-filter", 0.5)  # 30 % slower at batch 1 from commit 9 on
ACC_FROM, LATENCY_FROM = 6, 8  # 0-based: commits 7 and 9
SHAS = [hashlib.sha1(f"commit {i}".encode()).hexdigest() for i in range(COMMITS)]
START = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def _stats(rng: random.Random, median_s: float, iqr_s: float, rounds: int) -> dict:
    """pytest-benchmark's ``stats`` of a benchmark with this median and IQR (seconds)."""
    q1, q3 = median_s - iqr_s / 2, median_s + iqr_s / 2
    mean = median_s * (1 + 0.05 * rng.random())
    return {"min": q1 * 0.9, "max": q3 * 1.8, "mean": mean, "stddev": iqr_s / 1.349, "rounds": rounds,
            "median": median_s, "iqr": iqr_s, "q1": q1, "q3": q3, "iqr_outliers": 1, "stddev_outliers": 2,
            "outliers": "2;1", "ld15iqr": q1 - 1.5 * iqr_s, "hd15iqr": q3 + 1.5 * iqr_s, "ops": 1 / mean,
            "total": mean * rounds, "iterations": 1}


def _bench(rng: random.Random, name: str, group: str, fullname: str, median_s: float, iqr_s: float, rounds: int,
           extra_info: dict, param: str | None = None) -> dict:
    return {"group": group, "name": name, "fullname": fullname, "params": {"cell": param} if param else None,
            "param": param, "extra_info": extra_info,
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                        "min_time": 5e-06, "warmup": False},
            "stats": _stats(rng, median_s, iqr_s, rounds)}


def _noisy(rng: random.Random, sigma: float) -> float:
    return math.exp(rng.gauss(0, sigma))


def commit_run(i: int, rng: random.Random, *, plant: bool, acc_from: int = ACC_FROM,
               latency_from: int = LATENCY_FROM) -> tuple[dict, list[dict]]:
    """Commit ``i``'s pytest-benchmark JSON and records: the reference with noise, and with
    ``plant`` the accuracy drop and the latency rise from their commits on."""
    records, benches = [], []
    for ref in REFERENCE:
        r = dict(ref)
        cell = (r["method"], r["target_drop"])
        for key in ("acc", "acc_zero_shot"):
            drop = 0.02 if plant and key == "acc" and cell == ACC_CELL and i >= acc_from else 0.0
            r[key] = round((ref[key] + rng.gauss(0, ACC_NOISE) - drop) * TEST_IMAGES) / TEST_IMAGES
        slower = 1.3 if plant and cell == LATENCY_CELL and i >= latency_from else 1.0
        for suffix in ("b1", "bT"):  # the A/B speed-up and its bootstrap interval
            sigma = SPEEDUP_NOISE[suffix]
            value = ref[f"speedup_{suffix}"] * _noisy(rng, sigma) / (slower if suffix == "b1" else 1.0)
            r[f"speedup_{suffix}"] = value
            r[f"speedup_{suffix}_lo"], r[f"speedup_{suffix}_hi"] = value * math.exp(-1.96 * sigma), value * math.exp(
                1.96 * sigma)
        r["latency_ms"] = ref["latency_ms"] * slower * _noisy(rng, LATENCY_NOISE[("deployed", 1)][0])
        r["throughput_ms"] = ref["throughput_ms"] * _noisy(rng, LATENCY_NOISE[("deployed", 256)][0])
        records.append(r)
        for batch, ms in ((1, r["latency_ms"]), (256, r["throughput_ms"])):
            cid = f"{r['method']}-{r['target_kind']}{r['target_drop'] * 100:g}-s0-b{batch}"
            info = {**r, "timed": "deployed", "timed_batch": batch, "preset": "ci"}
            iqr = LATENCY_NOISE[("deployed", batch)][1]
            benches.append(_bench(rng, f"test_deployed[{cid}]", f"digits/fcn b={batch}",
                                  f"bench/suite/test_cells.py::test_deployed[{cid}]", ms / 1e3, ms * iqr / 1e3, 20,
                                  info, cid))
    for method in dict.fromkeys(r["method"] for r in REFERENCE):
        r = next(r for r in records if r["method"] == method)
        dense = {k: r[k] for k in ("dataset", "model", "method", "family", "n", "seed", "config_hash", "base_acc",
                                   "base_acc_top5", "base_val_acc", "dense_params", "dense_macs", "latency_device",
                                   "versions")}
        for batch, ms in ((1, r["latency_dense_ms"]), (256, r["throughput_dense_ms"])):
            spread, iqr = LATENCY_NOISE[("dense", batch)]
            ms *= _noisy(rng, spread)
            cid = f"{method}-s0-b{batch}"
            benches.append(_bench(rng, f"test_dense[{cid}]", f"digits/fcn b={batch}",
                                  f"bench/suite/test_cells.py::test_dense[{cid}]", ms / 1e3, ms * iqr / 1e3, 20,
                                  {**dense, "timed": "dense", "timed_batch": batch, "preset": "ci"}, cid))
    ratio, step = 0.97 * _noisy(rng, RATIO_NOISE), 0.145 * _noisy(rng, STEP_NOISE)  # as measured here
    benches.append(_bench(rng, "test_harness_keeps_up_with_a_plain_loop", "train-throughput/digits/fcn",
                          "bench/suite/test_train_throughput.py::test_harness_keeps_up_with_a_plain_loop",
                          step, step * STEP_IQR, 15,
                          {"throughput_ratio": ratio, "throughput_ratio_iqr": [ratio * 0.97, ratio * 1.02],
                           "target_ratio": 0.9, "harness_ms": step * 1e3, "plain_ms": step * 1e3 * ratio,
                           "paired_rounds": 15}))
    for model, cost, step_ms in (("fcn", 3.45, 32.0), ("vgg16", 1.14, 134.0), ("vit", 1.11, 602.0)):
        n3, step = cost * _noisy(rng, RATIO_NOISE), step_ms / 1e3 * _noisy(rng, STEP_NOISE)
        benches.append(_bench(rng, f"test_lorita_n3_step_against_n1[{model}]", "lorita-step-cost",
                              f"bench/suite/test_train_throughput.py::test_lorita_n3_step_against_n1[{model}]",
                              step, step * STEP_IQR, 10,
                              {"n3_over_n1": n3, "n3_over_n1_iqr": [n3 * 0.98, n3 * 1.02], "n1_ms": step * 1e3 / n3,
                               "n3_ms": step * 1e3, "batch": 64, "options": {}}, model))
    when = START + timedelta(hours=i)
    data = {"machine_info": MACHINE,
            "commit_info": {"id": SHAS[i], "time": when.isoformat(), "author_time": when.isoformat(), "dirty": False,
                            "project": "lorita-bench", "branch": "main", "subject": f"commit {i + 1}"},
            "benchmarks": benches, "datetime": (when + timedelta(minutes=20)).isoformat(), "version": "5.3.1",
            "lorita_bench": {"preset": "ci", "config": {"dataset": "digits", "model": "fcn",
                                                        "config_hash": REFERENCE[0]["config_hash"]}}}
    return data, records


def write_store(folder: Path, *, seed: int, plant: bool, **kw) -> Path:
    """A history store of ``COMMITS`` runs, one per commit, as the suite writes it."""
    rng = random.Random(seed)
    for i in range(COMMITS):
        data, records = commit_run(i, rng, plant=plant, **kw)
        stamp = (START + timedelta(hours=i, minutes=20)).strftime("%Y%m%d_%H%M%S")
        path = folder / MACHINE_ID / f"{i + 1:04d}_{SHAS[i]}_{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=4))
        keep_records(path, records)
    return folder


def _found(series) -> set[tuple]:
    return {(s.measure.key, s.cell.method, s.cell.target, s.cell.batch, c.position) for s in series for c in s.changes}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("store"), seed=0, plant=True)


def test_history_finds_both_planted_changes_at_their_commits_and_flags_no_other_cell(planted):
    history = load_history([planted], repo=None)
    assert [c.id for c in history.commits] == SHAS and all(r.placed_by == "commit" for r in history.runs)
    series = build_series(history)
    found = _found(series)
    # The 30 % slower deployed model is found by its A/B speed-up (paired with the dense model in one
    # process, 2.5 % noise); its unpaired pytest-benchmark median moves 19 % from run to run here, so
    # that series may show the step only later, and must not show it anywhere else.
    assert ("acc", "lorita-n3", "params:0.8", None, ACC_FROM) in found
    assert ("speedup", "l1-filter", "params:0.5", 1, LATENCY_FROM) in found
    assert found <= {("acc", "lorita-n3", "params:0.8", None, ACC_FROM),
                     ("speedup", "l1-filter", "params:0.5", 1, LATENCY_FROM),
                     ("latency", "l1-filter", "params:0.5", 1, LATENCY_FROM)}
    acc = next(s for s in series if s.measure.key == "acc" and s.cell.method == "lorita-n3"
               and s.cell.target == "params:0.8")
    (change,) = acc.changes
    assert change.delta == pytest.approx(-2.0, abs=0.4) and change.direction == "worse"
    speedup = next(s for s in series if s.measure.key == "speedup" and s.cell.method == "l1-filter"
                   and s.cell.target == "params:0.5" and s.cell.batch == 1)
    (change,) = speedup.changes
    assert math.exp(change.delta) == pytest.approx(1 / 1.3, abs=0.04) and change.direction == "worse"
    # every kind of series is there: accuracy, counts, A/B speed-ups, latencies and training-step ratios
    assert {s.measure.key for s in series} == set(MEASURE)
    assert len(series) > 60


def test_twenty_noise_only_histories_flag_nothing_where_the_changes_were_planted(tmp_path):
    """The two planted cells, without their plants, in 20 noise-only histories (40 series), and every
    series of the first of them."""
    for seed in range(20):
        history = load_history([write_store(tmp_path / f"s{seed}", seed=100 + seed, plant=False)], repo=None)
        series = build_series(history)
        planted_cells = [s for s in series if (s.cell.method, s.cell.target) in (("lorita-n3", "params:0.8"),
                                                                                  ("l1-filter", "params:0.5"))]
        assert not [s for s in planted_cells if s.changes], seed
        if seed == 0:
            assert not _found(series)


def test_a_drift_shows_as_a_step_once_it_has_added_up_and_a_count_change_at_once():
    acc = MEASURE["acc"]
    drift = [Point(position=i, value=94.0 - 0.3 * i) for i in range(12)]  # 0.3 pp a commit, within the 1 pp gate
    (change,) = fit(acc, Cell(method="m"), drift).changes
    assert 3 <= change.position <= 9 and change.delta < -1.0
    assert not fit(acc, Cell(method="m"), drift[:4]).changes  # 0.9 pp so far: not yet a change
    drop = MEASURE["params_drop"]
    counts = [Point(position=i, value=50.29 if i < 10 else 50.01) for i in range(12)]  # deterministic counts
    (change,) = fit(drop, Cell(method="m"), counts).changes
    assert change.position == 10 and change.direction == "changed"


def test_the_newest_commit_can_start_a_change_and_fail_on_change_says_so(tmp_path, capsys):
    store = write_store(tmp_path / "store", seed=3, plant=True, acc_from=COMMITS - 1, latency_from=COMMITS - 1)
    out = tmp_path / "H"
    assert main(["history", str(store), "--out", str(out), "--no-plots", "--fail-on-change", "LAST"]) == 1
    captured = capsys.readouterr()
    assert f"change at {SHAS[-1][:9]}" in captured.err
    assert "lorita-n3 params:0.8" in captured.out and "accuracy, fine-tuned" in captured.out
    assert (out / "history.md").is_file() and (out / "tables" / "changes.md").is_file()
    # The same history without the plants: the newest commit starts nothing.
    quiet = write_store(tmp_path / "quiet", seed=3, plant=False)
    assert main(["history", str(quiet), "--out", str(out), "--no-plots", "--fail-on-change", "last"]) == 0
    assert f"ok: no series starts a change at {SHAS[-1][:9]}" in capsys.readouterr().err


def test_fail_on_change_names_a_commit_and_the_cli_explains_bad_input(planted, tmp_path, capsys):
    out = str(tmp_path / "H")
    assert main(["history", str(planted), "--out", out, "--no-plots", "--fail-on-change", SHAS[LATENCY_FROM][:8]]) == 1
    assert main(["history", str(planted), "--out", out, "--no-plots", "--fail-on-change", SHAS[3][:8]]) == 0
    assert main(["history", str(planted), "--out", out, "--no-plots", "--fail-on-change", "0000000"]) == 2
    assert "commit '0000000' is not in the history; accepted: last, or 4 or more" in capsys.readouterr().err
    assert main(["history", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert "no results at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["history", str(tmp_path / "empty"), "--out", out]) == 2
    assert "no results.jsonl and no saved pytest-benchmark runs" in capsys.readouterr().err


def test_report_renders_trends_changes_and_one_figure_per_family(planted, tmp_path):
    history = load_history([planted], repo=None)
    path = render_history(history, tmp_path / "H")
    text = path.read_text()
    assert "12 runs at 12 commits" in text and "## How changes are found" in text
    changes = (tmp_path / "H" / "tables" / "changes.md").read_text()
    assert f"`{SHAS[ACC_FROM][:9]}` | commit 7 |" in changes and f"`{SHAS[LATENCY_FROM][:9]}` | commit 9 |" in changes
    assert "| -2." in changes or "-1.9" in changes
    for family in ("accuracy", "compression", "speed-up", "latency", "training-step"):
        figures = list((tmp_path / "H" / "figures").glob(f"history-{family}_*.png"))
        assert figures, family
        assert f"figures/{figures[0].name}" in text
    assert "Intel(R) Xeon(R) CPU @ 2.20GHz (2 cores)" in text


def test_configurations_and_machines_are_never_pooled(tmp_path):
    store = write_store(tmp_path / "store", seed=5, plant=False)
    other = json.loads(json.dumps(MACHINE))
    other["cpu"]["brand_raw"] = "AMD EPYC 7B13"
    for path in sorted((store / MACHINE_ID).glob("*.json"))[6:]:  # the newest six runs on another machine
        data = json.loads(path.read_text())
        data["machine_info"] = other
        path.write_text(json.dumps(data))
    series = build_series(load_history([store], repo=None))
    acc = [s for s in series if s.measure.key == "acc" and s.cell.method == "l1-filter"
           and s.cell.target == "params:0.5"]
    assert len(acc) == 1 and len(acc[0].points) == COMMITS  # accuracy does not depend on the machine
    lat = [s for s in series if s.measure.key == "latency" and s.cell.method == "l1-filter"
           and s.cell.target == "params:0.5" and s.cell.batch == 1]
    assert len(lat) == 2 and sorted(len(s.points) for s in lat) == [6, 6]
    records = records_path(sorted((store / MACHINE_ID).glob("*.json"))[0])
    doctored = [{**json.loads(line), "config_hash": "0123456789ab"} for line in records.read_text().splitlines()]
    records.write_text("".join(json.dumps(r) + "\n" for r in doctored))
    series = build_series(load_history([store], repo=None))
    assert len([s for s in series if s.measure.key == "acc" and s.cell.method == "l1-filter"
                and s.cell.target == "params:0.5"]) == 2


def _git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": date or "", "GIT_COMMITTER_DATE": date or ""}
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()


def test_backfill_reads_run_folders_and_jsonl_with_their_commits_or_by_file_time(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for i, subject in enumerate(("older", "newer")):
        _git(repo, "commit", "-q", "--allow-empty", "-m", subject, date=f"2026-11-0{i + 1}T10:00:00+00:00")
    rng = random.Random(7)
    folders = []
    for i in range(3):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in commit_run(i, rng, plant=False)[1]))
        folders.append(folder)
    os.utime(folders[2] / "results.jsonl", (START.timestamp() + 10 ** 8,) * 2)  # made after both commits
    reference = ROOT / "reference" / "ci.jsonl"
    history = load_history([f"{folders[1]}@HEAD", folders[2], f"{folders[0]}@HEAD~1"], repo=repo)
    assert [c.subject for c in history.commits] == ["older", "newer", ""]
    assert [r.source for r in history.runs] == [str(folders[0]), str(folders[1]), str(folders[2])]
    assert any("placed by their file time" in n and str(folders[2]) in n for n in history.notes)
    series = build_series(history)
    assert all(s.cell.machine.startswith("unrecorded") for s in series if s.measure.timing)
    with pytest.raises(UsageError, match="cannot resolve commit 'nope'"):
        load_history([f"{reference}@nope"], repo=repo)
    assert len(load_history([f"{reference}@HEAD"], repo=ROOT).runs) == 1


def test_the_store_keeps_records_beside_the_run_pytest_benchmark_saved(tmp_path):
    assert storage_folder("file://./.benchmarks") == Path("./.benchmarks")
    assert storage_folder(tmp_path) == tmp_path and storage_folder("elasticsearch+https://h/i") is None
    machine = tmp_path / MACHINE_ID
    machine.mkdir()
    for n in (1, 2):
        (machine / f"000{n}_abc_20261203_140000.json").write_text("{}")
    (machine / "0003_other.json").write_text("{}")
    saved = saved_run(tmp_path, MACHINE_ID, "abc_20261203_140000")
    assert saved == machine / "0002_abc_20261203_140000.json"
    path = keep_records(saved, REFERENCE[:2])
    assert path == machine / "0002_abc_20261203_140000.results.jsonl"
    assert [json.loads(line)["method"] for line in path.read_text().splitlines()] == ["lorita-n1", "lorita-n1"]
    assert saved_run(tmp_path, MACHINE_ID, "missing") is None


def test_the_readme_history_commands_parse():
    from docs_commands import blocks

    from bench.cli import parser

    text = (ROOT / "README.md").read_text()
    commands = [shlex.split(c.text)[1:] for block in blocks(ROOT / "README.md") for c in block
                if c.text.startswith("lorita-bench history")]
    assert len(commands) >= 3
    for argv in commands:
        args = parser().parse_args(argv)
        assert args.fn.__name__ == "_cmd_history" and args.out
    assert "--benchmark-storage history/ --benchmark-autosave" in text


def test_an_unpaired_timing_calls_no_change_before_its_run_to_run_noise_is_known():
    """Four runs whose pytest-benchmark medians carry tight within-run intervals (1.3 %) but moved
    38 % between runs, as on this machine: no verdict until five commits show the spread."""
    latency = MEASURE["latency"]
    values = [0.060, 0.058, 0.037, 0.055]
    short = fit(latency, Cell(method="m", batch=1), [Point(position=i, value=v, sigma=0.013)
                                                    for i, v in enumerate(values)])
    assert not short.changes and math.isinf(short.noise)
    speedup = MEASURE["speedup"]  # a paired A/B ratio's own interval is its noise: a 25 % step is a change
    paired = fit(speedup, Cell(method="m", batch=1), [Point(position=i, value=v, sigma=0.025)
                                                     for i, v in enumerate([1.0, 1.01, 0.99, 0.75])])
    assert [c.position for c in paired.changes] == [3]
