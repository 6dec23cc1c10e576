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
from bench.records.results import RESULTS, Record, append_record, clean_stale_temp, landing, load_records, parse_jsonl

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
        f"{out / RESULTS}:{torn.count(chr(10)) + 1} was cut off (a run killed mid-write): set aside, the whole file "
        f"kept in {out / 'results.jsonl.corrupt'}; resuming"]
    assert (out / "results.jsonl.corrupt").read_text() == torn
    assert ran == [("lorita-n3", ("params:0.5",))]  # only the lost record is redone
    assert len(load_records(out / RESULTS)) == 2


def test_a_torn_line_in_the_middle_is_set_aside_too_and_the_run_resumes(tmp_path, fake_jobs, capsys):
    # An older harness, or a writer on a shared file system, can leave a torn record in front of a good
    # one: it must not wedge the folder (every later start, report and compare used to stop there).
    ran, _, _ = fake_jobs
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    lines = (out / RESULTS).read_text().splitlines()
    torn = lines[-1][:80]
    (out / RESULTS).write_text("\n".join([*lines[:-1], torn, lines[-1]]) + "\n")
    assert len(load_records(out / RESULTS)) == len(lines) - 1  # left out (and the reference line is no record)
    ran.clear()
    capsys.readouterr()
    assert main([*FAKE, "--out", str(out)]) == 0
    assert f"{out / RESULTS}:{len(lines)} was cut off" in capsys.readouterr().err
    assert not ran and (out / RESULTS).read_text().splitlines() == lines


def test_a_line_that_is_no_record_stops_with_file_and_line(tmp_path, fake_jobs, capsys):
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    lines = (out / RESULTS).read_text().splitlines()
    (out / RESULTS).write_text("\n".join(["<<<<<<< HEAD", *lines]) + "\n")  # a merge left in, say
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


def test_a_writer_killed_mid_line_while_another_appends_loses_only_its_own_line(tmp_path):
    # Issue 19 item 2, with a real kill: A holds the folder's lock and has written half a record when
    # it is SIGKILLed; B, blocked on that lock meanwhile, appends the moment A dies.
    path = tmp_path / RESULTS
    a, b = (Record(dataset="digits", model="fcn", method=m, family="lorita", n=1, target_kind="params",
                   target_drop=0.5, seed=0) for m in ("lorita-n1", "lorita-n3"))
    append_record(path, a)
    half = json.dumps(b.to_dict(), sort_keys=True)[:100]
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time
        from bench.records.results import locked
        with locked({str(path)!r}):
            fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND)
            os.write(fd, {half!r}.encode())
            print("written", flush=True)
            time.sleep(60)
    """)], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "written"
    appender = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json
        from bench.records.results import Record, append_record
        append_record({str(path)!r}, Record.from_dict(json.loads({json.dumps(json.dumps(b.to_dict()))})))
    """)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(0.5)
    assert appender.poll() is None  # blocked on the lock A holds
    writer.kill()
    writer.wait(timeout=30)
    writer.stdout.close()
    assert appender.wait(timeout=60) == 0
    assert [r.method for r in load_records(path)] == ["lorita-n1", "lorita-n3"]
    assert (tmp_path / (RESULTS + ".corrupt")).read_text(encoding="utf-8") == half


def test_two_ranks_on_cuda_0_and_cuda_1_hash_one_configuration_and_plan_the_same_jobs(tmp_path):
    # Issue 19 item 1: under torchrun rank r runs on cuda:r; planning must not see the index.
    ci = PRESETS.get("ci")
    ranks = [ci.override(device=f"cuda:{r}") for r in (0, 1)]
    assert ranks[0].config_hash() == ranks[1].config_hash()
    plans = [[(j.pretraining, j.seed, j.work) for j in runner.plan(p, set(), cache_dir=tmp_path)] for p in ranks]
    assert plans[0] == plans[1] and plans[0]
    with runner.locked(tmp_path / "out" / RESULTS):  # rank 0 writes config.json; rank 1 finds its own configuration
        runner._claim(tmp_path / "out", ranks[0], None, print, write=True)
        runner._claim(tmp_path / "out", ranks[1], None, print, write=False)


