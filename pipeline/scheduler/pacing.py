"""Pacing: re-plan the per-task m as rows arrive, from what has been spent and what is left.

A plan made before the job (pipeline/scheduler/plan.py) assumes the number of rows per task and
their mean cost. When the corpus size is only estimated, or rows cost less than the
calibration said (shorter answers, error rows that cost nothing), a fixed plan either runs
out of quota before the last rows (an under-estimate: the ledger then refuses them) or
ends with much of the quota unused (an over-estimate). `Pacer` is a `TokenPolicy` that
re-solves the plan every `every` rows for the rows it expects are still to come and the
quota that is really left. Per task t, with N_t the estimate, e the estimate's relative
error bound (`error`) and s_t the rows seen so far:

    quota left      = (Q - (spent + reserved)) / r, read from the job's budget ledger and
                      put in the curves' units by r = spent / planned cost so far
                      (this run's: a resumed job's ledger starts with the earlier
                      runs' spend, `base`, which r does not count)
    rows left       = max(N_t - s_t, ceil(tail x s_t))              (central)
    rows left, high = max(ceil(N_t (1 + e)) - s_t, ceil(tail x s_t))  (pessimistic)
    reserve         = sum_t cheapest_t x (high_t - central_t)
    spare           = max_t cheapest_t over the tasks with rows left
    plan            = the per-task plan of the central rows within
                      quota left - reserve - spare

The reserve keeps the cheapest m paid for every row the corpus may still hold beyond the
central estimate, so a corpus up to (1 + e) times the estimate is answered to the last row
(if Q pays the cheapest m on all of it), while upgrades are planned for the rows expected.
The spare, one row at the dearest cheapest m, absorbs rows that cost more than their task's
mean (longer prompts, more options): without it a plan that buys upgrades up to the last
FLOP can leave the last row unpaid (measured in `python -m bench.scheduler`: 2 of 4,150 rows
with the estimate 20% low).
Past even the high estimate, `tail` plans as if that share of the rows seen were still to
come; `tail = 0` where the estimate is a count (`mqt annotate` counts its rows before it
starts): over the last tenth of a task's rows a tail of 0.1 plans for more rows than are
left and leaves their share of the quota unspent (2.2-3.0% of Q in the simulated
310-row jobs of tests/pipeline/test_pacing.py::test_an_exact_count_needs_no_tail). The
ratio r learns a drift between the curves and this corpus (answers shorter or longer
than in calibration, error rows that cost nothing; clamped to [1/4, 4]): rows that cost
less than planned free quota for later upgrades instead of leaving it unused, dearer ones
move later rows to cheaper m instead of running out. With a ledger of measured time
(`time_left`, quota.measured) the quota left is the time the ledger has left (its quota
less spent, held and overrun microseconds) times the FLOP/s the job has measured so far
(the FLOPs of its committed rows over their time; the job's estimate before any), and r
compares FLOPs (committed and held bounds) with the curves'. With a time profile
(quota.time_profile) every "FLOP" here is a microsecond of the profile's time model: the
curves, the ledger's work and the rate (measured microseconds per modelled one). The
ledger stays the hard limit: spend never exceeds Q whatever the estimate. If the quota
left cannot pay the cheapest m on the central rows, every row gets its task's cheapest m
and the ledger refuses what it cannot pay.

pipeline/scheduler/runtime.py runs one `Pacer` per job as a Ray actor (next to the ledger
actor); the engines hold a `RemotePacer` there, which asks it once per batch. Pure Python.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.scheduler.plan import PlanPolicy, plan
from pipeline.scheduler.policy import Choice, TokenPolicy, check_choice
from pipeline.scheduler.quality import QualityCurve
from pipeline.scheduler.quota import InfeasibleQuota, Quota


@dataclass
class Pacer(TokenPolicy):
    """A `TokenPolicy` that re-plans every `every` rows (0: every batch) on the quota left.

    `spent` returns the FLOPs already spent or held (the ledger's spent + reserved); with
    `time_left` (a ledger of measured time) that returns (FLOPs spent or held, FLOPs the
    time left buys at the FLOP/s measured so far) instead, and `quota_flops` and `spent`
    are not read."""

    curves: Mapping[str, QualityCurve]
    quota_flops: int
    estimate: Mapping[str, int]  # expected rows per task over the whole run
    spent: Callable[[], int]
    weights: Mapping[str, float] | None = None
    every: int = 0
    error: float = 0.0  # the estimate may be this much (relative) too low
    tail: float = 0.1
    time_left: Callable[[], tuple[int, float]] | None = None
    # what `spent` (or time_left's FLOPs) already counted before this pacer's first row: an
    # earlier run's spend on a resumed job, not this run's drift
    base: int = 0
    seen: Counter = field(default_factory=Counter)
    plans: int = 0  # how many times it planned
    planned: int = 0  # the curves' FLOPs of every row handed out so far
    _policy: PlanPolicy | None = None
    _since: int = 0  # rows handed out since the last plan

    def __post_init__(self):
        if not 0 <= self.tail <= 1:
            raise ValueError(f"pacing tail must be in [0, 1], got {self.tail}")
        if self.error < 0:
            raise ValueError(f"pacing error must be >= 0, got {self.error}")
        unknown = sorted(set(self.estimate) - set(self.curves))
        if unknown:
            raise ValueError(f"pacing: no quality curve for task {unknown[0]!r}")

    def check(self, num_queries: int) -> None:
        for task, curve in self.curves.items():
            for m in curve.ms:
                check_choice(f"pacing.{task}", m, num_queries)

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        batch = Counter(tasks)
        unknown = sorted(set(batch) - set(self.curves))
        if unknown:
            raise ValueError(f"task {unknown[0]!r} has no quality curve; "
                             f"known: {sorted(self.curves)}")
        if self._policy is None or self._since >= self.every or not self._covers(batch):
            self._replan(batch)
        self.seen.update(batch)
        self._since += len(tasks)
        choices = self._policy.choose(tasks, questions)
        self.planned += sum(self._cost(t, c) for t, c in zip(tasks, choices, strict=True))
        return choices

    def skipped(self, tasks: Sequence[str], questions: Sequence[str | None] = ()) -> None:
        """Rows that reached the model stage as errors (a corrupt image): seen, costing
        nothing, so the rows left shrink and their planned spend frees up for the others.
        Their questions do not matter here (pipeline.scheduler.kinds.GroupedPolicy reads them)."""
        self.seen.update(tasks)
        self._since += len(tasks)

    def ratio(self, spent: int) -> float:
        """What this run's rows really cost against what the curves said, so far (1 before
        any); `spent` includes `base`, which is not counted."""
        spent -= self.base
        if not self.planned or spent <= 0:
            return 1.0
        return min(4.0, max(0.25, spent / self.planned))

    def _left(self) -> float:
        """The quota left, in the curves' FLOPs (before the reserve and the spare)."""
        if self.time_left is None:
            spent = self.spent()
            return (self.quota_flops - spent) / self.ratio(spent)
        used, buys = self.time_left()
        return buys / self.ratio(used)

    def _cost(self, task: str, choice: Choice) -> int:
        return next(f for c, _, f in self.curves[task].points() if c == choice)

    def rows_left(self, batch: Counter | None = None, high: bool = False) -> dict[str, int]:
        """The rows expected from here on per task (this batch included); `high`: as many
        as the estimate's error bound allows."""
        batch = batch or Counter()
        tasks = set(self.estimate) | set(self.seen) | set(batch)
        scale = 1 + self.error if high else 1
        return {t: max(math.ceil(self.estimate.get(t, 0) * scale) - self.seen[t],
                       math.ceil(self.tail * self.seen[t]), batch[t]) for t in sorted(tasks)}

    def reserve(self, batch: Counter | None = None) -> int:
        """FLOPs kept for the rows beyond the central estimate, at each task's cheapest m."""
        central, high = self.rows_left(batch), self.rows_left(batch, high=True)
        return sum(self.curves[t].cheapest * (high[t] - central[t]) for t in central)

    def _covers(self, batch: Counter) -> bool:
        return all(t in self._policy.parts for t in batch)

    def _replan(self, batch: Counter) -> None:
        rows = {t: n for t, n in self.rows_left(batch).items() if n}
        spare = max(self.curves[t].cheapest for t in rows)  # one row's worth for the noise
        left = max(0, int(self._left()) - self.reserve(batch) - spare)
        try:
            self._policy = plan(rows, self.curves, Quota(flops=left), self.weights).policy()
        except InfeasibleQuota:  # the cheapest m everywhere; the ledger refuses past Q
            self._policy = PlanPolicy({t: ((_cheapest_m(self.curves[t]), n),)
                                       for t, n in rows.items()})
        self.plans += 1
        self._since = 0


def _cheapest_m(curve: QualityCurve) -> int:
    return min(curve.ms, key=lambda m: curve.at(m)[1])


def measured_left(totals: dict, flops_per_second: float) -> tuple[int, float]:
    """From a ledger of measured microseconds (its `totals()`): (FLOPs spent or held, FLOPs
    the time left buys at the FLOP/s of the committed rows, or `flops_per_second` before
    any)."""
    took = (totals["spent"] + totals["overrun"]) / 1e6
    fps = totals["flops_spent"] / took if totals["flops_spent"] and took else flops_per_second
    left = max(0, totals["quota"] - totals["spent"] - totals["reserved"] - totals["overrun"])
    return totals["flops_spent"] + totals["flops_reserved"], left / 1e6 * fps
