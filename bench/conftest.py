"""Registers the benchmark suite's pytest plugin when pytest is pointed at ``bench`` (``pytest bench``).

Options such as ``--preset`` and the pytest-benchmark hooks must be known before pytest parses
the command line and configures pytest-benchmark; pytest only loads conftest files that early
from the folders it is given (and their ``test*`` subfolders), so ``bench/suite/conftest.py``
alone would be too late for ``pytest bench --preset ci``. Everything else is in ``bench/suite``.
"""

pytest_plugins = ("bench.suite.plugin",)
