"""A job's compute quota: its settings (`QuotaArgs`), the planner's `Quota`, and the units.

A quota is in FLOPs (`quota.flops`), or in accelerator-seconds (`quota.seconds`): converted
to FLOPs at `quota.flops_per_second`, or (`quota.measured=true`) counted as the time the
engines really take, planned at that FLOP/s or on a time profile (`quota.time_profile`,
pipeline/scheduler/timing.py) whose microseconds then stand where FLOPs stand. A plan's
costs are in the quota's cost unit (`Quota.cost_unit`: FLOPs or profiled us); a job's
ledger counts FLOPs or measured microseconds (`ledger_quota`). Pure Python, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.scheduler.timing import UNITS_PER_SECOND, TimeModel


class FieldError(ValueError):
    """A bad quota setting, named by its field (`calibration`); reads "quota.<field>: ..."
    as `mqt annotate` spells it, and `mqt plan`, whose fields have no prefix, re-raises it
    as "<field>: ..."."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"quota.{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True)
class Quota:
    """A compute quota: `flops`, or `seconds` of accelerator time at `flops_per_second`."""

    flops: float | None = None
    seconds: float | None = None
    flops_per_second: float | None = None
    # seconds planned on a time profile (pipeline/scheduler/timing.py): the "FLOPs" are its
    # microseconds, flops_per_second = 1e6 of them per second
    timed: bool = False

    def __post_init__(self):
        if (self.flops is None) == (self.seconds is None):
            raise ValueError("quota: give flops, or seconds with flops_per_second, not both")
        given = self.flops if self.flops is not None else self.seconds
        if not math.isfinite(given) or given < 0:
            raise ValueError(f"quota: must be a finite number >= 0, got {given!r}")
        fps = self.flops_per_second
        if self.seconds is not None and (fps is None or not math.isfinite(fps) or fps <= 0):
            raise ValueError(f"quota: flops_per_second must be > 0 with seconds, got {fps!r}")

    @property
    def unit(self) -> str:
        return "FLOPs" if self.flops is not None else "s"

    @property
    def cost_unit(self) -> str:
        """What a plan's costs under this quota count: FLOPs, or a time profile's us."""
        return "profiled us" if self.timed else "FLOPs"

    @property
    def total_cost(self) -> int:
        """What the quota pays for in its cost unit (`cost_unit`: whole FLOPs, or a time
        profile's microseconds), rounded down: never more than given."""
        if self.flops is not None:
            return math.floor(self.flops)
        return math.floor(self.seconds * self.flops_per_second)

    def in_unit(self, flops: float) -> float:
        """FLOPs expressed in the unit the quota was given in."""
        return flops if self.flops is not None else flops / self.flops_per_second

    def minimum_for(self, flops: int) -> float:
        """The smallest quota, in this quota's unit, whose `total_cost` reaches `flops`."""
        fps = self.flops_per_second if self.flops is None else 1.0
        q = flops / fps
        while math.floor(q * fps) < flops:  # float rounding fell short
            q = math.nextafter(q, math.inf)
        return q

    def describe(self, value: float, exact: bool = False) -> str:
        """`value` in the quota's unit; `exact` adds the round-trip digits (to copy)."""
        text = f"{value!r} ({value:.4g})" if exact else f"{value:.6g}"
        rate = ("" if self.flops is not None else " on the time profile" if self.timed
                else f" at {self.flops_per_second:.6g} FLOP/s")
        return f"{text} {self.unit}{rate}"


class InfeasibleQuota(ValueError):
    """The quota cannot pay for the cheapest m on every row; `minimum` says what can."""

    def __init__(self, quota: Quota, minimum_cost: int):
        self.quota, self.minimum_cost = quota, minimum_cost  # in the quota's cost unit
        self.minimum = quota.minimum_for(minimum_cost)  # in the quota's unit
        given = quota.flops if quota.flops is not None else quota.seconds
        super().__init__(f"a quota of {quota.describe(given)} cannot pay for the cheapest m "
                         f"on every row; the minimum quota is "
                         f"{quota.describe(self.minimum, exact=True)}")


