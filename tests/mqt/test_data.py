"""Tests of the real datasets: easy-vqa (VQA, captions, MC) and the digit/shape mosaics."""

import hashlib
import pickle
import re
from collections import Counter

import easy_vqa  # noqa: F401 (of the data extra: a broken install fails, never skips)
import numpy as np
import pytest
from sklearn.datasets import load_digits

from mqt.data import (  # noqa: E402
    COLORS,
    MOSAIC_KINDS,
    SHAPES,
    Example,
    answer_space,
    caption_facts,
    captioned_images,
    digit_indices,
    easyvqa_answers,
    easyvqa_examples,
    mosaic_examples,
)
from mqt.data import mosaic as mosaic_mod  # noqa: E402
from mqt.data.easyvqa import COLOR_RGB, image_paths, load_rgb  # noqa: E402

CORNER_RC = {"top-left": (1, 1), "top-right": (1, 2), "bottom-left": (2, 1),
             "bottom-right": (2, 2)}


def _palette_color(pixels: np.ndarray) -> str:
    """The palette colour with the most exactly matching pixels: read off the image itself."""
    flat = pixels.reshape(-1, 3)
    hits = {name: int((flat == rgb).all(axis=1).sum()) for name, rgb in COLOR_RGB.items()}
    return max(hits, key=hits.get)


def _cell_of(question: str) -> tuple[int, int]:
    """(row, col) named by a mosaic question, parsed from its text alone."""
    m = re.search(r"row (\d+), column (\d+)", question)
    if m:
        return int(m[1]), int(m[2])
    return CORNER_RC[re.search(r"the (\S+) cell", question)[1]]


def _image_bytes(ex: Example) -> bytes:
    return ex.load_image().tobytes()


# ---- easy-vqa ---------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n_questions", "n_yesno", "n_images"),
                         [("train", 38575, 28407, 4000), ("test", 9673, 7136, 1000)])
def test_easyvqa_counts_match_package(split, n_questions, n_yesno, n_images):
    vqa = easyvqa_examples(split, tasks=("vqa",))
    assert len(vqa) == n_questions  # the figures of the package's own data README
    assert sum(ex.meta["kind"] == "yesno" for ex in vqa) == n_yesno
    assert len({ex.meta["image_id"] for ex in vqa}) == n_images == len(image_paths(split))
    assert len({ex.id for ex in vqa}) == len(vqa)


def test_easyvqa_kinds_and_vocabulary():
    answers = set(easyvqa_answers())
    assert answers == set(COLORS) | set(SHAPES) | {"yes", "no"} and len(answers) == 13
    vqa = easyvqa_examples("test", tasks=("vqa",))
    space = {"color": set(COLORS), "shape": set(SHAPES), "yesno": {"yes", "no"}}
    assert all(ex.answer in space[ex.meta["kind"]] for ex in vqa)
    assert Counter(ex.meta["kind"] for ex in vqa) == {"yesno": 7136, "color": 1280, "shape": 1257}


@pytest.mark.parametrize(("split", "n_captions"), [("train", 3578), ("test", 888)])
def test_caption_coverage(split, n_captions):
    caps = easyvqa_examples(split, tasks=("caption",))
    assert len(caps) == len(captioned_images(split)) == n_captions
    assert len(caps) / len(image_paths(split)) > 0.85
    assert all(re.fullmatch(r"a (\w+) (circle|rectangle|triangle)", ex.answer) for ex in caps)


def test_caption_facts_agree_with_every_question():
    facts = caption_facts("test")
    for ex in easyvqa_examples("test", tasks=("vqa",)):
        color, shape = facts[int(ex.meta["image_id"].split("/")[1])]
        if ex.meta["kind"] == "color" and color:
            assert ex.answer == color
        if ex.meta["kind"] == "shape" and shape:
            assert ex.answer == shape


def test_caption_colour_matches_the_pixels():
    # An independent check of the question-derived facts: the shape is drawn in one flat
    # palette colour, so the image itself says which colour it is.
    paths = image_paths("test")
    for image_id, (color, _) in captioned_images("test").items():
        assert _palette_color(np.asarray(load_rgb(paths[image_id]))) == color, image_id


def test_easyvqa_limit_mc_and_lazy_images():
    exs = easyvqa_examples("test", tasks=("vqa", "caption", "mc"), limit=10)
    assert {ex.meta["image_id"] for ex in exs} == {f"test/{i}" for i in range(10)}
    assert [ex.task for ex in exs] == sorted((ex.task for ex in exs), key=["vqa", "caption",
                                                                          "mc"].index)
    for ex in (e for e in exs if e.task == "mc"):
        n = {"color": 4, "shape": 3, "yesno": 2}[ex.meta["kind"]]
        assert ex.answer in ex.options and len(set(ex.options)) == len(ex.options) == n
    assert exs == easyvqa_examples("test", tasks=("vqa", "caption", "mc"), limit=10)
    image = pickle.loads(pickle.dumps(exs[0])).load_image()
    assert image.mode == "RGB" and image.size == (64, 64)


def test_easyvqa_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        easyvqa_examples("val")
    with pytest.raises(ValueError, match="unknown tasks"):
        easyvqa_examples("test", tasks=("vqa", "ocr"))


# ---- mosaics ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_mosaics():
    return mosaic_examples("train", 150, seed=0, tasks=("vqa", "mc"))


@pytest.fixture(scope="module")
def test_mosaics():
    return mosaic_examples("test", 150, seed=0)


