"""`mqt demo`: the main job on the embedded default, end to end on this machine.

Writes the bundled corpus (real easy-vqa test images with their questions and captions,
test mosaics of shapes and digits with questions about one cell and counts, some as
multiple choice; all labelled) as a manifest, and runs `mqt annotate` on it with a local
Ray and the default model `mqt-smol` (frozen MobileNetV2 and SmolLM2-135M from packages,
the MQT and adapters shipped in mqt/weights). Prints the job summary with accuracy, accuracy
per question kind, a few answers, and where the Parquet rows are. Nothing is trained.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from mqt.console import log
from mqt.data.corpus import bundled_examples, write_corpus
from mqt.load import ModelArgs, validate_model
from mqt.tasks import get_task
from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    output: str = "runs/demo"
    easyvqa_questions: int = 96
    captions: int = 24
    mc_questions: int = 24  # easy-vqa questions asked as multiple choice
    mosaic_images: int = 16  # four questions each
    m: dict = field(default_factory=lambda: {"caption": 4, "vqa": 16, "mc": 4})
    actors: int = 0  # 0 = sized from the machine (pipeline/sizing.py)
    batch_size: int = 16
    show: int = 6  # example answers printed


def validate(cfg: Config) -> None:
    validate_model(cfg)


def main(cfg: Config) -> int:
    out = Path(cfg.output)
    examples = bundled_examples(cfg.easyvqa_questions, cfg.captions, cfg.mc_questions,
                                cfg.mosaic_images, cfg.seed)
    manifest = write_corpus(out / "corpus", examples)
    log(f"== bundled corpus: {len(examples)} labelled rows in {manifest}")
    job = AnnotateConfig(preset=cfg.preset, model=cfg.model, checkpoint=cfg.checkpoint,
                         llava=cfg.llava, seed=cfg.seed, source=str(manifest),
                         output=str(out / "annotate"), overwrite=True,
                         policy=PolicyArgs(m=dict(cfg.m)), actors=cfg.actors,
                         batch_size=cfg.batch_size, block_rows=cfg.batch_size)
    log(f"== mqt annotate source={manifest} output={job.output} policy.m={cfg.m}")
    annotate(job)
    report(Path(job.output) / "data", manifest, cfg.show)
    return 0


def report(data: Path, manifest: Path, show: int) -> None:
    """Accuracy per question kind (easy-vqa colour, mosaic cell digit, ...) and some answers."""
    kinds = {r["id"]: r["kind"] for r in map(json.loads, manifest.read_text().splitlines())}
    rows = pq.read_table(data).to_pylist()
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        ok = r["error"] is None and get_task(r["task"]).is_correct(r["prediction"], r["reference"])
        per[f"{r['task']:<8} {kinds[r['id']]}"][0] += ok
        per[f"{r['task']:<8} {kinds[r['id']]}"][1] += 1
    print("\nAccuracy per question kind:")
    for kind, (c, n) in sorted(per.items()):
        print(f"  {kind:<32} {100 * c / n:5.1f}%  ({c}/{n})")
    print("\nSome answers:")
    for r in rows[:: max(1, len(rows) // max(1, show))][:show]:
        print(f"  m={r['m']:<3} {r['task']:<8} {(r['question'] or '(caption)')[:44]:<46}"
              f"-> {r['prediction']!r} (reference {r['reference']!r})")
    print(f"\nrows: {data}/*.parquet (schema: docs/annotate.md)")