@dataclass
class QuotaArgs:
    """The job's compute quota: `flops`, or `seconds` at `flops_per_second`; none = no quota."""

    flops: float = 0.0
    seconds: float = 0.0
    flops_per_second: float = 0.0
    calibration: str = ""  # quality curves: an `mqt eval` calibration.json; "" = the shipped
    # "llava-7b": the MQT paper's per-benchmark accuracy instead of a calibration (its tasks
    # are benchmarks: vqav2, gqa, mmbench, pope, scienceqa-img; no per-question results)
    prior: str = ""
    include_unseen: bool = False  # also plan with calibrated m never drawn in training
    weights: dict = field(default_factory=dict)  # per task, default 1
    ledger_state: str = ""  # a local file or URL (s3://...); "" = <output>/ledger.json
    infeasible: str = "fail"  # or "subset": answer the first rows the quota pays for, skip the rest
    # also plan per-task cascades (answer at m1, escalate low-confidence rows to m2), fitted
    # on the per-question results of `mqt eval` (pipeline.scheduler.cascade)
    cascades: bool = False
    results: str = ""  # those results (results.parquet); "" = the one beside the calibration
    # re-plan m per task every batch (pipeline.scheduler.pacing) on the quota really left: rows that
    # cost less than calibrated (or fail, costing nothing) free quota for the later ones,
    # dearer rows move later ones to cheaper m instead of being refused
    pacing: bool = False
    pacing_every: int = 0  # rows between re-plans; 0 = every batch
    # what the plan picks m for: "task" (one curve per task), or "kind": per (task, question
    # kind), the kind told by a classifier of the question text fitted on the calibration
    # results (pipeline.scheduler.kinds); a row whose question fits no kind gets its task's m
    by: str = "task"
    # `seconds` are measured accelerator time: the ledger charges each row the seconds it
    # took; `flops_per_second` is then only the estimate the plan and the first
    # reservations are made with (pacing re-plans on the time really spent)
    measured: bool = False
    margin: float = 1.5  # measured: a row reserves this x its bound at the measured rate
    # measured: plan in seconds from this time profile (`mqt profile`: seconds per row
    # affine in FLOPs, per task; pipeline.scheduler.timing) instead of at one flops_per_second
    time_profile: str = ""
    # the dearest m a task is planned at: the cheapest m whose accuracy on the calibration's
    # per-question results is within cap_se paired standard errors of the task's most
    # accurate m (pipeline.scheduler.cascade.cap_m); 0 = every calibrated m. Needs those results
    # (quota.results, or the results.parquet beside the calibration); without them, no cap
    cap_se: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.flops or self.seconds)

    def quota(self) -> Quota:
        """The planner's quota, every setting checked (errors name the field). Neither
        flops nor seconds: a quota of 0 FLOPs (what `mqt plan quota=0` asks)."""
        if self.flops < 0 or self.seconds < 0:
            name, value = ("flops", self.flops) if self.flops < 0 else ("seconds", self.seconds)
            raise FieldError(name, f"must be >= 0, got {value}")
        if self.prior and self.calibration:
            raise FieldError("prior", "give a prior or a calibration file, not both")
        if self.by not in ("task", "kind"):
            raise FieldError("by", f"must be 'task' or 'kind', got {self.by!r}")
        if self.infeasible not in ("fail", "subset"):
            raise FieldError("infeasible", f"must be 'fail' or 'subset', "
                             f"got {self.infeasible!r}")
        if self.flops and self.seconds:
            raise ValueError("quota.flops / quota.seconds: give one of them, not both")
        if self.measured and not self.seconds:
            raise FieldError("measured", "measured spend needs a quota in seconds "
                             "(quota.seconds), not quota.flops")
        if self.time_profile and not self.measured:
            raise FieldError("time_profile", "a time profile plans a quota of measured time: "
                             "set quota.measured=true (and quota.seconds)")
        if self.time_profile and self.flops_per_second:
            raise FieldError("flops_per_second", "give it or quota.time_profile, not both (the "
                             "profile says how long a row takes at each m)")
        if self.measured and not (self.flops_per_second or self.time_profile):
            raise FieldError("flops_per_second", "a measured quota still plans, and makes its "
                             "first reservations, at an estimate of the model's FLOP/s on the "
                             "job's accelerators (`mqt annotate` prints what it measured), or "
                             "on a time profile (quota.time_profile, from `mqt profile`)")
        if self.seconds and not self.measured and not (self.flops_per_second > 0):
            raise FieldError("flops_per_second", "give the FLOP/s that converts quota.seconds "
                             "(> 0)")
        if not 0 <= self.cap_se < math.inf:
            raise FieldError("cap_se", f"must be >= 0 (0: no cap), got {self.cap_se!r}")
        if not 1 <= self.margin < math.inf:
            raise FieldError("margin", f"must be >= 1, got {self.margin!r}")
        if self.flops or not self.seconds:
            return Quota(flops=self.flops)
        if self.time_profile:  # the plan's "FLOPs" are the profile's microseconds
            return Quota(seconds=self.seconds, flops_per_second=UNITS_PER_SECOND, timed=True)
        return Quota(seconds=self.seconds, flops_per_second=self.flops_per_second or None)

    def time_model(self) -> TimeModel | None:
        """The time profile's model (quota.time_profile), None without one."""
        if not self.time_profile:
            return None
        try:
            return TimeModel.load(self.time_profile)
        except ValueError as e:
            raise FieldError("time_profile", str(e)) from None


def ledger_work(args: QuotaArgs) -> str:
    """What the job's ledger keeps behind its spend: FLOPs, or (quota.time_profile) the
    profile's microseconds."""
    return "profiled_us" if args.time_profile else "flops"


def ledger_quota(args: QuotaArgs) -> tuple[int, str]:
    """The job ledger's quota and unit: FLOPs, or microseconds of measured time."""
    if args.measured:
        return math.floor(args.quota().seconds * 1e6), "us"
    return args.quota().total_cost, "flops"


def in_ledger_units(args: QuotaArgs, flops: float) -> int:
    """FLOPs as the job's ledger counts them: as they are, or (measured) the microseconds
    they take at quota.flops_per_second."""
    return math.floor(flops * 1e6 / args.flops_per_second) if args.measured else int(flops)


def remaining(args: QuotaArgs, spent: int) -> Quota:
    """The quota left after `spent` (the ledger's units), in the unit it was given in (the
    quota itself when nothing is spent)."""
    q = args.quota()
    if not spent:
        return q
    if args.measured:
        return Quota(seconds=max(0.0, q.seconds - spent / 1e6),
                     flops_per_second=q.flops_per_second, timed=q.timed)
    left = max(0, q.total_cost - spent)
    return Quota(flops=left) if q.flops is not None else Quota(
        seconds=left / q.flops_per_second, flops_per_second=q.flops_per_second)


