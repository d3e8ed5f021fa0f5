"""The per-task planner: which m each task's rows get so a job fits a compute quota.

A job is tasks with row counts, a quality curve per task (pipeline/scheduler/quality.py), optional
weights and a quota Q (FLOPs, or accelerator-seconds at a stated FLOP/s). Choosing one m
per row to maximise sum_t w_t * (expected correct rows of t) with total FLOPs <= Q is a
multiple-choice knapsack. Rows of a task are interchangeable, so it is solved over counts:

1. Per task, the options (m, cost c per row, value v = w * accuracy) are cut to the upper
   concave hull in the (c, v) plane: dominated points (no gain for more cost) and points
   below the hull go. Along a hull, each step buys less value per FLOP than the one before.
2. Every row starts at its task's cheapest hull point; if that already costs more than Q
   the quota is infeasible (`InfeasibleQuota` names the minimum). Then all hull steps of all
   tasks are taken in order of value per FLOP, whole tasks at a time; the first step that
   does not fit whole moves only the rows it can pay for (an integer count), so that task
   splits between two adjacent hull points. This greedy is the exact optimum of the LP
   relaxation (fractional rows); `Plan.bound` is that LP value, an upper bound on any plan.
3. What is left after the split (less than one row of that step) is offered, in the same
   order, to tasks that still sit wholly on one hull point, as many rows as it pays for.
   So every task ends on one hull point or split between two adjacent ones.

Rounding down row counts is the only loss: the plan's value is within one row's step gain of
`Plan.bound`, hence within that of the best integer plan. All spends are exact integer
FLOPs, so spend <= Q holds exactly. `Plan.policy()` turns a plan into a `TokenPolicy`.

An option is an m, or a `Cascade` when the curve offers them (pipeline/scheduler/cascade.py): the
planner does not care which; a cascade's FLOPs per row are an expectation (its escalation
rate on calibration rows), so its plan spends <= Q in expectation and the ledger enforces Q
row by row. Pure Python, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.scheduler.policy import (
    Choice,
    TokenPolicy,
    check_choice,
    choice_from_json,
    choice_key,
    choice_to_json,
)
from pipeline.scheduler.quality import QualityCurve
from pipeline.scheduler.quota import InfeasibleQuota, Quota


@dataclass(frozen=True)
class Part:
    """`rows` rows of a task answered at `m` (an int, or a Cascade): accuracy and cost per
    row in the plan's cost unit (for a cascade, expected over its escalations)."""

    m: Choice
    rows: int
    accuracy: float
    cost: int


@dataclass(frozen=True)
class TaskPlan:
    """One task: one Part, or two at adjacent hull points (smaller m first)."""

    task: str
    rows: int
    weight: float
    parts: tuple[Part, ...]

    @property
    def spend(self) -> int:
        return sum(p.rows * p.cost for p in self.parts)

    @property
    def expected_correct(self) -> float:
        return sum(p.rows * p.accuracy for p in self.parts)

    @property
    def accuracy(self) -> float:
        return self.expected_correct / self.rows if self.rows else self.parts[0].accuracy

    @property
    def value(self) -> float:
        return self.weight * self.expected_correct


@dataclass(frozen=True)
class Plan:
    """Per-task parts, the quota, and `bound`: the LP optimum (no plan's value exceeds it)."""

    tasks: tuple[TaskPlan, ...]
    quota: Quota
    bound: float

    @property
    def quota_cost(self) -> int:
        return self.quota.total_cost

    @property
    def spend(self) -> int:
        return sum(t.spend for t in self.tasks)

    @property
    def value(self) -> float:
        return sum(t.value for t in self.tasks)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tasks)

    @property
    def accuracy(self) -> float:
        """Expected accuracy over all rows (unweighted)."""
        return sum(t.expected_correct for t in self.tasks) / max(1, self.rows)

    def share(self, flops: float) -> float:
        return flops / self.quota_cost if self.quota_cost else 0.0

    def task(self, name: str) -> TaskPlan:
        return next(t for t in self.tasks if t.task == name)

    def policy(self) -> PlanPolicy:
        return PlanPolicy({t.task: tuple((p.m, p.rows) for p in t.parts) for t in self.tasks})

    def to_dict(self) -> dict:
        """plan.json: costs under their names of the FLOPs-only format ("total_flops",
        "flops"); on a time profile they are its microseconds (quota "timed")."""
        q = self.quota
        return {"quota": {"flops": q.flops, "seconds": q.seconds,
                          "flops_per_second": q.flops_per_second,
                          "total_flops": self.quota_cost, "timed": q.timed},
                "spend": self.spend, "share": self.share(self.spend), "value": self.value,
                "bound": self.bound, "rows": self.rows, "accuracy": self.accuracy,
                "tasks": [_task_dict(t, self) for t in self.tasks]}


