"""Quality curves: expected accuracy and mean cost per row of a task, at each m.

A `QualityCurve` is what the planner (pipeline/scheduler/plan.py) trades off: for every m it
offers, the expected accuracy of one row and the mean FLOPs one row costs. A curve may also
offer cascades (pipeline/scheduler/cascade.py fits them): `Cascade(m1, m2, threshold)` with
the accuracy and mean FLOPs per row that its escalation rate gives; the planner treats them
as more options.
Two sources of fixed-m points:

- `from_calibration(path)`: the `calibration.json` that `mqt eval` writes (by_task -> m ->
  {accuracy, mean_flops, n}); `shipped_calibration()` is the one of the default model.
- `llava_7b_prior()`: the MQT paper's per-benchmark accuracy of MQT-LLaVA-7B (arXiv
  2405.19315, the per-benchmark figure), priced with mqt/cost.py.

Costs are whole FLOPs, rounded up from the means, so every spend the planner adds up is
exact integer arithmetic and errs on the side of the quota. Pure Python, no Ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from mqt import config as _mqt_config  # a light module that locates the mqt package
from mqt.config import preset
from mqt.cost import total_flops
from pipeline.scheduler.policy import Cascade, Choice

SHIPPED_CALIBRATION = Path(_mqt_config.__file__).parent / "weights/mqt-smol/calibration.json"


def group_name(task: str, kind: str) -> str:
    """The curve of a (task, question kind) group (pipeline.scheduler.kinds): "task:kind"."""
    return f"{task}:{kind}"


def task_of(group: str) -> str:
    """The task of a group name ("vqa:easy-vqa/yesno" -> "vqa"; "vqa" -> "vqa")."""
    return group.split(":", 1)[0]


@dataclass(frozen=True)
class QualityCurve:
    """Per m (strictly increasing): expected accuracy in [0, 1] and mean FLOPs per row; and
    optional `cascades`: (Cascade, accuracy, mean FLOPs per row) options."""

    task: str
    ms: tuple[int, ...]
    accuracy: tuple[float, ...]
    # per m, the mean cost of a row in the plan's cost unit: FLOPs, or on a time profile its
    # microseconds (pipeline/scheduler/timing.py prices a curve so)
    cost: tuple[int, ...]
    cascades: tuple[tuple[Cascade, float, int], ...] = ()
    # per cascade option, the accuracy the same cascade has on more questions, which a
    # noisy curve's options are shrunk toward (a kind group's: its task's questions;
    # pipeline.scheduler.kinds.shrunk); empty = none
    cascade_prior: tuple[float, ...] = ()

    def __post_init__(self):
        n = len(self.ms)
        if n == 0 or len(self.accuracy) != n or len(self.cost) != n:
            raise ValueError(f"curve {self.task!r}: ms, accuracy and cost need one value "
                             f"per m, got {len(self.ms)}, {len(self.accuracy)}, "
                             f"{len(self.cost)}")
        if any(b <= a for a, b in zip(self.ms, self.ms[1:], strict=False)) or self.ms[0] < 1:
            raise ValueError(f"curve {self.task!r}: ms must be >= 1 and increasing: {self.ms}")
        if not all(0.0 <= a <= 1.0 for a in self.accuracy):
            raise ValueError(f"curve {self.task!r}: accuracy must lie in [0, 1]")
        if not all(isinstance(f, int) and f >= 0 for f in self.cost):
            raise ValueError(f"curve {self.task!r}: cost must be ints >= 0")
        for c, a, f in self.cascades:
            if not isinstance(c, Cascade) or not 0.0 <= a <= 1.0:
                raise ValueError(f"curve {self.task!r}: a cascade option needs a Cascade and "
                                 f"an accuracy in [0, 1], got {c!r}, {a!r}")
            if not isinstance(f, int) or f < 0:
                raise ValueError(f"curve {self.task!r}: cascade cost must be ints >= 0")
        if self.cascade_prior and (len(self.cascade_prior) != len(self.cascades) or not all(
                0.0 <= a <= 1.0 for a in self.cascade_prior)):
            raise ValueError(f"curve {self.task!r}: cascade_prior needs one accuracy in [0, 1] "
                             f"per cascade option, got {len(self.cascade_prior)} for "
                             f"{len(self.cascades)}")

    def points(self) -> list[tuple[Choice, float, int]]:
        """(m or Cascade, accuracy, flops per row): fixed m in m order, then the cascades."""
        return list(zip(self.ms, self.accuracy, self.cost, strict=True)) + list(self.cascades)

    @property
    def cheapest(self) -> int:
        """FLOPs per row of the cheapest option."""
        return min(f for _, _, f in self.points())

    @property
    def dearest(self) -> int:
        """FLOPs per row of the most expensive option."""
        return max(f for _, _, f in self.points())

    def upto(self, m: int) -> QualityCurve:
        """This curve without its options dearer in visual tokens than m: the fixed m > m and
        the cascades that escalate past m (a curve keeps at least its first m)."""
        k = max(1, sum(x <= m for x in self.ms))
        if k == len(self.ms) and all(c.m2 <= m for c, _, _ in self.cascades):
            return self
        keep = [i for i, o in enumerate(self.cascades) if o[0].m2 <= self.ms[k - 1]]
        return replace(self, ms=self.ms[:k], accuracy=self.accuracy[:k], cost=self.cost[:k],
                       cascades=tuple(self.cascades[i] for i in keep),
                       cascade_prior=tuple(self.cascade_prior[i] for i in keep)
                       if self.cascade_prior else ())

    def at(self, m: int) -> tuple[float, int]:
        """(accuracy, flops per row) at m; KeyError if the curve has no such m."""
        if m not in self.ms:
            raise KeyError(f"curve {self.task!r} has no m={m}; it has {list(self.ms)}")
        i = self.ms.index(m)
        return self.accuracy[i], self.cost[i]


def from_calibration(path: str | Path = SHIPPED_CALIBRATION,
                     include_unseen: bool = False) -> dict[str, QualityCurve]:
    """One curve per task of an `mqt eval` calibration.json. Only the trained m (`ms`) unless
    `include_unseen`: an m never drawn in training is a guess the planner should not make."""
    cal = json.loads(Path(path).read_text())
    allowed = set(cal.get("ms", [])) | (set(cal.get("unseen_ms", [])) if include_unseen else set())
    curves = {}
    for task, per_m in sorted(cal["by_task"].items()):
        rows = sorted((int(m), s) for m, s in per_m.items())  # JSON keys are strings
        rows = [(m, s) for m, s in rows if not allowed or m in allowed]
        curves[task] = QualityCurve(task, tuple(m for m, _ in rows),
                                    tuple(float(s["accuracy"]) for _, s in rows),
                                    tuple(math.ceil(s["mean_flops"]) for _, s in rows))
    return curves


def shipped_calibration() -> Path:
    """The calibration.json of the default model `mqt-smol` (docs/eval/eval.md made it)."""
    return SHIPPED_CALIBRATION


# ---------------------------------------------------------------- the llava-7b prior

PRIOR_MS = (2, 4, 8, 16, 36, 64, 144, 256)
# MQT-LLaVA-7B accuracy (%) per benchmark at PRIOR_MS, from the MQT paper's per-benchmark
# figure (arXiv 2405.19315). m = 2, 36 and 256 are the exact published numbers; the others
# were read off the plot and are good to about 0.1 point.
LLAVA_7B_ACCURACY = {
    "vqav2": (61.0, 64.1, 67.2, 71.1, 73.7, 75.3, 76.4, 76.8),
    "gqa": (50.8, 53.0, 55.5, 57.6, 58.8, 60.0, 61.4, 61.6),
    "mmbench": (54.4, 56.5, 58.6, 61.9, 63.4, 63.5, 64.4, 64.3),
    "pope": (74.5, 77.5, 79.4, 80.8, 81.9, 83.6, 83.9, 84.4),
    "scienceqa-img": (65.0, 65.1, 66.2, 67.5, 66.8, 67.0, 67.5, 67.6),
}
# (T, K): LLaMA prompt text tokens and new tokens per row, estimated, not tokenizer-counted.
# Every prompt has the 42 tokens of LLaVA-1.5's frame (35 before the image: BOS, the Vicuna
# system message, " USER:"; ~7 for the newline and " ASSISTANT:"), see mqt/cost.py.
# - vqav2: T = PAPER_PROMPT_TOKENS = 60 (a ~7-token question + the ~11-token "Answer the
#   question using a single word or phrase."); K = 3, a 1-2 token answer + end of sequence.
# - gqa: same instruction, questions ~3 tokens longer than VQAv2's: T = 63, K = 3.
# - pope: "Is there a <object> in the image?" (~9) + the same instruction: T = 62; K = 2,
#   "Yes"/"No" + end of sequence.
# - mmbench: question (~25), four lettered options (~30) and "Answer with the option's
#   letter from the given choices directly." (~12): T = 110; K = 2, a letter + end.
# - scienceqa-img: a context hint (~40), question (~15), options (~20) and the letter
#   instruction: T = 130; K = 2.
LLAVA_7B_TOKENS = {"vqav2": (60, 3), "gqa": (63, 3), "pope": (62, 2), "mmbench": (110, 2),
                   "scienceqa-img": (130, 2)}


def llava_7b_prior() -> dict[str, QualityCurve]:
    """The paper's accuracy of MQT-LLaVA-7B per benchmark, priced by the cost model."""
    cfg = preset("llava-7b")
    curves = {}
    for task, acc in LLAVA_7B_ACCURACY.items():
        T, K = LLAVA_7B_TOKENS[task]
        flops = tuple(total_flops(cfg, m, T, K).total for m in PRIOR_MS)
        curves[task] = QualityCurve(task, PRIOR_MS, tuple(a / 100 for a in acc), flops)
    return curves


PRIORS = {"llava-7b": llava_7b_prior}


def prior_curves(name: str) -> dict[str, QualityCurve]:
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; known: {sorted(PRIORS)}")
    return PRIORS[name]()
