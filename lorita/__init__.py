"""LoRITa — Low-Rank Induced Training (Zhang, Alkhouri, Wang; TMLR; arXiv 2405.03089).

Train with every compressible layer as an N-factor composition (``overparameterize``),
``merge`` it back after training, then truncate its SVD (``truncate`` + ``factorize``,
or ``compress`` in one call) with a rank policy. Works on any ``torch.nn.Module``.
"""

from lorita.compose import merge, overparameterize
from lorita.compress import LayerPlan, Plan, compress, factorize, spectra, truncate
from lorita.counting import count_macs_params
from lorita.layers import (
    ConvComposition,
    LinearComposition,
    LowRankConv2d,
    LowRankLinear,
    compressible_layers,
    is_eligible,
)
from lorita.policies import (
    ALLOCATIONS,
    Energy,
    GlobalThreshold,
    RankPolicy,
    RankRatio,
    TargetFlopsDrop,
    TargetParamsDrop,
)

__all__ = [
    "ALLOCATIONS", "ConvComposition", "Energy", "GlobalThreshold", "LayerPlan", "LinearComposition",
    "LowRankConv2d", "LowRankLinear", "Plan", "RankPolicy", "RankRatio", "TargetFlopsDrop",
    "TargetParamsDrop", "compress", "compressible_layers", "count_macs_params", "effective_rank", "factorize",
    "is_eligible", "merge", "overparameterize", "spectra", "truncate",
]


def effective_rank(sigma):
    """Entropy effective rank (Roy & Vetterli, 2007): exp(H(p)) with p = σ / Σσ.

    A continuous rank measure in [1, len(σ)]: 1 for a rank-one spectrum, len(σ) for a flat one.
    """
    import torch

    s = sigma.double().clamp_min(0)
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
