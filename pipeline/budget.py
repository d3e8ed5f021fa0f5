"""A compute quota for a batch job: the per-task plan before it starts, the ledger while it runs.

Before any model work (`prepare`): the rows left to do are counted per task, the job's
ledger state (saved spend of earlier runs of the same job) is read, and the planner
(pipeline.plan) picks m per task for the rows left within the quota left, on curves that stop
at each task's dearest m worth buying (`quota.cap_se`: no m whose gain over a cheaper one the
calibration's questions cannot tell from noise); a quota that cannot pay the cheapest m on
every row fails here with the minimum needed. While the job runs, every
predictor reserves an upper bound of each row's FLOPs in the job's ledger actor before it
spends them and commits the actual cost after (`LedgerClient`); a refused row becomes an
error row (`quota: ...`), so the spend recorded in the ledger never exceeds the quota, crashes,
retries and resumed runs included: every attempt is charged (keys are row id + attempt), and
the ledger state is saved next to the output.

A quota in measured accelerator-seconds (`quota.seconds` with `quota.measured=true`): the
plan is made as for converted seconds, at `quota.flops_per_second` (the estimate of this
model's throughput on the job's accelerators), but the ledger counts the time the
predictors really take (each row's `seconds`, in microseconds). A row's reservation is its
FLOP bound at the seconds per FLOP the predictor last measured (`MeasuredRate`, with a
margin); what a row takes beyond it is recorded as overrun, so spend <= Q holds for the
reservations and the overrun says by how much measured time went past them. With
`quota.time_profile` (`mqt profile`, pipeline/timing.py) the plan is made in the profile's
seconds per row instead, affine in FLOPs with a time per model call per task, and
the ledger keeps the profile's microseconds behind the measured ones where it would keep
FLOPs, so the rate and the pacer learn measured time per modelled time.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ledger import Ledger, UnitMismatch, WorkMismatch
from pipeline.plan import InfeasibleQuota, Plan, Quota, plan
from pipeline.quality import QualityCurve, from_calibration, shipped_calibration
from pipeline.sources import Source, manifest_records, relative_id
from pipeline.timing import UNITS_PER_SECOND, TimeModel

REFUSED = "quota: refused by the budget ledger (the job's compute quota is spent)"
SKIPPED = ("quota: skipped (quota.infeasible=subset): the quota pays for the first {kept} of "
           "{rows} rows at the cheapest m")


class FieldError(ValueError):
    """A bad quota setting, named by its field (`calibration`); reads "quota.<field>: ..."
    as `mqt annotate` spells it, and `mqt plan`, whose fields have no prefix, re-raises it
    as "<field>: ..."."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"quota.{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass
class QuotaArgs:
    """The job's compute quota: `flops`, or `seconds` at `flops_per_second`; none = no quota."""

    flops: float = 0.0
    seconds: float = 0.0
    flops_per_second: float = 0.0
    calibration: str = ""  # quality curves: an `mqt eval` calibration.json; "" = the shipped
    weights: dict = field(default_factory=dict)  # per task, default 1
    ledger_state: str = ""  # local file; "" = <output>/ledger.json (output must be local)
    infeasible: str = "fail"  # or "subset": answer the first rows the quota pays for, skip the rest
    # also plan per-task cascades (answer at m1, escalate low-confidence rows to m2), fitted
    # on the per-question results of `mqt eval` (pipeline.cascade)
    cascades: bool = False
    results: str = ""  # those results (results.parquet); "" = the one beside the calibration
    # re-plan m per task every batch (pipeline.pacing) on the quota really left: rows that
    # cost less than calibrated (or fail, costing nothing) free quota for the later ones,
    # dearer rows move later ones to cheaper m instead of being refused
    pacing: bool = False
    pacing_every: int = 0  # rows between re-plans; 0 = every batch
    # what the plan picks m for: "task" (one curve per task), or "kind": per (task, question
    # kind), the kind told by a classifier of the question text fitted on the calibration
    # results (pipeline.kinds); a row whose question fits no kind gets its task's m
    by: str = "task"
    # `seconds` are measured accelerator time: the ledger charges each row the seconds it
    # took; `flops_per_second` is then only the estimate the plan and the first
    # reservations are made with (pacing re-plans on the time really spent)
    measured: bool = False
    margin: float = 1.5  # measured: a row reserves this x its bound at the measured rate
    # measured: plan in seconds from this time profile (`mqt profile`: seconds per row
    # affine in FLOPs, per task; pipeline.timing) instead of at one flops_per_second
    time_profile: str = ""
    # the dearest m a task is planned at: the cheapest m whose accuracy on the calibration's
    # per-question results is within cap_se paired standard errors of the task's most
    # accurate m (pipeline.cascade.top_m); 0 = every calibrated m. Needs those results
    # (quota.results, or the results.parquet beside the calibration); without them, no cap
    cap_se: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.flops or self.seconds)

    def quota(self) -> Quota:
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
        if not 0 <= self.cap_se < math.inf:
            raise FieldError("cap_se", f"must be >= 0 (0: no cap), got {self.cap_se!r}")
        if not 1 <= self.margin < math.inf:
            raise FieldError("margin", f"must be >= 1, got {self.margin!r}")
        if self.flops:
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


