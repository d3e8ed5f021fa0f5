"""Where a job's files live: local paths, `s3://` and any other fsspec URL, as pyarrow filesystems.

`locate(uri, storage)` turns a path or URL into a `Location(fs, path, uri)`: a pyarrow
filesystem and the path inside it. Local paths get pyarrow's LocalFileSystem with an
absolute path; `s3://bucket/key` gets pyarrow's own S3FileSystem (the fastest here), pointed
at `storage.endpoint_url` when set (a MinIO / moto / on-prem S3); any other scheme that
fsspec knows (gs://, az://, http://, memory://…) is wrapped with FSSpecHandler. Credentials
come from the usual environment (AWS_ACCESS_KEY_ID, …), never from job configs. Filesystems
are picklable, so the same `Location` travels to Ray workers. No Ray import here.
"""

from __future__ import annotations

import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs


@dataclass
class StorageArgs:
    """How to reach remote storage. Empty endpoint_url = the provider's default (AWS for s3)."""

    endpoint_url: str = ""  # e.g. http://127.0.0.1:9000 for a local S3-protocol server
    region: str = "us-east-1"

    def key(self) -> tuple[str, str]:
        return (self.endpoint_url, self.region)


@dataclass(frozen=True)
class Location:
    """A path inside a filesystem; `uri` is what the user wrote (for messages and ids)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def scheme(self) -> str:
        """How paths of this filesystem are written as URLs: "" locally, else e.g. "s3://"."""
        return "" if self.is_local else scheme_of(self.uri) + "://"

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, self.scheme + path)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    @property
    def ray_filesystem(self):
        """None for local paths (Ray's own default), else this filesystem."""
        return None if self.is_local else self.fs


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def locate(uri: str, storage: StorageArgs | None = None) -> Location:
    """The filesystem and inner path of a local path or URL (nothing is contacted yet)."""
    storage = storage or StorageArgs()
    scheme = scheme_of(uri)
    if scheme in ("", "file"):
        local = uri.split("://", 1)[1] if scheme else uri
        return Location(pafs.LocalFileSystem(), str(Path(local).expanduser().absolute()), uri)
    fs = _filesystem(scheme, *storage.key())
    return Location(fs, uri.split("://", 1)[1].rstrip("/"), uri.rstrip("/"))


@lru_cache(maxsize=16)
def _filesystem(scheme: str, endpoint_url: str, region: str) -> pafs.FileSystem:
    if scheme in ("s3", "s3a"):
        return _s3(endpoint_url, region)
    import fsspec  # only for URLs other than s3:// and local paths

    try:
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as e:
        raise ValueError(f"no filesystem for {scheme}:// ({e})") from None


def _s3(endpoint_url: str, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region}
    if endpoint_url:
        scheme, _, host = endpoint_url.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kwargs)


def read_bytes(loc: Location) -> bytes:
    if loc.is_local:  # the common case, without pyarrow's stream overhead
        return Path(loc.path).read_bytes()
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def write_bytes(loc: Location, data: bytes) -> None:
    """Whole-file write. Local: a hidden temporary file renamed into place, so a reader (or a
    resumed job) never sees half a file; S3 objects appear whole by themselves."""
    if loc.is_local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(loc.path).with_name(f".{Path(loc.path).name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(loc.path)
        return
    with loc.fs.open_output_stream(loc.path) as f:
        f.write(data)


@contextmanager
def open_whole(loc: Location):
    """A binary stream to write a file that appears whole or not at all, as `write_bytes`
    but streamed (for files too big to hold): a hidden temporary moved into place when the
    block ends without an error (remote: an object copied to its name), removed otherwise."""
    if not loc.is_local:
        tmp = posixpath.join(posixpath.dirname(loc.path), f".{posixpath.basename(loc.path)}.tmp")
        try:
            with loc.fs.open_output_stream(tmp) as f:
                yield f
            loc.fs.move(tmp, loc.path)
        finally:
            if loc.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                loc.fs.delete_file(tmp)
        return
    path = Path(loc.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def list_files(loc: Location) -> list[str]:
    """Paths of all files below a folder (recursive), sorted; [] for a missing folder."""
    sel = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    return sorted(i.path for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.File)
