"""The common `Example` record and the easy-vqa dataset (VQA and captions) built on it.

easy-vqa (pip `easy-vqa`, MIT) ships 4000 train + 1000 test 64x64 PNGs, each holding one
coloured shape on a light background, and 38,575 + 9,673 question/answer pairs over 13
answers. This module turns them into `Example`s:

- task "vqa": every question of the package, its kind ("color", "shape", "yesno") read off
  the answer;
- task "caption": "a red circle", from the colour and shape facts that the image's own
  questions establish; images whose questions do not fix both are dropped (`caption_facts`
  says which);
- task "mc": the VQA questions with 4 candidate answers of the same kind.

Images are loaded lazily (`Example.load_image()`), so listing 48k examples costs no decoding.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
from PIL import Image

from mqt.tasks import TASKS

# The tasks of the registry (mqt/tasks.py) that easy-vqa builds examples for; a mosaic
# builds "vqa" and "mc" of them. A task the registry lacks is an error at import.
TASK_NAMES = ("caption", "vqa", "mc")
if missing := sorted(set(TASK_NAMES) - set(TASKS)):
    raise ImportError(f"mqt.data builds tasks the registry lacks: {missing}")
SPLITS = ("train", "test")
# The package's palette, exact RGB values (each shape is drawn in one flat colour).
COLOR_RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
COLORS = tuple(COLOR_RGB)
SHAPES = ("circle", "rectangle", "triangle")
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class Example:
    """One image with one question (or a caption target) and its reference answer.

    `image` is an RGB PIL image or a zero-argument callable returning one (lazy; a
    `functools.partial` of a module-level function, so examples pickle). `meta` holds
    "source", "kind" and, for mosaics, "grid" and the cell layout, so evaluation can
    break accuracy down per kind. It is a dict: do not mutate it.
    """

    id: str
    # Left out of ==: lazy loaders (partials) never compare equal; id and meta name the source.
    image: Image.Image | Callable[[], Image.Image] = field(compare=False)
    task: str  # one of TASK_NAMES
    question: str  # "" for captions
    answer: str
    options: tuple[str, ...] = ()  # candidate answers for task "mc", the answer among them
    meta: dict = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """The RGB image, decoding it now if it is lazy."""
        return self.image if isinstance(self.image, Image.Image) else self.image()


def stable_rng(*key: object) -> np.random.Generator:
    """A generator seeded from a key, independent of Python's per-process str hashing."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def mc_options(answer: str, space: Sequence[str], rng: np.random.Generator, k: int = 4):
    """`k` candidates (fewer if the space is smaller): the answer and distinct distractors,
    in a shuffled order."""
    others = [a for a in space if a != answer]
    picked = [others[i] for i in rng.permutation(len(others))[: k - 1]]
    options = [answer, *picked]
    return tuple(options[i] for i in rng.permutation(len(options)))


def to_mc(ex: Example, space: Sequence[str], rng: np.random.Generator) -> Example:
    """The multiple-choice twin of a VQA example: same image and question, with options."""
    options = mc_options(ex.answer, space, rng)
    return Example(f"{ex.id}/mc", ex.image, "mc", ex.question, ex.answer, options, ex.meta)


# ---- the package's raw data -------------------------------------------------------------


@lru_cache(maxsize=2)
def _questions(split: str) -> tuple[tuple[str, str, int], ...]:
    """(question, answer, image id) triples of a split, in the package's order."""
    import easy_vqa  # imported here so that `import mqt.data` works without the data extra

    texts, answers, ids = {"train": easy_vqa.get_train_questions,
                           "test": easy_vqa.get_test_questions}[_check_split(split)]()
    return tuple(zip(texts, answers, ids, strict=True))


@lru_cache(maxsize=2)
def image_paths(split: str) -> dict[int, str]:
    """Image id -> PNG path of a split."""
    import easy_vqa  # the data extra: optional

    getter = {"train": easy_vqa.get_train_image_paths, "test": easy_vqa.get_test_image_paths}
    return dict(sorted(getter[_check_split(split)]().items()))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def load_rgb(path: str) -> Image.Image:
    """Decode a PNG into a detached RGB image (the file is closed before returning)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def easyvqa_answers() -> tuple[str, ...]:
    """The package's 13-answer vocabulary, in its own order."""
    import easy_vqa  # the data extra: optional

    return tuple(easy_vqa.get_answers())


