"""Compositions compute their forward by folding the factors or chaining them: same function, same gradients."""

import copy

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

import lorita
from lorita.layers import ConvComposition, LinearComposition, _output_rows, is_eligible


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _perturbed(module):
    # Factors away from orthogonal, so the fold multiplies real products.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def _value_and_grads(module, x, run):
    """Output of ``run(module, x)`` and the gradients of every parameter and of ``x`` for a fixed cotangent."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = run(module, x)
    cotangent = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1)).to(y.device)
    (y * cotangent).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads["input"] = x.grad.clone()
    return y.detach(), grads


def _assert_same(module, x, run_a, run_b, tol=1e-6):
    ya, ga = _value_and_grads(module, x, run_a)
    yb, gb = _value_and_grads(module, x, run_b)
    assert _rel(ya, yb) <= tol
    assert ga.keys() == gb.keys()
    for name in ga:
        assert _rel(ga[name], gb[name]) <= tol, name


def _factor_calls(comp, x):
    """How many of the composition's factors ran as modules during ``comp(x)``."""
    calls = []
    hooks = [f.register_forward_hook(lambda *_: calls.append(1)) for f in comp]
    try:
        with torch.no_grad():
            comp(x)
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def _fold(m, x):
    return m._fold(x)


def _chain(m, x):
    return m._chain(x)


def _forward(m, x):
    return m(x)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("shape", "folds"), [((3, 24), False), ((2, 50, 24), True)])
def test_linear_fold_equals_the_chain_in_value_and_every_gradient(n, bias, shape, folds):
    comp = _perturbed(LinearComposition(nn.Linear(24, 40, bias=bias).double(), n))
    x = torch.randn(*shape, dtype=torch.float64)
    # Few rows (3 < 40 outputs) chain, many rows (100) fold: the cheaper end of the matrix chain.
    assert _factor_calls(comp, x) == (0 if folds else n)
    _assert_same(comp, x, _fold, _chain)
    _assert_same(comp, x, _forward, _chain)


CONVS = {
    "padded": dict(kernel_size=3, padding=1),
    "strided": dict(kernel_size=3, stride=2, padding=1),
    "dilated_strided_bias_free": dict(kernel_size=3, stride=2, padding=2, dilation=2, bias=False),
    "rectangular_unpadded": dict(kernel_size=(1, 3), padding=(0, 1), stride=(2, 1)),
    "same": dict(kernel_size=5, padding="same", bias=False),
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "pointwise": dict(kernel_size=1),
}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("config", CONVS)
def test_conv_fold_equals_the_chain_in_value_and_every_gradient(n, config):
    conv = nn.Conv2d(5, 12, **CONVS[config]).double()
    comp = _perturbed(ConvComposition(conv, n))
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    with torch.no_grad():
        y = comp._chain(x)
    assert _output_rows(conv, x) == y.shape[0] * y.shape[2] * y.shape[3]
    assert _factor_calls(comp, x) == 0  # 2·110-ish positions per 12 channels: folding is cheaper
    _assert_same(comp, x, _fold, _chain)
    _assert_same(comp, x, _forward, _chain)


def test_conv_on_a_small_map_chains_and_still_matches():
    # One image, 2×2 output, 64 channels of 3×3 kernels: the chain (4 positions) is far
    # cheaper than the weight product (64²·576), so the factors run one by one.
    comp = _perturbed(ConvComposition(nn.Conv2d(64, 64, 3, padding=1).double(), 3))
    x = torch.randn(1, 64, 2, 2, dtype=torch.float64)
    assert _factor_calls(comp, x) == 3
    _assert_same(comp, x, _fold, _chain)


def test_merge_gives_exactly_the_folded_weight():
    lin = _perturbed(LinearComposition(nn.Linear(6, 9).double(), 3))
    conv = _perturbed(ConvComposition(nn.Conv2d(4, 7, 3).double(), 3))
    with torch.no_grad():
        assert torch.equal(lin.merged().weight, lin._folded_weight())
        w, b = conv._folded()
        merged = conv.merged()
        assert torch.equal(merged.weight, w) and torch.equal(merged.bias, b)


def test_state_dict_keys_are_those_of_the_factors():
    model = lorita.overparameterize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)), 3)
    assert list(model.state_dict()) == ["0.0.weight", "0.0.bias", "0.1.weight", "0.2.weight",
                                        "2.0.weight", "2.1.weight", "2.2.weight", "2.2.bias"]


def _force(monkeypatch, path):
    monkeypatch.setattr(LinearComposition, "forward", getattr(LinearComposition, path))
    monkeypatch.setattr(ConvComposition, "forward", getattr(ConvComposition, path))


def test_vit_block_with_folded_compositions_matches_the_chain(monkeypatch):
    block = Block(dim=32, num_heads=4, mlp_ratio=2.0).double().eval()
    over = _perturbed(lorita.overparameterize(block, 3))
    comps = [m for m in over.modules() if isinstance(m, LinearComposition)]
    assert len(comps) == 4  # qkv, proj, fc1, fc2
    x = torch.randn(4, 33, 32, dtype=torch.float64)
    # 132 tokens in all, more than any projection is wide: every one of them folds on its own.
    assert all(_factor_calls(c, torch.randn(4, 33, c.in_features, dtype=torch.float64)) == 0 for c in comps)

    def under(path):
        def run(m, inp):
            with monkeypatch.context() as mp:
                _force(mp, path)
                return m(inp)
        return run

    _assert_same(over, x, under("_fold"), under("_chain"))
    _assert_same(over, x, _forward, under("_chain"))


