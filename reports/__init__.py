"""Pure functions from result records (plain dicts, as stored in JSONL) to report artefacts.

Reports never train or measure, and import nothing from torch: ``tables`` (Markdown, LaTeX,
CSV, iso-accuracy), ``plots`` (matplotlib/seaborn PNG + SVG), ``render`` (a report folder),
``sources`` (reading run folders, results JSONL and pytest-benchmark JSON).
"""

from reports.render import render
from reports.sources import load
from reports.tables import comparison_table, latest

__all__ = ["comparison_table", "latest", "load", "render"]
