"""Vision encoders that return grid features (B, N, D), and image preprocessing.

Every encoder exposes `hidden_size` (D), `grid_hw` (H, W with N = H * W), `image_size`,
`image_mean` and `image_std`, so the query transformer and the preprocessing need nothing
else. A CNN returns its (B, C, H, W) map flattened row-major to (B, H*W, C).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from mqt.config import VisionConfig
from mqt.mobilenet import MobileNetGridEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPGridEncoder(nn.Module):
    """transformers' CLIPVisionModel cut after `select_layer`; patch tokens only (no CLS).

    Layers after the selected one are removed rather than run and thrown away (LLaVA runs
    them), which saves compute and changes nothing in the features.
    """

    image_mean, image_std = CLIP_MEAN, CLIP_STD

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if cfg.path:
            model = CLIPVisionModel.from_pretrained(cfg.path, dtype=torch.float32)
            check_dims(cfg, model.config)
        else:
            model = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size,
            ))
        encoder = getattr(model, "vision_model", model).encoder  # transformers 5: flat
        encoder.layers = encoder.layers[: cfg.layers_run()]
        self.model = model
        self.hidden_size, self.image_size = cfg.hidden_size, cfg.image_size
        self.grid_hw = (cfg.grid_size, cfg.grid_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.last_hidden_state[:, 1:]  # (B, N, D), CLS dropped


def check_dims(cfg: VisionConfig, hf) -> None:
    """A pretrained folder must match the config that the cost model prices."""
    pairs = {"hidden_size": hf.hidden_size, "num_layers": hf.num_hidden_layers,
             "image_size": hf.image_size, "patch_size": hf.patch_size,
             "intermediate_size": hf.intermediate_size, "num_heads": hf.num_attention_heads}
    for name, value in pairs.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"vision.{name}={getattr(cfg, name)} but {cfg.path} has {value}")


def build_vision(cfg: VisionConfig) -> nn.Module:
    if cfg.kind == "clip":
        return CLIPGridEncoder(cfg)
    if cfg.kind == "mobilenet_v2":
        return MobileNetGridEncoder(cfg)
    raise ValueError(f"vision.kind={cfg.kind!r} is not supported")


def preprocess(images: list[Image.Image], encoder: nn.Module) -> torch.Tensor:
    """PIL images -> (B, 3, S, S) normalised as the encoder's weights expect.

    Resize the short side to S (bicubic) and centre-crop, as CLIP's own processor does.
    """
    return torch.stack([_one(img, encoder) for img in images])


def _one(img: Image.Image, encoder: nn.Module) -> torch.Tensor:
    size = encoder.image_size
    img = img.convert("RGB")
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(encoder.image_mean).view(3, 1, 1)
    std = torch.tensor(encoder.image_std).view(3, 1, 1)
    return (x - mean) / std  # (3, S, S)
