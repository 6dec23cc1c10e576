"""Pure functions from result records (plain dicts, as stored in JSONL) to report artefacts.

Reports never train or measure, and import nothing from torch: ``tables`` (Markdown, LaTeX,
CSV, iso-accuracy), ``plots`` (matplotlib/seaborn PNG + SVG), ``render`` (a report folder),
``history`` (trends across commits and the changes in them, from ``bench.records.history``).
They sit above ``bench.records`` (torch-free), whose ``sources.load`` reads run folders, results
JSONL and pytest-benchmark JSON; it is re-exported here as ``reports.load``.
"""

from bench.records.sources import load
from reports.render import render
from reports.tables import comparison_table, latest

__all__ = ["comparison_table", "latest", "load", "render"]