def test_mosaics_are_deterministic(train_mosaics):
    first = [ex for ex in train_mosaics if ex.task == "vqa"][:40]
    mosaic_mod._render.cache_clear()  # re-render from scratch, not from the cache
    again = mosaic_examples("train", 10, seed=0)
    assert [(e.id, e.question, e.answer, e.meta) for e in again] == [
        (e.id, e.question, e.answer, e.meta) for e in first]
    assert [_image_bytes(e) for e in again] == [_image_bytes(e) for e in first]
    other = mosaic_examples("train", 10, seed=1)
    assert [_image_bytes(e) for e in other] != [_image_bytes(e) for e in first]


def test_mosaic_images_and_question_kinds(train_mosaics):
    vqa = [ex for ex in train_mosaics if ex.task == "vqa"]
    assert len(vqa) == 4 * 150
    assert Counter(ex.meta["kind"] for ex in vqa) == {k: 150 for k in MOSAIC_KINDS}
    assert Counter(ex.meta["grid"] for ex in vqa[::4]).keys() == {2, 3}
    image = vqa[0].load_image()
    assert image.mode == "RGB" and image.size == (224, 224)
    assert mosaic_examples("test", 1, image_px=96)[0].load_image().size == (96, 96)
    for ex in vqa:
        uses_rows = re.search(r"\brow \d", ex.question) is not None
        assert uses_rows == (ex.meta["grid"] == 3 and ex.meta["kind"] != "count")


def test_test_mosaics_never_use_training_sources(train_mosaics, test_mosaics):
    def sources(exs):
        return {c.source for ex in exs for c in ex.meta["cells"]}

    train, test = sources(train_mosaics), sources(test_mosaics)
    assert train.isdisjoint(test)
    for split, srcs in (("train", train), ("test", test)):
        digits = {int(s.split(":")[1]) for s in srcs if s.startswith("digits:")}
        assert digits <= set(digit_indices(split).tolist())
        assert {s.split(":")[1].split("/")[0] for s in srcs if s.startswith("easy-vqa")} == {split}
    assert set(digit_indices("train").tolist()).isdisjoint(digit_indices("test").tolist())
    # Disjoint by content too, not only by name: no test source image equals a train one.
    def pixel_hashes(srcs):
        out = set()
        for s in (s for s in srcs if s.startswith("easy-vqa")):
            split, i = s.split(":")[1].split("/")
            out.add(hashlib.sha1(load_rgb(image_paths(split)[int(i)]).tobytes()).hexdigest())
        return out

    assert pixel_hashes(train).isdisjoint(pixel_hashes(test))


def test_mosaic_answers_are_correct_by_construction(test_mosaics):
    labels = load_digits().target
    facts = captioned_images("test")
    for ex in test_mosaics:
        cells = {(c.row, c.col): c for c in ex.meta["cells"]}
        assert len(cells) == ex.meta["grid"] ** 2
        if ex.meta["kind"] == "count":
            value = ex.meta["counted"]
            assert value in ex.question
            n = sum(value in (c.color, c.shape) for c in cells.values() if c.kind == "shape")
            assert ex.answer == str(n)
            continue
        cell = cells[_cell_of(ex.question)]
        assert (cell.row, cell.col) == (ex.meta["row"], ex.meta["col"])
        if ex.meta["kind"] == "cell_digit":
            assert ex.answer == str(labels[int(cell.source.split(":")[1])])
        else:
            color, shape = facts[int(cell.source.split("/")[1])]
            assert ex.answer == (color if ex.meta["kind"] == "cell_color" else shape)


def test_count_answers_are_spread(train_mosaics):
    # Two colours per mosaic and values drawn from the cells keep "1" from dominating.
    counts = Counter(ex.answer for ex in train_mosaics
                     if ex.task == "vqa" and ex.meta["kind"] == "count")
    assert len(counts) >= 5 and max(counts.values()) < 0.45 * sum(counts.values())
    assert counts["0"] > 0


def test_rendered_cells_show_their_source_colour(test_mosaics):
    # The colour question is answered from the pixels of the cell it names.
    for ex in [e for e in test_mosaics if e.meta["kind"] == "cell_color"][:60]:
        grid, px = ex.meta["grid"], 224
        r, c = ex.meta["row"], ex.meta["col"]
        top, bottom = round((r - 1) * px / grid) + 2, round(r * px / grid) - 2
        left, right = round((c - 1) * px / grid) + 2, round(c * px / grid) - 2
        patch = np.asarray(ex.load_image())[top:bottom, left:right]
        assert _palette_color(patch) == ex.answer, ex.id


def test_mosaic_multiple_choice(train_mosaics):
    vqa = {ex.id: ex for ex in train_mosaics if ex.task == "vqa"}
    mc = [ex for ex in train_mosaics if ex.task == "mc"]
    assert len(mc) == len(vqa)
    for ex in mc:
        twin = vqa[ex.id.removesuffix("/mc")]
        assert (ex.question, ex.answer) == (twin.question, twin.answer)
        assert ex.answer in ex.options and len(set(ex.options)) == len(ex.options)
        assert len(ex.options) == (3 if ex.meta["kind"] == "cell_shape" else 4)
        assert set(ex.options) <= set(answer_space(ex.meta["kind"], ex.meta["grid"]))
    positions = Counter(ex.options.index(ex.answer) for ex in mc if len(ex.options) == 4)
    assert len(positions) == 4 and min(positions.values()) > 0.15 * sum(positions.values())


def test_mosaic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        mosaic_examples("val", 1)
    with pytest.raises(ValueError, match="vqa"):
        mosaic_examples("train", 1, tasks=("caption",))
    with pytest.raises(ValueError, match="grid"):
        mosaic_examples("train", 1, grid_sizes=(1,))