def timed(args: QuotaArgs, time: TimeModel | None, cs: dict[str, QualityCurve],
          tasks: set[str], model_cfg=None) -> dict:
    """With `time` (the model of quota.time_profile), the curves of the job's `tasks` (their
    groups, with quota.by=kind) priced in its microseconds per row; else as they are."""
    if time is None:
        return cs
    from pipeline.cascade import shared_flops
    from pipeline.kinds import task_of

    cs = {g: c for g, c in cs.items() if task_of(g) in tasks}  # the profile need not time others
    ms = {m for c in cs.values() for m in c.ms}
    shared = shared_flops(model_cfg, ms) if model_cfg is not None else None
    try:
        return time.timed(cs, shared)
    except (KeyError, ValueError) as e:
        raise FieldError("time_profile", f"{args.time_profile}: {e.args[0]}") from None


def curves(args: QuotaArgs, tasks: set[str], model_cfg=None) -> dict[str, QualityCurve]:
    """The tasks' quality curves; with `cascades`, each also offers the cascades fitted on
    the calibration's per-question results (`model_cfg` prices what an escalation reuses)."""
    path = args.calibration or shipped_calibration()
    if not Path(path).is_file():
        raise FieldError("calibration", f"no such file {path}")
    found = from_calibration(path)
    missing = sorted(tasks - set(found))
    if missing:
        raise FieldError("calibration", f"{path} has no curve for task {missing[0]!r} (it has "
                         f"{sorted(found)}); run `mqt eval` with that task")
    if not args.cascades:
        return found
    return with_fitted_cascades(args, path, found, model_cfg)


def plan_caps(args: QuotaArgs, found: dict[str, QualityCurve],
              tasks: set[str]) -> dict[str, int] | None:
    """quota.cap_se: per task of the job, the dearest m worth planning
    (pipeline.cascade.top_m on the calibration's per-question results of that task); {}
    with cap_se = 0, None where no per-question results are found (nothing is capped)."""
    from pipeline.cascade import top_m

    if not args.cap_se:
        return {}
    path = results_path(args)
    if not path.is_file():
        return None
    return {t: top_m(qs, found[t].ms, args.cap_se)
            for t, qs in task_questions(path, found, tasks).items() if qs}


def task_questions(path: Path, found: dict[str, QualityCurve], tasks) -> dict[str, list]:
    """Per task of `tasks`, its questions in the per-question results at `path`, answered
    at every m of its curve in `found` (the results read once per set of m)."""
    from pipeline.cascade import load_questions

    out, read = {}, {}
    for task in sorted(tasks):
        ms = found[task].ms
        if ms not in read:
            read[ms] = load_questions(path, ms)
        out[task] = [q for q in read[ms] if q.task == task]
    return out


def results_path(args: QuotaArgs) -> Path:
    """The per-question results cascades are fitted on."""
    cal = Path(args.calibration or shipped_calibration())
    return Path(args.results) if args.results else cal.with_name("results.parquet")


