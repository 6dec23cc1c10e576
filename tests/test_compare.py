"""The regression gate: fails on accuracy falls beyond the tolerance, any change of counts, and
disappearing methods or cells; passes for identical runs. Inputs are the committed CI reference."""

import copy
import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.records.compare import compare
from bench.records.errors import UsageError
from bench.records.sources import load

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "ci.jsonl"


@pytest.fixture
def reference() -> list[dict]:
    return list(load([REFERENCE]).records)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_reference_is_a_complete_successful_ci_run(reference):
    from bench.catalog.registry import PRESETS

    ci = PRESETS.get("ci")
    assert {(r["method"], r["target_kind"], r["target_drop"], r["seed"]) for r in reference} == {
        (m, t.kind, t.drop, s) for m in ci.methods for t in ci.targets for s in ci.seeds}
    assert all(r["status"] == "ok" for r in reference)
    # If this fails, the ci preset changed: regenerate reference/ci.jsonl (see reference/README.md).
    assert {r["config_hash"] for r in reference} == {ci.config_hash()}


def test_identical_runs_pass(reference):
    result = compare(reference, copy.deepcopy(reference))
    assert result.ok and result.problems == ()
    assert result.cells == len(reference)


def test_reference_doctored_to_3pp_more_accuracy_fails(reference):
    doctored = copy.deepcopy(reference)
    doctored[0]["acc"] += 0.03
    result = compare(doctored, reference, acc_tol=0.01)
    assert not result.ok
    assert len(result.problems) == 1
    line = result.problems[0]
    r = reference[0]
    assert f"{r['method']} {r['target_kind']}:{r['target_drop']:g} seed {r['seed']}" in line
    assert "accuracy fell 3.00 pp" in line and "tolerance 1.00 pp" in line


def test_a_fall_within_the_tolerance_passes(reference):
    new = copy.deepcopy(reference)
    for r in new:
        r["acc"] -= 0.009
        r["base_acc"] -= 0.009
    assert compare(reference, new, acc_tol=0.01).ok
    assert not compare(reference, new, acc_tol=0.005).ok


def test_any_change_of_macs_or_params_fails(reference):
    new = copy.deepcopy(reference)
    new[1]["macs"] += 1
    new[2]["params"] -= 1
    new[3]["dense_macs"] += 2
    result = compare(reference, new)
    assert len(result.problems) == 3
    assert any(" MACs changed" in p and str(reference[1]["macs"]) in p for p in result.problems)
    assert any(" params changed" in p for p in result.problems)
    assert any("dense MACs changed" in p for p in result.problems)


def test_a_missing_method_fails_once_and_a_missing_cell_per_cell(reference):
    gone = reference[0]["method"]
    new = [r for r in reference if r["method"] != gone]
    result = compare(reference, new)
    assert result.problems == (f"digits/fcn {gone}: method disappeared "
                               f"({sum(r['method'] == gone for r in reference)} reference cells have no result)",)
    one_cell = reference[1:]
    problems = compare(reference, one_cell).problems
    assert len(problems) == 1 and "missing" in problems[0]
    assert compare(reference, one_cell, partial=True).ok  # a filtered run checks only what ran


def test_a_cell_that_now_fails_is_a_problem_and_a_new_cell_is_only_noted(reference):
    new = copy.deepcopy(reference)
    new[0] = {**new[0], "status": "failed", "reason": "RuntimeError: boom"}
    extra = {**reference[0], "target_drop": 0.95}
    result = compare(reference, [*new, extra])
    assert len(result.problems) == 1 and "now failed (RuntimeError: boom)" in result.problems[0]
    assert any("not in the reference" in n for n in result.notes)


def test_a_changed_config_is_a_problem(reference):
    new = [{**r, "config_hash": "0123456789ab"} for r in reference]
    (problem,) = compare(reference, new).problems
    assert problem.startswith("config hash changed")


def test_bad_tolerance_and_empty_reference_are_usage_errors(reference):
    with pytest.raises(UsageError, match="accepted: a fraction in"):
        compare(reference, reference, acc_tol=1.0)
    with pytest.raises(UsageError, match="reference holds no records"):
        compare([], reference)


def test_cli_exits_1_with_one_line_per_problem(reference, tmp_path, capsys):
    ref = _write(tmp_path / "ref.jsonl", reference)
    assert main(["compare", str(ref), str(ref)]) == 0
    assert capsys.readouterr().out == ""
    doctored = copy.deepcopy(reference)
    doctored[0]["acc"] += 0.03
    doctored[1]["macs"] -= 5
    assert main(["compare", str(_write(tmp_path / "doctored.jsonl", doctored)), str(ref), "--acc-tol", "0.01"]) == 1
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 2
    assert "regression: 2 problem(s)" in out.err


def test_cli_reads_run_folders_and_explains_bad_input(reference, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "results.jsonl", reference)
    assert main(["compare", str(REFERENCE), str(run)]) == 0
    assert main(["compare", str(REFERENCE), str(tmp_path / "nothing")]) == 2
    assert "no results at" in capsys.readouterr().err
    assert main(["compare", str(REFERENCE), str(run), "--acc-tol", "2"]) == 2
    assert "bad accuracy tolerance 2.0" in capsys.readouterr().err


def test_gate_reads_pytest_benchmark_json(reference, tmp_path):
    bench = {"machine_info": {}, "benchmarks": [
        {"name": f"test_deployed[{i}]", "stats": {"median": 1e-4, "iqr": 1e-5},
         "extra_info": {**r, "timed": "deployed", "timed_batch": 1}} for i, r in enumerate(reference)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert compare(reference, load([path]).records).ok


@pytest.mark.parametrize("value", [None, float("nan"), float("inf")])
@pytest.mark.parametrize("field", ["acc", "base_acc", "params", "macs"])
def test_an_ok_cell_without_a_number_fails(reference, field, value):
    new = copy.deepcopy(reference)
    new[2][field] = value
    result = compare(reference, new)
    r = reference[2]
    (problem,) = result.problems
    assert problem.startswith(f"digits/fcn {r['method']} {r['target_kind']}:{r['target_drop']:g} seed {r['seed']}: "
                              "ok but without a number")
    assert f"{value!r}" in problem


def test_cli_fails_a_run_whose_accuracies_are_null_or_nan(reference, tmp_path, capsys):
    new = [{**r, "acc": None if i % 2 else float("nan")} for i, r in enumerate(reference)]
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in new))  # json writes NaN as NaN, and reads it back
    assert main(["compare", str(REFERENCE), str(path)]) == 1
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == len(reference)
    assert f"regression: {len(reference)} problem(s)" in out.err
