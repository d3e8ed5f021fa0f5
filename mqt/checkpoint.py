"""Checkpoints: a folder with `config.yaml`, one safetensors file per saved part, tokenizer.

Parts are `vision`, `query` and `lm`. A model whose backbones are frozen and come from
elsewhere (a package, a local folder) saves only `query`; loading builds the model from
the config and loads each saved part strictly: every key present, no key left over.
`export_peft` / `load_peft` write and read the LM's LoRA adapters in the PEFT layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, load_model, save_file, save_model

from mqt.config import VLMConfig
from mqt.configtree import from_dict, load_yaml, save_yaml
from mqt.lora import from_peft, load_lora_state, lora_state, peft_adapter
from mqt.model import VisionLanguageModel, build_model, lm_folder
from mqt.text import load_tokenizer

PARTS = ("vision", "query", "lm", "lm_lora")  # lm_lora: only the LM's low-rank adapters
SHIPPED = Path(__file__).parent / "weights"  # trained weights that ship with the package


def shipped_checkpoint(preset_name: str) -> Path | None:
    """The folder of a preset's shipped weights, if the package has them."""
    path = SHIPPED / preset_name
    return path if (path / "config.yaml").exists() else None


def save_checkpoint(model: VisionLanguageModel, path: str | Path,
                    parts: tuple[str, ...] = PARTS) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; parts are {PARTS}")
        if part == "lm_lora":
            save_file(lora_state(model.lm), str(path / "lm_lora.safetensors"))
        else:
            save_model(getattr(model, part), str(path / f"{part}.safetensors"))
    save_yaml(model.cfg, path / "config.yaml")
    if model.cfg.tokenizer != "lm":  # "lm": the LM's own tokenizer, rebuilt from the LM
        model.tokenizer.save_pretrained(str(path / "tokenizer"))
    return path


def load_config(path: str | Path) -> VLMConfig:
    return from_dict(VLMConfig, load_yaml(Path(path) / "config.yaml")).validate()


def load_checkpoint(path: str | Path, cfg: VLMConfig | None = None) -> VisionLanguageModel:
    """Build from the saved (or given) config, then load every saved part strictly."""
    path = Path(path)
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"{path} is not a checkpoint: no config.yaml")
    cfg = cfg or load_config(path)
    tokenizer = load_tokenizer(path / "tokenizer") if (path / "tokenizer").exists() else None
    model = build_model(cfg, tokenizer=tokenizer)
    found = [p for p in PARTS if (path / f"{p}.safetensors").exists()]
    if not found:
        raise FileNotFoundError(f"{path} holds no weights ({', '.join(PARTS)}.safetensors)")
    for part in found:
        load_part(model, part, path / f"{part}.safetensors")
    return model.eval()


def load_part(model: VisionLanguageModel, part: str, file: Path) -> None:
    """One saved part, strictly: every key of the part present, none left over."""
    if part == "lm_lora":
        load_lora_state(model.lm, load_file(str(file)))
    else:
        load_model(getattr(model, part), str(file), strict=True)


PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_peft(model: VisionLanguageModel, path: str | Path) -> Path:
    """The LM's LoRA adapters as a PEFT adapter folder; its base model is the LM's folder
    (the bundled SmolLM2 as converted here, or lm.path), "" for an LM built from numbers."""
    lm = model.cfg.lm
    if not lm.lora_rank:
        raise ValueError(f"model {model.cfg.name!r} has no LoRA adapters (lm.lora_rank=0)")
    base = lm_folder(lm) if lm.kind in ("pretrained", "bundled") else ""
    config, state = peft_adapter(model.lm, lm.lora_rank, lm.lora_alpha, lm.lora_targets, base)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / PEFT_FILES[1]), metadata={"format": "pt"})
    (path / PEFT_FILES[0]).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_peft(model: VisionLanguageModel, path: str | Path) -> None:
    """A PEFT adapter folder onto the model's LoRA adapters (strict: every adapter)."""
    path, lm = Path(path), model.cfg.lm
    config = json.loads((path / PEFT_FILES[0]).read_text())
    state = from_peft(config, load_file(str(path / PEFT_FILES[1])), lm.lora_rank, lm.lora_alpha)
    load_lora_state(model.lm, state)
