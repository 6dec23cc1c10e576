"""The modules LoRITa trains with (N-factor compositions) and deploys (two thin factors)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ConvComposition", "LinearComposition", "LowRankConv2d", "LowRankLinear",
           "compressible_layers", "is_eligible", "layer_weight", "walk"]


class LinearComposition(nn.Sequential):
    """``Linear(in, out)`` trained as N-1 bias-free ``Linear(in, in)`` then ``Linear(in, out)``.

    Children are named ``0 … N-1`` in the order they are applied, so parameter names
    stay readable (``blocks.0.mlp.fc1.2.weight`` is the last factor of ``fc1``).
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

    def merged(self) -> nn.Linear:
        """One ``nn.Linear`` computing the same map (product taken in float64)."""
        last: nn.Linear = self[-1]
        w = last.weight.detach().double()
        for square in reversed(list(self)[:-1]):
            w = w @ square.weight.detach().double()
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
    1×1 maps into its output channels (and into its bias).
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

    def merged(self) -> nn.Conv2d:
        """One ``nn.Conv2d`` of the original shape computing the same map."""
        first: nn.Conv2d = self[0]
        mix = torch.eye(self.out_channels, dtype=torch.float64, device=first.weight.device)
        for pointwise in list(self)[1:]:
            mix = pointwise.weight.detach().double().flatten(1) @ mix
        w = first.weight.detach().double()
        merged_w = (mix @ w.flatten(1)).view_as(w)
        out = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size,
                        stride=first.stride, padding=first.padding, dilation=first.dilation,
                        groups=1, bias=first.bias is not None, padding_mode=first.padding_mode,
                        device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(merged_w)
            if first.bias is not None:
                out.bias.copy_(mix @ first.bias.detach().double())
        return out


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
