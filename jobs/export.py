"""`mqt export`: a model's LoRA adapters in the PEFT layout, for tools that read adapters.

    mqt export --preset mqt-smol output=runs/peft            # the shipped default's adapters
    mqt export --preset mqt-smol checkpoint=runs/train/final output=runs/peft

Writes `adapter_config.json` and `adapter_model.safetensors` (mqt.checkpoint.export_peft):
PEFT's `PeftModel.from_pretrained(base_lm, output)` puts them on the base LM, whose folder
`base_model_name_or_path` names (the bundled SmolLM2 as converted on this machine, or the
model's `lm.path`). Only the language model's adapters travel: the vision encoder and the
query transformer that make the visual tokens are not LoRA weights. `load_peft` reads such
a folder back onto a model of the same config.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqt.checkpoint import PEFT_FILES, export_peft
from mqt.console import log
from mqt.load import ModelArgs, load_model, resolved_config, validate_model


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    output: str = "runs/peft"  # the adapter folder


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if not cfg.output:
        raise ValueError("output: give a folder for the adapter")
    target = resolved_config(cfg)
    if target is not None and not target.lm.lora_rank:
        raise ValueError(f"preset/checkpoint: model {target.name!r} has no LoRA adapters "
                         "(lm.lora_rank=0): nothing to export")


def main(cfg: Config) -> str:
    path = export_peft(load_model(cfg), cfg.output)
    log(f"LoRA adapters in the PEFT layout: {', '.join(str(path / f) for f in PEFT_FILES)}")
    return str(path)
