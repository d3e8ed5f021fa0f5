"""Sources of a batch job: image folders and manifests, as lazy Ray datasets of SOURCE rows.

Three kinds, told apart by the path:
- a folder: every image file below it (recursive; IMAGE_EXTENSIONS, any case), one row each
  with the job's default task and question; the id is the path relative to the folder;
- a JSONL manifest (`.jsonl`/`.json`): one object per line {id, image, task?, question?,
  options?}; `image` is a path, relative paths are taken from the manifest's folder;
- a Parquet file (`.parquet`): the same columns; `image` holds paths or the image bytes.

Every source becomes rows of SOURCE_SCHEMA: {id, path, image (bytes or null), task,
question, options, error}. Bytes are read lazily (in Ray read tasks for folders, in the
decode stage for paths), so a bad file becomes an error row, never a crash. A row with an
unknown task or missing options gets its error here. `check_source` runs on the driver
before any model work and names what is wrong. A pyarrow `filesystem` can be passed for
s3:// and other remote paths later; today only local paths are checked and tested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.tasks import TASKS, get_task

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff")
MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
REQUIRED_COLUMNS = ("id", "image")

SOURCE_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("task", pa.string()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("error", pa.string()),
])


class SourceError(ValueError):
    """A source that cannot be read at all: raised on the driver before any model work."""


@dataclass(frozen=True)
class Defaults:
    """What rows get when the source does not say: the job's task and question."""

    task: str = "caption"
    question: str = ""


def source_kind(path: str) -> str:
    """"folder", "jsonl" or "parquet"; SourceError for anything else or a missing path."""
    p = Path(path)
    if not path:
        raise SourceError("source: give a folder of images or a manifest (.jsonl, .parquet)")
    if p.is_dir():
        return "folder"
    if not p.exists():
        raise SourceError(f"source: no such file or folder: {path}")
    if p.suffix.lower() not in MANIFEST_SUFFIXES:
        raise SourceError(f"source: {path} is not a folder, .jsonl or .parquet file")
    return MANIFEST_SUFFIXES[p.suffix.lower()]


def check_source(path: str) -> str:
    """The source's kind, after checking it holds something usable (cheap: headers only)."""
    kind = source_kind(path)
    columns = {"folder": _folder_columns, "jsonl": _jsonl_columns,
               "parquet": _parquet_columns}[kind](path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SourceError(f"source: {path} has no {missing[0]!r} column; "
                          f"a manifest needs {list(REQUIRED_COLUMNS)}, found {sorted(columns)}")
    return kind


def _folder_columns(path: str) -> set[str]:
    if next(iter_images(path), None) is None:
        raise SourceError(f"source: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return set(REQUIRED_COLUMNS)


def _jsonl_columns(path: str) -> set[str]:
    with open(path) as f:
        first = next((line for line in f if line.strip()), None)
    if first is None:
        raise SourceError(f"source: {path} is empty")
    try:
        return set(json.loads(first))
    except (json.JSONDecodeError, TypeError) as e:
        raise SourceError(f"source: {path} line 1 is not a JSON object: {e}") from None


def _parquet_columns(path: str) -> set[str]:
    try:
        return set(pq.read_schema(path).names)
    except (OSError, pa.ArrowInvalid) as e:
        raise SourceError(f"source: cannot read Parquet {path}: {e}") from None


def iter_images(folder: str):
    """Image files below `folder` (recursive), by extension; hidden files are skipped."""
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and not any(
                part.startswith((".", "_")) for part in p.relative_to(folder).parts):
            yield p


def row_error(task: str | None, question: str | None, options) -> str | None:
    """Why a row cannot be answered (unknown task, missing question or options), else None."""
    if task not in TASKS:
        return f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}"
    t = get_task(task)
    if "{question}" in t.prompt and not (question or "").strip():
        return f"task {task!r} needs a question"
    if "{options}" in t.prompt and len(options or []) < 2:
        return f"task {task!r} needs >= 2 options, got {list(options or [])}"
    return None


def folder_rows(batch: pa.Table, root: str, defaults: Defaults) -> pa.Table:
    """`map_batches` function: read_binary_files rows {bytes, path} -> SOURCE rows."""
    root_abs = Path(root).resolve()
    out = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist(),
                          strict=True):
        out.append({"id": _relative(path, root_abs), "path": path, "image": data,
                    "task": defaults.task, "question": defaults.question, "options": None,
                    "error": row_error(defaults.task, defaults.question, None)})
    return pa.Table.from_pylist(out, schema=SOURCE_SCHEMA)


def _relative(path: str, root: Path) -> str:
    p = Path(path if path.startswith("/") else "/" + path)  # Ray may drop the leading /
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def manifest_rows(batch: pa.Table, base_dir: str, defaults: Defaults) -> pa.Table:
    """`map_batches` function: manifest rows -> SOURCE rows (defaults fill what is missing)."""
    return pa.Table.from_pylist([_manifest_row(r, base_dir, defaults) for r in batch.to_pylist()],
                                schema=SOURCE_SCHEMA)


def _manifest_row(r: dict, base_dir: str, defaults: Defaults) -> dict:
    image, task = r.get("image"), r.get("task") or defaults.task
    question = r.get("question") or defaults.question
    options = [str(o) for o in r["options"]] if r.get("options") is not None else None
    path = image if isinstance(image, str) else None
    if path and "://" not in path and not Path(path).is_absolute():
        path = str(Path(base_dir) / path)  # relative paths are relative to the manifest
    error = row_error(task, question, options) if image is not None else "no image in row"
    return {"id": str(r["id"]), "path": path, "image": image if isinstance(image, bytes) else None,
            "task": task, "question": question, "options": options, "error": error}


def build_dataset(path: str, defaults: Defaults = Defaults(), limit: int = 0, filesystem=None):
    """A lazy `ray.data.Dataset` of SOURCE rows; nothing is read until the job runs."""
    import ray.data

    kind = check_source(path)
    if kind == "folder":
        ds = ray.data.read_binary_files(path, include_paths=True, filesystem=filesystem,
                                        file_extensions=list(IMAGE_EXTENSIONS))
        fn, kwargs = folder_rows, {"root": path, "defaults": defaults}
    else:
        reader = ray.data.read_parquet if kind == "parquet" else _read_jsonl
        ds = reader(path, filesystem=filesystem)
        fn, kwargs = manifest_rows, {"base_dir": str(Path(path).parent), "defaults": defaults}
    if limit:
        ds = ds.limit(limit)
    return ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow")


def _read_jsonl(path: str, filesystem=None):
    import ray.data

    return ray.data.read_json(path, lines=True, filesystem=filesystem,
                              file_extensions=["jsonl", "json"])
