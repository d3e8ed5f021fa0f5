"""Low-rank adapters (LoRA) on a frozen language model's attention projections.

A small LM frozen as it is (SmolLM2-135M) reads the visual tokens but does not follow
"answer in one word"; a rank-r update of its query/value projections teaches it the answer
format and how to read the visual tokens, for about 1% of the LM's parameters. The base
weights stay frozen and untouched; only `lora_a` / `lora_b` train and are saved.

`peft_adapter` / `from_peft` convert the adapters to and from the layout of the PEFT
library (`adapter_config.json` + `adapter_model.safetensors`: `lora_A` is our `lora_a`,
`lora_B` our `lora_b`, the same alpha / r scale), so PEFT, vLLM and other tools that read
LoRA adapters can put them on the same base LM.
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


PEFT_PREFIX = "base_model.model."  # PEFT's name of the wrapped model in adapter keys
_TO_PEFT = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}


def peft_adapter(lm: nn.Module, rank: int, alpha: float, targets: list[str],
                 base_model: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The LM's adapters as PEFT stores them: (adapter_config.json, the tensors of
    adapter_model.safetensors). `base_model`: where the base LM's weights are."""
    state = {}
    for key, value in lora_state(lm).items():
        module, _, name = key.rpartition(".")
        state[f"{PEFT_PREFIX}{module}.{_TO_PEFT[name]}"] = value.detach().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "target_modules": sorted(targets), "lora_dropout": 0.0, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "modules_to_save": None, "inference_mode": True,
              "base_model_name_or_path": base_model}
    return config, state


def from_peft(config: dict, state: dict[str, torch.Tensor], rank: int,
              alpha: float) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter as our adapter state (for `load_lora_state`); ValueError when it
    is not one this model's adapters can take (another type, rank or scale, biases)."""
    want = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "bias": "none",
            "use_rslora": False, "use_dora": False}
    for key, value in want.items():
        if config.get(key, value) != value:
            raise ValueError(f"adapter_config.json: {key}={config.get(key)!r}, this model's "
                             f"adapters need {value!r}")
    back = {v: k for k, v in _TO_PEFT.items()}
    out = {}
    for key, value in state.items():
        module, _, name = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        name = "lora_" + name
        if not key.startswith(PEFT_PREFIX) or name not in back:
            raise ValueError(f"adapter_model.safetensors: {key!r} is not a LoRA A/B weight")
        out[f"{module}.{back[name]}"] = value
    return out
