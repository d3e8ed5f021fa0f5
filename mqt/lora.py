"""Low-rank adapters (LoRA) on a frozen language model's attention projections.

A small LM frozen as it is (SmolLM2-135M) reads the visual tokens but does not follow
"answer in one word"; a rank-r update of its query/value projections teaches it the answer
format and how to read the visual tokens, for about 1% of the LM's parameters. The base
weights stay frozen and untouched; only `lora_a` / `lora_b` train and are saved.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + scale * x A^T B^T, with B = 0 at init so the model starts unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def add_lora(lm: nn.Module, targets: list[str], rank: int, alpha: float) -> int:
    """Wrap every Linear whose name ends in one of `targets`; returns how many were wrapped."""
    found = [(name, mod) for name, mod in lm.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"lm.lora_targets={targets} match no Linear layer of the LM")
    for name, mod in found:
        parent_name, _, attr = name.rpartition(".")
        setattr(lm.get_submodule(parent_name), attr, LoRALinear(mod, rank, alpha))
    return len(found)


def lora_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in lm.state_dict().items() if ".lora_" in k}


def load_lora_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict on the adapter keys: every adapter present, nothing else."""
    expected = set(lora_state(lm))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise RuntimeError(f"LoRA weights do not match the model: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(extra)[:3]}")
    lm.load_state_dict(state, strict=False)
