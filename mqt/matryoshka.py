"""Matryoshka schedules: which number of visual tokens m a training step uses.

The m of step s is a pure function of (seed, step): every rank of a distributed job draws
the same m without talking, and a resumed run continues the same sequence. Kinds:
- `uniform_even`: the published recipe, m uniform over the even numbers 2..M;
- `uniform`: m uniform over 1..M;
- `log_uniform`: log m uniform on [log min_m, log M], rounded: most steps at small m,
  where the LM's cost is lowest and the model is least trained;
- `fixed`: m cycles through a given list (`values`); an empty list means [M] (stage 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

KINDS = ("uniform_even", "uniform", "log_uniform", "fixed")


@dataclass
class MSchedule:
    kind: str = "uniform_even"
    values: list[int] = field(default_factory=list)  # for "fixed"
    min_m: int = 1  # for "log_uniform" and "uniform"
    even_only: bool = False  # draw only m = 1 and even m: odd m > 1 stay unseen (for eval)

    def validate(self, M: int) -> MSchedule:
        if self.kind not in KINDS:
            raise ValueError(f"schedule.kind={self.kind!r} is not one of {KINDS}")
        bad = [m for m in self.values if not 1 <= m <= M]
        if bad or not 1 <= self.min_m <= M:
            raise ValueError(f"schedule: m values must lie in 1..{M}, got {bad or self.min_m}")
        return self

    def sample(self, step: int, M: int, seed: int = 0) -> int:
        """The m of training step `step`: same on every rank, same after a resume."""
        m = self._draw(step, M, seed)
        if self.even_only and m > 1 and m % 2:
            m = m + 1 if m < M else m - 1
        return m

    def _draw(self, step: int, M: int, seed: int) -> int:
        if self.kind == "fixed":
            return self.values[step % len(self.values)] if self.values else M
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        u = float(torch.rand((), generator=gen))
        if self.kind == "uniform_even":
            return 2 * (1 + int(u * (M // 2))) if M >= 2 else 1
        if self.kind == "uniform":
            return self.min_m + int(u * (M - self.min_m + 1))
        # bucket k covers [k - 0.5, k + 0.5) in log space, so the ends get full buckets
        lo, hi = math.log(self.min_m - 0.5), math.log(M + 0.5)
        return min(M, max(self.min_m, round(math.exp(lo + u * (hi - lo)))))
