"""The CPU decode stage: image bytes (or a path) -> RGB pixels sized for the vision encoder.

`decode_image` turns encoded bytes into an (S, S, 3) uint8 array, resized and centre-cropped
as `mqt.vision.preprocess` does, so the engine's own preprocessing is then a no-op resize.
A JPEG much larger than S is decoded at a reduced scale (`Image.draft`: libjpeg's 1/2,
1/4 or 1/8 DCT scaling, never below S on the short side) before that resize: a
12-megapixel photo costs a fraction of a full decode (python -m bench.decode), for pixels
that differ from a full decode's by the resampling only.
Anything wrong with an image raises `DecodeError` with a short reason; `decode_batch` (the
`map_batches` function) turns that into an error row, so one bad file never stops a job.
Pixels travel as raw bytes (S * S * 3) in a binary column: fixed size, no tensor types.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from pipeline.serve.images import ImageError, ImageRules, fetch
from pipeline.storage import StorageArgs, locate, read_bytes

# Pillow's own default (~89 M pixels) only warns; this job sets its limit explicitly.
DEFAULT_MAX_PIXELS = 50_000_000
HTTP_MAX_BYTES = 50_000_000  # an image downloaded from an allowed host

DECODED_SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("question", pa.string()),
    ("options", pa.list_(pa.string())), ("answer", pa.string()), ("pixels", pa.binary()),
    ("error", pa.string()), ("m", pa.int32()), ("max_new_tokens", pa.int32()),
])  # m and max_new_tokens: a row's own (None: the job's policy and the task's length)


class DecodeError(ValueError):
    """An image that cannot be used; the message is the reason written to the error column."""


def decode_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: bool = True) -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, or DecodeError with the reason.
    `draft`: a large JPEG is decoded at the smallest DCT scale that keeps its short side
    >= size."""
    if not data:
        raise DecodeError("empty file (zero bytes)")
    img = _open(data, max_pixels)
    if draft and img.format == "JPEG" and min(img.size) >= 2 * size:
        short = min(img.size)
        img.draft("RGB", (math.ceil(img.width * size / short),
                          math.ceil(img.height * size / short)))
    try:
        img.load()  # decoding happens here: truncated data fails now, not later
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"corrupt or truncated image: {e}") from None
    return np.asarray(resize_for_encoder(img.convert("RGB"), size), dtype=np.uint8)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header, and refuse huge images before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"too many pixels: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"corrupt or truncated image header: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(f"too many pixels: {w}x{h} > {max_pixels} (max_pixels)")
    return img


def resize_for_encoder(img: Image.Image, size: int) -> Image.Image:
    """Short side to `size` (bicubic), then a centre crop: what mqt.vision.preprocess does."""
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_row(row: dict, size: int, max_pixels: int, storage: StorageArgs | None = None,
               hosts: tuple[str, ...] = ()) -> tuple[bytes | None, str | None]:
    """(pixels, error) for one source row; a row that already has an error keeps it. An
    http(s) image is fetched only from `hosts`, never from a private address
    (pipeline.serve.images)."""
    if row.get("error"):
        return None, row["error"]
    try:
        data = row.get("image")
        if data is None and row["path"].lower().startswith(("http://", "https://")):
            data = fetch(row["path"], ImageRules(schemes=["http", "https"], hosts=list(hosts),
                                                 max_bytes=HTTP_MAX_BYTES))
        elif data is None:
            data = read_bytes(locate(row["path"], storage))
        return decode_image(data, size, max_pixels).tobytes(), None
    except ImageError as e:
        return None, f"{e}{'' if hosts else ' (image_hosts names the hosts allowed)'}"
    except FileNotFoundError:
        return None, f"missing file: {row.get('path')}"
    except DecodeError as e:
        return None, str(e)
    except OSError as e:  # unreadable: permissions, a folder, a broken link
        return None, f"cannot read {row.get('path')}: {e}"


def decode_batch(batch: pa.Table, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 storage: StorageArgs | None = None, hosts: tuple[str, ...] = ()) -> pa.Table:
    """`map_batches` function: source rows -> DECODED_SCHEMA rows (raw bytes dropped)."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # explicit, in every worker process
    out = []
    for row in batch.to_pylist():
        pixels, error = decode_row(row, image_size, max_pixels, storage, hosts)
        out.append({"id": row["id"], "task": row["task"], "question": row["question"],
                    "options": row.get("options"), "answer": row.get("answer"),
                    "pixels": pixels, "error": error, "m": row.get("m"),
                    "max_new_tokens": row.get("max_new_tokens")})
    return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


def pixels_to_image(pixels: bytes) -> Image.Image:
    """The inverse of the decode stage's pixel column: raw RGB bytes of a square -> PIL."""
    size = math.isqrt(len(pixels) // 3)
    if size * size * 3 != len(pixels):
        raise ValueError(f"{len(pixels)} bytes are not a square RGB image")
    return Image.fromarray(np.frombuffer(pixels, dtype=np.uint8).reshape(size, size, 3))
