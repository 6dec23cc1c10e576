"""Structured-pruning baselines: thin adapters over torch-pruning (no criterion re-implemented)."""

from baselines.pruning import prune_to_target

__all__ = ["prune_to_target"]
