"""What produced a number: the versions of the packages that shape it and a digest of the source.

Both go into every record (``versions``) and into the trained-model cache key, so a record says
which code made it and a checkpoint trained by other code is never reused.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

import baselines
import bench.catalog
import lorita
from bench.execution import train

DISTRIBUTIONS = ("lorita-bench", "torch", "torchvision", "torch-pruning", "timm")
# The harness modules whose source shapes a trained model (data, architecture, method preparation,
# budget; the training loop, and the job: its seeding order and calibration batch); every module of
# ``lorita`` and ``baselines`` is hashed as well.
SHAPING = ("budget.py", "data.py", "models.py", "protocol.py", "methods.py")
EXECUTION_SHAPING = ("train.py", "job.py")


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (a fresh dict; looked up once per process)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # Every record and cache key asks; each lookup scans the installed distributions.
    out = []
    for dist in DISTRIBUTIONS:
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            out.append((dist, "not installed"))
    return tuple(out)


def shaping_files() -> list[Path]:
    """The source files ``code_digest`` hashes, sorted."""
    catalog, execution = Path(bench.catalog.__file__).parent, Path(train.__file__).parent
    return sorted([*Path(lorita.__file__).parent.glob("*.py"), *Path(baselines.__file__).parent.glob("*.py"),
                   *(execution / f for f in EXECUTION_SHAPING), *(catalog / f for f in SHAPING)])


@functools.cache
def code_digest() -> str:
    """Digest of the source that shapes a trained model (method, data, models, training loop).

    In the cache key because the package version does not move with every change: a
    checkpoint trained by older code must not be reused (nor fool the regression gate).
    """
    h = hashlib.sha256()
    for f in shaping_files():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
