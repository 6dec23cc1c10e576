"""Latency as deployed, end to end: the quick preset timed by ONNX Runtime beside eager PyTorch over a batch
sweep, with --round-to 8, into records and the report; and the report's K=1 / K=8 comparison."""

import pytest

from bench.cli import main
from bench.records.results import load_records
from reports.latency import cells, latency_lines, median_efficiency


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out, cache = tmp_path_factory.mktemp("ort"), tmp_path_factory.mktemp("ort-cache")
    code = main(["run", "--preset", "quick", "--out", str(out), "--cache-dir", str(cache), "--no-progress",
                 "--epochs", "3", "--finetune-epochs", "1", "--methods", "lorita-n2,l1-filter", "--targets",
                 "params:0.5", "--latency-modes", "onnxruntime,eager-fp32", "--latency-sweep", "16",
                 "--latency-rounds", "3", "--round-to", "8"])
    return code, out


def test_quick_records_time_onnxruntime_beside_eager_pytorch_at_every_batch(ort_run):
    code, out = ort_run
    assert code == 0
    records = load_records(out / "results.jsonl")
    assert [r.status for r in records] == ["ok", "ok"], [r.reason for r in records]
    for r in records:
        assert r.latency_mode == "onnxruntime" and r.latency_device.startswith("onnxruntime CPUExecutionProvider")
        assert r.round_to == 8 and not r.target_missed
        got = {(e["mode"], e["batch"]): e for e in r.latency_sweep}
        assert set(got) == {(m, b) for m in ("onnxruntime", "eager-fp32") for b in (1, 16, 256)}
        assert all(e["speedup"] > 0 and e["dense_ms"] > 0 and e["deployed_ms"] > 0 for e in got.values())
        # The headline fields are the first mode's numbers.
        assert r.latency_ms == got["onnxruntime", 1]["deployed_ms"]
        assert r.speedup_bT == got["onnxruntime", 256]["speedup"]
        kept = {n: w for n, w in r.layers.items() if w < r.layers_full[n]}
        assert kept and all(w % 8 == 0 for w in kept.values()), (r.method, r.layers)


def test_quick_report_shows_the_sweep_per_mode_with_measured_over_theoretical(ort_run):
    _, out = ort_run
    report = (out / "report.md").read_text()
    assert "## Latency by mode and batch" in report and (out / "tables" / "latency.md").exists()
    for heading in ("### digits / fcn: onnxruntime", "### digits / fcn: eager-fp32"):
        assert heading in report
    assert "| Method | Target | Theoretical | b=1 | b=16 | b=256 |" in report


def _rec(method, k, speedup, macs, seed=0):
    entry = {"mode": "deploy", "batch": 256, "device": "GPU", "dense_ms": 2.0, "deployed_ms": 2.0 / speedup,
             "speedup": speedup, "note": ""}
    return {"dataset": "fashion-mnist-32", "model": "vgg16", "method": method, "family": "lorita", "n": 3,
            "target_kind": "flops", "target_drop": 0.5, "seed": seed, "status": "ok", "round_to": k,
            "config_hash": f"k{k}", "dense_macs": 100.0, "macs": macs, "flops_drop": 1 - macs / 100, "acc": 0.9,
            "speedup_bT": speedup, "throughput_batch": 256, "latency_sweep": [entry]}


def test_report_puts_k1_and_k8_side_by_side_with_measured_over_theoretical():
    records = [_rec("lorita-n3", 1, 0.8, 50.0), _rec("lorita-n3", 8, 1.5, 48.0)]
    by_k = {c.round_to: c for c in cells(records)}
    assert by_k[1].efficiency == pytest.approx(0.4) and by_k[8].efficiency == pytest.approx(1.5 / (100 / 48))
    assert median_efficiency(records, mode="deploy", batch=256) == pytest.approx((0.4 + 0.72) / 2)
    text = "\n".join(latency_lines(records))
    assert "## Rounded to K" in text and "K=1: FLOPs↓ | K=1: Acc | K=1: Speed-up b=T | K=8: FLOPs↓" in text
    assert "| lorita-n3 | flops 50% | 50.0 | 90.00 | 0.80× (b=256) | 52.0 | 90.00 | 1.50× (b=256) |" in text
    assert latency_lines([{**records[0], "latency_sweep": []}]) == []