def _task_dict(t: TaskPlan, plan: Plan) -> dict:
    return {"task": t.task, "rows": t.rows, "weight": t.weight, "accuracy": t.accuracy,
            "spend": t.spend, "share": plan.share(t.spend),
            "parts": [{"m": choice_to_json(p.m), "rows": p.rows, "accuracy": p.accuracy,
                       "flops": p.cost}
                      for p in t.parts]}


# ------------------------------------------------------------------------- the solver


@dataclass(frozen=True)
class _Point:
    m: Choice
    accuracy: float
    cost: int
    value: float  # weight x accuracy, per row


@dataclass(frozen=True)
class _Spec:
    task: str
    rows: int
    weight: float
    hull: tuple[_Point, ...]


def hull(curve: QualityCurve, weight: float = 1.0) -> list[_Point]:
    """The upper concave hull of (flops, weight x accuracy), cheapest first. Each step costs
    more and gains more, and buys strictly less value per FLOP than the step before."""
    pts = sorted((_Point(m, a, f, weight * a) for m, a, f in curve.points()),
                 key=lambda p: (p.cost, -p.value, choice_key(p.m)))
    frontier: list[_Point] = []
    for p in pts:  # drop dominated points: no more value than something as cheap
        if not frontier or p.value > frontier[-1].value:
            frontier.append(p)
    out: list[_Point] = []
    for p in frontier:  # drop points on or below the chord of their neighbours
        while len(out) >= 2 and not _concave(out[-2], out[-1], p):
            out.pop()
        out.append(p)
    return out


def _concave(a: _Point, b: _Point, c: _Point) -> bool:
    """Slope a->b strictly above slope b->c, computed as `_steps_by_gain` sorts them, so a
    task's own steps can never sort out of order by rounding."""
    return _slope(a, b) > _slope(b, c)


def _slope(a: _Point, b: _Point) -> float:
    return (b.value - a.value) / (b.cost - a.cost)


