"""Pure functions from result records (plain dicts, as stored in JSONL) to report artefacts.

Reports never train or measure, and import nothing from torch.
"""

from reports.render import render
from reports.tables import comparison_table, latest

__all__ = ["comparison_table", "latest", "render"]
