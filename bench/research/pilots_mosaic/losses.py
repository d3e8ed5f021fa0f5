"""The research-only alignment losses of the mosaic pilots (docs/pilots-mosaic.md).

`mqt train` dropped them: the shipped recipe trains the description target alone
(mqt/train/describe.py), and docs/training.md says what these showed. `WordTargets` and
`align_loss`: the mean visual token, read through the LM's output embeddings, must name the
image's colours, shapes and digits. `CellAlign` and its parts: per mosaic cell, an attention
readout over the m visual tokens must name that cell's words, so the tokens keep where
things are (`align.cell_weight` of the pilots' runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mqt.data import Example, caption_facts
from mqt.model import VisionLanguageModel


class WordTargets:
    """What an image shows, as answer words: the targets of the alignment stage."""

    def __init__(self, tokenizer, words: Sequence[str]):
        self.words = sorted(set(words))
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in self.words]
        self.token_ids = torch.tensor(ids)  # first token of each word as the LM writes it
        self._facts: dict[str, dict] = {}

    def of(self, ex: Example) -> list[str]:
        if ex.meta.get("source") == "manifest":
            return []  # rows of a user's manifest: no known words, no alignment target
        if ex.meta.get("source") == "mosaic":
            return sorted({str(w) for c in ex.meta["cells"]
                           for w in (c.color, c.shape, c.digit) if w is not None})
        split, num = ex.meta["image_id"].split("/")
        if split not in self._facts:
            self._facts[split] = caption_facts(split)
        return [w for w in self._facts[split].get(int(num), ()) if w]

    def distribution(self, examples: Sequence[Example]) -> torch.Tensor:
        """(B, C): uniform over each image's words (rows without words stay zero)."""
        q = torch.zeros(len(examples), len(self.words))
        for b, ex in enumerate(examples):
            for w in self.of(ex):
                q[b, self.words.index(w)] = 1.0
        return q / q.sum(dim=1, keepdim=True).clamp(min=1.0)


def align_loss(model: VisionLanguageModel, feats: torch.Tensor, targets: torch.Tensor,
               token_ids: torch.Tensor, m: int) -> torch.Tensor:
    """Cross-entropy of the mean visual token read through the LM's output embeddings
    against the words that describe the image: grounds the visual tokens in the LM's
    vocabulary without running the LM (LLaVA's caption pre-alignment, at 1% of its cost)."""
    tokens = model.encode_features(feats, m).mean(dim=1)  # (B, H)
    head = model.lm.get_output_embeddings().weight[token_ids]  # (C, H)
    logp = torch.log_softmax(tokens @ head.T, dim=-1)  # (B, C)
    keep = targets.sum(dim=1) > 0
    return -(targets[keep] * logp[keep]).sum(dim=1).mean()


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
