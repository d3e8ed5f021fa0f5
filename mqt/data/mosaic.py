"""Mosaic VQA: 2x2 and 3x3 grids of easy-vqa shapes and scikit-learn digits.

A benchmark where the number of visual tokens must matter: one 224x224 image holds up to
nine small cells, and each question is about one cell ("what digit is in row 2, column 3?",
"what color is the shape in the top-left cell?") or about all of them ("how many red shapes
are there?"). Answers are correct by construction: every cell records its source image and
its facts (`Cell`), and the questions are read off that list.

Split rules: a train mosaic uses only easy-vqa *train* images and the even-indexed digits of
`load_digits()`; a test mosaic only easy-vqa *test* images and the odd-indexed digits, so no
source image of a test mosaic is ever seen in training. Shape cells use only easy-vqa images
whose colour and shape are known (`captioned_images`).

Determinism: mosaic `i` of (split, seed) is drawn from its own generator seeded by
(split, seed, i), so it is byte-identical across runs and independent of `n_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
from PIL import Image

from mqt.data.easyvqa import (
    COLORS,
    SHAPES,
    TASK_NAMES,
    Example,
    captioned_images,
    image_paths,
    load_rgb,
    stable_rng,
    to_mc,
)

DIGITS = tuple(str(d) for d in range(10))
CORNERS = {(1, 1): "the top-left cell", (1, 2): "the top-right cell",
           (2, 1): "the bottom-left cell", (2, 2): "the bottom-right cell"}
MOSAIC_KINDS = ("cell_digit", "cell_color", "cell_shape", "count")
SHAPE_FRACTION = 0.6  # share of shape cells (the rest are digits)
PALETTE_SIZE = 2  # colours per mosaic: colours repeat, so counts are not nearly always 1
LINE_RGB = (160, 160, 160)  # the grid lines, so cell borders are visible at any resolution
INK_RGB = np.array([20.0, 20.0, 20.0])  # digits are near-black ink: never a "shape" colour


@dataclass(frozen=True)
class Cell:
    """One cell of a mosaic: what it shows, where it came from, and how it is drawn."""

    row: int  # 1-based, top to bottom
    col: int  # 1-based, left to right
    kind: str  # "shape" or "digit"
    source: str  # "easy-vqa:train/17" or "digits:124" (index into load_digits())
    color: str | None = None  # shape cells
    shape: str | None = None  # shape cells
    digit: int | None = None  # digit cells
    scale: float = 1.0  # digit cells: glyph side / cell side
    offset: tuple[float, float] = (0.5, 0.5)  # digit cells: glyph position in the free space
    paper: tuple[int, int, int] = (255, 255, 255)  # digit cells: background colour


# ---- sources ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as (images (N, 8, 8) in [0, 1], labels (N,))."""
    from sklearn.datasets import load_digits  # optional dependency, imported on use

    data = load_digits()
    return data.images / 16.0, data.target


def digit_indices(split: str) -> np.ndarray:
    """Indices into load_digits() of a split: even for train, odd for test (disjoint halves)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return np.arange(split == "test", len(_digits()[1]), 2)


@lru_cache(maxsize=2)
def _shape_pools(split: str) -> dict[str, tuple[tuple[int, str], ...]]:
    """Colour -> (image id, shape) of the split's easy-vqa images whose facts are known."""
    facts = captioned_images(split).items()
    return {color: tuple((i, s) for i, (c, s) in facts if c == color) for color in COLORS}


# ---- layout -----------------------------------------------------------------------------


def _shape_cell(row, col, split: str, palette: list[str], rng: np.random.Generator) -> Cell:
    color = palette[rng.integers(len(palette))]
    pool = _shape_pools(split)[color]
    image_id, shape = pool[rng.integers(len(pool))]
    return Cell(row, col, "shape", f"easy-vqa:{split}/{image_id}", color=color, shape=shape)


def _digit_cell(row, col, split: str, palette: list[str], rng: np.random.Generator) -> Cell:
    del palette  # digits are inked near-black, never in a shape colour
    idx = int(rng.choice(digit_indices(split)))
    paper = tuple(int(v) for v in rng.integers(225, 256, size=3))  # light, like easy-vqa's
    return Cell(row, col, "digit", f"digits:{idx}", digit=int(_digits()[1][idx]),
                scale=float(rng.uniform(0.55, 0.9)), offset=tuple(rng.random(2).tolist()),
                paper=paper)


