"""Tests of the decode stage without Ray: good images resize like the model's preprocessing,
and every kind of bad input becomes a reason, not an exception."""

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from mqt.vision import preprocess
from pipeline.decode import (
    DECODED_SCHEMA,
    DecodeError,
    decode_batch,
    decode_image,
    pixels_to_image,
)


def encoded(fmt: str = "PNG", size=(40, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def corrupted(data: bytes) -> bytes:
    """Zeros over the middle of the compressed pixel data: the header still reads."""
    mid = len(data) // 2
    return data[:mid] + b"\x00" * 50 + data[mid + 50:]


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"),
                                      ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB")])
def test_good_images_become_square_rgb(fmt, mode):
    out = decode_image(encoded(fmt, mode=mode), size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_decoded_pixels_match_the_models_preprocessing():
    class Enc:  # what preprocess reads from a vision encoder
        image_size, image_mean, image_std = 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    data = encoded(size=(50, 30))
    direct = preprocess([Image.open(io.BytesIO(data))], Enc())
    via_stage = preprocess([pixels_to_image(decode_image(data, 16).tobytes())], Enc())
    assert torch.allclose(direct, via_stage)


def photo(width: int, height: int, mode: str = "RGB") -> bytes:
    """A smooth JPEG (gradients and a little noise, as photos are) of width x height."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255
    rgb += np.random.default_rng(1).normal(0, 4, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).convert(mode).save(buf, "JPEG",
                                                                          quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_large_jpeg_decoded_at_a_reduced_scale_is_the_full_decode_resampled(mode):
    data = photo(1600, 1000, mode)  # draft decodes it at 1/4 scale (400 x 250 >= 224)
    fast, full = decode_image(data, 224), decode_image(data, 224, draft=False)
    assert fast.shape == full.shape == (224, 224, 3)
    diff = np.abs(fast.astype(int) - full.astype(int))
    assert diff.max() > 0  # another path: libjpeg scaled the DCT
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4  # resampling, not content
    small = photo(300, 200)  # under twice the target: decoded in full either way
    assert np.array_equal(decode_image(small, 224), decode_image(small, 224, draft=False))


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is a text file, not an image\n" * 4, "not an image"),
    (encoded()[:60], "truncated"),
    (encoded("JPEG")[:300], "truncated"),
    (corrupted(encoded()), "corrupt"),
])
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, size=16)


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_image(encoded(size=(100, 100)), size=16, max_pixels=5000)


def rows(**over):
    base = {"id": "a", "path": None, "image": None, "task": "caption", "question": "",
            "options": None, "error": None}
    return {**base, **over}


def test_decode_batch_turns_failures_into_error_rows(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encoded())
    batch = pa.Table.from_pylist([
        rows(id="bytes", image=encoded("JPEG")),
        rows(id="path", path=str(good)),
        rows(id="missing", path=str(tmp_path / "nope.png")),
        rows(id="zero", image=b""),
        rows(id="earlier", path=str(good), error="unknown task 'x'"),
    ])
    out = decode_batch(batch, image_size=8).to_pylist()
    assert decode_batch(batch, image_size=8).schema == DECODED_SCHEMA
    assert [r["id"] for r in out] == ["bytes", "path", "missing", "zero", "earlier"]
    assert [len(r["pixels"] or b"") for r in out] == [8 * 8 * 3, 8 * 8 * 3, 0, 0, 0]
    assert out[2]["error"].startswith("missing file") and "empty" in out[3]["error"]
    assert out[4]["error"] == "unknown task 'x'" and out[0]["error"] is None
