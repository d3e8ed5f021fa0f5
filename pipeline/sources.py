"""Sources of a batch job: image folders and manifests, local or remote, as lazy Ray datasets.

`source=` is a path or URL (a local path, `s3://…` or any fsspec URL; pipeline.storage),
a glob of manifests (`s3://bucket/shards/part-*.parquet`: `*`, `?` and `[...]` within one
path segment), or a list of these. Kinds:
- a folder of images: every image file below it (recursive; IMAGE_EXTENSIONS, any case;
  names starting with "." or "_" skipped), one row each with the job's default task and
  question; the id is the path relative to the folder. (A folder with no images but
  manifests is a sharded manifest: every manifest below it is a part.)
- a JSONL manifest (`.jsonl`/`.json`): one object per line {id, image, task?, question?,
  options?, answer?, visual_tokens?, max_new_tokens?}; `image` is a path, a URL or a
  `data:image/...;base64,` URL; relative paths are taken from the manifest's folder;
- a Parquet manifest (`.parquet`): the same columns; `image` holds paths, the image bytes,
  or the `{bytes, path}` struct of a Hugging Face `datasets` Image column;
- an OpenAI Batch API input file (JSONL whose first line has `custom_id` and `body`):
  one chat-completions request per line (pipeline.batchfile).
A manifest may come in parts (a folder, glob or list): Ray reads them in parallel, and all
parts must be of one kind. `columns` maps the manifest's column names to ours
(`columns.question=query`: our `question` is the file's `query`), for corpora exported by
other tools.

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

import fnmatch
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqt.tasks import TASKS, Task
from pipeline.batchfile import is_request, request_row
from pipeline.serve.images import ImageError, data_url_bytes
from pipeline.storage import Location, StorageArgs, list_files, locate, read_bytes

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff")
MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
REQUIRED_COLUMNS = ("id", "image")
# what `columns` may map: the manifest columns the job reads
MANIFEST_COLUMNS = ("id", "image", "task", "question", "options", "answer", "visual_tokens",
                    "max_new_tokens")

SOURCE_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("task", pa.string()),
    ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
    ("error", pa.string()), ("m", pa.int32()), ("max_new_tokens", pa.int32()),
])
MAX_NEW_TOKENS = 4096  # the most a row may ask for
MAX_DATA_URL_BYTES = 50_000_000  # an image inline in a manifest line


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
    """A checked source: its kind ("folder", "jsonl", "parquet" or "openai"), where it is (a
    list's first entry), how many rows it has, and the files it reads (listed once, on the
    driver): a folder's images, a manifest's parts (none: the one file at `loc`);
    `columns`: the manifest's names of our columns."""

    kind: str
    loc: Location
    rows: int
    files: tuple[str, ...] = ()
    columns: dict = field(default_factory=dict, compare=False)

    @property
    def parts(self) -> tuple[str, ...]:
        """The manifest files, in order (paths in `loc.fs`)."""
        return self.files or (self.loc.path,)

    def part_dir(self, path: str) -> str:
        """The folder a part's relative image paths are taken from, as a URL or path."""
        return self.loc.scheme + posixpath.dirname(path)


def open_source(uri: str | list[str], storage: StorageArgs | None = None,
                columns: dict | None = None) -> Source:
    """Check the source (cheap: a listing or headers) and count its rows; SourceError names
    what is wrong, including an unreachable server. `columns`: {our name: the manifest's}."""
    uris = [uri] if isinstance(uri, str) else list(uri)
    if not uris or not all(isinstance(u, str) and u for u in uris):
        raise SourceError("source: give a folder of images, a manifest (.jsonl, .parquet), a "
                          "glob of manifests or a list of them")
    columns = _check_columns(columns or {})
    locs = [locate(u, storage) for u in uris]
    if len({loc.scheme for loc in locs}) > 1:
        raise SourceError(f"source: the parts of a list must be on one filesystem, got {uris}")
    try:
        return _open(locs, columns)
    except OSError as e:  # connection refused, access denied, no such bucket
        raise SourceError(f"source: cannot read {uris if len(uris) > 1 else uris[0]}: {e}"
                          ) from None


def _check_columns(columns: dict) -> dict:
    for ours, theirs in columns.items():
        if ours not in MANIFEST_COLUMNS:
            raise SourceError(f"columns.{ours}: not a manifest column; mappable: "
                              f"{list(MANIFEST_COLUMNS)}")
        if not isinstance(theirs, str) or not theirs:
            raise SourceError(f"columns.{ours}: give the manifest's column name, got {theirs!r}")
    return dict(columns)


