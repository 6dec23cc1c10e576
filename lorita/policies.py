"""Rank policies: *what* rank each layer keeps. ``lorita.compress`` decides *how* to deploy it.

Each policy is a small frozen dataclass with one method, ``ranks(layers, totals)``, that
maps every layer's name to the number of singular values it keeps (at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["ALLOCATIONS", "Energy", "GlobalThreshold", "LayerInfo", "RankPolicy", "RankRatio",
           "TargetFlopsDrop", "TargetParamsDrop", "Totals"]

# How a target policy spends its budget across layers:
# - "global": one threshold on σ/σ_max for every layer (the paper's global truncation);
# - "min-share": the same threshold, but only over the layers whose truncation to rank 1 would
#   save at least ``min_share`` of the model's total (params or MACs, as the target): a 10-class
#   head or a 9-input first conv is cut to rank 1-3 by the global rule for savings below 0.1 %,
#   and loses far more accuracy than it saves (the verdicts issue, 18).
ALLOCATIONS = ("global", "min-share")
DEFAULT_MIN_SHARE = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerInfo:
    """What a policy may know of one compressible layer.

    ``sigma``: singular values, descending. ``fan_in``: in_features, or in_channels·kh·kw.
    ``positions``: output positions per sample (tokens, or H·W of the output map) measured on
    example inputs; ``None`` when no inputs were given (then FLOPs cannot be predicted).
    """

    name: str
    sigma: torch.Tensor
    fan_in: int
    fan_out: int
    positions: int | None = None

    @property
    def full_rank(self) -> int:
        return int(self.sigma.numel())

    def factored(self, rank: int) -> bool:
        """Deploy as two thin factors only where that saves parameters."""
        return rank * (self.fan_in + self.fan_out) < self.fan_in * self.fan_out

    def deployed_rank(self, rank: int) -> int:
        """The rank the layer is deployed at when a policy picks ``rank``: ``rank`` if factored, else full.

        A layer kept dense costs the same at every rank, so truncating it would lose
        accuracy and save nothing.
        """
        return rank if self.factored(rank) else self.full_rank

    def weight_params(self, rank: int) -> int:
        """Weight parameters of the deployed layer at ``rank`` (bias excluded: it never changes).

        Non-decreasing in ``rank``: ``rank·(fan_in + fan_out)`` below the break-even, then the
        dense layer's ``fan_in·fan_out`` (it is deployed at full rank there).
        """
        if self.factored(rank):
            return rank * (self.fan_in + self.fan_out)
        return self.fan_in * self.fan_out

    def weight_macs(self, rank: int) -> int:
        """Weight multiply-accumulates per sample of the deployed layer at ``rank``."""
        if self.positions is None:
            raise ValueError("FLOPs need example inputs: pass example_inputs to truncate/compress")
        return self.positions * self.weight_params(rank)


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """Whole-model counts of the dense (merged) model, for target policies."""

    params: int
    macs: float | None = None


class RankPolicy:
    """Base of every rank policy: ``ranks(layers, totals) -> {name: rank}``."""

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        raise NotImplementedError


def _check_fraction(name: str, value: float, *, low_open: bool = True, high_open: bool = False) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo, hi = "(0" if low_open else "[0", "1)" if high_open else "1]"
        raise ValueError(f"{name} must be a number in {lo}, {hi}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RankRatio(RankPolicy):
    """Keep ``ceil(ratio · full_rank)`` singular values in every layer (ratio in (0, 1])."""

    ratio: float

    def __post_init__(self) -> None:
        _check_fraction("ratio", self.ratio)

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        return {li.name: max(1, math.ceil(self.ratio * li.full_rank - 1e-9)) for li in layers}


@dataclass(frozen=True, slots=True, kw_only=True)
class Energy(RankPolicy):
    """Keep the fewest singular values whose squared sum is at least ``keep`` of the layer's total."""

    keep: float

    def __post_init__(self) -> None:
        _check_fraction("keep", self.keep)

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        out = {}
        for li in layers:
            energy = li.sigma.double().square().cumsum(0)
            frac = energy / energy[-1].clamp_min(torch.finfo(torch.float64).tiny)
            out[li.name] = min(li.full_rank, int((frac < self.keep - 1e-12).sum()) + 1)
        return out


