"""Sources of a batch job: image folders and manifests, local or remote, as lazy Ray datasets.

Three kinds, told apart by the path (a local path, `s3://…` or any fsspec URL; pipeline.storage):
- a folder: every image file below it (recursive; IMAGE_EXTENSIONS, any case; names starting
  with "." or "_" skipped), one row each with the job's default task and question; the id is
  the path relative to the folder;
- a JSONL manifest (`.jsonl`/`.json`): one object per line {id, image, task?, question?,
  options?, answer?}; `image` is a path or URL, relative paths are taken from the manifest's
  folder;
- a Parquet file (`.parquet`): the same columns; `image` holds paths or the image bytes.

Every source becomes rows of SOURCE_SCHEMA: {id, path, image (bytes or null), task,
question, options, answer, error, m, max_new_tokens}. A manifest row may carry its own
`visual_tokens` (its m, 1..M: it wins over the job's policy) and `max_new_tokens` (its
answer length, 1..MAX_NEW_TOKENS); a bad value makes the row an error row. Bytes are read
lazily (in Ray read tasks for folders, in the decode stage for paths), so a bad file
becomes an error row, never a crash. A row with an unknown task or missing options gets its
error here. `open_source` runs on the driver before
any model work: it names what is wrong, and counts the rows for the progress bar. Rows whose
ids a resumed job already wrote are dropped here, before any image is read.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqt.tasks import TASKS, Task
from pipeline.storage import Location, StorageArgs, list_files, locate, read_bytes

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff")
MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
REQUIRED_COLUMNS = ("id", "image")

SOURCE_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("task", pa.string()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
    ("error", pa.string()), ("m", pa.int32()), ("max_new_tokens", pa.int32()),
])
MAX_NEW_TOKENS = 4096  # the most a row may ask for


class SourceError(ValueError):
    """A source that cannot be read at all: raised on the driver before any model work."""


@dataclass(frozen=True)
class Defaults:
    """What rows get when the source does not say: the job's task and question; `tasks` is the
    job's task table (the registry with its per-task overrides)."""

    task: str = "caption"
    question: str = ""
    tasks: dict[str, Task] = field(default_factory=lambda: dict(TASKS), compare=False)


@dataclass(frozen=True)
class Source:
    """A checked source: its kind, where it is, how many rows it has, and for a folder the
    image files (listed once, on the driver)."""

    kind: str  # "folder", "jsonl" or "parquet"
    loc: Location
    rows: int
    files: tuple[str, ...] = ()


def open_source(uri: str, storage: StorageArgs | None = None) -> Source:
    """Check the source (cheap: a listing or a header) and count its rows; SourceError names
    what is wrong, including an unreachable server."""
    if not uri:
        raise SourceError("source: give a folder of images or a manifest (.jsonl, .parquet)")
    loc = locate(uri, storage)
    try:
        return _open(loc)
    except OSError as e:  # connection refused, access denied, no such bucket
        raise SourceError(f"source: cannot read {uri}: {e}") from None


def _open(loc: Location) -> Source:
    info = loc.info()
    if info.type == pafs.FileType.Directory:
        files = tuple(image_files(loc))
        if not files:
            raise SourceError(f"source: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                              f"under {loc.uri}")
        return Source("folder", loc, len(files), files)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source: no such file or folder: {loc.uri}")
    suffix = posixpath.splitext(loc.path)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise SourceError(f"source: {loc.uri} is not a folder, .jsonl or .parquet file")
    kind = MANIFEST_SUFFIXES[suffix]
    columns, rows = (_jsonl_header if kind == "jsonl" else _parquet_header)(loc)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SourceError(f"source: {loc.uri} has no {missing[0]!r} column; "
                          f"a manifest needs {list(REQUIRED_COLUMNS)}, found {sorted(columns)}")
    return Source(kind, loc, rows)


def _jsonl_header(loc: Location) -> tuple[set[str], int]:
    """Columns of the first object and the number of non-empty lines (streamed)."""
    first, rows = None, 0
    with loc.fs.open_input_stream(loc.path) as f:
        for line in _lines(f):
            if line.strip():
                rows += 1
                first = first or line
    if first is None:
        raise SourceError(f"source: {loc.uri} is empty")
    try:
        return set(json.loads(first)), rows
    except (json.JSONDecodeError, TypeError) as e:
        raise SourceError(f"source: {loc.uri} line 1 is not a JSON object: {e}") from None


def _lines(stream, chunk: int = 1 << 20):
    rest = b""
    while data := stream.read(chunk):
        *lines, rest = (rest + data).split(b"\n")
        yield from lines
    if rest:
        yield rest


def _parquet_header(loc: Location) -> tuple[set[str], int]:
    try:
        with loc.fs.open_input_file(loc.path) as f:
            meta = pq.ParquetFile(f).metadata
            return set(meta.schema.to_arrow_schema().names), meta.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"source: cannot read Parquet {loc.uri}: {e}") from None


