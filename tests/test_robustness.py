"""Nothing lost, nothing wrong: checkpoints that prove what they are, records safe when runs share a
folder, a resume that survives a torn tail, and every failure a user can cause one line with the
right exit code."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bench.catalog.budget import Target
from bench.catalog.registry import METHODS, PRESETS
from bench.cli import main
from bench.execution import cache, executors, job, runner
from bench.records.results import RESULTS, Record, append_record, clean_stale_temp, landing, load_records

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run", "--preset", "quick", "--no-progress", "--epochs", "3", "--finetune-epochs", "1",
        "--methods", "lorita-n1", "--targets", "params:0.5", "--latency-rounds", "2"]
# Two methods that train different models, so two jobs (lorita-n1 and l1-filter would share one).
FAKE = ["run", "--preset", "ci", "--no-progress", "--methods", "lorita-n1,lorita-n3", "--targets", "params:0.5"]


@pytest.fixture
def fake_jobs(monkeypatch):
    """Jobs that train nothing: each returns an ok record per target (steps 100, or ``steps[method]``).
    ``ran`` lists the (method, targets) run; ``side[method]`` runs first (another run's doing)."""
    ran, steps, side = [], {}, {}

    def run_job(j, data=None, *, progress=False):
        for name, targets in j.work:
            ran.append((name, tuple(str(t) for t in targets)))
            if name in side:
                side.pop(name)()
        return job.JobResult(records=tuple(
            Record(**job.record_base(j.preset, METHODS.get(name), t, j.seed), acc=0.9, base_acc=0.95, params=10,
                   macs=10.0, dense_params=20, dense_macs=20.0, train_steps=steps.get(name, 100))
            for name, targets in j.work for t in targets), dense_acc=0.95, dense_val_acc=0.95)
    monkeypatch.setattr(executors, "run_job", run_job)
    return ran, steps, side


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. checkpoints that prove what they are ------------------------------------------------------

def test_a_valid_checkpoint_of_another_training_is_set_aside_and_retrained(tmp_path, count_training, caplog):
    ckpts = tmp_path / "ckpt"
    assert main([*TINY, "--out", str(tmp_path / "short"), "--cache-dir", str(ckpts)]) == 0
    short = {p.name for p in ckpts.glob("*.pt")}
    assert main([*TINY, "--epochs", "5", "--out", str(tmp_path / "full"), "--cache-dir", str(ckpts)]) == 0
    full = {p.name for p in ckpts.glob("*.pt")} - short
    for name in full:  # the short training's files copied over the full one's, .best.pt included
        shutil.copyfile(ckpts / next(s for s in short if s.endswith(".best.pt") == name.endswith(".best.pt")),
                        ckpts / name)
    count_training.clear()
    with caplog.at_level(logging.WARNING, logger="bench.execution.cache"):
        assert main([*TINY, "--epochs", "5", "--out", str(tmp_path / "again"), "--cache-dir", str(ckpts)]) == 0
    assert count_training == [4, 1]  # retrained, not the short model used silently
    assert "cache key mismatch" in caplog.text and len(caplog.records) == 1  # one line, the main checkpoint
    (a,), (b,) = (load_records(tmp_path / d / RESULTS) for d in ("full", "again"))
    assert (b.base_acc, b.pretrain_steps) == (a.base_acc, a.pretrain_steps)


def test_a_checkpoint_of_another_architecture_or_step_count_is_corruption(tmp_path, caplog):
    path = tmp_path / "m.pt"
    for other, kw, why in ((torch.nn.Linear(3, 3), {"key": "k", "steps": 5}, "architecture mismatch"),
                           (torch.nn.Linear(3, 2), {"key": "k", "steps": 6}, "step count mismatch"),
                           (torch.nn.Linear(3, 2), {"key": "j", "steps": 5}, "cache key mismatch")):
        cache.save(path, torch.nn.Linear(3, 2), {"stats": {}}, key="k", steps=5)
        with caplog.at_level(logging.WARNING, logger="bench.execution.cache"):
            assert cache.load(path, other, **kw) is None
        assert why in caplog.text and not path.exists() and path.with_suffix(".pt.corrupt").exists()
    cache.save(path, torch.nn.Linear(3, 2), {"stats": {}}, key="k", steps=5)
    assert cache.load(path, torch.nn.Linear(3, 2), key="k", steps=5) == {"stats": {}}


# --- 2, 3. records safe under concurrency -----------------------------------------------------------

APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bench.records.results import Record, append_record
    path, who = Path(sys.argv[1]), int(sys.argv[2])
    for i in range(50):
        append_record(path, Record(dataset="digits", model="fcn", method=f"m{who}", family="lorita", n=1,
                                   target_kind="params", target_drop=0.5, seed=i,
                                   layers={str(j): j for j in range(40)}))
""")


def test_four_processes_appending_50_records_each_lose_none(tmp_path):
    path = tmp_path / RESULTS
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w)], env=env) for w in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    records = load_records(path)
    assert len(records) == 200
    assert {(r.method, r.seed) for r in records} == {(f"m{w}", i) for w in range(4) for i in range(50)}


def test_a_record_done_meanwhile_is_not_written_and_a_job_done_meanwhile_is_skipped(tmp_path, fake_jobs, capsys):
    ran, _, side = fake_jobs
    out = tmp_path / "run"
    ci = PRESETS.get("ci").override(methods=("lorita-n1", "lorita-n3"), targets=(Target(kind="params", drop=0.5),))

    def another_run_records_both_cells():  # while our first job runs
        for method in ci.methods:
            append_record(out / RESULTS, Record(**job.record_base(ci, METHODS.get(method), ci.targets[0], 0),
                                                acc=0.8, train_steps=100))
    side["lorita-n1"] = another_run_records_both_cells
    assert main([*FAKE, "--out", str(out)]) == 0
    assert ran == [("lorita-n1", ("params:0.5",))]  # lorita-n3's job was done by the time it started
    assert [(r.method, r.acc) for r in load_records(out / RESULTS)] == [("lorita-n1", 0.8), ("lorita-n3", 0.8)]
    assert "already recorded by another run" in capsys.readouterr().err
    ran.clear()
    assert main([*FAKE, "--out", str(out)]) == 0
    assert ran == [] and len(load_records(out / RESULTS)) == 2


@pytest.mark.slow
def test_two_identical_runs_at_once_record_each_cell_once(tmp_path):
    args = [sys.executable, "-m", "bench.cli", "run", "--preset", "ci", "--epochs", "2", "--finetune-epochs", "1",
            "--methods", "lorita-n1", "--targets", "params:0.5", "--no-progress", "--latency-rounds", "2",
            "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*args, "--cache-dir", str(tmp_path / f"ckpt{i}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in outs]
    records = load_records(tmp_path / "run" / RESULTS)
    assert [(r.method, r.target_drop, r.seed, r.status) for r in records] == [("lorita-n1", 0.5, 0, "ok")]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config_hash"] == records[0].config_hash


def test_a_second_configuration_is_refused_before_any_training(tmp_path, fake_jobs, capsys):
    ran, _, _ = fake_jobs
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    first = json.loads((out / "config.json").read_text())
    ran.clear()
    capsys.readouterr()
    assert main([*FAKE, "--epochs", "7", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert ran == []
    assert str(out) in line and first["config_hash"] in line and "budget.epochs 20 → 7" in line and "--out" in line
    assert json.loads((out / "config.json").read_text()) == first  # config.json still describes the records


def test_a_wider_sweep_into_the_same_folder_widens_config_json(tmp_path, fake_jobs):
    out = tmp_path / "run"
    assert main([*FAKE, "--methods", "lorita-n1", "--out", str(out)]) == 0
    assert main([*FAKE, "--methods", "l1-filter", "--targets", "params:0.8", "--seeds", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["methods"] == ["lorita-n1", "l1-filter"]
    assert config["targets"] == [{"kind": "params", "drop": 0.5}, {"kind": "params", "drop": 0.8}]
    assert config["seeds"] == [0, 1]
    assert len(load_records(out / RESULTS)) == 2


# --- 4. resume survives a torn tail ------------------------------------------------------------------

def test_a_torn_last_line_is_set_aside_and_the_run_resumes(tmp_path, fake_jobs, capsys):
    ran, _, _ = fake_jobs
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    whole = (out / RESULTS).read_text()
    torn = whole[: len(whole) - 40]  # killed in the middle of writing the last record
    (out / RESULTS).write_text(torn)
    ran.clear()
    capsys.readouterr()
    assert main([*FAKE, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "cut off" in line] == [
        f"{out / RESULTS}:2 was cut off (a run killed mid-write): set aside, the whole file kept in "
        f"{out / 'results.jsonl.corrupt'}; resuming"]
    assert (out / "results.jsonl.corrupt").read_text() == torn
    assert ran == [("lorita-n3", ("params:0.5",))]  # only the lost record is redone
    assert len(load_records(out / RESULTS)) == 2


def test_a_malformed_line_elsewhere_stops_with_file_and_line(tmp_path, fake_jobs, capsys):
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    lines = (out / RESULTS).read_text().splitlines()
    (out / RESULTS).write_text("\n".join([lines[0][:30], lines[1]]) + "\n")
    capsys.readouterr()
    assert main([*FAKE, "--out", str(out)]) == 2
    assert f"{out / RESULTS}:1 is not a JSON record" in _one_line(capsys.readouterr().err)


# --- 5. every path checked up front ----------------------------------------------------------------

@pytest.mark.parametrize(("flag", "where", "needle"), [
    ("--cache-dir", "file", "--cache-dir {p} is a file, not a folder"),
    ("--out", "under-file", "--out {p} cannot be a folder: {f} is a file"),
    ("--out", "file", "--out {p} is a file, not a folder"),
    ("--data-dir", "file", "--data-dir {p} is a file, not a folder"),
])
def test_an_unusable_path_is_one_line_and_exit_2_before_any_training(tmp_path, count_training, capsys, flag, where,
                                                                     needle):
    f = tmp_path / "regular-file"
    f.write_text("x")
    p = f / "sub" if where == "under-file" else f
    args = [*TINY, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "ckpt")]
    assert main([*args, flag, str(p)]) == 2
    assert needle.format(p=p, f=f) in _one_line(capsys.readouterr().err)
    assert count_training == []


def test_user_caused_os_errors_are_one_line_and_bugs_stay_tracebacks(tmp_path, monkeypatch, capsys):
    def denied(*_a, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/results.jsonl")
    monkeypatch.setattr(runner, "run", denied)
    assert main([*FAKE, "--out", str(tmp_path)]) == 2
    assert _one_line(capsys.readouterr().err) == "lorita-bench: error: cannot use /data/results.jsonl: " \
                                                  "Permission denied"

    def bug(*_a, **_kw):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(runner, "run", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main([*FAKE, "--out", str(tmp_path)])


# --- 7. budget mismatch ----------------------------------------------------------------------------

def test_a_budget_mismatch_is_one_line_and_the_bad_record_is_not_written(tmp_path, fake_jobs, capsys):
    _, steps, _ = fake_jobs
    steps["lorita-n3"] = 90
    assert main([*FAKE, "--out", str(tmp_path)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "different optimizer steps" in line and "90 steps: lorita-n3 params:0.5 seed 0" in line
    assert [r.method for r in load_records(tmp_path / RESULTS)] == ["lorita-n1"]


# --- 9. minor items --------------------------------------------------------------------------------

def test_duplicate_seeds_are_refused(tmp_path, capsys):
    assert main([*FAKE, "--seeds", "0,0", "--out", str(tmp_path)]) == 2
    assert "seeds given twice: 0; accepted: each at most once" in _one_line(capsys.readouterr().err)


def test_a_target_missed_by_more_than_the_tolerance_is_noted_and_marked():
    got = landing("params", 0.99, 0.971, 0.5, "")
    assert got == {"target_tolerance": 0.01, "target_missed": True,
                   "note": "target missed: params drop 97.1% for a target of 99% (tolerance 1 pp)"}
    assert landing("flops", 0.5, 0.2, 0.495, "dense kernels")["target_missed"] is False
    assert landing("params", 0.5, 0.52, None, "unstructured")["note"].startswith("unstructured; target missed")
    r = Record.from_dict({**Record(dataset="d", model="m", method="x", family="f", n=1, target_kind="params",
                                   target_drop=0.99, seed=0).to_dict(), **got})
    assert r.target_missed and r.target_tolerance == 0.01


def test_report_on_a_malformed_benchmark_json_is_one_line(tmp_path, capsys):
    for i, data in enumerate(({"benchmarks": "nope"}, {"benchmarks": [1]},
                              {"benchmarks": [{"extra_info": {"timed": "deployed"}, "stats": {}}]},
                              {"benchmarks": [{"extra_info": [], "stats": {}}]})):
        path = tmp_path / f"b{i}.json"
        path.write_text(json.dumps(data))
        assert main(["report", str(path), "--out", str(tmp_path / "rep"), "--no-plots"]) == 2
        assert "is not a pytest-benchmark JSON file" in _one_line(capsys.readouterr().err)


def test_leftover_temp_files_of_dead_writers_or_old_are_cleaned_at_start(tmp_path, fake_jobs):
    import socket
    host = socket.gethostname().split(".")[0].replace("-", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / f".results.jsonl.{host}-{dead}.abc123.tmp", out / ".config.json.xyz.tmp"]
    live = out / f".results.jsonl.{host}-{os.getpid()}.def456.tmp"
    for p in (*stale, live):
        p.write_text("partial")
    old = time.time() - 2 * 3600
    os.utime(stale[1], (old, old))
    assert main([*FAKE, "--out", str(out)]) == 0
    assert [p.exists() for p in stale] == [False, False] and live.exists()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    leftover = ckpt / f".abc.pt.{host}-{dead}.q1w2e3.tmp"
    leftover.write_bytes(b"\0")
    assert clean_stale_temp(ckpt) == [leftover]



def test_a_torn_tail_never_becomes_a_middle_line_when_another_run_appends(tmp_path):
    # Run A is killed mid-write; run B, sharing the folder, appends after it (issue 19 item 2).
    path = tmp_path / RESULTS
    a, b = (Record(dataset="digits", model="fcn", method=m, family="lorita", n=1, target_kind="params",
                   target_drop=0.5, seed=0) for m in ("lorita-n1", "lorita-n3"))
    append_record(path, a)
    whole = json.dumps(b.to_dict(), sort_keys=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(whole[:57])  # the torn record, no newline
    append_record(path, b)
    assert [r.method for r in load_records(path)] == ["lorita-n1", "lorita-n3"]  # every line a record
    assert (tmp_path / (RESULTS + ".corrupt")).read_text(encoding="utf-8") == whole[:57]
    append_record(path, a)  # a sound file is appended to as before, nothing set aside
    assert len(load_records(path)) == 3 and not (tmp_path / (RESULTS + ".corrupt.1")).exists()