def with_fitted_cascades(args: QuotaArgs, calibration, found: dict[str, QualityCurve],
                         model_cfg) -> dict[str, QualityCurve]:
    """Each task's curve plus the cascades (m1 < m2 of its trained m, thresholds at
    quantiles of the m1 confidence) measured on the calibration questions of that task."""
    from dataclasses import replace

    from pipeline.cascade import shared_flops, with_cascades

    path = results_path(args)
    if not path.is_file():
        raise FieldError("results", f"no such file {path} (cascades are fitted on the "
                         f"per-question results `mqt eval` writes beside {calibration})")
    if model_cfg is None:
        raise FieldError("cascades", "the model's config is needed to price escalations")
    out = dict(found)
    for task, questions in task_questions(path, found, found).items():
        if questions:
            curve = found[task]
            fitted = with_cascades(questions, list(curve.ms), shared_flops(model_cfg, curve.ms))
            out[task] = replace(curve, cascades=fitted[task].cascades)
    return out


def kind_groups(args: QuotaArgs, found: dict[str, QualityCurve], tasks: set[str],
                per_row: float, model_cfg=None):
    """quota.by=kind: the groups (pipeline.kinds.KindGroups) fitted on the calibration
    results, the curves to plan on (the tasks' own, and the groups' shrunk toward them by
    the alpha that two-fold cross-validation on those results picks at `per_row` FLOPs per
    row; with cascades fitted per group if quota.cascades), and that alpha."""
    from pipeline.cascade import load_questions, shared_flops
    from pipeline.kinds import (
        choose_shrinkage,
        fit_groups,
        shrinkage_folds,
        shrunk,
        task_of,
    )

    path = results_path(args)
    if not path.is_file():
        raise FieldError("results", f"no such file {path} (the per-kind plan fits its question "
                         "classifier on the per-question results of `mqt eval`)")
    sets = {found[t].ms for t in tasks}
    if len(sets) != 1:
        raise FieldError("by=kind", f"the job's tasks {sorted(tasks)} have curves at different "
                         f"m in {args.calibration or 'the shipped calibration'}")
    (ms,) = sets
    questions = [q for q in load_questions(path, ms) if q.task in found]
    shared = shared_flops(model_cfg, ms) if model_cfg is not None else dict.fromkeys(ms, 0)
    cascades = shared if args.cascades else None
    groups, fitted, sizes = fit_groups(questions, ms, cascades)
    if not groups.classifier.kinds:
        raise FieldError("by=kind", f"{path} has no question texts to learn kinds from (its "
                         "`question` column is missing or empty)")
    # the folds' curves capped as the plan's will be (`prepare`; capping commutes with
    # shrinking, so the curves returned here are capped there)
    folds = shrinkage_folds(questions, ms, cascades, cap_se=args.cap_se)
    alpha = choose_shrinkage(folds, per_row, shared)[0] if math.isfinite(per_row) else 0.0
    own = {g: c for g, c in fitted.items() if g != task_of(g)}
    return groups, shrunk({**own, **found}, sizes, alpha), alpha


def ledger_work(args: QuotaArgs) -> str:
    """What the job's ledger keeps behind its spend: FLOPs, or (quota.time_profile) the
    profile's microseconds."""
    return "profiled_us" if args.time_profile else "flops"


def ledger_quota(args: QuotaArgs) -> tuple[int, str]:
    """The job ledger's quota and unit: FLOPs, or microseconds of measured time."""
    if args.measured:
        return math.floor(args.quota().seconds * 1e6), "us"
    return args.quota().total_flops, "flops"


def in_ledger_units(args: QuotaArgs, flops: float) -> int:
    """FLOPs as the job's ledger counts them: as they are, or (measured) the microseconds
    they take at quota.flops_per_second."""
    return math.floor(flops * 1e6 / args.flops_per_second) if args.measured else int(flops)


def remaining(args: QuotaArgs, spent: int) -> Quota:
    """The quota left after `spent` (the ledger's units), in the unit it was given in."""
    q = args.quota()
    if args.measured:
        return Quota(seconds=max(0.0, q.seconds - spent / 1e6),
                     flops_per_second=q.flops_per_second, timed=q.timed)
    left = max(0, q.total_flops - spent)
    return Quota(flops=left) if q.flops is not None else Quota(
        seconds=left / q.flops_per_second, flops_per_second=q.flops_per_second)


