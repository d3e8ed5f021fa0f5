"""Import of the published MQT-LLaVA checkpoint layout from a local folder.

The layout (a LLaVA-style transformers folder, `model_type: llava_llama`):
- LM weights under `model.*` and `lm_head.weight` (a Llama / Vicuna model);
- the query transformer under `model.query_abstractor.`: `query` (M, D), `pos_embed` (M, D),
  `attn.in_proj_weight`, `attn.in_proj_bias`, `attn.out_proj.weight`, `attn.out_proj.bias`,
  `ln_q`, `ln_k`, `ln_v` (weight, bias) and `proj` (D, H_lm);
- `config.json` with the Llama numbers plus `mm_vision_tower` (a local CLIP folder) and
  `mm_vision_select_layer` (-2);
- a tokenizer; prompts use the Vicuna v1 template with the `<image>` placeholder.

Our parameter names match the published ones, so the query transformer loads strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from mqt.config import LMConfig, QueryConfig, VisionConfig, VLMConfig
from mqt.model import VisionLanguageModel, llama_kwargs
from mqt.query import QueryTransformer
from mqt.text import load_tokenizer
from mqt.vision import CLIPGridEncoder

PREFIX = "model.query_abstractor."
IGNORED_PREFIXES = ("model.vision_tower.",)  # LLaVA may store the tower; we load its folder


def read_llava_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json")
    hf = json.loads(path.read_text())
    if hf.get("model_type") != "llava_llama":
        raise ValueError(f"{path}: model_type is {hf.get('model_type')!r}, not 'llava_llama'")
    return hf


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors or pytorch_model*.bin")
    return files


def read_query_state(folder: Path) -> dict[str, torch.Tensor]:
    """Only the query-transformer tensors, without reading the LM into memory twice."""
    state = {}
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                state.update({k[len(PREFIX):]: sf.get_tensor(k) for k in sf.keys()
                              if k.startswith(PREFIX)})
        else:
            sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            state.update({k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)})
    if not state:
        raise KeyError(f"{folder}: no tensors under {PREFIX!r}; not an MQT-LLaVA checkpoint")
    return {k: v.float() for k, v in state.items()}


def vlm_config(folder: Path, hf: dict, query_state: dict, vision_path: Path) -> VLMConfig:
    """Our config for the checkpoint; the numbers come from config.json and tensor shapes."""
    M, D = query_state["query"].shape
    vision = clip_vision_config(vision_path, hf.get("mm_vision_select_layer", -2))
    if vision.hidden_size != D:
        raise ValueError(f"query width {D} != vision width {vision.hidden_size} ({vision_path})")
    query = QueryConfig(num_queries=M, mode="official", depth=1,
                        num_heads=hf.get("mm_query_num_heads", 16))
    lm = LMConfig(
        kind="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        max_position=hf.get("max_position_embeddings", 4096),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=hf.get("rope_theta", 10000.0),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )
    return VLMConfig(name="mqt-llava", vision=vision, query=query, lm=lm,
                     template="vicuna_v1", tokenizer=str(folder)).validate()


def clip_vision_config(path: Path, select_layer: int) -> VisionConfig:
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"mm_vision_tower {path} is not a local CLIP folder; pass vision_path=...")
    hf = json.loads((path / "config.json").read_text())
    hf = hf.get("vision_config", hf)  # a full CLIPModel folder nests the vision part
    return VisionConfig(
        kind="clip", path=str(path), image_size=hf["image_size"], patch_size=hf["patch_size"],
        hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        select_layer=select_layer,
    )


def load_lm(folder: Path, cfg: LMConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The Llama part through transformers (sharding, meta init), checked strictly."""
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # its report lists the MQT keys as unexpected: checked below
    try:
        lm, info = LlamaForCausalLM.from_pretrained(
            str(folder), config=LlamaConfig(**llama_kwargs(cfg)), dtype=dtype,
            output_loading_info=True,
        )
    finally:
        logging.set_verbosity(level)
    if info["missing_keys"]:
        raise KeyError(f"{folder}: LM weights missing: {sorted(info['missing_keys'])[:5]}")
    extra = [k for k in info["unexpected_keys"]
             if "query_abstractor" not in k and "vision_tower" not in k]
    if extra:
        raise KeyError(f"{folder}: unexpected weights: {sorted(extra)[:5]}")
    return lm


def load_mqt_llava(folder: str | Path, vision_path: str | Path | None = None,
                   dtype: torch.dtype = torch.float32) -> VisionLanguageModel:
    """Our VisionLanguageModel with the published MQT-LLaVA weights, strictly loaded."""
    folder = Path(folder)
    hf = read_llava_config(folder)
    query_state = read_query_state(folder)
    vpath = Path(vision_path or hf.get("mm_vision_tower", ""))
    vpath = vpath if vpath.is_absolute() or vpath.exists() else folder / vpath
    cfg = vlm_config(folder, hf, query_state, vpath)
    query = QueryTransformer(cfg.query, cfg.vision.hidden_size, cfg.lm.hidden_size)
    query.load_state_dict(query_state, strict=True)
    vision = CLIPGridEncoder(cfg.vision)
    lm = load_lm(folder, cfg.lm, dtype)
    model = VisionLanguageModel(cfg, vision, query, lm, load_tokenizer(folder))
    return model.to(dtype).eval().requires_grad_(False)