def _cell_kinds(n: int, rng: np.random.Generator) -> list[str]:
    """Shape or digit per cell, with at least one of each so every question kind applies."""
    kinds = ["shape" if r < SHAPE_FRACTION else "digit" for r in rng.random(n)]
    if len(set(kinds)) == 1:
        flip = int(rng.integers(n))
        kinds[flip] = "digit" if kinds[flip] == "shape" else "shape"
    return kinds


def mosaic_layout(split: str, seed: int, index: int, grid_sizes: Sequence[int] = (2, 3)):
    """(grid, cells) of mosaic `index`: drawn from a generator keyed by (split, seed, index)."""
    rng = stable_rng("mosaic", split, seed, index)
    grid = int(grid_sizes[rng.integers(len(grid_sizes))])
    palette = [str(c) for c in rng.choice(COLORS, PALETTE_SIZE, replace=False)]
    makers = {"shape": _shape_cell, "digit": _digit_cell}
    kinds = _cell_kinds(grid * grid, rng)
    cells = tuple(makers[k](n // grid + 1, n % grid + 1, split, palette, rng)
                  for n, k in enumerate(kinds))
    return grid, cells


# ---- rendering --------------------------------------------------------------------------


def _shape_tile(cell: Cell, w: int, h: int) -> Image.Image:
    split, image_id = cell.source.removeprefix("easy-vqa:").split("/")
    return load_rgb(image_paths(split)[int(image_id)]).resize((w, h), Image.Resampling.BILINEAR)


def _digit_tile(cell: Cell, w: int, h: int) -> Image.Image:
    """The 8x8 glyph upscaled to `scale` of the cell, inked onto paper at `offset`."""
    side = max(8, round(cell.scale * min(w, h)))
    ink = _digits()[0][int(cell.source.removeprefix("digits:"))]  # (8, 8) in [0, 1]
    glyph = Image.fromarray(np.uint8(np.round(ink * 255)))
    glyph = glyph.resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(glyph, np.float64)[..., None] / 255  # (side, side, 1)
    tile = np.ones((h, w, 3)) * np.array(cell.paper, np.float64)  # (h, w, 3)
    y, x = (round(cell.offset[0] * (h - side)), round(cell.offset[1] * (w - side)))
    tile[y:y + side, x:x + side] = tile[y:y + side, x:x + side] * (1 - alpha) + INK_RGB * alpha
    return Image.fromarray(np.uint8(np.round(tile)))


def _cell_box(row: int, col: int, grid: int, px: int, line: int = 1):
    """(left, top, right, bottom) of a cell, `line` px in from the grid lines on each side."""
    edges = [round(k * px / grid) for k in range(grid + 1)]
    return (edges[col - 1] + line, edges[row - 1] + line, edges[col] - line, edges[row] - line)


@lru_cache(maxsize=32)
def _render(cells: tuple[Cell, ...], grid: int, px: int) -> Image.Image:
    canvas = Image.new("RGB", (px, px), LINE_RGB)
    for cell in cells:
        left, top, right, bottom = _cell_box(cell.row, cell.col, grid, px)
        draw = _shape_tile if cell.kind == "shape" else _digit_tile
        canvas.paste(draw(cell, right - left, bottom - top), (left, top))
    return canvas


def render_mosaic(cells: tuple[Cell, ...], grid: int, px: int = 224) -> Image.Image:
    """The mosaic as a px x px RGB image (a fresh copy: the several questions of one mosaic
    share one cached render)."""
    return _render(cells, grid, px).copy()


# ---- questions --------------------------------------------------------------------------


def position(row: int, col: int, grid: int) -> str:
    """"the top-left cell" on a 2x2 grid, "row 2, column 3" on larger ones."""
    return CORNERS[(row, col)] if grid == 2 else f"row {row}, column {col}"


def _cell_question(kind: str, cell: Cell, grid: int) -> tuple[str, str]:
    where = position(cell.row, cell.col, grid)
    return {
        "cell_digit": (f"what digit is in {where}?", str(cell.digit)),
        "cell_color": (f"what color is the shape in {where}?", str(cell.color)),
        "cell_shape": (f"what shape is in {where}?", str(cell.shape)),
    }[kind]


def _count_question(cells: tuple[Cell, ...], rng: np.random.Generator):
    """(question, answer, counted value): a colour or a shape type.

    The value is mostly that of a random shape cell (so frequent values are asked about more,
    which spreads the answers), sometimes any value (so "0" occurs).
    """
    shapes = [c for c in cells if c.kind == "shape"]
    attr, space = ("color", COLORS) if rng.random() < 0.5 else ("shape", SHAPES)
    if rng.random() < 0.8:
        value = getattr(shapes[rng.integers(len(shapes))], attr)
    else:
        value = space[rng.integers(len(space))]
    n = sum(getattr(c, attr) == value for c in shapes)
    noun = f"{value} shapes" if attr == "color" else f"{value}s"
    return f"how many {noun} are there?", str(n), value


def _mosaic_questions(split, seed, index, grid_sizes, px) -> list[Example]:
    """The four VQA examples (one per kind) of one mosaic, sharing one lazy image."""
    grid, cells = mosaic_layout(split, seed, index, grid_sizes)
    rng = stable_rng("mosaic-questions", split, seed, index)
    image = partial(render_mosaic, cells, grid, px)
    base = {"source": "mosaic", "grid": grid, "cells": cells, "mosaic": index, "seed": seed}
    out = []
    for kind in MOSAIC_KINDS[:3]:
        pool = [c for c in cells if c.kind == ("digit" if kind == "cell_digit" else "shape")]
        cell = pool[rng.integers(len(pool))]
        q, a = _cell_question(kind, cell, grid)
        meta = {**base, "kind": kind, "row": cell.row, "col": cell.col}
        out.append(Example(f"mosaic/{split}/s{seed}/{index}/{kind}", image, "vqa", q, a, (), meta))
    q, a, value = _count_question(cells, rng)
    meta = {**base, "kind": "count", "counted": value}
    out.append(Example(f"mosaic/{split}/s{seed}/{index}/count", image, "vqa", q, a, (), meta))
    return out


def answer_space(kind: str, grid: int) -> tuple[str, ...]:
    """All possible answers of a question kind on a grid (the pool of MC distractors)."""
    counts = tuple(str(n) for n in range(grid * grid + 1))
    return {"cell_digit": DIGITS, "cell_color": COLORS, "cell_shape": SHAPES,
            "count": counts}[kind]


def mosaic_answers() -> tuple[str, ...]:
    """Every answer a mosaic question can have on grids up to 3x3 (digits and counts share
    "0".."9")."""
    return (*DIGITS, *COLORS, *SHAPES)


def mosaic_examples(
    split: str,
    n_images: int,
    grid_sizes: Sequence[int] = (2, 3),
    seed: int = 0,
    image_px: int = 224,
    tasks: Sequence[str] = ("vqa",),
) -> list[Example]:
    """Four questions per mosaic for mosaics 0..n_images-1 of (split, seed), per task.

    `tasks` takes "vqa" and/or "mc" (the same questions with 4 options; a shape question
    has only 3). Images are lazy: `Example.load_image()` composes the mosaic.
    """
    if not set(tasks) <= set(TASK_NAMES) - {"caption"}:
        raise ValueError(f"mosaic tasks are 'vqa' and 'mc', got {tuple(tasks)}")
    if min(grid_sizes) < 2:
        raise ValueError(f"grid sizes must be >= 2 (a digit and a shape), got {grid_sizes}")
    vqa = [ex for i in range(n_images)
           for ex in _mosaic_questions(split, seed, i, tuple(grid_sizes), image_px)]
    mc = [to_mc(ex, answer_space(ex.meta["kind"], ex.meta["grid"]),
                stable_rng("mosaic-mc", ex.id)) for ex in vqa] if "mc" in tasks else []
    return [ex for task in tasks for ex in {"vqa": vqa, "mc": mc}[task]]
