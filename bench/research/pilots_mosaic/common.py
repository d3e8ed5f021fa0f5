"""Shared helpers of the mosaic pilots: cached features, per-cell labels, MQT outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from mqt.data import mosaic_examples
from mqt.data.easyvqa import COLORS, SHAPES
from mqt.train.steps import FeatureCache, image_key

HERE = Path("runs/pilots-mosaic")  # outputs; run from the repo root
TRAIN_CACHE = Path("runs/train-mqt-smol/features.pt")


def mosaics(split: str, n: int) -> list:
    """One example per mosaic (the cell_color question; meta holds the cells)."""
    return [ex for ex in mosaic_examples(split, n, seed=0) if ex.meta["kind"] == "cell_color"]


def test_cache(model, n: int) -> FeatureCache:
    cache = FeatureCache(model, HERE / "test-features.pt")
    cache.add(mosaic_examples("test", n, seed=0))
    return cache


def train_feats(exs) -> torch.Tensor:
    d = torch.load(TRAIN_CACHE, weights_only=True)
    return torch.stack([d["features"][d["index"][image_key(ex)]] for ex in exs]).float()


def cell_labels(exs, grid: int) -> dict[str, torch.Tensor]:
    """(B, grid*grid) class per cell: colour (8 = digit cell), shape (3 = digit), digit (10 =
    shape cell)."""
    out = {k: torch.zeros(len(exs), grid * grid, dtype=torch.long)
           for k in ("color", "shape", "digit")}
    for b, ex in enumerate(exs):
        for c in ex.meta["cells"]:
            k = (c.row - 1) * grid + c.col - 1
            out["color"][b, k] = COLORS.index(c.color) if c.kind == "shape" else len(COLORS)
            out["shape"][b, k] = SHAPES.index(c.shape) if c.kind == "shape" else len(SHAPES)
            out["digit"][b, k] = c.digit if c.kind == "digit" else 10
    return out


@torch.no_grad()
def query_outputs(query, feats: torch.Tensor, m: int, grid_hw=(14, 14), pre_proj=True):
    """(B, m, D) MQT outputs before the projection to the LM (or after it)."""
    out = []
    for i in range(0, len(feats), 128):
        f = feats[i: i + 128]
        if pre_proj:
            proj = query.proj
            x = query(f, m, grid_hw) @ torch.linalg.pinv(proj)
            del proj
        else:
            x = query(f, m, grid_hw)
        out.append(x)
    return torch.cat(out)


def multi(ex) -> bool:
    """A mosaic with shapes of more than one colour (a cell colour question is no guess)."""
    return len({c.color for c in ex.meta["cells"] if c.kind == "shape"}) > 1
