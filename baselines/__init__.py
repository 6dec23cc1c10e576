"""Structured-pruning baselines: thin adapters over torch-pruning (no criterion re-implemented)."""

from baselines.pruning import BASELINES, prune_to_target

__all__ = ["BASELINES", "prune_to_target"]