@pytest.mark.parametrize("change", [{"throughput_batch": 32}, {"latency_rounds": 3}, {"compile": True},
                                    {"recipes": {"lorita": {"lr": 0.5}}}])
def test_timing_settings_and_recipes_are_part_of_the_configuration(tmp_path, change):
    # Issue 19 item 6: runs timed differently must not share a folder (and one "b=T" header).
    ci = PRESETS.get("ci")
    assert ci.override(**change).config_hash() != ci.config_hash()
    with runner.locked(tmp_path / RESULTS):
        runner._claim(tmp_path, ci, None, print, write=True)
        with pytest.raises(runner.UsageError) as err:
            runner._claim(tmp_path, ci.override(**change), None, print, write=True)
    key = next(iter(change))
    assert f"differs in {key}" in str(err.value), str(err.value)  # named, never "no hashed field"


def test_every_preset_field_is_classed_as_identity_or_not():
    # One list: a field added to Preset must say whether it changes what is measured (IDENTITY) or not.
    from dataclasses import fields as dc_fields

    from bench.catalog.presets import NOT_IDENTITY, Preset
    from bench.records.sources import IDENTITY
    names = {f.name for f in dc_fields(Preset)}
    assert set(IDENTITY) | set(NOT_IDENTITY) == names and not set(IDENTITY) & set(NOT_IDENTITY)


def test_records_are_written_as_each_job_ends_so_a_killed_orchestrator_loses_none(tmp_path, fake_jobs, monkeypatch):
    # Issue 19 item 4: lorita-n3's job ends first (as under submitit), then the orchestrator is
    # killed before the plain job reports: lorita-n3's record is on disk, waiting for its reference.
    ran, _, side = fake_jobs
    real_plan = runner.plan
    monkeypatch.setattr(runner, "plan", lambda *a, **kw: list(reversed(real_plan(*a, **kw))))
    side["lorita-n1"] = lambda: (_ for _ in ()).throw(KeyboardInterrupt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.run(PRESETS.get("ci").override(methods=("lorita-n1", "lorita-n3"),
                                              targets=(Target(kind="params", drop=0.5),)),
                   out, progress=False, echo=lambda s: None)
    (r,) = load_records(out / RESULTS)
    assert (r.method, r.ref_pending, r.ref_acc, r.delta_acc) == ("lorita-n3", True, None, None)
    ran.clear()
    assert main([*FAKE, "--out", str(out)]) == 0
    assert ran == [("lorita-n1", ("params:0.5",))]  # lorita-n3 is not run again
    by = {r.method: r for r in load_records(out / RESULTS)}
    assert by["lorita-n3"].ref_acc == 0.95 and by["lorita-n3"].delta_acc == pytest.approx(0.9 - 0.95)
    assert not by["lorita-n3"].ref_pending


def test_a_failed_reference_leaves_records_pending_and_a_later_run_fills_them(tmp_path, fake_jobs, monkeypatch,
                                                                              capsys):
    # Issue 19 item 3: lorita-n3 alone needs a reference-only plain job; it fails the first time.
    fake, calls, fail = executors.run_job, [], [True]

    def reference_fails_once(j, data=None, *, progress=False):
        calls.append(j.methods)
        if not j.work and fail:
            fail.pop()
            raise RuntimeError("node lost")
        return fake(j, data, progress=progress)
    monkeypatch.setattr(executors, "run_job", reference_fails_once)
    out, only = tmp_path / "run", [*FAKE[:4], "--methods", "lorita-n3", *FAKE[6:]]
    assert main([*only, "--out", str(out)]) == 0
    assert "this seed's records wait for it" in capsys.readouterr().err
    (r,) = load_records(out / RESULTS)
    assert r.status == "ok" and r.ref_pending and r.ref_acc is None and r.delta_acc is None  # not vs its own dense
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep), "--no-plots"]) == 0
    assert "await" in (rep / "report.md").read_text()
    calls.clear()
    assert main([*only, "--out", str(out)]) == 0
    assert calls == [()]  # every cell was done: only the reference is trained, and it is
    (r,) = load_records(out / RESULTS)
    assert (r.ref_acc, r.ref_pending, r.delta_acc) == (0.95, False, pytest.approx(0.9 - 0.95))