def _open(locs: list[Location], columns: dict) -> Source:
    if len(locs) == 1:  # one entry may also be a folder of images
        kind, parts = _entry(locs[0], images=True)
        if kind == "folder":
            return Source("folder", locs[0], len(parts), tuple(parts))
    else:
        parts = [p for loc in locs for p in _entry(loc)[1]]
    if len(set(parts)) < len(parts):
        raise SourceError(f"source: a part is named twice: {sorted(parts)}")
    with ThreadPoolExecutor(max_workers=min(16, len(parts))) as pool:
        headers = list(pool.map(lambda p: _header(locs[0], p), parts))
    kinds = {kind for kind, _, _ in headers}
    if len(kinds) > 1:
        raise SourceError(f"source: the parts mix kinds {sorted(kinds)}; give parts of one kind")
    kind = kinds.pop()
    for path, (_, names, _) in zip(parts, headers, strict=True):
        if kind == "openai":
            continue  # a request line's id and image are in custom_id and body
        need = [columns.get(c, c) for c in REQUIRED_COLUMNS]
        if missing := [c for c in need if c not in names]:
            mapped = {c: columns[c] for c in REQUIRED_COLUMNS if c in columns}
            raise SourceError(
                f"source: {locs[0].scheme + path} has no {missing[0]!r} column; a manifest "
                f"needs {list(REQUIRED_COLUMNS)} (columns.<ours>=<theirs> maps other names"
                f"{', mapped: ' + str(mapped) if mapped else ''}), found {sorted(names)}")
    single = len(parts) == 1 and parts[0] == locs[0].path
    return Source(kind, locs[0], sum(rows for _, _, rows in headers),
                  () if single else tuple(parts), columns)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _entry(loc: Location, images: bool = False) -> tuple[str, list[str]]:
    """What one source entry names, listed once: ("folder", its image files) for a folder
    with images when `images`, else ("manifest", the manifest files: the entry itself,
    those below a folder, or a glob's)."""
    if _is_glob(loc.path):
        pattern = loc.path.split("/")
        root = "/".join(pattern[:next(i for i, p in enumerate(pattern) if _is_glob(p))])
        found = [p for p in list_files(Location(loc.fs, root or "/", loc.uri))
                 if _matches(p.split("/"), pattern) and _is_manifest(p)]
        if not found:
            raise SourceError(f"source: no manifests (.jsonl, .parquet) match {loc.uri}")
        return "manifest", found
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source: no such file or folder: {loc.uri}")
    if info.type == pafs.FileType.Directory:
        listed = list_files(loc)
        if images and (found := list(image_files(loc, listed))):
            return "folder", found
        found = [p for p in listed if _is_manifest(p) and not _hidden(p, loc.path)]
        if not found:
            raise SourceError(f"source: no image files ({', '.join(IMAGE_EXTENSIONS)}) and "
                              f"no manifests (.jsonl, .parquet) under {loc.uri}")
        return "manifest", found
    if not _is_manifest(loc.path):
        raise SourceError(f"source: {loc.uri} is not a folder, .jsonl or .parquet file")
    return "manifest", [loc.path]


def _matches(path: list[str], pattern: list[str]) -> bool:
    return len(path) == len(pattern) and all(fnmatch.fnmatchcase(a, b)
                                             for a, b in zip(path, pattern, strict=True))


def _is_manifest(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in MANIFEST_SUFFIXES


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root.rstrip("/")) + 1:] if path.startswith(root) else path
    return any(p.startswith((".", "_")) for p in rel.split("/"))


def _header(loc: Location, path: str) -> tuple[str, set[str], int]:
    """(kind, columns, rows) of one manifest file."""
    part = Location(loc.fs, path, loc.scheme + path)
    if MANIFEST_SUFFIXES[posixpath.splitext(path)[1].lower()] == "parquet":
        return ("parquet", *_parquet_header(part))
    first, rows = _jsonl_header(part)
    return ("openai" if is_request(first) else "jsonl"), set(first), rows


def _jsonl_header(loc: Location) -> tuple[dict, int]:
    """The first object and the number of non-empty lines (streamed)."""
    first, rows = None, 0
    with loc.fs.open_input_stream(loc.path) as f:
        for line in _lines(f):
            if line.strip():
                rows += 1
                first = first or line
    if first is None:
        raise SourceError(f"source: {loc.uri} is empty")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError as e:
        raise SourceError(f"source: {loc.uri} line 1 is not a JSON object: {e}") from None
    if not isinstance(obj, dict):
        raise SourceError(f"source: {loc.uri} line 1 is not a JSON object")
    return obj, rows


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
    """A manifest's rows read on the driver, in order, under our column names (for planning
    and for training), each with `_dir`, its part's folder. For Parquet only the given
    columns that exist are read (all if None: image bytes are big); JSONL rows come whole, a
    line that is not a JSON object is {} and a Batch API request is read as a row."""
    out = []
    for path in src.parts:
        part = Location(src.loc.fs, path, src.loc.scheme + path)
        if src.kind == "parquet":
            with part.fs.open_input_file(part.path) as f:
                pf = pq.ParquetFile(f)
                want = [src.columns.get(c, c) for c in columns] if columns else None
                cols = [c for c in want if c in pf.schema_arrow.names] if want else None
                rows = pf.read(columns=cols).to_pylist()
        else:
            rows = [_json_object(line) for line in read_bytes(part).splitlines() if line.strip()]
        rows = [_our_names(r, src.kind, src.columns) for r in rows]
        out.extend(dict(r, _dir=src.part_dir(path)) for r in rows)
    return out


