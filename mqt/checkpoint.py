"""Checkpoints: a folder with `config.yaml`, one safetensors file per saved part, tokenizer.

Parts are `vision`, `query` and `lm`. A model whose backbones are frozen and come from
elsewhere (a package, a local folder) saves only `query`; loading builds the model from
the config and loads each saved part strictly: every key present, no key left over.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, load_model, save_file, save_model

from mqt.config import VLMConfig
from mqt.configtree import from_dict, load_yaml, save_yaml
from mqt.lora import load_lora_state, lora_state
from mqt.model import VisionLanguageModel, build_model
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
