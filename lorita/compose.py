"""Over-parameterize eligible layers as N-factor compositions, and merge them back.

LoRITa (Zhang, Alkhouri, Wang, TMLR) trains every compressible layer as a product of
N linear maps. Weight decay on the N factors acts as a Schatten-(2/N) quasi-norm
penalty on their product, so the merged weight is driven towards low rank.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

from lorita.layers import ConvComposition, LinearComposition, is_eligible, walk

__all__ = ["merge", "overparameterize"]


def _selected(name: str, include: Iterable[str] | None, exclude: Iterable[str] | None) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if name == "":
        return new
    parent_name, _, child = name.rpartition(".")
    model.get_submodule(parent_name).register_module(child, new)
    return model


def overparameterize(model: nn.Module, n: int, include: Iterable[str] | None = None,
                     exclude: Iterable[str] | None = None) -> nn.Module:
    """Replace every eligible layer of ``model`` by its N-factor composition, in place.

    Eligible: ``nn.Linear`` and ``nn.Conv2d`` with groups=1 (any kernel, stride, padding,
    dilation, with or without bias); grouped and depthwise convs are left alone.
    ``include``/``exclude`` are glob patterns on qualified module names (``"blocks.*.attn.qkv"``).
    The original layer becomes the last (Linear) or first (Conv2d) factor, keeping its
    initialization and bias; the extra factors are orthogonal, so the composed map starts
    with the singular values of the original layer. ``n=1`` returns the model unchanged.
    Returns ``model`` (the root itself is replaced and returned when it is eligible).
    Raises ``ValueError`` for n < 1 or when ``model`` already holds compositions.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if any(isinstance(m, LinearComposition | ConvComposition) for m in model.modules()):
        raise ValueError("model is already over-parameterized; merge() it first")
    if n == 1:
        return model
    targets = [(name, m) for name, m in walk(model)
               if is_eligible(m) and _selected(name, include, exclude)]
    for name, m in targets:
        new = LinearComposition(m, n) if isinstance(m, nn.Linear) else ConvComposition(m, n)
        model = _replace(model, name, new)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Collapse every composition in ``model`` to one layer of the original type and shape, in place.

    Function-preserving: the product is formed in float64 and cast to the layer's dtype.
    Returns ``model`` (or the merged root when the root itself is a composition).
    """
    comps = [(name, m) for name, m in walk(model)
             if isinstance(m, LinearComposition | ConvComposition)]
    for name, m in comps:
        model = _replace(model, name, m.merged())
    return model
