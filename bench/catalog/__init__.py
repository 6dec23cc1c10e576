"""The catalog: every name a run can use, registered once (timm-style).

    registry.py  the generic ``Registry`` (duplicates refused, "did you mean") and its four tables
    budget.py    ``Budget`` (the one training budget of a run) and ``Target`` (a params or FLOPs drop)
    data.py      datasets: whole tensors with fixed train/val/test splits
    models.py    model builders (FCN, VGG-16, CIFAR ResNets, timm ViT, any ``timm:<arch>``)
    protocol.py  the ``Method`` protocol with ``Calib`` and ``Compressed``
    methods.py   LoRITa at N = 1..4, the pruning baselines (from ``baselines.pruning.BASELINES``), lowrank-fixed
    controls.py  controls registered as methods: scratch:<method> (the deployed shape trained from scratch)
    presets.py   ``Preset`` and the named run configurations

As timm's ``models/__init__``, this package imports the modules that register entries, in
order (presets last: they are validated against the other tables), so importing any part of
the catalog fills every table; ``registry`` itself names no plug-in.
"""

# isort: off
from bench.catalog.registry import DATASETS, METHODS, MODELS, PRESETS, Entry, Registry
from bench.catalog import budget, data, models, protocol, methods, controls, presets  # noqa: F401
# isort: on

__all__ = ["DATASETS", "METHODS", "MODELS", "PRESETS", "Entry", "Registry"]