def _bf16(run):
    def under_autocast(m, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(m, x).float()
    return under_autocast


BF16_TOL = 2 ** -6  # a few bf16 roundings (unit roundoff 2^-9) of the largest entry


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fold_under_bf16_autocast_is_a_bf16_product_with_the_chains_gradients(kind):
    torch.manual_seed(0)
    if kind == "linear":
        comp, x = _perturbed(LinearComposition(nn.Linear(64, 48), 3)), torch.randn(256, 64)
    else:
        comp, x = _perturbed(ConvComposition(nn.Conv2d(16, 32, 3, padding=1), 3)), torch.randn(4, 16, 8, 8)
    assert _factor_calls(comp, x) == 0  # this input folds
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        folded = comp._folded_weight() if kind == "linear" else comp._folded()[0]
    assert folded.dtype == torch.bfloat16  # the product itself runs in the training precision
    exact_y, exact = _value_and_grads(comp, x, _chain)  # float32, no autocast
    for run in (_fold, _chain):
        y, grads = _value_and_grads(comp, x, _bf16(run))
        assert _rel(y, exact_y) <= BF16_TOL, run.__name__
        for name in grads:
            assert grads[name].dtype == torch.float32
            assert _rel(grads[name], exact[name]) <= BF16_TOL, (run.__name__, name, _rel(grads[name], exact[name]))
    _, fold_grads = _value_and_grads(comp, x, _bf16(_fold))
    _, chain_grads = _value_and_grads(comp, x, _bf16(_chain))
    assert all(_rel(fold_grads[n], chain_grads[n]) <= 2 * BF16_TOL for n in fold_grads)
    assert any(not torch.equal(fold_grads[n], exact[n]) for n in fold_grads)  # bf16 really ran


def test_merge_under_autocast_stays_exact():
    lin = _perturbed(LinearComposition(nn.Linear(64, 48), 3))
    with torch.no_grad():
        ref = lin.merged().weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = lin.merged().weight
    assert inside.dtype == torch.float32 and torch.equal(inside, ref)


def test_channels_last_model_folds_to_the_same_output():
    conv = _perturbed(ConvComposition(nn.Conv2d(8, 16, 3, padding=1).double(), 2))
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = conv._chain(x)
        nhwc = copy.deepcopy(conv).to(memory_format=torch.channels_last)
        y = nhwc(x.contiguous(memory_format=torch.channels_last))
    assert _rel(y, ref) <= 1e-12


def test_bf16_fold_traces_without_a_graph_break():
    # A graph break in every composition made torch.compile recompile each layer (N=3 3.3x N=1 on an H200).
    lin = _perturbed(LinearComposition(nn.Linear(64, 48), 3))
    conv = _perturbed(ConvComposition(nn.Conv2d(16, 32, 3, padding=1), 3))

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lin(x).float().sum() + conv(y).float().sum()
    explained = torch._dynamo.explain(step)(torch.randn(256, 64), torch.randn(4, 16, 8, 8))
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fold_under_bf16_autocast_is_bf16_with_the_chains_gradients():
    torch.manual_seed(0)
    comp = _perturbed(ConvComposition(nn.Conv2d(64, 128, 3, padding=1), 3)).cuda()
    x = torch.randn(8, 64, 16, 16, device="cuda")

    def run(how):
        def under(m, x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return how(m, x).float()
        return under
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert comp._folded()[0].dtype == torch.bfloat16
    exact_y, exact = _value_and_grads(comp, x, _chain)
    for how in (_fold, _chain):
        y, grads = _value_and_grads(comp, x, run(how))
        assert _rel(y, exact_y) <= BF16_TOL and all(_rel(grads[n], exact[n]) <= BF16_TOL for n in grads)


def _extra_chain_macs(model, n, x):
    """MACs the N-1 extra factors of every layer add per sample, from the dense model's own shapes."""
    extra = []

    def hook(layer, _inputs, out):
        if isinstance(layer, nn.Conv2d):  # N-1 1×1 convs out→out at every output position
            extra.append((n - 1) * layer.out_channels ** 2 * out[0].shape[-2:].numel())
        else:  # N-1 square in→in maps on every row
            extra.append((n - 1) * layer.in_features ** 2 * (out[0].numel() // layer.out_features))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if is_eligible(m)]
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return sum(extra)


@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
@pytest.mark.parametrize("n", [2, 3])
def test_counting_an_unmerged_model_gives_the_chain_macs_even_where_the_forward_folds(name, n):
    from bench.catalog.models import build

    torch.manual_seed(0)
    dense = build(name, 10, (3, 32, 32), {"width": 0.125})
    x = torch.randn(16, 3, 32, 32)  # enough positions that the early convs fold
    composed = lorita.overparameterize(copy.deepcopy(dense), n)
    first = next(m for m in composed.modules() if isinstance(m, ConvComposition))
    assert _factor_calls(first, x) == 0  # the fold runs here: hooks on its factors would see none of them
    macs_dense, params_dense = lorita.count_macs_params(dense, x)
    macs, params = lorita.count_macs_params(composed, x)
    assert macs == macs_dense + _extra_chain_macs(dense, n, x)
    assert params > params_dense
    assert all(not hasattr(m, "__dict__") or "forward" not in m.__dict__ for m in composed.modules())
