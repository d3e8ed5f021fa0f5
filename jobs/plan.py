"""`mqt plan`: per-task visual-token budgets that fit a compute quota.

    mqt plan rows.vqa=1000 rows.mc=200 quota=1.5e13          # mqt-smol's shipped calibration
    mqt plan prior=llava-7b rows.vqav2=400000 rows.gqa=200000 \\
        quota_seconds=1.8e6 flops_per_second=4e14 match_m=256
    mqt plan source=rows.jsonl quota=2e13 by=kind          # the rows of a corpus, per kind
    mqt plan rows.vqa=1000 quota_seconds=300 time_profile=runs/prof/time_profile.json

Plans through the scheduler's front door (`pipeline.scheduler.prepare`, as `mqt annotate`
does) for rows per task (`rows.*`) or the rows of a folder or manifest (`source=`, per task
or with `by=kind` per (task, question kind)), and prints: task, rows, m, expected accuracy,
spend and share of the quota, with totals; then the best single m for all tasks that fits,
and with `match_m`, the quota at which the plan matches fixed m on every row. Writes
plan.json (`PlanPolicy.from_dict` reads it), plan.md and config.yaml to `output`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mqt.configtree import save_config
from mqt.console import log
from pipeline.scheduler import Budget, FieldError, InfeasibleQuota, QuotaArgs, prepare
from pipeline.scheduler.budget import UnknownTask, changed, counted_rows
from pipeline.scheduler.plan import Plan, best_fixed_plan, fixed_plan, plan, quota_to_match
from pipeline.scheduler.quota import Quota
from pipeline.scheduler.report import caps_text, report
from pipeline.sources import open_source, source_rows
from pipeline.storage import StorageArgs

FIELDS = {"flops": "quota", "seconds": "quota_seconds"}  # QuotaArgs' names -> this job's


def named_here(e: FieldError) -> str:
    """A quota error as this job names its fields (no "quota." prefix; quota, quota_seconds)."""
    text = f"{FIELDS.get(e.field, e.field)}: {e.detail}"
    for name, here in FIELDS.items():
        text = text.replace(f"quota.{name}", here)
    return text.replace("quota.", "")


@dataclass
class Config:
    calibration: str = ""  # an `mqt eval` calibration.json; "" = the shipped one of mqt-smol
    prior: str = ""  # "llava-7b": the paper's per-benchmark accuracy instead of a calibration
    include_unseen: bool = False  # also plan with calibrated m never drawn in training
    rows: dict = field(default_factory=dict)  # task -> rows, e.g. rows.vqa=1000
    weights: dict = field(default_factory=dict)  # task -> weight (default 1)
    quota: float | None = None  # FLOPs
    quota_seconds: float | None = None  # accelerator-seconds, converted at flops_per_second
    flops_per_second: float | None = None  # sustained FLOP/s of one accelerator (assumed)
    # or, for quota_seconds, the seconds per row at each m from `mqt profile` (its
    # time_profile.json): the plan's costs are then that profile's microseconds
    time_profile: str = ""
    match_m: int = 0  # also find the quota at which the plan matches fixed m on every row
    match_within: float = 0.0  # ... or comes within this many points of accuracy of it
    # the rows of a corpus instead of rows.*: a folder or manifest (as `mqt annotate` reads)
    source: str | list[str] = ""  # as annotate's: folder, manifest, glob or list of parts
    columns: dict = field(default_factory=dict)  # our manifest column -> the file's name
    task: str = "caption"  # for source rows that do not name one (every row of a folder)
    question: str = ""  # for source rows that do not have one
    by: str = "task"  # with source: "kind" plans per (task, question kind) (scheduler/kinds.py)
    results: str = ""  # `mqt eval` per-question results; "" = beside the calibration
    # plan a task up to the cheapest m within cap_se paired standard errors of its most
    # accurate m on those results (pipeline.scheduler.cascade.cap_m); 0 = every calibrated
    # m. The best fixed m and match_m are reported on every calibrated m
    cap_se: float = 1.0
    storage: StorageArgs = field(default_factory=StorageArgs)  # for s3:// and other URLs
    output: str = "runs/plan"  # folder for plan.json, plan.md and config.yaml


def quota_args(cfg: Config) -> QuotaArgs:
    """This job's settings as the scheduler's (the same quota rules as `mqt annotate`)."""
    if (cfg.quota is None) == (cfg.quota_seconds is None):
        raise ValueError("quota: give quota= (FLOPs) or quota_seconds= (with "
                         "flops_per_second=), one of them")
    if cfg.time_profile and cfg.quota_seconds is None:
        raise ValueError("time_profile: prices a quota in seconds: give quota_seconds=")
    return QuotaArgs(flops=cfg.quota or 0.0, seconds=cfg.quota_seconds or 0.0,
                     flops_per_second=cfg.flops_per_second or 0.0, calibration=cfg.calibration,
                     prior=cfg.prior, include_unseen=cfg.include_unseen, weights=cfg.weights,
                     by=cfg.by, results=cfg.results, measured=bool(cfg.time_profile),
                     time_profile=cfg.time_profile, cap_se=cfg.cap_se)


def validate(cfg: Config) -> Budget:
    """Everything checked and the plan made (a bad source, an unknown task, an infeasible
    quota fail here); `main` reports the budget this returns."""
    if cfg.source and (cfg.prior or cfg.rows):
        raise ValueError("source: plans a corpus on an `mqt eval` calibration; drop prior="
                         if cfg.prior else "rows: give rows.* or source=, not both")
    if not cfg.source and cfg.by != "task":
        raise ValueError("by: plans per question kind need the rows' questions: give source=")
    if not 0 <= cfg.match_within <= 100:
        raise ValueError(f"match_within: must be in 0..100 points, got {cfg.match_within}")
    args = quota_args(cfg)
    try:
        args.quota()
        budget = prepare(args, corpus(cfg))
    except UnknownTask as e:
        raise ValueError(f"rows.{e.task}: unknown task; tasks: {e.known}") from None
    except FieldError as e:  # named quota.<field> there, as this job names it here
        raise ValueError(named_here(e)) from None
    except InfeasibleQuota as e:
        raise ValueError(f"{FIELDS['flops' if e.quota.flops is not None else 'seconds']}: "
                         f"{e}") from e
    if cfg.match_m and any(cfg.match_m not in budget.uncapped[t].ms for t in groups(budget)):
        raise ValueError(f"match_m: {cfg.match_m} is not an m of every task's curve")
    return budget


def corpus(cfg: Config) -> list[tuple]:
    """The rows to plan: the source's (id, task[, question]) in order, or rows.* counted."""
    if not cfg.source:
        if not cfg.rows:
            raise ValueError("rows: give rows per task, e.g. rows.vqa=1000; or source= (a "
                             "folder or manifest)")
        bad = [t for t, n in cfg.rows.items() if isinstance(n, bool) or not isinstance(n, int)
               or n < 0]
        if bad:
            raise ValueError(f"rows.{bad[0]}: must be an int >= 0, got {cfg.rows[bad[0]]!r}")
        return counted_rows(cfg.rows)
    src = open_source(cfg.source, cfg.storage, cfg.columns)
    return source_rows(src, cfg.task, 0, cfg.question if cfg.by == "kind" else None)


