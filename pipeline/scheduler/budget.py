"""Before a quota job starts: `prepare(quota, rows) -> Budget`, the scheduler's front door.

`prepare` takes the job's quota settings (`QuotaArgs`) and the rows it has left to do (its
corpus estimate: (id, task), or (id, task, question) for plans per question kind), reads
the spend of earlier runs of the same job from its ledger state, and plans m for the rows
left within the quota left (pipeline/scheduler/plan.py): on each task's quality curve
(calibration or prior), stopped at its dearest m worth buying (`quota.cap_se`), with the
cascades fitted on the calibration's per-question results (`quota.cascades`), per
(task, question kind) group (`quota.by=kind`), priced on a time profile
(`quota.time_profile`). A quota that cannot pay the cheapest m on every row fails here with
the minimum it needs (or, with `quota.infeasible=subset`, keeps the first rows it pays
for). `mqt plan`, `mqt annotate` and the Serve endpoint all plan through it; the `Budget`
it returns is what pipeline/scheduler/runtime.py `start` runs. Pure Python, no Ray.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.scheduler.cascade import (
    cap_m,
    capped,
    escalation_budget,
    load_questions,
    shared_flops,
    with_cascades,
)
from pipeline.scheduler.kinds import (
    KindGroups,
    choose_shrinkage,
    fit_groups,
    shrinkage_folds,
    shrunk,
)
from pipeline.scheduler.ledger import Ledger, UnitMismatch, WorkMismatch, state_exists
from pipeline.scheduler.plan import Plan, plan
from pipeline.scheduler.policy import Cascade
from pipeline.scheduler.quality import (
    QualityCurve,
    from_calibration,
    prior_curves,
    shipped_calibration,
    task_of,
)
from pipeline.scheduler.quota import (
    FieldError,
    InfeasibleQuota,
    Quota,
    QuotaArgs,
    ledger_quota,
    ledger_work,
    remaining,
)
from pipeline.scheduler.timing import UNITS_PER_SECOND, TimeModel
from pipeline.storage import StorageArgs

SKIPPED = ("quota: skipped (quota.infeasible=subset): the quota pays for the first {kept} of "
           "{rows} rows at the cheapest m")


class UnknownTask(FieldError):
    """A row's task has no quality curve in the calibration (or prior) planned on."""

    def __init__(self, field: str, detail: str, task: str, known: list[str]):
        super().__init__(field, detail)
        self.task, self.known = task, known


def counted_rows(per_task: Mapping[str, int]) -> list[tuple[str, str]]:
    """A corpus known only by its rows per task (`mqt plan rows.vqa=1000`), as `prepare`
    takes it: (id, task) rows with made-up ids."""
    return [(f"{task}#{i}", task) for task, n in per_task.items() for i in range(int(n))]


def timed(args: QuotaArgs, time: TimeModel | None, cs: dict[str, QualityCurve],
          tasks: set[str], model_cfg=None) -> dict:
    """With `time` (the model of quota.time_profile), the curves of the job's `tasks` (their
    groups, with quota.by=kind) priced in its microseconds per row; else as they are."""
    if time is None:
        return cs
    cs = {g: c for g, c in cs.items() if task_of(g) in tasks}  # the profile need not time others
    ms = {m for c in cs.values() for m in c.ms}
    shared = shared_flops(model_cfg, ms) if model_cfg is not None else None
    try:
        return time.timed(cs, shared)
    except (KeyError, ValueError) as e:
        raise FieldError("time_profile", e.args[0]) from None


def curves(args: QuotaArgs, tasks: set[str], model_cfg=None) -> dict[str, QualityCurve]:
    """The tasks' quality curves; with `cascades`, each also offers the cascades fitted on
    the calibration's per-question results (`model_cfg` prices what an escalation reuses).
    With `prior`, the prior's curves (no cascades: a prior has no per-question results)."""
    if args.prior:
        try:
            found = prior_curves(args.prior)
        except ValueError as e:
            raise FieldError("prior", str(e)) from None
        where, source = "prior", f"the {args.prior} prior"
    else:
        path = args.calibration or shipped_calibration()
        if not Path(path).is_file():
            raise FieldError("calibration", f"no such file {path}")
        found = from_calibration(path, include_unseen=args.include_unseen)
        where, source = "calibration", str(path)
    missing = sorted(tasks - set(found))
    if missing:
        raise UnknownTask(where, f"{source} has no curve for task {missing[0]!r} (it has "
                          f"{sorted(found)}); run `mqt eval` with that task",
                          missing[0], sorted(found))
    if not args.cascades:
        return found
    if args.prior:
        raise FieldError("cascades", "cascades are fitted on a calibration's per-question "
                         "results; a prior has none")
    return with_fitted_cascades(args, path, found, model_cfg)


def plan_caps(args: QuotaArgs, found: dict[str, QualityCurve],
              tasks: set[str]) -> dict[str, int] | None:
    """quota.cap_se: per task of the job, the dearest m worth planning
    (pipeline.scheduler.cascade.cap_m on the calibration's per-question results of that
    task); {} with cap_se = 0 or on a prior, None where no per-question results are found
    (nothing is capped)."""
    if not args.cap_se or args.prior:
        return {}
    path = results_path(args)
    if not path.is_file():
        return None
    return {t: cap_m(qs, found[t].ms, args.cap_se)
            for t, qs in task_questions(path, found, tasks).items() if qs}


