"""What every job shares: where its config goes, its log lines, strict JSON.

The model fields every job has (`ModelArgs`) and loading the model are in `mqt.load`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from mqt.configtree import save_yaml


def save_config(cfg, output_dir: str | Path) -> Path:
    """The resolved job config, written next to the job's output."""
    path = Path(output_dir) / "config.yaml"
    save_yaml(cfg, path)
    return path


def log(msg: str) -> None:
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
