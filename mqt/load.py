"""Which model a job uses, and loading it: a preset, a checkpoint folder or MQT-LLaVA weights.

`ModelArgs` is the part of every job's config that names the model; `load_model` builds it
(random weights, the preset's shipped weights, a checkpoint or the published MQT-LLaVA
layout) and `resolved_config` reads the config it would build without building it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mqt.checkpoint import load_checkpoint, load_config, shipped_checkpoint
from mqt.config import VLMConfig, preset
from mqt.configtree import merge
from mqt.llava import load_mqt_llava
from mqt.model import VisionLanguageModel, build_model


@dataclass
class ModelArgs:
    """Which model: a preset (with field overrides), a checkpoint folder, or a published
    MQT-LLaVA folder. The first of llava, checkpoint, preset that is set wins. A preset
    with shipped weights (mqt-smol) loads them unless checkpoint=none."""

    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # overrides of the preset, e.g. {query: {depth: 2}}
    checkpoint: str = ""  # a folder; "" = the preset's shipped weights if any; "none" = random
    llava: str = ""
    seed: int = 0  # initialises whatever the weights do not cover


def model_args(args: ModelArgs) -> dict:
    """The model fields of a job's config, as a plain dict (what the engine takes and
    `ModelArgs` is rebuilt from)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelArgs)}


def model_config(args: ModelArgs) -> VLMConfig:
    """The preset with the `model` overrides applied, validated (field names in errors)."""
    return merge(preset(args.preset), args.model, "model").validate()


def validate_model(args: ModelArgs) -> None:
    if args.llava and not Path(args.llava).is_dir():
        raise ValueError(f"llava={args.llava!r} is not a folder")
    if args.checkpoint not in ("", "none") and not (Path(args.checkpoint) / "config.yaml").exists():
        raise ValueError(f"checkpoint={args.checkpoint!r} is not a checkpoint folder")
    model_config(args)


def weights_folder(args: ModelArgs) -> Path | None:
    """The checkpoint folder the model loads from: given, shipped with the preset, or none."""
    if args.checkpoint not in ("", "none"):
        return Path(args.checkpoint)
    return shipped_checkpoint(args.preset) if args.checkpoint == "" else None


def resolved_config(args: ModelArgs) -> VLMConfig | None:
    """The config of the model `load_model` builds, read without building it; None for a
    published MQT-LLaVA folder (its config needs its weights). A shipped checkpoint keeps
    its own config with the user's `model` overrides on top."""
    if args.llava:
        return None
    folder = weights_folder(args)
    if folder is None:
        return model_config(args)
    if args.checkpoint:
        return load_config(folder)
    return merge(load_config(folder), args.model).validate()


def load_model(args: ModelArgs) -> VisionLanguageModel:
    if args.llava:
        return load_mqt_llava(args.llava)
    folder = weights_folder(args)
    if folder is None:
        return build_model(model_config(args), seed=args.seed)
    return load_checkpoint(folder, cfg=resolved_config(args))