def manifest_records(src: Source, columns: list[str] | None = None) -> list[dict]:
    """A manifest's rows read on the driver, in order (for planning and for training). For
    Parquet only the given columns that exist are read (all if None: image bytes are big);
    JSONL rows come whole, and a line that is not a JSON object is {}."""
    if src.kind == "jsonl":
        return [_json_object(line) for line in read_bytes(src.loc).splitlines() if line.strip()]
    with src.loc.fs.open_input_file(src.loc.path) as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        return pf.read(columns=cols).to_pylist()


def _json_object(line: bytes) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def image_files(folder: Location):
    """Image files below `folder` (recursive), by extension; hidden and `_*` names skipped."""
    root = folder.path.rstrip("/") + "/"
    for path in list_files(folder):
        rel = path[len(root):] if path.startswith(root) else path
        ext = posixpath.splitext(path)[1].lower().lstrip(".")
        if ext in IMAGE_EXTENSIONS and not any(p.startswith((".", "_")) for p in rel.split("/")):
            yield path


def row_error(task: str | None, question: str | None, options,
              tasks: dict[str, Task] = TASKS) -> str | None:
    """Why a row cannot be answered (unknown task, missing question or options), else None."""
    if task not in tasks:
        return f"unknown task {task!r}; known tasks: {', '.join(sorted(tasks))}"
    t = tasks[task]
    if "{question}" in t.prompt and not (question or "").strip():
        return f"task {task!r} needs a question"
    if "{options}" in t.prompt and len(options or []) < 2:
        return f"task {task!r} needs >= 2 options, got {list(options or [])}"
    return None


def folder_rows(batch: pa.Table, root: str, scheme: str, defaults: Defaults) -> pa.Table:
    """`map_batches` function: read_binary_files rows {bytes, path} -> SOURCE rows."""
    error = row_error(defaults.task, defaults.question, None, defaults.tasks)
    out = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist(),
                          strict=True):
        out.append({"id": relative_id(path, root), "path": scheme + path, "image": data,
                    "task": defaults.task, "question": defaults.question, "options": None,
                    "answer": None, "error": error})
    return pa.Table.from_pylist(out, schema=SOURCE_SCHEMA)


def relative_id(path: str, root: str) -> str:
    """The id of a folder row: its path below the folder (Ray may drop a leading "/")."""
    root = root.strip("/") + "/"
    path = path.lstrip("/")
    return path[len(root):] if path.startswith(root) else path


def manifest_rows(batch: pa.Table, base_dir: str, defaults: Defaults,
                  jsonl: bool = False) -> pa.Table:
    """`map_batches` function: manifest rows (Parquet rows, or JSONL lines in a `text`
    column) -> SOURCE rows (defaults fill what is missing)."""
    rows = ([_parse_line(t) for t in batch.column("text").to_pylist()] if jsonl
            else batch.to_pylist())
    return pa.Table.from_pylist([_manifest_row(r, base_dir, defaults) for r in rows],
                                schema=SOURCE_SCHEMA)


def _parse_line(text: str) -> dict:
    """One JSONL line; a bad line becomes a row whose error says why (its id is the line)."""
    try:
        row = json.loads(text)
        if isinstance(row, dict) and "id" in row:
            return row
        why = "not a JSON object with an id"
    except json.JSONDecodeError as e:
        why = f"not JSON: {e}"
    return {"id": f"line:{text[:80]}", "image": None, "_error": f"bad manifest line: {why}"}


