"""`mqt demo`: the main job on the embedded default, end to end on this machine.

The default model `mqt-smol` (frozen MobileNetV2 and SmolLM2-135M from packages, the MQT
and adapters shipped in mqt/weights) answers real held-out questions: easy-vqa test images
and test mosaics, at several numbers of visual tokens m from one MQT pass per image. It
prints accuracy per question kind and the FLOPs per question at each m, a few answers, and
the cost table of the llava-7b preset beside the paper's figures. Nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs import cost, evaluate
from jobs.common import ModelArgs, log, validate_model


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    output: str = "runs/demo"
    ms: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    easyvqa_questions: int = 48
    captions: int = 8
    mosaic_images: int = 8
    show: int = 6  # example answers printed


def validate(cfg: Config) -> None:
    validate_model(cfg)


def main(cfg: Config) -> int:
    out = Path(cfg.output)
    log(f"== mqt eval on held-out questions: preset={cfg.preset}, m={cfg.ms}")
    ev = evaluate.Config(preset=cfg.preset, model=cfg.model, checkpoint=cfg.checkpoint,
                         llava=cfg.llava, seed=cfg.seed, ms=cfg.ms,
                         easyvqa_questions=cfg.easyvqa_questions, captions=cfg.captions,
                         mosaic_images=cfg.mosaic_images, output=str(out / "eval"))
    evaluate.validate(ev)
    evaluate.main(ev)
    show_answers(out / "eval" / "results.parquet", cfg.show, max(cfg.ms))
    log("\n== mqt cost --preset llava-7b (paper figures beside ours)")
    cost.main(cost.Config(output=str(out / "cost")))
    log(f"\noutputs in {out}/ (results.parquet, calibration.json, eval.md, accuracy.png)")
    return 0


def show_answers(path: Path, n: int, m: int) -> None:
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(path).to_pylist() if r["m"] == m]
    step = max(1, len(rows) // max(1, n))
    print(f"\nSome answers at m = {m}:")
    for r in rows[::step][:n]:
        mark = "ok " if r["correct"] else "BAD"
        print(f"  [{mark}] {r['kind']:<22} {r['output']!r:<20} (reference {r['answer']!r})")
