"""The main job end to end through the CLI, resume, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from bench.catalog.methods import LoRITa
from bench.catalog.registry import PRESETS
from bench.cli import main
from bench.execution import job
from bench.records.results import load_records


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    code = main(["run", "--preset", "quick", "--out", str(out), "--no-progress"])
    return code, out


def test_quick_preset_runs_every_method_at_every_target(quick_run, capsys):
    code, out = quick_run
    assert code == 0
    records = load_records(out / "results.jsonl")
    assert {(r.method, r.target_drop) for r in records} == {
        (m, t) for m in PRESETS.get("quick").methods for t in (0.5, 0.7, 0.9)}
    assert all(r.status == "ok" for r in records), [r.reason for r in records if r.status != "ok"]
    assert len({r.train_steps for r in records}) == 1  # one budget for all
    for r in records:
        # Counted on the deployed model, and on target within one point.
        assert abs(r.params_drop - r.target_drop) <= 0.01, (r.method, r.params_drop)
        assert r.params < r.dense_params
        if r.method == "magnitude-unstructured":  # zeros run on dense kernels: no FLOPs saved
            assert r.macs == r.dense_macs and "dense kernels" in r.note
        else:
            assert r.macs < r.dense_macs
        assert 0.1 < r.acc <= 1 and r.latency_ms > 0 and r.throughput_ms > 0
    lorita_90 = [r for r in records if r.family == "lorita" and r.target_drop == 0.9]
    assert all(min(r.layers.values()) >= 1 for r in lorita_90)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "digits" and config["budget"]["epochs"] == 40


def test_quick_report_holds_the_table_with_the_recorded_numbers(quick_run):
    _, out = quick_run
    report = (out / "report.md").read_text()
    assert ("| Method | N | Target | Dense acc | Zero-shot acc (ΔAcc) | Fine-tuned acc (ΔAcc) | FLOPs↓ | Params↓ |"
            in report)
    for r in load_records(out / "results.jsonl"):
        assert f"| {r.acc * 100:.2f} ({(r.acc - r.ref_acc) * 100:+.2f}) |" in report
        assert f"| {r.acc_zero_shot * 100:.2f} ({(r.acc_zero_shot - r.ref_acc) * 100:+.2f}) |" in report
    assert "FLOPs = 2·MACs" in report


def test_rerun_resumes_without_repeating_finished_runs(quick_run, monkeypatch):
    _, out = quick_run
    lines = (out / "results.jsonl").read_text().splitlines()
    # Simulate a suite killed before its last record was written.
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    missing = json.loads(lines[-1])
    calls = []
    real = job.run_group

    def counting(preset, work, data, seed, **kw):
        calls.extend((method.name, [t.drop for t in targets]) for method, targets in work)
        return real(preset, work, data, seed, **kw)
    monkeypatch.setattr(job, "run_group", counting)
    assert main(["run", "--preset", "quick", "--out", str(out), "--no-progress"]) == 0
    assert calls == [(missing["method"], [missing["target_drop"]])]
    assert len(load_records(out / "results.jsonl")) == sum('"kind": "reference"' not in line for line in lines)
    calls.clear()
    assert main(["run", "--preset", "quick", "--out", str(out), "--no-progress"]) == 0
    assert calls == []


def test_one_failing_method_does_not_sink_the_others(tmp_path, monkeypatch):
    def broken(self, model, target, calib):
        raise RuntimeError("boom")
    monkeypatch.setattr(LoRITa, "compress", broken)
    code = main(["run", "--preset", "quick", "--out", str(tmp_path), "--no-progress", "--epochs", "3",
                 "--finetune-epochs", "1", "--methods", "lorita-n2,l1-filter", "--targets", "params:0.5"])
    assert code == 0
    by_method = {r.method: r for r in load_records(tmp_path / "results.jsonl")}
    assert by_method["lorita-n2"].status == "failed" and "boom" in by_method["lorita-n2"].reason
    assert by_method["l1-filter"].status == "ok"
    assert "failed: RuntimeError: boom" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--preset", "quik"], "unknown preset 'quik' (did you mean quick?); accepted: "),
    (["run", "--methods", "lorita-n9"], "unknown method 'lorita-n9'"),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "--model", "resnet1000"], "unknown model 'resnet1000'"),
    (["run", "--targets", "speed:0.5"], "bad target kind 'speed'"),
    (["run", "--epochs", "0"], "bad budget: epochs=0"),
    (["run", "--seeds", "a"], "bad seeds 'a'"),
    (["run", "--data-dir", "/nonexistent/data"], "data directory /nonexistent/data does not exist"),
])
def test_bad_input_is_one_line_naming_the_value_and_what_is_accepted(args, needle, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path)] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err
    assert "accepted" in err or "--download" in err


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--preset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown preset 'nope'" in proc.stderr


def test_list_shows_every_method_with_a_description(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("quick", "digits", "fcn", "lorita-n1", "lorita-n3", "l1-filter"):
        assert f"  {name} " in out
    assert "Li et al." in out
