"""The bundled corpus: labelled test images written as an annotate manifest.

`bundled_examples(...)` draws the demo's labelled rows (seeded samples of easy-vqa test
questions, captions and multiple choice, and test mosaics). `write_corpus(folder,
examples)` turns `Example`s into `folder/manifest.jsonl` rows {id, image, task, question,
options, answer, kind} that `mqt annotate` reads like any user manifest. easy-vqa images
are referenced where the package installed them; each mosaic is rendered once to
`folder/images/` (its questions share it). Deterministic: the same examples give the same
files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mqt.data.easyvqa import Example, easyvqa_examples, image_paths
from mqt.data.mosaic import mosaic_examples


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of `n` items in their original order (all of them if n >= len)."""
    if n >= len(items):
        return items
    idx = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n]
    return [items[i] for i in sorted(idx.tolist())]


def bundled_examples(easyvqa_questions: int = 96, captions: int = 24, mc_questions: int = 24,
                     mosaic_images: int = 16, seed: int = 0) -> list[Example]:
    """The labelled rows of the bundled corpus (`mqt demo`, `mqt profile`): easy-vqa test
    questions, captions and questions asked as multiple choice, then test mosaics (four
    questions each)."""
    ev = easyvqa_examples("test", tasks=("vqa", "caption", "mc"))
    out = sample([e for e in ev if e.task == "vqa"], easyvqa_questions, seed)
    out += sample([e for e in ev if e.task == "caption"], captions, seed)
    out += sample([e for e in ev if e.task == "mc"], mc_questions, seed + 1)
    return out + mosaic_examples("test", mosaic_images, seed=seed)


def write_corpus(folder: str | Path, examples: list[Example]) -> Path:
    """Write the manifest (and mosaic PNGs); returns the manifest's path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.jsonl"
    with manifest.open("w") as f:
        for ex in examples:
            f.write(json.dumps(manifest_row(ex, image_file(folder, ex))) + "\n")
    return manifest


def manifest_row(ex: Example, image: str) -> dict:
    row = {"id": ex.id, "image": image, "task": ex.task, "question": ex.question,
           "answer": ex.answer, "kind": f"{ex.meta.get('source')}/{ex.meta.get('kind')}"}
    if ex.options:
        row["options"] = list(ex.options)
    return row


def image_file(folder: Path, ex: Example) -> str:
    """The image of an example as a path: the package's PNG, or a mosaic rendered once."""
    if ex.meta.get("source") == "easy-vqa":
        split, index = ex.meta["image_id"].split("/")
        return image_paths(split)[int(index)]
    name = ex.id.rsplit("/", 1)[0].replace("/", "-") + ".png"  # mosaic/test/s0/3 -> one file
    path = folder / "images" / name
    if not path.exists():
        ex.load_image().save(path)
    return f"images/{name}"  # relative to the manifest