def test_a_folder_of_records_made_by_other_code_is_refused(tmp_path, fake_jobs, capsys):
    # Issue 19 item 3: a resumed folder must not hold references and records of two code versions.
    ran, _, _ = fake_jobs
    out = tmp_path / "run"
    assert main([*FAKE, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "code": "0123456789abcdef"}))
    ran.clear()
    capsys.readouterr()
    assert main([*FAKE, "--methods", "l1-filter", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "made by other code (code 0123456789abcdef" in line and "--out to a fresh folder" in line and not ran


def test_the_checkpoint_key_has_the_process_count_and_the_job_code(monkeypatch):
    # Issue 19 item 10: BatchNorm statistics differ across process counts (no SyncBatchNorm); the
    # job's seeding order and calibration batch shape the model.
    from bench.execution import distributed, provenance
    ci = PRESETS.get("ci")
    one = cache.checkpoint_key(ci, METHODS.get("lorita-n1"), 0)
    monkeypatch.setattr(distributed, "world", lambda: 2)
    assert cache.checkpoint_key(ci, METHODS.get("lorita-n1"), 0) != one
    assert {"job.py", "train.py"} <= {p.name for p in provenance.shaping_files()}


def test_ranks_that_do_not_all_load_a_checkpoint_train_from_the_fresh_weights(tmp_path, monkeypatch):
    # Issue 19 item 10: the load waits for every rank's word; a rank whose load worked must not
    # keep those weights when another's failed (one rank simulated: agreement refused).
    from dataclasses import replace

    from bench.catalog import data as data_mod
    from bench.catalog.models import build
    from bench.catalog.protocol import Calib
    from bench.execution import distributed
    p = PRESETS.get("quick").override(budget=replace(PRESETS.get("quick").budget, epochs=2, finetune_epochs=1))
    data = data_mod.load("digits").to("cpu")
    lead = METHODS.get("lorita-n1")

    def trained():
        torch.manual_seed(0)
        model = lead.prepare(build(p.model, data.num_classes, data.input_shape, p.model_options))
        calib = Calib(example=data.train_x[:1], batch_x=data.train_x[:8], batch_y=data.train_y[:8],
                      num_classes=data.num_classes, head=None)
        return job.trained_model(p, lead, model, data, calib, 0, cache_dir=tmp_path)
    first = trained()  # trains and writes the checkpoint
    asked = []  # the first question is the checkpoint's; the training asks again (finite losses)
    monkeypatch.setattr(distributed, "agree", lambda flag, device="cpu": bool(asked.append(flag)) or
                        (flag and len(asked) > 1))
    second = trained()
    assert asked[0] is True
    assert not second.cached
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # trained again from the same fresh weights, not on from the loaded ones


def test_a_reference_only_training_is_a_reference_line_and_counted_in_the_cost(tmp_path, count_training):
    # No method of the run trains plainly: the plain model is trained only to be the reference.
    out = tmp_path / "run"
    assert main([*TINY[:-6], "--methods", "lorita-n3", *TINY[-4:], "--out", str(out)]) == 0
    (ref,) = parse_jsonl(out / RESULTS).references
    (r,) = load_records(out / RESULTS)
    assert ref.train_steps == r.pretrain_steps and r.ref_acc == ref.acc and not r.ref_pending
    assert "Plus 1 plain training made only to be the reference" in (out / "report.md").read_text()