def source_rows(src: Source, default_task: str, limit: int,
                default_question: str | None = None) -> list[tuple]:
    """(id, task) of every source row in source order (the first `limit` if limit > 0);
    only these two small columns are read, and with `default_question` given (quota.by=kind)
    a third, (id, task, question), the row's question or else that default. A bad JSONL
    line (an error row, it costs nothing) counts under the default task."""
    with_q = default_question is not None
    if src.kind == "folder":
        rows = [(relative_id(f, src.loc.path), default_task) + ((default_question,) * with_q)
                for f in src.files]
    else:
        cols = ["id", "task", "question"] if with_q else ["id", "task"]
        rows = [(str(r.get("id")) if r else "", r.get("task") or default_task)
                + ((r.get("question") or default_question,) * with_q)
                for r in manifest_records(src, cols)]
    return rows[:limit] if limit else rows


def affordable(rows: list[tuple[str, str]], cs: dict[str, QualityCurve], flops: int) -> int:
    """How many rows, in order, the quota pays for at each task's cheapest m."""
    spent = 0
    for n, (_, task) in enumerate(rows):
        spent += cs[task].cheapest
        if spent > flops:
            return n
    return len(rows)


@dataclass
class Budget:
    """What a quota job knows before it starts: its plan, the spend of earlier runs, and the
    rows it declares skipped (quota.infeasible=subset) when Q cannot pay for every row."""

    plan: Plan | None
    spent: int  # by earlier runs, in the ledger's units (FLOPs, or measured microseconds)
    skipped: list[tuple[str, str]]  # (id, task)
    rows: int  # rows this run was planned for (skipped ones excluded)
    # FLOPs escalations may spend beside the ledger's quota check: what the plan leaves
    # after its first attempts (pipeline.cascade.escalation_budget); 0 = no cascade planned
    escalations: int = 0
    curves: dict = field(default_factory=dict)  # the quality curves planned on (per group)
    # per task, the dearest m it is planned at (quota.cap_se; `plan_caps`): None where
    # there were no per-question results to cap on
    caps: dict | None = field(default_factory=dict)
    uncapped: dict = field(default_factory=dict)  # `curves` before the caps
    caps_changed: bool = False  # the plan on `uncapped` would be another
    # quota.by=kind: which group each row is planned in (pipeline.kinds.KindGroups); None:
    # the groups are the tasks
    groups: object = None
    weights: dict | None = None  # per group, as planned (None: all 1)
    shrinkage: float | None = None  # quota.by=kind: the cross-validated alpha planned with


def prepare(args: QuotaArgs, todo: list[tuple], state_path: str | None,
            model_cfg=None) -> Budget:
    """The plan for the rows left, (id, task) in source order (with quota.by=kind: (id, task,
    question)), within the quota left. An infeasible quota raises InfeasibleQuota, or with
    infeasible=subset keeps the first rows the quota pays for at the cheapest m and declares
    the others skipped. `state_path` None: no earlier spend (a plan with no job, `mqt plan`)."""
    saved = state_path is not None and (Path(state_path).exists()
                                        or Path(f"{state_path}.journal").exists())
    units, unit = ledger_quota(args)
    try:  # what earlier runs took, the time measured past their reservations included
        ledger = Ledger(units, state_path, unit=unit, work=ledger_work(args)) if saved else None
    except WorkMismatch as e:
        raise FieldError("time_profile", str(e)) from None
    except UnitMismatch as e:
        raise FieldError("measured", str(e)) from None
    except ValueError as e:  # spent past a smaller quota
        raise FieldError("ledger_state", str(e)) from None
    spent = ledger.spent + ledger.overrun if ledger else 0
    left = remaining(args, spent)
    tasks = {r[1] for r in todo}
    full = curves(args, tasks, model_cfg)
    caps = plan_caps(args, full, tasks)
    groups, alpha, time = None, None, args.time_model()
    if args.by == "kind":
        per_row = left.total_flops / len(todo) if todo else math.inf
        if time is not None and todo:  # the shrinkage is cross-validated on FLOPs
            per_row = time.flops_for(per_row / UNITS_PER_SECOND)
        groups, full, alpha = kind_groups(args, full, tasks, per_row, model_cfg)
        keyed = [(r[0], groups.group(r[1], r[2])) for r in todo]
    else:
        keyed = [(r[0], r[1]) for r in todo]
    from pipeline.cascade import capped

    full = timed(args, time, full, tasks, model_cfg)
    cs = capped(full, caps or {})
    weights = {t: float(w) for t, w in args.weights.items()} or None
    if groups is not None and weights:
        weights = group_weights(weights, {g for _, g in keyed})
    known = dict(curves=cs, groups=groups, weights=weights, shrinkage=alpha, caps=caps,
                 uncapped=full)
    try:
        rows = Counter(g for _, g in keyed)
        p = plan(rows, cs, left, weights)
        return Budget(p, spent, [], len(todo), escalations(p, cs),
                      caps_changed=changed(p, rows, full, left, weights), **known)
    except InfeasibleQuota:  # the caps keep every cheapest m: the same minimum
        if args.infeasible != "subset":
            raise
    keep = affordable(keyed, cs, left.total_flops)
    skipped = [(r[0], r[1]) for r in todo[keep:]]
    kept = Counter(g for _, g in keyed[:keep])
    p = plan(kept, cs, left, weights) if kept else None
    return Budget(p, spent, skipped, keep, escalations(p, cs),
                  caps_changed=changed(p, kept, full, left, weights), **known)