def task_questions(path: Path, found: dict[str, QualityCurve], tasks) -> dict[str, list]:
    """Per task of `tasks`, its questions in the per-question results at `path`, answered
    at every m of its curve in `found` (the results read once per set of m)."""
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
    """quota.by=kind: the groups (pipeline.scheduler.kinds.KindGroups) fitted on the calibration
    results, the curves to plan on (the tasks' own, and the groups' shrunk toward them by
    the alpha that two-fold cross-validation on those results picks at `per_row` FLOPs per
    row; with cascades fitted per group if quota.cascades), and that alpha."""
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

    args: QuotaArgs  # the settings it was prepared with (runtime.start reads them too)
    state_path: str | None  # the job's ledger state (None: a plan with no job, `mqt plan`)
    plan: Plan | None
    spent: int  # by earlier runs, in the ledger's units (FLOPs, or measured microseconds)
    skipped: list[tuple[str, str]]  # (id, task)
    rows: int  # rows this run was planned for (skipped ones excluded)
    # FLOPs escalations may spend beside the ledger's quota check: what the plan leaves
    # after its first attempts (cascade.escalation_budget); 0 = no cascade planned
    escalations: int = 0
    curves: dict = field(default_factory=dict)  # the quality curves planned on (per group)
    # per task, the dearest m it is planned at (quota.cap_se; `plan_caps`): None where
    # there were no per-question results to cap on
    caps: dict | None = field(default_factory=dict)
    uncapped: dict = field(default_factory=dict)  # `curves` before the caps
    caps_changed: bool = False  # the plan on `uncapped` would be another
    # quota.by=kind: which group each row is planned in; None: the groups are the tasks
    groups: KindGroups | None = None
    storage: StorageArgs | None = None  # how to reach a state_path URL (s3://...)
    weights: dict | None = None  # per group, as planned (None: all 1)
    shrinkage: float | None = None  # quota.by=kind: the cross-validated alpha planned with


def prepare(args: QuotaArgs, todo: list[tuple], state_path: str | None = None,
            model_cfg=None, fresh: bool = False, storage: StorageArgs | None = None) -> Budget:
    """The plan for the rows left, (id, task) in source order (with quota.by=kind: (id, task,
    question)), within the quota left. An infeasible quota raises InfeasibleQuota, or with
    infeasible=subset keeps the first rows the quota pays for at the cheapest m and declares
    the others skipped. `state_path` None: no earlier spend (a plan with no job, `mqt plan`).
    `fresh`: the job starts afresh (its earlier spend at `state_path` is dropped before it
    runs), so that spend is not read. `storage`: how to reach a `state_path` URL."""
    saved = state_path is not None and not fresh and state_exists(state_path, storage)
    units, unit = ledger_quota(args)
    try:  # what earlier runs took, the time measured past their reservations included
        ledger = Ledger(units, state_path, unit=unit, work=ledger_work(args),
                        storage=storage) if saved else None
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
        per_row = left.total_cost / len(todo) if todo else math.inf
        if time is not None and todo:  # the shrinkage is cross-validated on FLOPs
            per_row = time.flops_for(per_row / UNITS_PER_SECOND)
        groups, full, alpha = kind_groups(args, full, tasks, per_row, model_cfg)
        keyed = [(r[0], groups.group(r[1], r[2])) for r in todo]
    else:
        keyed = [(r[0], r[1]) for r in todo]
    full = timed(args, time, full, tasks, model_cfg)
    cs = capped(full, caps or {})
    weights = {t: float(w) for t, w in args.weights.items()} or None
    if groups is not None and weights:
        weights = group_weights(weights, {g for _, g in keyed})
    known = dict(args=args, state_path=state_path, storage=storage, curves=cs, groups=groups,
                 weights=weights, shrinkage=alpha, caps=caps, uncapped=full)
    try:
        rows = Counter(g for _, g in keyed)
        p = plan(rows, cs, left, weights)
        return Budget(plan=p, spent=spent, skipped=[], rows=len(todo),
                      escalations=escalations(p, cs),
                      caps_changed=changed(p, rows, full, left, weights), **known)
    except InfeasibleQuota:  # the caps keep every cheapest m: the same minimum
        if args.infeasible != "subset":
            raise
    keep = affordable(keyed, cs, left.total_cost)
    skipped = [(r[0], r[1]) for r in todo[keep:]]
    kept = Counter(g for _, g in keyed[:keep])
    p = plan(kept, cs, left, weights) if kept else None
    return Budget(plan=p, spent=spent, skipped=skipped, rows=keep,
                  escalations=escalations(p, cs),
                  caps_changed=changed(p, kept, full, left, weights), **known)


def changed(p: Plan | None, rows: Counter, full: dict, left: Quota, weights) -> bool:
    """Whether the plan on the uncapped curves would be another plan than `p`."""
    if p is None:
        return False
    return plan(rows, full, left, weights).to_dict()["tasks"] != p.to_dict()["tasks"]


def group_weights(weights: dict, groups: set[str]) -> dict[str, float]:
    """Per-task weights (quota.weights) for plan groups: a "task:kind" group weighs as its
    task (the task names stay, so the planner still checks them)."""
    return {**weights, **{g: weights.get(task_of(g), 1.0) for g in sorted(groups)
                          if g not in weights}}


def escalations(p: Plan | None, cs: dict[str, QualityCurve]) -> int:
    """The escalation budget of a plan with cascades; 0 without."""
    if p is None or not any(isinstance(part.m, Cascade) for t in p.tasks for part in t.parts):
        return 0
    return escalation_budget(p, cs)