def groups(budget: Budget) -> dict[str, int]:
    """Rows per plan group (task, or with by=kind (task, question kind))."""
    return {t.task: t.rows for t in budget.plan.tasks}


def main(cfg: Config, budget: Budget | None = None) -> dict:
    budget = budget or validate(cfg)
    p, rows, weights = budget.plan, groups(budget), budget.weights or {}
    best = best_fixed_plan(rows, budget.uncapped, p.quota, weights)
    match = matched(cfg, budget.uncapped, p.quota, rows, weights) if cfg.match_m else None
    capped = None if budget.caps is not None and not changed(
        p, rows, budget.uncapped, p.quota, weights) else caps_text(
        budget.caps, budget.uncapped, cfg.cap_se, "")
    text = report(p, source(cfg), best, match, capped)
    print(text)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(p.to_dict(), source=source(cfg), best_fixed=best and best.to_dict(),
                  match=match, planned_up_to_m=budget.caps)
    (out / "plan.json").write_text(json.dumps(result, indent=1))
    (out / "plan.md").write_text(text + "\n")
    save_config(cfg, out)
    log(f"wrote {out / 'plan.json'}")
    return result


def source(cfg: Config) -> str:
    if cfg.prior:
        return f"prior {cfg.prior}"
    cal = f"calibration {cfg.calibration}" if cfg.calibration else "calibration of mqt-smol"
    if not cfg.source:
        return cal
    return cal + f", rows of {cfg.source}" + (" per (task, question kind)" if cfg.by == "kind"
                                              else "")


def matched(cfg: Config, cs: dict, q: Quota, rows: dict, weights: dict) -> dict:
    """Fixed match_m on every row against the plan that reaches its value, less
    match_within points of accuracy on every row, for the fewest FLOPs."""
    fixed = fixed_plan(rows, cs, cfg.match_m, q, weights)
    slack = cfg.match_within / 100 * sum(t.weight * t.rows for t in fixed.tasks)
    need = quota_to_match(rows, cs, fixed.value - slack, weights)
    at: Plan = plan(rows, cs, Quota(flops=need), weights)
    return {"m": cfg.match_m, "within": cfg.match_within, "fixed_spend": fixed.spend,
            "fixed_accuracy": fixed.accuracy, "fixed_value": fixed.value,
            "plan_spend": at.spend, "plan_accuracy": at.accuracy, "plan_value": at.value,
            "saving": 1 - at.spend / fixed.spend if fixed.spend else 0.0, "plan": at.to_dict()}
