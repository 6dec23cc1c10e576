"""MACs and parameter counts with torch-pruning's counter, made honest for factorized attention
and for un-merged LoRITa compositions.

torch-pruning counts a timm ``Attention`` block in one analytic hook that assumes dense
``qkv`` and a square dense ``proj``; it would count a factorized (or head-pruned)
projection as if it were still dense. Here timm's attention is counted with the same
formula, but with the projections' real cost taken from the ``nn.Linear`` modules they
are made of. Every other module is counted by torch-pruning unchanged, and for a dense
timm model both give the same total.

A LoRITa composition (``lorita.layers``) may run its factors folded into one weight, and
then the counter's hooks on the factors never fire. Counting runs every composition as
the chain of its factors, so an un-merged model counts what its N factors cost whichever
order its forward would pick for this input.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lorita.layers import ConvComposition, LinearComposition

__all__ = ["TIMM_FLOOR", "count_macs_params", "timm_attention"]

# The first timm whose ViTs use timm.layers.Attention (1.0.16) *and* whose Attention reads
# attn_dim in forward (1.0.23); pyproject.toml's floor says the same.
TIMM_FLOOR = "1.0.23"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def timm_attention(model: nn.Module) -> type[nn.Module] | None:
    """timm's ``Attention`` class if ``model`` is built from timm modules, else ``None``.

    Raises ``ImportError`` naming the installed and the needed timm when timm is older than
    ``TIMM_FLOOR``: there, ViTs use a private attention class that torch-pruning counts as
    dense and prunes without regard to heads, or an ``Attention`` that reshapes its output to
    the input width, so a factorized or head-pruned ViT would be counted wrong or break far
    from the cause. Models without timm modules never look at timm.
    """
    if not any(type(m).__module__.startswith("timm.") for m in model.modules()):
        return None
    import timm.layers

    attention = getattr(timm.layers, "Attention", None)
    if attention is None or _release(timm.__version__) < _release(TIMM_FLOOR):
        raise ImportError(f"timm {timm.__version__} is installed, but counting or pruning a timm model needs "
                          f"timm>={TIMM_FLOOR} (timm.layers.Attention with attn_dim): "
                          f"pip install 'timm>={TIMM_FLOOR}'")
    return attention


def _linear_macs(module: nn.Module | None, tokens: int) -> int:
    if module is None:
        return 0
    return tokens * sum(l.in_features * l.out_features + (l.out_features if l.bias is not None else 0)
                        for l in module.modules() if isinstance(l, nn.Linear))


def _timm_attention_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    x = inputs[0]
    batch, tokens = x.shape[0], x.shape[1]
    attn_dim = module.num_heads * module.head_dim
    macs = tokens * attn_dim  # q scaling, as torch-pruning counts it
    macs += _linear_macs(module.qkv, tokens) + _linear_macs(module.proj, tokens)
    macs += _linear_macs(getattr(module, "gate", None), tokens)
    # QKᵀ, softmax and AV per head.
    macs += module.num_heads * (2 * tokens * tokens * module.head_dim + tokens * tokens)
    module.__flops__ += int(macs * batch)


def count_macs_params(model: nn.Module, example_inputs) -> tuple[float, int]:
    """(MACs per sample, parameters) of ``model`` on ``example_inputs``; FLOPs = 2·MACs.

    Uses ``torch_pruning.utils.count_ops_and_params`` (the model is deep-copied there and
    run once in eval mode), with timm attention blocks counted from their actual projections
    and every un-merged composition counted as the chain of its N factors (what training it
    costs per sample), never as the folded single layer its forward may choose.
    """
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    TimmAttention = timm_attention(model)  # timm is optional for the lorita library itself
    if TimmAttention is not None:
        # count_ops_and_params clears this mapping when it returns.
        op_counter.CUSTOM_MODULES_MAPPING[TimmAttention] = _timm_attention_hook
    compositions = [m for m in model.modules() if isinstance(m, LinearComposition | ConvComposition)]
    try:
        # An instance attribute shadows the class's forward; the counter's deep copy keeps it
        # (a bound method is copied bound to the copied module).
        for m in compositions:
            m.forward = m._chain
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        op_counter.CUSTOM_MODULES_MAPPING = {}
        for m in compositions:
            del m.forward
    return float(macs), int(params)
