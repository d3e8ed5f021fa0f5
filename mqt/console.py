"""What a job says to the person running it: one line on stderr, summaries as strict JSON."""

from __future__ import annotations

import math
import sys


def log(msg: str) -> None:
    """One line on stderr (stdout is kept for results: tables, summaries)."""
    print(msg, file=sys.stderr, flush=True)


def strict_json(x):
    """`x` with every infinite float (a shrinkage alpha) as the string "inf": strict JSON."""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [strict_json(v) for v in x]
    return x