def changed(p: Plan | None, rows: Counter, full: dict, left: Quota, weights) -> bool:
    """Whether the plan on the uncapped curves would be another plan than `p`."""
    if p is None:
        return False
    return plan(rows, full, left, weights).to_dict()["tasks"] != p.to_dict()["tasks"]


def caps_text(caps: dict | None, uncapped: dict, cap_se: float,
              field_prefix: str = "quota.") -> str | None:
    """What quota.cap_se did, for the log of a plan it changed: the tasks planned below
    their most accurate calibrated m, by how much that m is more accurate; or that it could
    do nothing for want of per-question results. None with cap_se = 0 or nothing cut."""
    if not cap_se:
        return None
    if caps is None:
        return (f"{field_prefix}cap_se: no per-question calibration results found, so every "
                "calibrated m is planned")
    cut = []
    for t, m in sorted(caps.items()):
        c = uncapped.get(t)
        if c is None or m not in c.ms:
            continue
        best = c.ms[c.accuracy.index(max(c.accuracy))]
        if best > m:
            gain = 100 * (max(c.accuracy) - c.at(m)[0])
            cut.append(f"{t} up to m = {m}, not its most accurate m = {best} (+{gain:.2f} "
                       "points on the calibration)")
    if not cut:
        return None
    return (f"{field_prefix}cap_se={cap_se:g}: planned " + "; ".join(cut) + f": gains within "
            f"{cap_se:g} paired standard error(s) of the calibration questions, not bought")


def group_weights(weights: dict, groups: set[str]) -> dict[str, float]:
    """Per-task weights (quota.weights) for plan groups: a "task:kind" group weighs as its
    task (the task names stay, so the planner still checks them)."""
    from pipeline.kinds import task_of

    return {**weights, **{g: weights.get(task_of(g), 1.0) for g in sorted(groups)
                          if g not in weights}}


def escalations(p: Plan | None, cs: dict[str, QualityCurve]) -> int:
    """The escalation budget of a plan with cascades; 0 without."""
    from pipeline.cascade import escalation_budget
    from pipeline.policy import Cascade

    if p is None or not any(isinstance(part.m, Cascade) for t in p.tasks for part in t.parts):
        return 0
    return escalation_budget(p, cs)


@dataclass
class MeasuredRate:
    """Seconds per FLOP of one predictor, learned from its own batches: what it reserves for
    a row in a measured-seconds ledger. Before its first batch it uses the job's estimate
    (1 / quota.flops_per_second); after, the slowest of its last `window` batches, so a
    slow batch (a cold start, a neighbour on the machine) keeps reservations high for a while.
    With a time profile the "FLOPs" are the profile's microseconds (prior 1e-6: the profile
    is right), and the rate learns how much slower or faster than the profile rows run."""

    prior: float  # seconds per FLOP (per unit of work) before any batch
    margin: float = 1.5  # a reservation is this x the bound at the rate
    window: int = 8
    seen: deque = field(init=False)  # seconds per FLOP of the last `window` batches

    def __post_init__(self):
        self.seen = deque(maxlen=self.window)

    @property
    def rate(self) -> float:
        return max(self.seen) if self.seen else self.prior

    def reserve(self, flops: float, margin: float | None = None) -> int:
        """Microseconds to hold for work of `flops` FLOPs (at `margin`, default the rate's)."""
        return math.ceil(flops * self.rate * (self.margin if margin is None else margin) * 1e6)

    def observe(self, flops: float, seconds: float) -> None:
        if flops > 0 and seconds > 0:
            self.seen.append(seconds / flops)


