"""Progress output: tqdm bars in a terminal, a few plain lines anywhere else.

Outside a terminal (tox, CI, ``2> log``) a bar cannot redraw itself: tqdm writes every
refresh as a new line full of carriage returns and cursor-up escapes, and its final state
twice. There the suite prints one plain line per finished training, fine-tuning and job
instead, and never an escape code. The bars and lines go to stderr, so whether stderr is a
terminal decides; stdout (the table, the report's path) is left clean either way.
"""

from __future__ import annotations

import sys
from typing import Any


def interactive() -> bool:
    """Whether stderr is a terminal, where a bar can redraw itself in place."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(total: int, *, desc: str, unit: str, leave: bool = True) -> Any | None:
    """A tqdm bar on stderr when it is a terminal, else ``None`` (report with ``line`` instead)."""
    if not interactive():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr)


def line(text: str) -> None:
    """One plain progress line on stderr (flushed, so a log shows it as it happens)."""
    print(text, file=sys.stderr, flush=True)