def _specs(rows: Mapping[str, int], curves: Mapping[str, QualityCurve],
           weights: Mapping[str, float] | None) -> list[_Spec]:
    weights = dict(weights or {})
    for name, where in [(t, "rows") for t in rows] + [(t, "weights") for t in weights]:
        if name not in curves:
            raise ValueError(f"{where}.{name}: unknown task; tasks: {sorted(curves)}")
    specs = []
    for task, n in rows.items():
        w = weights.get(task, 1.0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"rows.{task}: must be an int >= 0, got {n!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
            raise ValueError(f"weights.{task}: must be a finite number >= 0, got {w!r}")
        specs.append(_Spec(task, n, float(w), tuple(hull(curves[task], float(w)))))
    return specs


def minimum_cost(rows: Mapping[str, int], curves: Mapping[str, QualityCurve]) -> int:
    """FLOPs of every row at its task's cheapest m: the least any plan can spend."""
    return sum(n * curves[t].cheapest for t, n in rows.items())


def plan(rows: Mapping[str, int], curves: Mapping[str, QualityCurve], quota: Quota,
         weights: Mapping[str, float] | None = None) -> Plan:
    """The plan for `rows` per task within `quota`; raises InfeasibleQuota if none fits."""
    specs = _specs(rows, curves, weights)
    Q = quota.total_cost
    base = sum(s.rows * s.hull[0].cost for s in specs)
    if base > Q:
        raise InfeasibleQuota(quota, base)
    level, split = [0] * len(specs), [0] * len(specs)  # hull index; rows one step above it
    left, bound = Q - base, sum(s.rows * s.hull[0].value for s in specs)
    lp_open = True  # the LP greedy stops at the first step that does not fit whole
    for i, k in _steps_by_gain(specs):
        s = specs[i]
        if split[i] or level[i] != k:
            continue  # this task is split, or could not pay for an earlier step
        dc, dv = s.hull[k + 1].cost - s.hull[k].cost, s.hull[k + 1].value - s.hull[k].value
        n = min(s.rows, left // dc)
        if lp_open:
            bound += dv * (s.rows if n == s.rows else left / dc)
            lp_open = n == s.rows
        left -= n * dc
        if n == s.rows:
            level[i] = k + 1
        else:
            split[i] = n
    tasks = tuple(_task_plan(s, level[i], split[i]) for i, s in enumerate(specs))
    return Plan(tasks, quota, bound)


def _steps_by_gain(specs: Sequence[_Spec]) -> list[tuple[int, int]]:
    """(task index, hull index k) of every step k -> k + 1 of tasks with rows, best value
    per FLOP first; ties keep task order, and a task's own steps stay in order."""
    steps = [(-_slope(s.hull[k], s.hull[k + 1]), i, k)
             for i, s in enumerate(specs) if s.rows for k in range(len(s.hull) - 1)]
    return [(i, k) for _, i, k in sorted(steps)]


def _task_plan(s: _Spec, k: int, up: int) -> TaskPlan:
    def part(p: _Point, n: int) -> Part:
        return Part(p.m, n, p.accuracy, p.cost)

    if up:
        parts = (part(s.hull[k], s.rows - up), part(s.hull[k + 1], up))
    else:
        parts = (part(s.hull[k], s.rows),)
    return TaskPlan(s.task, s.rows, s.weight, parts)


# ---------------------------------------------------------------- fixed-m comparisons


def fixed_plan(rows: Mapping[str, int], curves: Mapping[str, QualityCurve], m: int,
               quota: Quota, weights: Mapping[str, float] | None = None) -> Plan:
    """Every row of every task at the same m (each curve must offer it); may exceed Q."""
    specs = _specs(rows, curves, weights)
    tasks = []
    for s in specs:
        acc, flops = curves[s.task].at(m)
        tasks.append(TaskPlan(s.task, s.rows, s.weight, (Part(m, s.rows, acc, flops),)))
    value = sum(t.value for t in tasks)
    return Plan(tuple(tasks), quota, value)


def best_fixed_plan(rows: Mapping[str, int], curves: Mapping[str, QualityCurve],
                    quota: Quota, weights: Mapping[str, float] | None = None) -> Plan | None:
    """The best single m for all tasks that fits in the quota, or None if none does."""
    common = set.intersection(*(set(curves[t].ms) for t in rows)) if rows else set()
    fits = [p for p in (fixed_plan(rows, curves, m, quota, weights) for m in sorted(common))
            if p.spend <= p.quota_cost]
    return max(fits, key=lambda p: (p.value, -p.spend), default=None)


def quota_to_match(rows: Mapping[str, int], curves: Mapping[str, QualityCurve], value: float,
                   weights: Mapping[str, float] | None = None) -> int | None:
    """The least FLOPs (found by bisection) at which the plan's value reaches `value`; None
    if even the top of every hull falls short."""
    def reaches(q: int) -> bool:
        return plan(rows, curves, Quota(flops=q), weights).value >= value * (1 - 1e-12)

    lo = minimum_cost(rows, curves)
    hi = sum(n * curves[t].dearest for t, n in rows.items())
    if not reaches(hi):
        return None
    if reaches(lo):
        return lo
    while hi - lo > 1:  # invariant: lo falls short, hi reaches
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


# ------------------------------------------------------------------- as a TokenPolicy


@dataclass
class PlanPolicy(TokenPolicy):
    """A plan as a `TokenPolicy` (pipeline/scheduler/policy.py): one m per row from its task.

    `parts[task]` is ((m, rows),) or ((m1, n1), (m2, n2)), each m an int or a Cascade
    (then the row gets that cascade). For a split task, the c-th row
    this copy sees (c = 0, 1, ...) gets m2 when floor((c + 1) n2 / N) > floor(c n2 / N),
    N = n1 + n2: m2 rows are spread evenly, and after c rows exactly floor(c n2 / N) got m2.
    A engine actor holds its own copy; over copies that see N rows in all, the m2 rows
    sum to at most n2 (floors of a partition) and to more than n2 - copies, so several
    copies never spend more than the plan. Questions do not matter to a per-task plan.
    """

    parts: dict[str, tuple[tuple[Choice, int], ...]]
    seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, plan: dict) -> PlanPolicy:
        """From `Plan.to_dict()` (plan.json)."""
        return cls({t["task"]: tuple((choice_from_json(p["m"]), p["rows"]) for p in t["parts"])
                    for t in plan["tasks"]})

    def check(self, num_queries: int) -> None:
        for task, parts in self.parts.items():
            for m, _ in parts:
                check_choice(f"plan.{task}", m, num_queries)

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        return [self._next(t) for t in tasks]

    def _next(self, task: str) -> Choice:
        if task not in self.parts:
            raise ValueError(f"task {task!r} is not in the plan; planned: {sorted(self.parts)}")
        parts, c = self.parts[task], self.seen.get(task, 0)
        self.seen[task] = c + 1
        if len(parts) == 1:
            return parts[0][0]
        (m1, n1), (m2, n2) = parts
        total = n1 + n2
        return m2 if (c + 1) * n2 // total > c * n2 // total else m1
