"""Measurement: A/B latency in every mode and over a batch sweep, counts, on real modules."""

import pytest
import torch
from torch import nn

from bench.execution import measure


def _pair(width: int = 64) -> tuple[nn.Module, nn.Module]:
    dense = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 10))
    deployed = nn.Sequential(nn.Linear(32, width // 4), nn.ReLU(), nn.Linear(width // 4, 10))
    return dense, deployed


def _conv_pair() -> tuple[nn.Module, nn.Module]:
    def net(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    return net(16).eval(), net(8).eval()


def test_latency_ab_reports_medians_iqrs_and_restores_state():
    dense, deployed = _pair()
    dense.train()
    deployed.eval()
    threads = torch.get_num_threads()
    ab = measure.latency_ab(dense, deployed, (32,), batch_size=4, rounds=15, warmup=2)
    for lat in (ab.dense, ab.deployed):
        assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.rounds == 15 and lat.batch_size == 4
        assert lat.device.startswith("cpu:") and "(1 thread)" in lat.device
    assert ab.speedup_lo <= ab.speedup <= ab.speedup_hi
    assert dense.training and not deployed.training and torch.get_num_threads() == threads


def test_smaller_deployed_model_is_faster_at_throughput_batch():
    big = nn.Sequential(nn.Linear(256, 2048), nn.Linear(2048, 256))
    small = nn.Sequential(nn.Linear(256, 16), nn.Linear(16, 256))
    ab = measure.latency_ab(big, small, (256,), batch_size=256, rounds=15)
    assert ab.speedup_lo > 1 and ab.deployed.median_ms < ab.dense.median_ms


def test_counts_are_per_sample_macs_and_all_parameters():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    macs, params = measure.counts(model, (3, 4))
    assert (macs, params) == (60, 60)


def test_sweep_times_every_mode_at_every_batch_and_fills_the_headline_of_the_first():
    dense, deployed = _pair()
    sweep = measure.latency_sweep(dense, deployed, (32,), modes=("deploy", "eager-fp32"), batches=(8, 1, 2),
                                  rounds=4, warmup=1)
    assert [(e.mode, e.batch) for e in sweep] == [("deploy", 1), ("deploy", 2), ("deploy", 8),
                                                  ("eager-fp32", 1), ("eager-fp32", 2), ("eager-fp32", 8)]
    assert all(e.result is not None and e.result.dense.batch_size == e.batch for e in sweep)
    fields = measure.headline(sweep, "deploy", 8)
    assert fields["latency_mode"] == "deploy" and fields["throughput_batch"] == 8
    assert fields["latency_ms"] == sweep[0].result.deployed.median_ms
    assert fields["speedup_bT"] == sweep[2].result.speedup and len(fields["latency_sweep"]) == 6
    assert fields["latency_sweep"][3]["mode"] == "eager-fp32" and fields["latency_sweep"][3]["dense_ms"] > 0


def test_a_mode_that_cannot_run_leaves_a_note_and_empty_headline():
    dense, _ = _pair()
    sweep = [measure.SweepEntry(mode="onnxruntime", batch=b, note="ONNX export failed (X)") for b in (1, 4)]
    fields = measure.headline(sweep, "onnxruntime", 4)
    assert fields["latency_ms"] is None and fields["speedup_bT"] is None and fields["latency_device"] is None
    assert measure.sweep_note("sparse", sweep) == "sparse; latency onnxruntime: ONNX export failed (X)"
    with pytest.raises(ValueError, match="latency mode must be one of"):
        measure.runner(dense, "tensorrt", (32,))


@pytest.mark.parametrize("pair, shape", [(_pair, (32,)), (_conv_pair, (3, 8, 8))], ids=["fcn", "conv"])
def test_onnxruntime_runs_the_export_with_the_models_outputs(pair, shape):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    dense, _ = pair()
    session = ort.InferenceSession(measure.export_onnx(dense, shape), providers=[measure.ORT_PROVIDER])
    x = torch.randn(5, *shape)
    with torch.no_grad():
        want = dense.eval()(x)
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    sweep = measure.latency_sweep(*pair(), shape, modes=("onnxruntime",), batches=(1, 4), rounds=4, warmup=1)
    assert [e.batch for e in sweep] == [1, 4] and all(e.result is not None for e in sweep)
    assert sweep[0].result.deployed.device.startswith("onnxruntime CPUExecutionProvider on cpu:")


class _Spectral(nn.Module):
    """A forward with an op the ONNX exporter has no form for (an SVD)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.view(x.shape[0], 4, -1))


def test_an_export_that_fails_is_a_note_not_a_crash():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    sweep = measure.latency_sweep(_Spectral(), _Spectral(), (16,), modes=("onnxruntime", "eager-fp32"),
                                  batches=(1, 2), rounds=3, warmup=1)
    assert [e.result is None for e in sweep] == [True, True, False, False]
    assert "ONNX export failed" in sweep[0].note and "svd" in sweep[0].note.lower()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
def test_cuda_latency_uses_events_and_names_the_gpu():
    dense, deployed = (m.cuda() for m in _pair())
    ab = measure.latency_ab(dense, deployed, (32,), batch_size=8, device="cuda", rounds=10)
    assert ab.deployed.median_ms > 0 and ab.deployed.device == torch.cuda.get_device_name()


@pytest.mark.cuda
@cuda
def test_cuda_deploy_mode_replays_bf16_graphs_and_leaves_the_models_fp32():
    dense, deployed = (m.cuda() for m in _conv_pair())
    sweep = measure.latency_sweep(dense, deployed, (3, 8, 8), modes=("deploy", "eager-fp32"), batches=(1, 64),
                                  device="cuda", rounds=10)
    assert all(e.result is not None and e.note == "" for e in sweep), [e.note for e in sweep]
    assert all(p.dtype == torch.float32 for p in (*dense.parameters(), *deployed.parameters()))
    run = measure.runner(dense, "deploy", (3, 8, 8), device="cuda")(4)
    assert callable(run) and run() is None  # a CUDA graph's replay, not an eager forward
