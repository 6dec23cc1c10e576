"""The modules LoRITa trains with (N-factor compositions) and deploys (two thin factors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvComposition", "LinearComposition", "LowRankConv2d", "LowRankLinear",
           "compressible_layers", "is_eligible", "layer_weight", "walk"]


class LinearComposition(nn.Sequential):
    """``Linear(in, out)`` trained as N-1 bias-free ``Linear(in, in)`` then ``Linear(in, out)``.

    Children are named ``0 … N-1`` in the order they are applied, so parameter names
    stay readable (``blocks.0.mlp.fc1.2.weight`` is the last factor of ``fc1``).
    The forward computes the same function as the chain of factors in whichever order of
    the matrix chain is cheaper for the input at hand: many rows (batch × tokens) fold the
    factors into one weight and run one ``F.linear``; few rows run the factors one by one.
    Autograd gives every factor its exact gradient either way. Hooks registered on a
    single factor fire only when the chain runs.
    """

    def __init__(self, linear: nn.Linear, n: int) -> None:
        factors: list[nn.Module] = []
        dd = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        for _ in range(n - 1):
            square = nn.Linear(linear.in_features, linear.in_features, bias=False, **dd)
            _orthogonal_(square.weight)
            factors.append(square)
        factors.append(linear)
        super().__init__(*factors)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    @property
    def n(self) -> int:
        return len(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if self.n > 1 and _fold_is_cheaper(rows=rows, square=self.in_features, other=self.out_features,
                                           extra=self.n - 1):
            return self._fold(x)
        return self._chain(x)

    def _chain(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, x)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._folded_weight(), self[-1].bias)

    def _folded_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The out×in product of the factors, differentiable: in the training precision by default
        (under bf16 autocast a bf16 product with float32 accumulation, see ``_product``), else
        taken in ``dtype`` with autocast off (``merged`` asks for float64)."""
        mats = [f.weight if dtype is None else f.weight.to(dtype) for f in reversed(list(self))]
        return _product(mats, exact=dtype is not None)

    def merged(self) -> nn.Linear:
        """One ``nn.Linear`` computing the same map (the fold's product, taken in float64)."""
        last: nn.Linear = self[-1]
        with torch.no_grad():
            w = self._folded_weight(torch.float64)
        out = nn.Linear(self.in_features, self.out_features, bias=last.bias is not None,
                        device=last.weight.device, dtype=last.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if last.bias is not None:
                out.bias.copy_(last.bias)
        return out


class ConvComposition(nn.Sequential):
    """``Conv2d(k×k)`` trained as the k×k conv followed by N-1 bias-free 1×1 convs (out→out).

    The original conv keeps its bias, stride, padding and dilation; merging folds the
    1×1 maps into its output channels (and into its bias). The forward computes the same
    function in the cheaper order: where the output has more positions (batch × H × W)
    than the weights are wide, the 1×1 maps are folded into the kernel and one conv runs;
    otherwise (small maps late in a net, batch-1 inference) the convs run one by one.
    Hooks registered on a single factor fire only when the chain runs.
    """

    def __init__(self, conv: nn.Conv2d, n: int) -> None:
        factors: list[nn.Module] = [conv]
        dd = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        for _ in range(n - 1):
            pointwise = nn.Conv2d(conv.out_channels, conv.out_channels, 1, bias=False, **dd)
            _orthogonal_(pointwise.weight)
            factors.append(pointwise)
        super().__init__(*factors)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels

    @property
    def n(self) -> int:
        return len(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first: nn.Conv2d = self[0]
        fan_in = first.weight[0].numel()
        if self.n > 1 and _fold_is_cheaper(rows=_output_rows(first, x), square=self.out_channels,
                                           other=fan_in, extra=self.n - 1):
            return self._fold(x)
        return self._chain(x)

    def _chain(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, x)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        first: nn.Conv2d = self[0]
        weight, bias = self._folded()
        if not first.weight.is_contiguous() and first.weight.is_contiguous(memory_format=torch.channels_last):
            # A model moved to channels-last keeps its conv weights NHWC; hand the folded kernel
            # over in the same layout so the backend picks the kernel it would for N=1.
            weight = weight.contiguous(memory_format=torch.channels_last)
        # _conv_forward applies padding_mode exactly as the k×k conv itself would.
        return first._conv_forward(x, weight, bias)

    def _folded(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The k×k weight and bias of the one conv equal to the chain, differentiable: in the
        training precision by default (as ``LinearComposition._folded_weight``), else in ``dtype``."""
        first: nn.Conv2d = self[0]

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t if dtype is None else t.to(dtype)

        w = cast(first.weight)
        flat = w.flatten(1)
        if first.bias is not None:
            # The bias rides along as one more input column: the 1×1 maps act on it as on
            # every output of the k×k conv, so one product folds both.
            flat = torch.cat([flat, cast(first.bias)[:, None]], dim=1)
        prod = _product([cast(p.weight).flatten(1) for p in reversed(list(self)[1:])] + [flat],
                        exact=dtype is not None)
        if first.bias is None:
            return prod.view_as(w), None
        return prod[:, :-1].reshape(w.shape), prod[:, -1]

    def merged(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` of the original shape computing the same map (the fold, in float64)."""
        first: nn.Conv2d = self[0]
        with torch.no_grad():
            merged_w, merged_b = self._folded(torch.float64)
        out = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size,
                        stride=first.stride, padding=first.padding, dilation=first.dilation,
                        groups=1, bias=first.bias is not None, padding_mode=first.padding_mode,
                        device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(merged_w)
            if merged_b is not None:
                out.bias.copy_(merged_b)
        return out


def _product(mats: list[torch.Tensor], *, exact: bool) -> torch.Tensor:
    """The fold's weight product: with ``exact``, in the factors' dtype with autocast off; else as
    the surrounding code computes, so under bf16 autocast a bf16 matmul with float32 accumulation.

    Why the training precision: taken in float32 the product cost an N=3 VGG-16 step on an H200
    as much as its bf16 convolutions (N=3/N=1 1.9× eager), for a weight that the convolution then
    rounds to bf16 anyway. The chain of factors runs every product in bf16 under autocast too, so
    fold and chain differ by bf16 rounding, as two orders of one chain do.
    """
    if not exact:
        return _chain_product(mats)
    with _no_autocast(mats[0].device):
        return _chain_product(mats)


def _chain_product(mats: list[torch.Tensor]) -> torch.Tensor:
    # multi_dot picks the cheapest parenthesization: for a wide k×k conv or a narrow
    # Linear it multiplies the square factors together first, otherwise it works outwards
    # from the original weight.
    return torch.linalg.multi_dot(mats) if len(mats) > 1 else mats[0]


def _fold_is_cheaper(*, rows: int, square: int, other: int, extra: int) -> bool:
    """Whether folding ``extra`` square factors (square×square) into a square×other weight beats chaining them.

    Chaining costs ``rows·square²`` multiply-adds per extra factor (and as much again twice
    in the backward pass, and one stored activation each); folding costs the weight product,
    ``square²·other`` plus ``square²·min(square, other)`` per further factor, independent of
    the rows (backward again twice that). Ties fold, since folding also stores no activations.
    """
    return (extra - 1) * min(square, other) + other <= rows * extra


def _output_rows(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Output positions of ``conv`` on ``x`` summed over the batch (``x`` is (N, C, H, W) or (C, H, W))."""
    h, w = x.shape[-2:]
    if h * w == 0:
        return 0
    batch = x.numel() // (conv.in_channels * h * w)
    if conv.padding == "same":
        return batch * h * w
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
           for size, p, d, k, s in zip((h, w), padding, conv.dilation, conv.kernel_size, conv.stride, strict=True)]
    return batch * max(out[0], 0) * max(out[1], 0)


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # For merging (float64): an exact product whatever context the caller runs in.
    # A plain check on the device type, not torch.amp.is_autocast_available: torch.compile
    # cannot trace that call, and a graph break in every layer's forward made it recompile
    # each layer until its limit (N=3 ran 3.3× slower than N=1 under compile on an H200).
    if device.type not in _AUTOCAST_DEVICES:  # e.g. meta tensors
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _orthogonal_(weight: torch.Tensor) -> None:
    # Why orthogonal and not PyTorch's default: the product of N default-initialized
    # factors shrinks the signal geometrically with N (each square factor has spectral
    # norm well below 1), so deep compositions start near a constant map and, with
    # decoupled weight decay, can collapse to chance accuracy. Orthogonal extra factors
    # leave the product with exactly the singular values of a default-initialized
    # layer, so every N starts from the same function class and scale as N=1.
    with torch.no_grad():
        flat = torch.empty(weight.shape[0], weight[0].numel(), dtype=torch.float64)
        nn.init.orthogonal_(flat)
        weight.copy_(flat.view_as(weight))


def is_eligible(module: nn.Module) -> bool:
    """True for the layers LoRITa compresses: every ``nn.Linear`` and every ``nn.Conv2d`` with groups=1."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1


def walk(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` that treats each compressible layer as a leaf."""
    # Like named_modules(), but does not descend into compositions: their factors are
    # internal to one compressible layer.
    yield prefix, model
    if isinstance(model, _LEAVES):
        return
    for child_name, child in model.named_children():
        yield from walk(child, f"{prefix}.{child_name}" if prefix else child_name)


class LowRankLinear(nn.Sequential):
    """A rank-r ``Linear(in, out)`` deployed as ``Linear(in, r, bias=False)`` → ``Linear(r, out)``."""

    def __init__(self, first: nn.Linear, second: nn.Linear) -> None:
        super().__init__(first, second)
        self.in_features = first.in_features
        self.out_features = second.out_features
        self.rank = first.out_features

    def dense_weight(self) -> torch.Tensor:
        """The out×in product of the two factors (float64)."""
        return self[1].weight.detach().double() @ self[0].weight.detach().double()


class LowRankConv2d(nn.Sequential):
    """A rank-r ``Conv2d(k×k)`` deployed as a k×k conv with r outputs → a 1×1 conv r→out.

    Stride, padding, dilation and padding mode stay on the first conv; the bias on the second.
    """

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d) -> None:
        super().__init__(first, second)
        self.in_channels = first.in_channels
        self.out_channels = second.out_channels
        self.rank = first.out_channels

    def dense_weight(self) -> torch.Tensor:
        """The out×in×kh×kw weight of the equivalent single conv (float64)."""
        w = self[0].weight.detach().double()
        prod = self[1].weight.detach().double().flatten(1) @ w.flatten(1)
        return prod.view(self.out_channels, *w.shape[1:])


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer LoRITa acts on, by qualified name: eligible layers, compositions, low-rank pairs."""
    return {name: m for name, m in walk(model) if is_eligible(m) or isinstance(m, _LEAVES)}


_LEAVES = (LinearComposition, ConvComposition, LowRankLinear, LowRankConv2d)


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """The single weight (original shape, float64) that a compressible layer computes with."""
    if isinstance(layer, LinearComposition | ConvComposition):
        return layer.merged().weight.detach().double()
    if isinstance(layer, LowRankLinear | LowRankConv2d):
        return layer.dense_weight()
    return layer.weight.detach().double()
