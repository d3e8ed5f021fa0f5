"""Token policies: how many visual tokens m each row of a batch job gets.

The engine asks a `TokenPolicy` for one choice per row before it runs the vision encoder
and the MQT, so it can run them once at the largest m needed. A choice is an int m, or a
`Cascade(m1, m2, threshold)`: answer at m1, and answer again at m2 (from the same MQT output,
prefix property) when the m1 answer's confidence is below the threshold. `FixedPolicy` gives
a fixed m per task; the planner's `PlanPolicy` (pipeline/scheduler/plan.py) and `CascadePolicy`
(pipeline/scheduler/cascade.py) plug in at the same place. No Ray here: policies are plain picklable
objects that every engine actor holds a copy of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mqt.config import check_m


@dataclass(frozen=True)
class Cascade:
    """Answer at `m1`; a row whose m1 confidence is below `threshold` is answered again at
    `m2` (m1 < m2). A confidence that is missing or not a number counts as below."""

    m1: int
    m2: int
    threshold: float

    def __post_init__(self):
        for name in ("m1", "m2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"cascade: {name} must be an int >= 1, got {v!r}")
        if self.m2 <= self.m1:
            raise ValueError(f"cascade: m2 must exceed m1, got {self.m1} -> {self.m2}")
        if self.threshold != self.threshold:  # NaN would never escalate anything
            raise ValueError("cascade: threshold must be a number, got NaN")

    def escalates(self, confidence: float | None) -> bool:
        # `not >=` so that None and NaN escalate: no evidence the m1 answer is good
        return not (confidence is not None and confidence >= self.threshold)

    def __str__(self) -> str:
        return f"{self.m1}->{self.m2} if conf<{self.threshold:.4g}"

    def to_dict(self) -> dict:
        return {"m1": self.m1, "m2": self.m2, "threshold": self.threshold}


Choice = int | Cascade  # what a policy gives one row


def first_m(choice: Choice) -> int:
    """The m a row is answered at first."""
    return choice.m1 if isinstance(choice, Cascade) else choice


def max_m(choice: Choice) -> int:
    """The most visual tokens a row may need (what the MQT must produce for it)."""
    return choice.m2 if isinstance(choice, Cascade) else choice


def choice_key(choice: Choice) -> tuple:
    """A total order over ints and cascades (ties in sorts): m, then m1, m2, threshold."""
    if isinstance(choice, Cascade):
        return (choice.m1, choice.m2, choice.threshold)
    return (choice, 0, 0.0)


def choice_from_json(value) -> Choice:
    """An int m, or a cascade from `Cascade.to_dict()` (plan.json)."""
    if isinstance(value, dict):
        return Cascade(int(value["m1"]), int(value["m2"]), float(value["threshold"]))
    return value


def choice_to_json(choice: Choice):
    return choice.to_dict() if isinstance(choice, Cascade) else choice


class TokenPolicy:
    """Picks m (1 <= m <= M), or a `Cascade`, for each row from its task name and question.

    A policy implements `choose` and `check`; `bind` and `skipped` have defaults that a
    policy overrides where it needs M, or counts the rows it is asked about."""

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        """One choice per row, in row order."""
        raise NotImplementedError

    def check(self, num_queries: int) -> None:
        """Raise ValueError naming the bad setting if some m could fall outside 1..M."""
        raise NotImplementedError

    def bind(self, num_queries: int) -> TokenPolicy:
        """The policy an engine uses with a model of M = num_queries: checked (and a copy
        that knows M where the policy needs it)."""
        self.check(num_queries)
        return self

    def skipped(self, tasks: Sequence[str], questions: Sequence[str | None] = ()) -> None:
        """Rows of these tasks will not be asked about (error rows): a policy that expects
        a number of rows (the pacer) stops expecting them."""


@dataclass
class FixedPolicy(TokenPolicy):
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
    if not isinstance(m, int):  # an m from a config or plan is an int (numpy ints are not)
        raise ValueError(f"{name}={m!r} is outside 1..{num_queries} (M = query.num_queries)")
    check_m(name, m, num_queries)


def check_choice(name: str, choice, num_queries: int) -> None:
    """`_check_m` for an int m, or for both m of a cascade."""
    if isinstance(choice, Cascade):
        _check_m(f"{name}.m1", choice.m1, num_queries)
        _check_m(f"{name}.m2", choice.m2, num_queries)
    else:
        _check_m(name, choice, num_queries)