def question_kind(answer: str) -> str:
    """"color", "shape" or "yesno": every easy-vqa answer names exactly one of these."""
    if answer in COLOR_RGB:
        return "color"
    if answer in SHAPES:
        return "shape"
    if answer in YES_NO:
        return "yesno"
    raise ValueError(f"not an easy-vqa answer: {answer!r}")


# ---- captions from question facts -------------------------------------------------------


def _facts_of(question: str, answer: str) -> tuple[set[str], set[str]]:
    """(words known true, words known false) about the image from one QA pair.

    "what color is the triangle?" -> blue says both "blue" and "triangle"; a yes/no question
    says its colour/shape words are present, or absent, once its negation is undone.
    """
    words = set(re.findall(r"[a-z]+", question)) & (set(COLORS) | set(SHAPES))
    if answer not in YES_NO:
        return words | {answer}, set()
    negated = bool({"not", "no"} & set(question.split()))
    present = (answer == "yes") != negated
    return (words, set()) if present else (set(), words)


def _one_of(space: Iterable[str], true: set[str], false: set[str]) -> str | None:
    """The single value of `space` the facts fix, directly or by elimination; else None."""
    space = set(space)
    known = true & space
    if len(known) == 1:
        return known.pop()
    left = space - false
    return left.pop() if not known and len(left) == 1 else None


@lru_cache(maxsize=2)
def caption_facts(split: str) -> dict[int, tuple[str | None, str | None]]:
    """Image id -> (colour, shape) as fixed by that image's questions (None if not fixed)."""
    true: dict[int, set[str]] = {i: set() for i in image_paths(split)}
    false: dict[int, set[str]] = {i: set() for i in image_paths(split)}
    for question, answer, image_id in _questions(split):
        t, f = _facts_of(question, answer)
        true[image_id] |= t
        false[image_id] |= f
    return {i: (_one_of(COLORS, true[i], false[i]), _one_of(SHAPES, true[i], false[i]))
            for i in true}


def captioned_images(split: str) -> dict[int, tuple[str, str]]:
    """Image id -> (colour, shape) for the images whose colour and shape are both known."""
    return {i: (c, s) for i, (c, s) in caption_facts(split).items() if c and s}


# ---- examples ---------------------------------------------------------------------------


def _vqa_examples(split: str, keep: set[int]) -> list[Example]:
    paths = image_paths(split)
    return [
        Example(f"easyvqa/{split}/q{n}", partial(load_rgb, paths[image_id]), "vqa", question,
                answer, meta={"source": "easy-vqa", "kind": question_kind(answer),
                              "image_id": f"{split}/{image_id}"})
        for n, (question, answer, image_id) in enumerate(_questions(split)) if image_id in keep
    ]


def _caption_examples(split: str, keep: set[int]) -> list[Example]:
    paths = image_paths(split)
    return [
        Example(f"easyvqa/{split}/img{i}/caption", partial(load_rgb, paths[i]), "caption", "",
                f"a {color} {shape}", meta={"source": "easy-vqa", "kind": "caption",
                                            "image_id": f"{split}/{i}"})
        for i, (color, shape) in captioned_images(split).items() if i in keep
    ]


def _mc_examples(vqa: list[Example], split: str) -> list[Example]:
    spaces = {"color": COLORS, "shape": SHAPES, "yesno": YES_NO}
    return [to_mc(ex, spaces[ex.meta["kind"]], stable_rng("easyvqa-mc", split, ex.id))
            for ex in vqa]


def easyvqa_examples(
    split: str, tasks: Sequence[str] = ("vqa", "caption"), limit: int | None = None
) -> list[Example]:
    """easy-vqa examples of `split` for `tasks` (any of "vqa", "caption", "mc"), in that order.

    `limit` keeps only the first `limit` images (by id) with all their questions, so every
    task sees the same images. The package's own train/test split is kept as is.
    """
    unknown = set(tasks) - set(TASK_NAMES)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; expected some of {TASK_NAMES}")
    keep = set(list(image_paths(split))[:limit])
    vqa = _vqa_examples(split, keep) if {"vqa", "mc"} & set(tasks) else []
    built = {"vqa": lambda: vqa, "caption": lambda: _caption_examples(split, keep),
             "mc": lambda: _mc_examples(vqa, split)}
    return [ex for task in tasks for ex in built[task]()]
