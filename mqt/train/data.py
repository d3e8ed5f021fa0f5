"""The training examples and the held-out ones the loop evaluates on.

`load_data` takes the bundled easy-vqa and mosaic sets as `DataArgs` asks, plus any rows
the caller hands in (`more`: e.g. a manifest's rows, read by pipeline.train.data), and keeps
a share of the yes/no questions (`yesno_kept`), per example with a seeded coin so that every
run and every rank keeps the same ones.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence

import torch

from mqt.data import Example, easyvqa_examples, mosaic_examples
from mqt.train.config import DataArgs

NEGATION = re.compile(r"\b(not|no)\b")  # easy-vqa's negated yes/no questions


def load_data(cfg: DataArgs, more: Sequence[Example] = ()) -> tuple[list, list]:
    """(training examples, held-out examples); `more` joins the training examples after
    easy-vqa's."""
    train = easyvqa_examples("train", tasks=tuple(cfg.tasks), limit=cfg.easyvqa_images or None)
    train += list(more)
    test = easyvqa_examples("test", tasks=tuple(t for t in cfg.tasks if t != "mc"))
    if cfg.mosaic_images:
        train += mosaic_examples("train", cfg.mosaic_images, seed=cfg.seed, tasks=("vqa",))
        test += mosaic_examples("test", max(8, cfg.eval_examples // 8), seed=cfg.seed)
    train = [ex for ex in train if ex.task != "mc"]  # multiple choice is scored, not generated
    train = yesno_kept(train, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(test), generator=g)[: cfg.eval_examples].tolist()
    return train, [test[i] for i in pick]


def yesno_kept(train: list, cfg: DataArgs) -> list:
    """All other rows, and of the yes/no questions a share `yesno_keep`: the same share of
    each, or with `yesno_balance` the share that makes the four (negated, answer) classes
    equal (each at most whole)."""
    sizes = Counter(yesno_class(ex) for ex in train if ex.meta.get("kind") == "yesno")
    total = sum(sizes.values())

    def share(c: tuple) -> float:
        if not cfg.yesno_balance:
            return cfg.yesno_keep
        return min(1.0, cfg.yesno_keep * total / (len(sizes) * sizes[c]))

    return [ex for ex in train if ex.meta.get("kind") != "yesno"
            or keep(ex, cfg, share(yesno_class(ex)))]


def yesno_class(ex: Example) -> tuple[bool, str]:
    """(the question is negated, the answer): "is no circle present?" -> (True, "no")."""
    return bool(NEGATION.search(ex.question)), ex.answer


def keep(ex: Example, cfg: DataArgs, share: float) -> bool:
    """A seeded, per-example coin: the same examples are kept on every run and rank."""
    g = torch.Generator().manual_seed(cfg.seed * 7919 + zlib.crc32(ex.id.encode()))
    return float(torch.rand((), generator=g)) < share
