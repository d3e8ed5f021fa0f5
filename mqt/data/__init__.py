"""Real data for training and evaluating the MQT model: easy-vqa and mosaics built from it.

Everything here is plain Python, numpy and Pillow over images that ship inside packages
(easy-vqa, scikit-learn's digits); nothing is downloaded. Every dataset yields the same
record, `Example` (image, task, question, answer, options, meta), with `task` one of
"caption", "vqa", "mc", the names of the task registry in `mqt.tasks`.

- `easyvqa_examples(split, tasks, limit)`: easy-vqa VQA, captions and multiple choice.
- `mosaic_examples(split, n_images, grid_sizes, seed, image_px, tasks)`: 2x2 / 3x3 mosaics
  of easy-vqa shapes and digits with per-cell and counting questions, deterministic from a
  seed, test mosaics built only from test-split sources.
"""

from mqt.data.easyvqa import (
    COLORS,
    SHAPES,
    TASK_NAMES,
    Example,
    caption_facts,
    captioned_images,
    easyvqa_answers,
    easyvqa_examples,
    question_kind,
)
from mqt.data.mosaic import (
    MOSAIC_KINDS,
    Cell,
    answer_space,
    digit_indices,
    mosaic_answers,
    mosaic_examples,
    mosaic_layout,
    render_mosaic,
)

__all__ = [
    "COLORS",
    "MOSAIC_KINDS",
    "SHAPES",
    "TASK_NAMES",
    "Cell",
    "Example",
    "answer_space",
    "caption_facts",
    "captioned_images",
    "digit_indices",
    "easyvqa_answers",
    "easyvqa_examples",
    "mosaic_answers",
    "mosaic_examples",
    "mosaic_layout",
    "question_kind",
    "render_mosaic",
]
