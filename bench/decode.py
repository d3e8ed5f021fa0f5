"""The decode stage on large photos: JPEG decode at a reduced DCT scale against a full
decode (a benchmark).

    python -m bench.decode docs=docs/bench

Generates `images` JPEGs of `width` x `height` (12 megapixels by default: smooth gradients
and noise, as photos are, quality 90) and times `pipeline.decode.decode_image` on them to
the encoder's `size`, with `draft` (what the decode stage does) and without (a full decode,
then the resize), alternating the two, `repeats` times, in this one process. Rows/s of the
stage (one core), median (min..max) over the repeats, the speed-up, and the pixels'
difference between the two. Writes bench.json, decode.md and decode.png to `output` (and
`docs`).
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.cli import run_module
from mqt.configtree import save_config
from pipeline.decode import decode_image

COMMAND = "python -m bench.decode docs=docs/bench"


@dataclass
class Config:
    images: int = 12
    width: int = 4000
    height: int = 3000
    size: int = 224  # the encoder's input (MobileNetV2's)
    repeats: int = 3
    output: str = "runs/bench-decode"
    docs: str = ""


def validate(cfg: Config) -> None:
    if cfg.images < 1 or cfg.repeats < 1 or min(cfg.width, cfg.height) < cfg.size:
        raise ValueError("images >= 1, repeats >= 1, and width, height >= size")


def photo(width: int, height: int, seed: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = np.random.default_rng(seed).uniform(0, 6.28, 3)
    rgb = np.stack([np.sin(x / width * 6 + phase[0]), np.cos(y / height * 5 + phase[1]),
                    np.sin((x + y) / (width + height) * 7 + phase[2])], -1) * 100 + 128
    rgb += np.random.default_rng(seed).normal(0, 6, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main(cfg: Config) -> dict:
    out = Path(cfg.output)
    save_config(cfg, out)
    data = [photo(cfg.width, cfg.height, i) for i in range(cfg.images)]
    rates: dict[str, list[float]] = {"full": [], "draft": []}
    for rep in range(cfg.repeats):
        for how in ("full", "draft") if rep % 2 == 0 else ("draft", "full"):
            t0 = time.perf_counter()
            for d in data:
                decode_image(d, cfg.size, draft=how == "draft")
            rates[how].append(len(data) / (time.perf_counter() - t0))
    diffs = [np.abs(decode_image(d, cfg.size).astype(int)
                    - decode_image(d, cfg.size, draft=False).astype(int)) for d in data]
    result = {"rates": rates, "mb_per_image": statistics.mean(len(d) for d in data) / 2**20,
              "mean_abs_diff": float(np.mean([x.mean() for x in diffs])),
              "max_abs_diff": int(max(x.max() for x in diffs))}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    text = table(result, cfg)
    print(text)
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "decode.md").write_text(text)
        plot(result, folder / "decode.png")
    return result


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}..{max(xs):.2f})"


def table(result: dict, cfg: Config) -> str:
    full, draft = result["rates"]["full"], result["rates"]["draft"]
    ratio = [d / f for d, f in zip(draft, full, strict=True)]
    mp = cfg.width * cfg.height / 1e6
    return "\n".join([
        f"# The decode stage on {mp:.0f}-megapixel JPEGs", "",
        f"Command: `{COMMAND}` (images={cfg.images} of {cfg.width}x{cfg.height}, "
        f"{result['mb_per_image']:.1f} MB each on average, to {cfg.size}x{cfg.size}; "
        f"repeats={cfg.repeats}, one process, one core).", "",
        "Rows/s of `pipeline.decode.decode_image`, median (min..max) over the repeats:", "",
        "| decode | rows/s |", "|---|---:|",
        f"| full, then resize (before) | {_spread(full)} |",
        f"| at a reduced DCT scale (`Image.draft`), then resize (now) | {_spread(draft)} |",
        f"| speed-up | {_spread(ratio)}x |", "",
        f"The two give pixels {result['mean_abs_diff']:.2f} apart on average (of 255; at "
        f"most {result['max_abs_diff']}): the resampling differs, not the content.", ""])


def plot(result: dict, path: Path) -> None:
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["full decode", "draft decode"]
    values = [result["rates"]["full"], result["rates"]["draft"]]
    ax.bar(names, [statistics.median(v) for v in values], color=["grey", "tab:blue"])
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", alpha=0.6)
    ax.set(ylabel="rows/s (one core)", title="decode stage, large JPEGs")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.decode"))
