"""Measurement: latency statistics and counts on real modules."""

import pytest
import torch
from torch import nn

from bench.execution import measure


def test_latency_reports_median_and_iqr_and_restores_state():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).train()
    threads = torch.get_num_threads()
    lat = measure.latency(model, (32,), batch_size=4, rounds=15, warmup=2)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.rounds == 15 and lat.batch_size == 4
    assert lat.device.startswith("cpu:") and "(1 thread)" in lat.device
    assert model.training and torch.get_num_threads() == threads


def test_bigger_model_is_slower_at_throughput_batch():
    small = nn.Sequential(nn.Linear(256, 16), nn.Linear(16, 256))
    big = nn.Sequential(nn.Linear(256, 2048), nn.Linear(2048, 256))
    a = measure.latency(small, (256,), batch_size=256, rounds=15)
    b = measure.latency(big, (256,), batch_size=256, rounds=15)
    assert b.median_ms > a.median_ms


def test_counts_are_per_sample_macs_and_all_parameters():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    macs, params = measure.counts(model, (3, 4))
    assert (macs, params) == (60, 60)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_uses_events_and_names_the_gpu():
    model = nn.Linear(64, 64).cuda()
    lat = measure.latency(model, (64,), batch_size=8, device="cuda", rounds=10)
    assert lat.median_ms > 0 and lat.device == torch.cuda.get_device_name()