def _manifest_row(r: dict, base_dir: str, defaults: Defaults) -> dict:
    image, task = r.get("image"), r.get("task") or defaults.task
    question = r.get("question") or defaults.question
    options = [str(o) for o in r["options"]] if r.get("options") is not None else None
    path = image if isinstance(image, str) else None
    if path and "://" not in path and not path.startswith("/"):
        path = posixpath.join(base_dir, path)  # relative paths are relative to the manifest
    m, m_error = _own_int(r, "visual_tokens", 2**31 - 1)  # M is checked by the engine
    n, n_error = _own_int(r, "max_new_tokens", MAX_NEW_TOKENS)
    error = r.get("_error") or (row_error(task, question, options, defaults.tasks)
                                if image is not None else "no image in row") or m_error or n_error
    answer = r.get("answer")
    return {"id": str(r["id"]), "path": path, "image": image if isinstance(image, bytes) else None,
            "task": task, "question": question, "options": options,
            "answer": None if answer is None else str(answer), "error": error, "m": m,
            "max_new_tokens": n}


def _own_int(r: dict, name: str, most: int) -> tuple[int | None, str | None]:
    """A row's own setting (None: the job's), or the error that makes it an error row."""
    value = r.get(name)
    if value is None:
        return None, None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON numbers and Parquet columns with nulls read as floats
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        return None, f"bad request: {name} must be an integer in 1..{most}, got {value!r}"
    return value, None


def skip_done(batch: pa.Table, done: pa.Array) -> pa.Table:
    """`map_batches` function: drop rows whose id is in `done` (written by an earlier run)."""
    ids = pc.cast(batch.column("id"), pa.string())
    return batch.filter(pc.invert(pc.is_in(ids, value_set=done)))


def build_dataset(src: Source, defaults: Defaults = Defaults(), limit: int = 0,
                  done: frozenset[str] = frozenset()):
    """A lazy `ray.data.Dataset` of SOURCE rows, without the rows in `done`; nothing is read
    until the job runs. `limit` counts source rows, before `done` is taken out, so a
    resumed job with the same limit sees the same rows."""
    import ray.data  # heavy (~1 s): only a job that runs reads its source with it

    loc, scheme = src.loc, src.loc.scheme  # paths in rows: plain locally, URLs otherwise
    if src.kind == "folder":
        files = list(src.files[:limit] if limit else src.files)
        files = [f for f in files if relative_id(f, loc.path) not in done] if done else files
        if not files:
            return ray.data.from_arrow(SOURCE_SCHEMA.empty_table())
        ds = ray.data.read_binary_files(files, include_paths=True, filesystem=loc.ray_filesystem)
        return ds.map_batches(folder_rows, batch_format="pyarrow", fn_kwargs={
            "root": loc.path, "scheme": scheme, "defaults": defaults})
    if src.kind == "parquet":
        ds = ray.data.read_parquet(loc.path, filesystem=loc.ray_filesystem)
    else:  # lines as text, parsed by us: mixed types per line are fine, bad lines are rows
        ds = ray.data.read_text(loc.path, filesystem=loc.ray_filesystem, drop_empty_lines=True)
    if limit:
        ds = ds.limit(limit)
    base_dir = scheme + posixpath.dirname(loc.path)
    ds = ds.map_batches(manifest_rows, batch_format="pyarrow", fn_kwargs={
        "base_dir": base_dir, "defaults": defaults, "jsonl": src.kind == "jsonl"})
    if done:
        ds = ds.map_batches(skip_done, batch_format="pyarrow",
                            fn_kwargs={"done": pa.array(sorted(done), pa.string())})
    return ds


def source_rows(src: Source, default_task: str, limit: int,
                default_question: str | None = None) -> list[tuple]:
    """(id, task) of every source row in source order (the first `limit` if limit > 0);
    only these two small columns are read, and with `default_question` given (quota.by=kind)
    a third, (id, task, question), the row's question or else that default. A bad JSONL
    line (an error row, it costs nothing) counts under the default task."""
    with_q = default_question is not None
    if src.kind == "folder":
        rows = [(relative_id(f, src.loc.path), default_task) + ((default_question,) * with_q)
                for f in src.files]
    else:
        cols = ["id", "task", "question"] if with_q else ["id", "task"]
        rows = [(str(r.get("id")) if r else "", r.get("task") or default_task)
                + ((r.get("question") or default_question,) * with_q)
                for r in manifest_records(src, cols)]
    return rows[:limit] if limit else rows