def charge_us(seconds: float) -> int:
    """Measured seconds as the ledger charges them: whole microseconds (rows' seconds are
    written to the microsecond)."""
    return round(seconds * 1e6)


class LedgerClient:
    """What a predictor holds: the job's ledger actor behind plain calls (a plain `Ledger`
    works the same in tests without Ray). Keys are row id + a fresh attempt id, so every
    attempt at a row is charged: a block retried after a crash pays again, never past Q.

    Callers give FLOPs (bounds, actual costs) and the seconds they measured; with `rate`
    (a measured-seconds quota) the ledger is charged time: bounds go through the rate, a
    commit charges the measured seconds and teaches the rate, and the ledger keeps the
    FLOPs behind both (its FLOP/s for the pacer). When the holds of a batch at the margin
    are not all granted, they are given back and the batch asks again for its bounds at
    the rate alone: at the end of a quota, holds of a whole batch at 1.5x (a predictor
    holds its batch before it runs) would refuse rows whose time still fits. With `time`
    (quota.time_profile) the work behind the time is the profile's microseconds for each
    row (its task's per-call time included), not its FLOPs, and the rate is seconds per
    such microsecond. `accelerators`: what the predictor's actor holds (annotate's
    `gpus_per_actor`; 1 without accelerators): a measured second is charged as that many
    accelerator-seconds, so two actors sharing one card (0.5 each) are charged the card's
    seconds once, not twice, and an actor holding two cards twice."""

    def __init__(self, actor, rate: MeasuredRate | None = None, time: TimeModel | None = None,
                 retry: bool = True, accelerators: float = 1.0):
        if time is not None and rate is None:
            raise ValueError("a time profile prices measured time: it needs a MeasuredRate")
        if not accelerators > 0:
            raise ValueError(f"accelerators per actor must be > 0, got {accelerators}")
        self.actor, self.rate, self.time = actor, rate, time
        self.retry = retry  # a refused hold asks again without the margin
        self.accelerators = accelerators

    def _work(self, flops: list[int], tasks: list[str] | None) -> list[int]:
        """What the ledger keeps behind a row's time: its FLOPs, or its modelled time."""
        if self.time is None:
            return list(flops)
        if tasks is None:
            raise ValueError("a ledger priced by a time profile needs each row's task")
        return [self.time.units(t, f) for t, f in zip(tasks, flops, strict=True)]

    def _call(self, method: str, *args):
        if isinstance(self.actor, Ledger):
            return getattr(self.actor, method)(*args)
        import ray

        return ray.get(getattr(self.actor, method).remote(*args))

    def reserve(self, ids: list[str], bounds: list[int],
                tasks: list[str] | None = None) -> tuple[list[str], list[bool]]:
        """Attempt keys and whether each row's upper bound (FLOPs; one model call each, of
        its task in `tasks`) was granted."""
        attempt = uuid.uuid4().hex[:12]
        keys = [f"{i}@{attempt}" for i in ids]
        if self.rate is None:
            return keys, self._call("reserve_many", list(zip(keys, bounds, strict=True)))
        work = self._work(bounds, tasks)
        holds = [(k, self.rate.reserve(w), w) for k, w in zip(keys, work, strict=True)]
        granted = self._call("reserve_many", holds)
        if not all(granted) and self.retry and self.rate.margin > 1:  # the quota's end
            self._call("release_many", [k for k, ok in zip(keys, granted, strict=True) if ok])
            granted = self._call("reserve_many", [(k, self.rate.reserve(w, 1.0), w)
                                                  for k, w in zip(keys, work, strict=True)])
        return keys, granted

    def commit(self, keys: list[str], flops: list[int], seconds: list[float],
               tasks: list[str] | None = None) -> None:
        """Charge what each row cost: its FLOPs, or (measured) its seconds."""
        if self.rate is None:
            self._call("commit_many", list(zip(keys, flops, strict=True)))
            return
        work = self._work(flops, tasks)
        seconds = [s * self.accelerators for s in seconds]  # accelerator-seconds
        self.rate.observe(sum(work), sum(seconds))
        self._call("commit_many", list(zip(keys, map(charge_us, seconds), work, strict=True)))

    def release(self, keys: list[str]) -> None:
        self._call("release_many", keys)
