"""Token policies: how many visual tokens m each row of a batch job gets.

The predictor asks a `TokenPolicy` for one m per row before it runs the vision encoder and
the MQT, so it can run them once at the largest m needed. `FixedPolicy` gives a fixed m per
task; the token-budget scheduler will be another `TokenPolicy` plugged in at the same place.
No Ray here: policies are plain picklable objects that every predictor actor holds a copy of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class TokenPolicy(Protocol):
    """Picks m (1 <= m <= M) for each row from its task name and question."""

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[int]:
        """One m per row, in row order."""
        ...

    def check(self, num_queries: int) -> None:
        """Raise ValueError naming the bad setting if some m could fall outside 1..M."""
        ...


@dataclass
class FixedPolicy:
    """A fixed m per task name; tasks not listed get `default` (0 means M, the most)."""

    per_task: dict[str, int] = field(default_factory=dict)
    default: int = 0
    num_queries: int = 0  # M, filled in by `bind`; `default=0` needs it

    def bind(self, num_queries: int) -> FixedPolicy:
        """A checked copy that knows M, so `default=0` resolves to M."""
        self.check(num_queries)
        return FixedPolicy(dict(self.per_task), self.default, num_queries)

    def check(self, num_queries: int) -> None:
        for task, m in self.per_task.items():
            _check_m(f"policy.m.{task}", m, num_queries)
        if self.default != 0:
            _check_m("policy.default", self.default, num_queries)

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[int]:
        fallback = self.default or self.num_queries
        if fallback < 1:
            raise ValueError("FixedPolicy(default=0) needs bind(M) before choose")
        return [int(self.per_task.get(t, fallback)) for t in tasks]


def _check_m(name: str, m, num_queries: int) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= num_queries:
        raise ValueError(f"{name}={m!r} is outside 1..{num_queries} (M = query.num_queries)")
