"""The output folder of a batch job: Parquet part files written whole, read back for resume.

`output/data/part-<run>-<seq>.parquet` files are written by the driver as the streamed
dataset hands it batches (output rows are small: text and numbers, no pixels). A part file
is written whole or not at all (pipeline.storage.write_bytes: rename into place locally; S3
objects appear whole), so after a crash, even a `kill -9`, every id in a readable part file
was answered and every other id was not. A resumed job reads the id column of the parts
(`done_ids`) and skips those rows at the source: each id ends up in exactly one part.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage import Location, list_files, read_bytes, write_bytes

# Columns renamed since earlier releases (old name -> name now): the model's text was
# `output` and the reference answer `answer`. A folder written before still resumes: its
# parts read as if written now, and `upgrade()` rewrites them with today's names.
RENAMED = {"output": "prediction", "answer": "reference"}
_OLD = {new: old for old, new in RENAMED.items()}
COLUMNS_MARKER = "_columns"  # in data/: every part there has today's names


def renamed(table):
    """A table or record batch with today's column names."""
    if not any(c in RENAMED for c in table.schema.names):
        return table
    return table.rename_columns([RENAMED.get(c, c) for c in table.schema.names])


@dataclass
class OutputFolder:
    """`data/*.parquet` plus small text files (config.yaml, summary.json) at one location."""

    loc: Location

    @property
    def data(self) -> Location:
        return self.loc.join("data")

    def parts(self) -> list[str]:
        """Paths of the finished part files (hidden temporaries are not parts)."""
        return [p for p in list_files(self.data) if p.endswith(".parquet")
                and not p.rsplit("/", 1)[-1].startswith((".", "_"))]

    def clear(self) -> None:
        if list_files(self.data):
            self.data.fs.delete_dir_contents(self.data.path, missing_dir_ok=True)

    def drop_temporaries(self) -> None:
        """Half-written temporaries of a killed run (hidden `.*.tmp` files)."""
        for p in list_files(self.data):
            if p.rsplit("/", 1)[-1].startswith(".") and p.endswith(".tmp"):
                self.data.fs.delete_file(p)

    def done_ids(self, not_done: Callable[[str], bool] | None = None) -> set[str]:
        """Ids already written (streamed one part at a time: only the id column is read);
        `not_done(error)`: error rows it selects are not done (they will be asked again)."""
        done: set[str] = set()
        for path in self.parts():
            with self.data.fs.open_input_file(path) as f:
                t = pq.read_table(f, columns=["id"] + (["error"] if not_done else []))
            ids = t.column("id").to_pylist()
            if not_done:
                ids = [i for i, e in zip(ids, t.column("error").to_pylist(), strict=True)
                       if not (e and not_done(e))]
            done.update(ids)
        return done

    def drop_rows(self, drop: Callable[[str], bool]) -> int:
        """Rewrite every part without its error rows that `drop(error)` selects; returns how
        many went. A part is replaced whole (or deleted when nothing is left), so a crash
        leaves each part as it was or without those rows: they are never half gone."""
        dropped = 0
        for path in self.parts():
            with self.data.fs.open_input_file(path) as f:  # the error column decides
                errors = pq.read_table(f, columns=["error"]).column("error").to_pylist()
            gone = [bool(e) and drop(e) for e in errors]
            if not any(gone):
                continue
            with self.data.fs.open_input_file(path) as f:
                keep = renamed(pq.read_table(f)).filter(pa.array([not g for g in gone]))
            if keep.num_rows:
                write_part(self.data.join(path.rsplit("/", 1)[-1]), keep)
            else:
                self.data.fs.delete_file(path)
            dropped += sum(gone)
        return dropped

    def batches(self, columns: list[str], missing_ok: bool = False):
        """Record batches of the given columns over every part, one part at a time (a part
        with RENAMED columns gives them under today's names); `missing_ok`: a part written
        before a column existed gives the columns it has."""
        for path in self.parts():
            with self.data.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                cols = [_OLD[c] if c not in names and _OLD.get(c) in names else c
                        for c in columns]
                if missing_ok:
                    cols = [c for c in cols if c in names]
                for b in pf.iter_batches(columns=cols):
                    yield renamed(b)

    def upgrade(self) -> int:
        """Rewrite the parts written with RENAMED columns under today's names (each part
        replaced whole, as `drop_rows` does); returns how many were rewritten. Then
        `data/_columns` marks the folder as done, so later runs read no part for this."""
        marker = self.data.join(COLUMNS_MARKER)
        if marker.info().type != pafs.FileType.NotFound:
            return 0
        n = 0
        for path in self.parts():
            with self.data.fs.open_input_file(path) as f:
                if not any(c in RENAMED for c in pq.read_schema(f).names):
                    continue
            with self.data.fs.open_input_file(path) as f:
                write_part(self.data.join(path.rsplit("/", 1)[-1]), renamed(pq.read_table(f)))
            n += 1
        write_bytes(marker, b"prediction, reference\n")  # after every part: a crash redoes it
        return n

    def write_text(self, name: str, text: str) -> None:
        write_bytes(self.loc.join(name), text.encode())

    def read_text(self, name: str) -> str | None:
        try:
            return read_bytes(self.loc.join(name)).decode()
        except FileNotFoundError:
            return None


@dataclass
class PartWriter:
    """Buffers output batches and writes a part file every `rows_per_part` rows or
    `flush_seconds`, whichever comes first; a crash loses at most that much work."""

    out: OutputFolder
    schema: pa.Schema
    rows_per_part: int = 1000
    flush_seconds: float = 30.0
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    written: int = 0
    _buf: list = field(default_factory=list)
    _rows: int = 0
    _seq: int = 0
    _last: float = field(default_factory=time.monotonic)

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows:
            self._buf.append(batch.select(self.schema.names).cast(self.schema))
            self._rows += batch.num_rows
        if self._rows >= self.rows_per_part or time.monotonic() - self._last > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        write_part(self.out.data.join(f"part-{self.run}-{self._seq:05d}.parquet"),
                   pa.concat_tables(self._buf))
        self.written += self._rows
        self._buf, self._rows, self._seq = [], 0, self._seq + 1


def write_part(loc: Location, table: pa.Table) -> None:
    """A part file written whole (pipeline.storage.write_bytes)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(loc, sink.getvalue())
