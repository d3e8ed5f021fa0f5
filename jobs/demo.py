"""`mqt demo`: the main job on the embedded default, end to end on this machine.

Today it runs the smallest honest end-to-end path: real photos that ship inside
scikit-image, the `tiny` preset (random weights, so the answers are noise: this shows the
plumbing, not accuracy), answers at several m from one query-transformer pass, and the
cost table of the `llava-7b` preset beside the paper's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs import cost, generate
from jobs.common import ModelArgs, log, save_config, validate_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass
class Config(ModelArgs):
    output: str = "runs/demo"
    m: list[int] = field(default_factory=lambda: [1, 4, 16])
    question: str = "What is in the image?"
    max_new_tokens: int = 8


def validate(cfg: Config) -> None:
    validate_model(cfg)


def bundled_photos(folder: Path) -> list[str]:
    """Real photos from scikit-image's wheel, written as PNG files."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def main(cfg: Config) -> int:
    out = Path(cfg.output)
    save_config(cfg, out)
    images = bundled_photos(out / "images")
    log(f"== mqt generate: preset={cfg.preset} on {len(images)} bundled photos, m={cfg.m}")
    if cfg.preset == "tiny" and not cfg.checkpoint:
        log("   (tiny preset = random weights: the answers are noise, the path is real)")
    gen_cfg = generate.Config(preset=cfg.preset, model=cfg.model, checkpoint=cfg.checkpoint,
                              llava=cfg.llava, seed=cfg.seed, images=images,
                              question=cfg.question, m=cfg.m,
                              max_new_tokens=cfg.max_new_tokens, output=str(out / "generate"))
    generate.validate(gen_cfg)
    generate.main(gen_cfg)
    log("\n== mqt cost --preset llava-7b (paper figures beside ours)")
    cost.main(cost.Config(output=str(out / "cost")))
    log(f"\noutputs in {out}/")
    return 0