def round_rank(rank: int, full_rank: int, round_to: int) -> int:
    """``rank`` rounded up to a multiple of ``round_to``, at most ``full_rank`` (a layer at full rank is
    deployed dense, whatever its width). Rounding up keeps every direction the threshold kept."""
    return min(full_rank, -(-rank // round_to) * round_to)


def _check_round_to(round_to: int) -> None:
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")


def _threshold_ranks(layers: Sequence[LayerInfo], tau: float, round_to: int = 1) -> dict[str, int]:
    # σ/σ_max is taken per layer, so every layer keeps at least its leading direction; rounding
    # up keeps every direction the threshold kept.
    out = {}
    for li in layers:
        s = li.sigma.double()
        norm = s / s[0] if s[0] > 0 else torch.zeros_like(s)
        out[li.name] = round_rank(max(1, int((norm >= tau).sum())), li.full_rank, round_to)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalThreshold(RankPolicy):
    """One threshold ``tau`` on σ/σ_max (per layer) across all layers: the paper's global truncation.

    Each kept count is rounded up to a multiple of ``round_to`` (tensor cores want 8).
    """

    tau: float
    round_to: int = 1

    def __post_init__(self) -> None:
        _check_fraction("tau", self.tau, low_open=False)
        _check_round_to(self.round_to)

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        return _threshold_ranks(layers, self.tau, self.round_to)


EXHAUSTIVE_LAYERS = 12  # up to this many layers, every up/down rounding is tried (2^12 sums)


def _lost_energy(li: LayerInfo, low: int, high: int) -> float:
    """Share of the layer's squared spectrum between ranks ``low`` and ``high``: what rounding down loses."""
    sq = li.sigma.double().square()
    return float(sq[low:high].sum() / sq.sum().clamp_min(torch.finfo(torch.float64).tiny))


def _rounded(layers: Sequence[LayerInfo], raw: Mapping[str, int], target: float,
             drop_of: Callable[[Mapping[str, int]], float], round_to: int) -> dict[str, int]:
    """The threshold's ranks ``raw``, each rounded up or down to a multiple of ``round_to``, landing nearest ``target``.

    One global threshold moves one layer by ``round_to`` ranks at a time, a step of several
    per cent of a small model: rounding each layer up or down independently reaches drops in
    between. Among the roundings nearest the target the one losing the least spectral energy
    wins; up to ``EXHAUSTIVE_LAYERS`` layers with a choice every rounding is tried, beyond that
    layers are rounded down greedily (largest saving first) while that brings the drop nearer.
    """
    up = {li.name: round_rank(raw[li.name], li.full_rank, round_to) for li in layers}
    down = {li.name: max(round_to, raw[li.name] // round_to * round_to) for li in layers}
    free = [li for li in layers if down[li.name] < up[li.name] <= li.full_rank and down[li.name] < li.full_rank]
    loss = {li.name: _lost_energy(li, down[li.name], up[li.name]) for li in free}

    def score(ranks: Mapping[str, int]) -> tuple[float, float]:
        lost = sum(loss[n] for n in loss if ranks[n] == down[n])
        return round(abs(drop_of(ranks) - target), 9), lost

    if len(free) <= EXHAUSTIVE_LAYERS:
        picks = (dict(up, **{li.name: down[li.name] for i, li in enumerate(free) if mask >> i & 1})
                 for mask in range(2 ** len(free)))
        return min(picks, key=score)
    ranks = dict(up)
    for li in sorted(free, key=lambda li: drop_of({**up, li.name: down[li.name]}), reverse=True):
        trial = {**ranks, li.name: down[li.name]}
        if score(trial) < score(ranks):
            ranks = trial
    return ranks


def _search_threshold(layers: Sequence[LayerInfo], target: float,
                      drop_of: Callable[[Mapping[str, int]], float], round_to: int = 1) -> dict[str, int]:
    """Bisection over the global threshold for the ranks whose drop is closest to ``target``.

    The drop is a non-decreasing step function of tau whose steps sit at the layers'
    normalized singular values, so the search runs over those values exactly. ``drop_of``
    counts every layer as ``factorize`` deploys it (``LayerInfo.weight_params``): at or above
    its break-even rank a layer is kept dense at full rank and saves nothing. With ``round_to``
    > 1 the threshold's ranks are then rounded to its multiples (``_rounded``).
    """
    if round_to > 1:
        return _rounded(layers, _search_threshold(layers, target, drop_of), target, drop_of, round_to)
    cands = sorted({float(v) for li in layers
                    for v in (li.sigma.double() / li.sigma.double()[0]).tolist()
                    if li.sigma[0] > 0} | {0.0, 1.0 + 1e-12})
    def at(i: int) -> dict[str, int]:
        return _threshold_ranks(layers, cands[i])

    lo, hi = 0, len(cands) - 1
    if drop_of(at(hi)) < target:
        return at(hi)
    while hi - lo > 1:  # invariant: drop(cands[lo]) < target <= drop(cands[hi]) (or lo == 0)
        mid = (lo + hi) // 2
        if drop_of(at(mid)) >= target:
            hi = mid
        else:
            lo = mid
    above, below = at(hi), at(lo)
    if abs(drop_of(below) - target) < abs(drop_of(above) - target):
        return below
    return above


def _allocated(layers: Sequence[LayerInfo], target: float, total: float, cost: Callable[[LayerInfo, int], float],
               allocation: str, min_share: float, round_to: int = 1) -> dict[str, int]:
    """The global-threshold search for ``target`` over the layers ``allocation`` lets it spend on.

    ``cost(layer, rank)`` is the layer's deployed cost (weight params or MACs) and ``total`` the
    whole dense model's; under "min-share" a layer whose truncation to rank 1 saves less than
    ``min_share · total`` stays at full rank and the search runs over the others.
    """
    if allocation == "min-share":
        spend = [li for li in layers if cost(li, li.full_rank) - cost(li, 1) >= min_share * total]
    else:
        spend = list(layers)
    full = {li.name: li.full_rank for li in layers}
    if not spend:
        return full
    dense = sum(cost(li, li.full_rank) for li in spend)

    def drop_of(ranks: Mapping[str, int]) -> float:
        return (dense - sum(cost(li, ranks[li.name]) for li in spend)) / total

    return {**full, **_search_threshold(spend, target, drop_of, round_to)}


def _check_allocation(allocation: str, min_share: float, round_to: int) -> None:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    _check_fraction("min_share", min_share, low_open=False, high_open=True)
    _check_round_to(round_to)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetParamsDrop(RankPolicy):
    """The global threshold whose deployed model drops ``drop`` of the dense model's parameters.

    ``allocation`` ("global" or "min-share", see ``ALLOCATIONS``) says which layers the threshold
    may cut; ``min_share`` is the least share of the model's parameters a layer must be able to
    save to be cut under "min-share". Every layer's rank is a multiple of ``round_to`` or its full
    rank: the threshold's ranks are rounded up or down, layer by layer, to land nearest the target.
    """

    drop: float
    allocation: str = "global"
    min_share: float = DEFAULT_MIN_SHARE
    round_to: int = 1

    def __post_init__(self) -> None:
        _check_fraction("drop", self.drop, high_open=True)
        _check_allocation(self.allocation, self.min_share, self.round_to)

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        return _allocated(layers, self.drop, totals.params, LayerInfo.weight_params, self.allocation,
                          self.min_share, self.round_to)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetFlopsDrop(RankPolicy):
    """The global threshold whose deployed model drops ``drop`` of the dense model's FLOPs (= 2·MACs).

    ``allocation``, ``min_share`` and ``round_to`` as in ``TargetParamsDrop``, with shares of the
    model's MACs.
    """

    drop: float
    allocation: str = "global"
    min_share: float = DEFAULT_MIN_SHARE
    round_to: int = 1

    def __post_init__(self) -> None:
        _check_fraction("drop", self.drop, high_open=True)
        _check_allocation(self.allocation, self.min_share, self.round_to)

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        if totals.macs is None or any(li.positions is None for li in layers):
            raise ValueError("TargetFlopsDrop needs example_inputs to count MACs")
        return _allocated(layers, self.drop, totals.macs, LayerInfo.weight_macs, self.allocation, self.min_share,
                          self.round_to)