def _json_object(line: bytes) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def _our_names(r: dict, kind: str, columns: dict) -> dict:
    """A manifest row under our column names: a Batch API request read as a row; mapped
    columns renamed."""
    if kind == "openai":
        return request_row(r, MAX_NEW_TOKENS) if r else r
    if not columns or not r:
        return r
    return {**r, **{ours: r.get(theirs) for ours, theirs in columns.items()}}


def image_files(folder: Location, listed: list[str] | None = None):
    """Image files below `folder` (recursive), by extension; hidden and `_*` names skipped.
    `listed`: the folder's files if they were listed already."""
    for path in list_files(folder) if listed is None else listed:
        ext = posixpath.splitext(path)[1].lower().lstrip(".")
        if ext in IMAGE_EXTENSIONS and not _hidden(path, folder.path):
            yield path


def row_error(task: str | None, question: str | None, options,
              tasks: dict[str, Task] = TASKS) -> str | None:
    """Why a row cannot be answered (unknown task, missing question or options), else None."""
    if task not in tasks:
        return f"unknown task {task!r}; known tasks: {', '.join(sorted(tasks))}"
    t = tasks[task]
    if "{question}" in t.prompt and not (question or "").strip():
        return f"task {task!r} needs a question"
    if t.needs_options and len(options or []) < 2:
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


def manifest_rows(batch: pa.Table, base_dir: str, defaults: Defaults, kind: str = "parquet",
                  columns: dict | None = None) -> pa.Table:
    """`map_batches` function: manifest rows (Parquet rows, or JSONL lines in a `text`
    column) -> SOURCE rows (defaults fill what is missing)."""
    rows = ([_parse_line(t, kind) for t in batch.column("text").to_pylist()]
            if kind in ("jsonl", "openai") else batch.to_pylist())
    rows = [r if "_error" in r else _our_names(r, kind, columns or {}) for r in rows]
    return pa.Table.from_pylist([_manifest_row(r, base_dir, defaults) for r in rows],
                                schema=SOURCE_SCHEMA)


def _parse_line(text: str, kind: str = "jsonl") -> dict:
    """One JSONL line; a bad line becomes a row whose error says why (its id is the line)."""
    key = "custom_id" if kind == "openai" else "id"
    try:
        row = json.loads(text)
        if isinstance(row, dict) and key in row:
            return row
        why = f"not a JSON object with {'a ' + key if kind == 'openai' else 'an id'}"
    except json.JSONDecodeError as e:
        why = f"not JSON: {e}"
    return {"id": f"line:{text[:80]}", "image": None, "_error": f"bad manifest line: {why}"}


def _manifest_row(r: dict, base_dir: str, defaults: Defaults) -> dict:
    image, image_error = manifest_image(r.get("image"))
    task = r.get("task") or defaults.task
    question = r.get("question") or defaults.question
    options = [str(o) for o in r["options"]] if r.get("options") is not None else None
    path = image if isinstance(image, str) else None
    if path and "://" not in path and not path.startswith("/"):
        path = posixpath.join(base_dir, path)  # relative paths are relative to the manifest
    m, m_error = _own_int(r, "visual_tokens", 2**31 - 1)  # M is checked by the engine
    n, n_error = _own_int(r, "max_new_tokens", MAX_NEW_TOKENS)
    error = (r.get("_error") or image_error
             or (row_error(task, question, options, defaults.tasks) if image is not None
                 else "no image in row") or m_error or n_error)
    answer = r.get("answer")
    return {"id": str(r["id"]), "path": path, "image": image if isinstance(image, bytes) else None,
            "task": task, "question": question, "options": options,
            "answer": None if answer is None else str(answer), "error": error, "m": m,
            "max_new_tokens": n}


def manifest_image(image) -> tuple[bytes | str | None, str | None]:
    """A row's image as bytes or a path/URL, and why it is unusable (None if it is not)."""
    if isinstance(image, dict):  # a Hugging Face `datasets` Image column: {bytes, path}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str) and image.startswith("data:"):
        try:
            return data_url_bytes(image, MAX_DATA_URL_BYTES), None
        except ImageError as e:
            return None, f"bad image: {e}"
    if image is not None and not isinstance(image, bytes | str):
        return None, f"bad image: a path, URL or bytes, got {type(image).__name__}"
    return image, None


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
    by_dir: dict[str, list[str]] = {}  # relative image paths are taken from a part's folder
    for path in src.parts:
        by_dir.setdefault(posixpath.dirname(path), []).append(path)
    parts = []
    for folder, paths in by_dir.items():
        if src.kind == "parquet":
            ds = ray.data.read_parquet(paths, filesystem=loc.ray_filesystem)
        else:  # lines as text, parsed by us: mixed types per line are fine, bad lines are rows
            ds = ray.data.read_text(paths, filesystem=loc.ray_filesystem, drop_empty_lines=True)
        parts.append(ds.map_batches(manifest_rows, batch_format="pyarrow", fn_kwargs={
            "base_dir": scheme + folder, "defaults": defaults, "kind": src.kind,
            "columns": src.columns}))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if limit:
        ds = ds.limit(limit)
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
