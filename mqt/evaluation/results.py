"""The per-question rows `mqt eval` writes (results.parquet), read back per question and m."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow.parquet as pq


def rows_by_question(paths: str | Path | Sequence[str | Path],
                     ms: Iterable[int] | None = None) -> dict[str, dict[int, dict]]:
    """Per question id (sorted), per m: its `mqt eval` row, from the first of `paths` that
    answers it at every m of `ms` (none given: at every m that file has)."""
    per: dict[str, dict[int, dict]] = {}
    for path in [paths] if isinstance(paths, str | Path) else paths:
        seen: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in pq.read_table(path).to_pylist():
            seen[r["id"]][r["m"]] = r
        want = set(ms) if ms is not None else {m for by_m in seen.values() for m in by_m}
        for i, by_m in seen.items():
            if i not in per and set(by_m) >= want:
                per[i] = by_m
    return dict(sorted(per.items()))
