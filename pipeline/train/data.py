"""Training rows from a manifest: the same sources `mqt annotate` reads, as training examples.

`data.manifest=PATH` (a JSONL or Parquet manifest, local or `s3://`, as in docs/annotate.md)
adds rows {id, image, task, question, answer} to the bundled training data: `task` is `vqa`
or `caption` (what the LM is trained to generate), `answer` the target text, `image` a path
or URL (relative to the manifest) or the encoded bytes. The manifest is read on each rank
(text only); each image is read and decoded once, lazily, when the frozen encoder's features
are cached. Rows of other tasks or without an answer are refused before any training, with
their id.

`data.manifest=FOLDER` (local or `s3://`): every image below the folder with its caption in
a text file beside it (`cat.jpg` + `cat.txt`, the usual layout of captioned image sets)
becomes a `caption` row whose answer is that text. An image without its `.txt` (or with an
empty one) is refused before any training, naming the first and how many.

`manifest_loader` is how the rows reach mqt.train.fit, which reads no storage itself.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from functools import partial

from PIL import Image

from mqt.data.easyvqa import Example
from pipeline.sources import manifest_image, manifest_records, open_source, relative_id
from pipeline.storage import StorageArgs, locate, read_bytes

TRAIN_TASKS = ("vqa", "caption")


def manifest_loader(uri: str, storage: StorageArgs | None = None
                    ) -> Callable[[], list[Example]] | None:
    """What mqt.train.fit calls (on every rank) for the rows of `data.manifest`; None
    without one."""
    return partial(manifest_examples, uri, storage) if uri else None


def manifest_examples(uri: str, storage: StorageArgs | None = None) -> list[Example]:
    """Every row of the manifest as an `Example` with a lazy image; ValueError names a bad row."""
    src = open_source(uri, storage)
    if src.kind == "folder":
        return folder_examples(src, storage)
    return [_example(r, storage) for r in manifest_records(src)]


def folder_examples(src, storage: StorageArgs | None = None) -> list[Example]:
    """A folder of images with `<name>.txt` captions beside them, as caption examples."""
    examples, missing = [], []
    for path in src.files:
        rel = relative_id(path, src.loc.path)
        caption = _sidecar(src.loc.fs, posixpath.splitext(path)[0] + ".txt")
        if not caption:
            missing.append(rel)
            continue
        uri = src.loc.join(rel).uri
        examples.append(Example(f"folder/{rel}", partial(load_image, uri, storage), "caption",
                                "", caption, meta={"source": "manifest", "image_id": uri}))
    if missing:
        raise ValueError(f"data.manifest: {len(missing)} of {len(src.files)} images under "
                         f"{src.loc.uri} have no caption beside them (an empty or missing "
                         f"<name>.txt), e.g. {missing[0]!r}")
    return examples


def _sidecar(fs, path: str) -> str:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:  # no such file (FileNotFoundError is one)
        return ""


def _example(r: dict, storage: StorageArgs | None) -> Example:
    task, answer = r.get("task") or "vqa", r.get("answer")
    if task not in TRAIN_TASKS or not answer:
        raise ValueError(f"data.manifest: row {r.get('id')!r} needs task in {TRAIN_TASKS} and "
                         f"an answer, got task={task!r} answer={answer!r}")
    image, why = manifest_image(r.get("image"))
    if image is None:
        raise ValueError(f"data.manifest: row {r.get('id')!r}: {why or 'no image'}")
    if isinstance(image, str) and "://" not in image and not image.startswith("/"):
        image = posixpath.join(r["_dir"], image)  # relative to its manifest, like annotate
    key = image if isinstance(image, str) else f"bytes:{r['id']}"
    return Example(f"manifest/{r['id']}", partial(load_image, image, storage), task,
                   r.get("question") or "", str(answer),
                   meta={"source": "manifest", "image_id": key})


def load_image(image: str | bytes, storage: StorageArgs | None = None) -> Image.Image:
    """A path, URL or encoded bytes -> RGB (module level, so examples pickle)."""
    data = image if isinstance(image, bytes) else read_bytes(locate(image, storage))
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
