"""`mqt plan`: per-task visual-token budgets that fit a compute quota.

    mqt plan rows.vqa=1000 rows.mc=200 quota=1.5e13          # mqt-smol's shipped calibration
    mqt plan prior=llava-7b rows.vqav2=400000 rows.gqa=200000 \\
        quota_seconds=1.8e6 flops_per_second=4e14 match_m=256
    mqt plan source=rows.jsonl quota=2e13 by=kind          # the rows of a corpus, per kind
    mqt plan rows.vqa=1000 quota_seconds=300 time_profile=runs/prof/time_profile.json

Reads quality curves (an `mqt eval` calibration.json, or the llava-7b prior), solves the
per-task plan (pipeline/plan.py), with `source=` for the rows of a folder or manifest (per
task, or with `by=kind` per (task, question kind) as `mqt annotate quota.by=kind` plans
them), and prints: task, rows, m, expected accuracy, spend and
share of the quota, with totals; then the best single m for all tasks that fits, and with
`match_m`, the quota at which the plan matches fixed m on every row. Writes plan.json
(`PlanPolicy.from_dict` reads it), plan.md and config.yaml to `output`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jobs.common import log, save_config
from pipeline.plan import (
    InfeasibleQuota,
    Plan,
    Quota,
    best_fixed_plan,
    fixed_plan,
    plan,
    quota_to_match,
)
from pipeline.quality import QualityCurve, from_calibration, prior_curves, shipped_calibration
from pipeline.storage import StorageArgs


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
    source: str = ""
    task: str = "caption"  # for source rows that do not name one (every row of a folder)
    question: str = ""  # for source rows that do not have one
    by: str = "task"  # with source: "kind" plans per (task, question kind) (pipeline/kinds.py)
    results: str = ""  # `mqt eval` per-question results; "" = beside the calibration
    # plan a task up to the cheapest m within cap_se paired standard errors of its most
    # accurate m on those results (pipeline.cascade.top_m); 0 = every calibrated m. The
    # best fixed m and match_m are reported on every calibrated m
    cap_se: float = 1.0
    storage: StorageArgs = field(default_factory=StorageArgs)  # for s3:// and other URLs
    output: str = "runs/plan"  # folder for plan.json, plan.md and config.yaml


def curves(cfg: Config) -> dict[str, QualityCurve]:
    if cfg.prior:
        try:
            return prior_curves(cfg.prior)
        except ValueError as e:
            raise ValueError(f"prior: {e}") from None
    path = Path(cfg.calibration) if cfg.calibration else shipped_calibration()
    if not path.is_file():
        raise ValueError(f"calibration: no such file {str(path)!r}")
    found = from_calibration(path, include_unseen=cfg.include_unseen)
    if not cfg.time_profile:
        return found
    from pipeline.timing import TimeModel

    if cfg.rows:  # a profile need only time the tasks planned
        found = {t: c for t, c in found.items() if t in cfg.rows}
    try:
        return TimeModel.load(cfg.time_profile).timed(found)
    except (KeyError, ValueError) as e:
        raise ValueError(f"time_profile: {e.args[0]}") from None


def quota(cfg: Config) -> Quota:
    if (cfg.quota is None) == (cfg.quota_seconds is None):
        raise ValueError("quota: give quota= (FLOPs) or quota_seconds= (with "
                         "flops_per_second=), one of them")
    if cfg.quota is not None:
        if cfg.quota < 0:
            raise ValueError(f"quota: must be >= 0 FLOPs, got {cfg.quota}")
        return Quota(flops=cfg.quota)
    if cfg.quota_seconds < 0:
        raise ValueError(f"quota_seconds: must be >= 0, got {cfg.quota_seconds}")
    if cfg.time_profile:
        from pipeline.timing import UNITS_PER_SECOND

        if cfg.flops_per_second:
            raise ValueError("flops_per_second: give it or time_profile, not both")
        return Quota(seconds=cfg.quota_seconds, flops_per_second=UNITS_PER_SECOND, timed=True)
    if not cfg.flops_per_second or cfg.flops_per_second <= 0:
        raise ValueError("flops_per_second: give the FLOP/s that converts quota_seconds (> 0)")
    return Quota(seconds=cfg.quota_seconds, flops_per_second=cfg.flops_per_second)


def validate(cfg: Config) -> None:
    if cfg.prior and cfg.calibration:
        raise ValueError("prior: give a prior or a calibration file, not both")
    if cfg.time_profile and cfg.quota_seconds is None:
        raise ValueError("time_profile: prices a quota in seconds: give quota_seconds=")
    if cfg.time_profile and cfg.prior:
        raise ValueError("time_profile: a profile times mqt-smol's tasks, not a prior's "
                         "benchmarks; drop prior=")
    if not cfg.source and cfg.by != "task":
        raise ValueError("by: plans per question kind need the rows' questions: give source=")
    if not cfg.source and not cfg.rows:
        raise ValueError(f"rows: give rows per task, e.g. rows.{next(iter(curves(cfg)))}=1000;"
                         f" or source= (a folder or manifest); tasks: {sorted(curves(cfg))}")
    if not 0 <= cfg.cap_se < float("inf"):
        raise ValueError(f"cap_se: must be >= 0 (0: no cap), got {cfg.cap_se!r}")
    # a bad source, unknown tasks, bad rows or weights, an infeasible quota: fail here
    rows, cs, weights, full, _ = inputs(cfg)
    solve(cfg, cs, rows, weights)
    if cfg.match_m and any(cfg.match_m not in full[t].ms for t in rows if t in full):
        raise ValueError(f"match_m: {cfg.match_m} is not an m of every task's curve")
    if not 0 <= cfg.match_within <= 100:
        raise ValueError(f"match_within: must be in 0..100 points, got {cfg.match_within}")


def solve(cfg: Config, cs: dict[str, QualityCurve], rows: dict | None = None,
          weights: dict | None = None) -> Plan:
    q = quota(cfg)
    try:
        return plan(cfg.rows if rows is None else rows, cs, q,
                    cfg.weights if weights is None else weights)
    except InfeasibleQuota as e:
        raise ValueError(f"{_quota_field(q)}: {e}") from e


def _quota_field(q: Quota) -> str:
    return "quota" if q.flops is not None else "quota_seconds"


def inputs(cfg: Config) -> tuple[dict, dict[str, QualityCurve], dict, dict, dict | None]:
    """With `source`: rows per task (by=kind: per group) of the corpus, the curves planned
    on (by=kind: with the groups', shrunk as `mqt annotate` does) and the weights per plan
    group, through pipeline.budget.prepare; else rows.*, the curves and weights.*. Then the
    same curves before `cap_se`'s caps, and the caps (pipeline.budget.Budget.caps)."""
    from pipeline.budget import FieldError, QuotaArgs, plan_caps, prepare, source_rows
    from pipeline.cascade import capped

    if not cfg.source:
        full = curves(cfg)
        caps = {} if cfg.prior else plan_caps(
            QuotaArgs(calibration=cfg.calibration, results=cfg.results, cap_se=cfg.cap_se),
            full, {t for t in cfg.rows if t in full})
        return cfg.rows, capped(full, caps or {}), cfg.weights, full, caps
    from pipeline.sources import open_source

    if cfg.prior:
        raise ValueError("source: plans a corpus on an `mqt eval` calibration; drop prior=")
    if cfg.rows:
        raise ValueError("rows: give rows.* or source=, not both")
    if cfg.by not in ("task", "kind"):
        raise ValueError(f"by must be 'task' or 'kind', got {cfg.by!r}")
    q = quota(cfg)
    args = QuotaArgs(flops=q.flops or 0.0, seconds=q.seconds or 0.0,
                     flops_per_second=0.0 if cfg.time_profile else q.flops_per_second or 0.0,
                     calibration=cfg.calibration, weights=cfg.weights, by=cfg.by,
                     results=cfg.results, measured=bool(cfg.time_profile),
                     time_profile=cfg.time_profile, cap_se=cfg.cap_se)
    src = open_source(cfg.source, cfg.storage)
    todo = source_rows(src, cfg.task, 0, cfg.question if cfg.by == "kind" else None)
    try:
        budget = prepare(args, todo, None)
    except InfeasibleQuota as e:
        raise ValueError(f"{_quota_field(q)}: {e}") from e
    except FieldError as e:  # named quota.<field> there, <field> here
        raise ValueError(f"{e.field}: {e.detail}") from None
    rows = {t.task: t.rows for t in budget.plan.tasks}
    return rows, budget.curves, budget.weights or {}, budget.uncapped, budget.caps


def main(cfg: Config) -> dict:
    rows, cs, weights, full, caps = inputs(cfg)
    p = solve(cfg, cs, rows, weights)
    best = best_fixed_plan(rows, full, p.quota, weights)
    match = matched(cfg, full, p.quota, rows, weights) if cfg.match_m else None
    text = report(cfg, p, best, match, caps_line(cfg, p, caps, full, rows, weights))
    print(text)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(p.to_dict(), source=source(cfg), best_fixed=best and best.to_dict(),
                  match=match, planned_up_to_m=caps)
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


def matched(cfg: Config, cs: dict[str, QualityCurve], q: Quota, rows: dict | None = None,
            weights: dict | None = None) -> dict:
    """Fixed match_m on every row against the plan that reaches its value, less
    match_within points of accuracy on every row, for the fewest FLOPs (rows and weights:
    cfg's unless given)."""
    rows = cfg.rows if rows is None else rows
    weights = cfg.weights if weights is None else weights
    fixed = fixed_plan(rows, cs, cfg.match_m, q, weights)
    slack = cfg.match_within / 100 * sum(t.weight * t.rows for t in fixed.tasks)
    need = quota_to_match(rows, cs, fixed.value - slack, weights)
    at = plan(rows, cs, Quota(flops=need), weights)
    return {"m": cfg.match_m, "within": cfg.match_within, "fixed_spend": fixed.spend,
            "fixed_accuracy": fixed.accuracy, "fixed_value": fixed.value,
            "plan_spend": at.spend, "plan_accuracy": at.accuracy, "plan_value": at.value,
            "saving": 1 - at.spend / fixed.spend if fixed.spend else 0.0, "plan": at.to_dict()}


# ------------------------------------------------------------------------- the table


def caps_line(cfg: Config, p: Plan, caps: dict | None, full: dict, rows: dict,
              weights: dict) -> str | None:
    """What cap_se did to plan p, as `mqt annotate` logs it (no "quota." before the field
    here): said where it changed the plan, or could not cap for want of results."""
    from pipeline.budget import caps_text, changed

    if cfg.prior or (caps is not None and not changed(p, rows, full, p.quota, weights)):
        return None
    return caps_text(caps, full, cfg.cap_se, "")


def report(cfg: Config, p: Plan, best: Plan | None, match: dict | None,
           capped: str | None = None) -> str:
    q, unit = p.quota, p.quota.cost_unit
    given = q.flops if q.flops is not None else q.seconds
    flops = "" if q.flops is not None else f" = {p.quota_flops:.4g} {unit}"
    lines = [f"Plan for {p.rows} rows, quota {q.describe(given)}{flops} ({source(cfg)})", "",
             table(p)]
    lines += ["", f"Value {p.value:.6g} (weighted expected correct rows); no plan can "
              f"exceed {p.bound:.6g} (LP bound)."]
    if capped:
        lines.append(capped)
    lines.append(_fixed_line(p, best))
    if match:
        lines.append(_match_line(p, match))
    return "\n".join(lines)


def table(p: Plan) -> str:
    hours = p.quota.flops is None  # a quota in seconds: spend in accelerator-hours too
    head = f"| task | rows | m | expected accuracy | spend ({p.quota.cost_unit}) | share of Q |"
    rule = "|---|---:|---|---:|---:|---:|"
    if hours:
        head, rule = head + " accelerator-hours |", rule + "---:|"
    lines = [head, rule]
    for t in p.tasks:
        lines.append(_row(p, t.task, t.rows, _ms(t.parts), t.accuracy, t.spend, hours))
    lines.append(_row(p, "**total**", p.rows, "", p.accuracy, p.spend, hours))
    return "\n".join(lines)


def _row(p: Plan, task, rows, ms, acc, spend, hours) -> str:
    share = 100 * p.share(spend)
    row = f"| {task} | {rows} | {ms} | {100 * acc:.2f}% | {spend:.4g} | {share:.1f}% |"
    if hours:
        row += f" {p.quota.in_unit(spend) / 3600:.1f} |"
    return row


def _ms(parts) -> str:
    if len(parts) == 1:
        return str(parts[0].m)
    return " + ".join(f"{x.m} x{x.rows}" for x in parts)


def _fixed_line(p: Plan, best: Plan | None) -> str:
    if best is None:
        return "No single m for all tasks fits in the quota."
    m = best.tasks[0].parts[0].m
    return (f"Best fixed m within the quota: m = {m} on every row, expected accuracy "
            f"{100 * best.accuracy:.2f}%, spend {best.spend:.4g} {p.quota.cost_unit} "
            f"({100 * p.share(best.spend):.1f}% of Q).")


def _match_line(p: Plan, match: dict) -> str:
    unit = p.quota.cost_unit
    within = f", less {match['within']:g} points," if match["within"] else ""
    return (f"Fixed m = {match['m']} on every row: expected accuracy "
            f"{100 * match['fixed_accuracy']:.2f}%, {match['fixed_spend']:.4g} {unit} "
            f"({100 * p.share(match['fixed_spend']):.1f}% of Q). The plan reaches its value"
            f"{within} with {match['plan_spend']:.4g} {unit} (accuracy "
            f"{100 * match['plan_accuracy']:.2f}%): {100 * match['saving']:.1f}% less.")
