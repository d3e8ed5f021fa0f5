"""Position-aware alignment: each mosaic cell's words, read from the visual tokens.

The alignment stage (`jobs.trainloop.align_loss`) trains the *mean* visual token to name
what an image shows. On a mosaic that is the set of its colours, shapes and digits, with
nothing about where they are, and the LM later cannot answer "what colour is the shape in
row 2, column 3?" better than guessing among the colours present, at any m.

This loss adds, per mosaic cell, an attention readout over the m visual tokens: a learned
query per cell position (grid size, row, column) scores the tokens through a learned key
map, and the attention-weighted mean of the tokens themselves, read through the LM's
output embeddings restricted to the answer words, must name that cell's words (its colour
and shape, or its digit). So the tokens must keep each cell apart, and where it is, in
the LM's own word space. The readout is an auxiliary head: it is trained with the query
transformer and thrown away. With few tokens the cells cannot all be kept apart, so the
loss falls with m: what makes more tokens worth their cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cell_slot(grid: int, row: int, col: int) -> int:
    """Index of a cell position among all grids 2x2, 3x3, ... (2x2 cells first)."""
    return sum(g * g for g in range(2, grid)) + (row - 1) * grid + (col - 1)


class CellReadout(nn.Module):
    """Per cell position, an attention readout over visual tokens (B, m, H) -> (P, H)."""

    def __init__(self, hidden: int, dim: int = 64, max_grid: int = 3):
        super().__init__()
        self.dim = dim
        self.pos = nn.Embedding(cell_slot(max_grid + 1, 1, 1), dim)
        self.key = nn.Linear(hidden, dim, bias=False)
        nn.init.normal_(self.pos.weight, std=1.0)
        nn.init.normal_(self.key.weight, std=hidden ** -0.5)

    def forward(self, tokens: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor):
        keys = self.key(tokens)[rows]  # (P, m, dim)
        scores = (keys * self.pos(slots)[:, None]).sum(-1) / math.sqrt(self.dim)  # (P, m)
        return (scores.softmax(dim=-1)[..., None] * tokens[rows]).sum(dim=1)  # (P, H)


def cell_targets(examples: Sequence, words) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, slots, targets (P, C)): one entry per cell of every mosaic among `examples`;
    targets uniform over the cell's words (colour and shape, or digit)."""
    rows, slots, targets = [], [], []
    for b, ex in enumerate(examples):
        if ex.meta.get("source") != "mosaic":
            continue
        for c in ex.meta["cells"]:
            names = [str(w) for w in (c.color, c.shape, c.digit) if w is not None]
            q = torch.zeros(len(words.words))
            for w in names:
                q[words.words.index(w)] = 1.0 / len(names)
            rows.append(b)
            slots.append(cell_slot(ex.meta["grid"], c.row, c.col))
            targets.append(q)
    if not rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), \
            torch.zeros(0, len(words.words))
    return torch.tensor(rows), torch.tensor(slots), torch.stack(targets)


def cell_align_loss(model, readout: CellReadout, feats: torch.Tensor, examples: Sequence,
                    words, m: int, weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The mean-token alignment loss on every image plus `weight` x the per-cell loss on the
    mosaics among them; also the two parts as floats."""
    dev = feats.device
    tokens = model.encode_features(feats, m)  # (B, m, H)
    head = model.lm.get_output_embeddings().weight[words.token_ids.to(dev)]  # (C, H)
    whole = words.distribution(examples).to(dev)
    keep = whole.sum(dim=1) > 0
    logp = F.log_softmax(tokens.mean(dim=1) @ head.T, dim=-1)
    mean_loss = -(whole[keep] * logp[keep]).sum(dim=1).mean()
    rows, slots, targets = cell_targets(examples, words)
    if not len(rows):
        return mean_loss, {"mean": round(mean_loss.item(), 4), "cell": None}
    read = readout(tokens, rows.to(dev), slots.to(dev))  # (P, H)
    cell_loss = -(targets.to(dev) * F.log_softmax(read @ head.T, dim=-1)).sum(dim=1).mean()
    return mean_loss + weight * cell_loss, {"mean": round(mean_loss.item(), 4),
                                            "cell": round(cell_loss.item(), 4)}


class CellAlign(nn.Module):
    """What `mqt train` runs in its alignment stage when `align.cell_weight` > 0: the
    readout (initialised from `seed`, so every rank starts the same) and the combined loss."""

    def __init__(self, hidden: int, weight: float, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.readout = CellReadout(hidden)
        self.weight = weight

    def forward(self, model, feats: torch.Tensor, examples: Sequence, words, m: int):
        return cell_align_loss(model, self.readout, feats, examples, words, m, self.weight)[0]
