"""Accuracy against spend of the token-budget scheduler's policies (a benchmark).

    python -m bench.scheduler more_results=[docs/eval-s1/results.parquet] docs=docs/bench

Part 1, the default model on its calibration rows (`mqt eval`'s results.parquet: mosaic and
easy-vqa questions, caption / vqa / mc, right or not, confidence and FLOPs at each trained m;
`more_results` adds the rows of further `mqt eval` runs of the same model, such as
docs/eval-s1, another seed's 1560 questions).
The questions are split in two halves, stratified by task and kind (pipeline/scheduler/cascade.py
`split_halves`). Each adaptive policy is fitted on one half and replayed on the other behind
a real budget ledger (`replay`, cascades' escalations also capped by the plan's escalation
budget unless `cap_escalations=false`), then the halves swap: every question is answered by
a policy that never saw it; all of it is repeated for several random splits (`seeds`) and
averaged. For per-row budgets q from the cheapest fixed m to the dearest, quota Q = q x rows:

- best fixed m: the best single m that fits, chosen in hindsight on all questions (exact);
- fixed-fit: the best single m chosen on the fit half, replayed like the others;
- plan: the per-task plan (pipeline/scheduler/plan.py) on the fit half's per-task curves, each
  stopped at its task's dearest m worth buying on the fit half (`cap_se`, as `mqt annotate`
  does; all policies but fixed-fit);
- plan+casc: the same planner with per-task cascades (m1, m2, t) as extra options;
- kind / kind+casc: the plan over (task, question kind) groups instead of tasks
  (pipeline/scheduler/kinds.py, what `mqt annotate quota.by=kind` runs): a classifier of the
  question text fitted on the fit half puts each row in a group, the groups' curves are measured on
  the fit half's questions the classifier puts there; with and without cascades;
- kind, in-sample: the plan over the true (task, kind) groups fitted and measured on all
  questions: the most any per-kind budget reaches on these rows (knows the answers; a
  reference, not a policy);
- oracle: per question, knowing which m answer it right, the most right answers within Q
  (the cheapest fixes first), the ceiling no policy can pass.

It reports, per q: accuracy and spend / Q of every policy, and the issue's goals: at or
above the best fixed m (Pareto; also whether a policy falls below it by more than two paired
standard errors, i.e. beyond what the calibration questions can tell apart), the share of
the gap between it and the oracle recovered, spend <= Q always, and >= 95% of Q unless the
plan says more would not help.

Part 2, pacing (pipeline/scheduler/pacing.py) on the same held-out halves: the corpus size only
estimated (the estimate 20% low or 25% high) or rows dearer or cheaper than calibrated
(x1.3, x0.7), at one quota (per-row budget of fixed m = `pacing_m`). A plan made once
for the estimate against the pacer, which re-plans every batch on the quota left
(`pacing_error` = the estimate's error bound it keeps the cheapest m paid for).

Part 3, a simulated cluster job on the `llava-7b` prior: 1M rows over five of the paper's
benchmarks, a quota in GPU-hours at an assumed FLOP/s per GPU: the plan, its expected
accuracy, the saving against fixed m = 256 at matched accuracy, and a sweep of the quota.
Expected accuracies from the paper's averages; no per-image data, so no cascade there.

Writes scheduler.md, scheduler.png and bench.json (to `output`, and to `docs` if given).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.cli import run_module
from jobs.plan import Config as PlanConfig
from jobs.plan import matched
from mqt.config import preset
from mqt.configtree import save_config
from mqt.console import log, strict_json
from pipeline.scheduler.cascade import (
    QUANTILES,
    cap_ms,
    capped,
    escalation_budget,
    fixed_curves,
    load_questions,
    replay,
    seeded_order,
    shared_flops,
    split_halves,
    summary,
    with_cascades,
)
from pipeline.scheduler.kinds import (
    GroupedPolicy,
    choose_shrinkage,
    fit_groups,
    shrinkage_folds,
    shrunk,
)
from pipeline.scheduler.ledger import Ledger
from pipeline.scheduler.pacing import Pacer
from pipeline.scheduler.plan import best_fixed_plan, plan
from pipeline.scheduler.quality import group_name, llava_7b_prior
from pipeline.scheduler.quota import InfeasibleQuota, Quota
from pipeline.scheduler.report import table

KIND = "group"  # a POLICIES key: rows go to (task, kind) groups by the question classifier
COMMAND = ("python -m bench.scheduler more_results=[docs/eval-s1/results.parquet] "
           "docs=docs/bench")
POLICIES = {  # name -> (the field plans are made over, with cascades, planner)
    "fixed-fit": ("task", False, best_fixed_plan), "plan": ("task", False, plan),
    "plan+casc": ("task", True, plan), "kind": (KIND, False, plan),
    "kind+casc": (KIND, True, plan)}
LLAVA_ROWS = {"vqav2": 400_000, "gqa": 200_000, "pope": 200_000, "mmbench": 100_000,
              "scienceqa-img": 100_000}
TOTALS = ("rows", "correct", "spend", "quota", "planned", "unanswered", "escalated", "over",
          "short")  # over: runs (one fold) with spend > Q; short: < 95% of Q, more would help


@dataclass
class Config:
    results: str = "docs/eval/results.parquet"  # `mqt eval`'s per-question rows
    # more `mqt eval` rows of the same model at the same m (e.g. another seed's questions):
    # joined by question id, a question in several files taken from the first
    more_results: list[str] = field(default_factory=list)
    ms: list[int] = field(default_factory=list)  # empty: calibration.json's (trained) ms
    # next to `results`
    preset: str = "mqt-smol"  # the cost model's config: what an escalation shares
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # random half-splits
    points: int = 12  # per-row budgets between the cheapest and the dearest fixed m
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))
    cap_escalations: bool = True  # escalations draw on the plan's escalation budget only
    # the plans' (not fixed-fit's) dearest m per task: the cheapest m within cap_se paired
    # standard errors of the task's most accurate on the fit half (as `mqt annotate`
    # quota.cap_se); 0 = every m
    cap_se: float = 1.0
    llava_rows: dict = field(default_factory=lambda: dict(LLAVA_ROWS))
    llava_hours: float = 2.0  # the quota of the llava-7b plan shown in full
    llava_sweep: list[float] = field(default_factory=lambda: [
        1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.3])
    flops_per_second: float = 4e14  # assumed effective FLOP/s of one H100 (see docs)
    match_within: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0])
    # pacing: (estimate / true rows, cost / calibrated cost) scenarios, the quota at fixed
    # m = pacing_m's cost per row, rows per batch, and the pacer's estimate error bound
    pacing_cases: list[list[float]] = field(default_factory=lambda: [
        [1.0, 1.0], [0.8, 1.0], [1.25, 1.0], [1.0, 0.7], [1.0, 1.3]])
    pacing_m: int = 8
    pacing_batch: int = 16
    pacing_error: float = 0.25
    output: str = "runs/bench-scheduler"
    docs: str = ""  # also write scheduler.md and scheduler.png here


def validate(cfg: Config) -> None:
    if not Path(cfg.results).is_file():
        raise ValueError(f"results: no such file {cfg.results!r} (run `mqt eval`)")
    missing = [p for p in cfg.more_results if not Path(p).is_file()]
    if missing:
        raise ValueError(f"more_results: no such file {missing[0]!r}")
    cfg.ms = cfg.ms or trained_ms(cfg.results)
    if len(cfg.ms) < 2 or sorted(set(cfg.ms)) != list(cfg.ms):
        raise ValueError(f"ms: give >= 2 increasing m, got {cfg.ms}")
    if cfg.points < 2 or not cfg.seeds:
        raise ValueError("points: >= 2; seeds: at least one")
    if not cfg.quantiles or not all(0 < p < 1 for p in cfg.quantiles):
        raise ValueError(f"quantiles: each in (0, 1), got {cfg.quantiles}")
    if cfg.pacing_m not in cfg.ms or cfg.pacing_batch < 1 or cfg.pacing_error < 0:
        raise ValueError(f"pacing_m: one of ms {cfg.ms}; pacing_batch >= 1; pacing_error >= 0")
    if any(len(c) != 2 or min(c) <= 0 for c in cfg.pacing_cases):
        raise ValueError("pacing_cases: pairs [estimate / true rows, cost / calibrated], > 0")
    if cfg.flops_per_second <= 0 or cfg.llava_hours <= 0:
        raise ValueError("flops_per_second and llava_hours must be > 0")
    if not 0 <= cfg.cap_se < math.inf:
        raise ValueError(f"cap_se: must be >= 0 (0: no cap), got {cfg.cap_se!r}")


def trained_ms(results: str) -> list[int]:
    """The trained m of the `mqt eval` run that wrote `results`: its calibration.json's ms."""
    cal = Path(results).with_name("calibration.json")
    if not cal.is_file():
        raise ValueError(f"ms: none given and no {cal} to read the trained m from")
    return [int(m) for m in json.loads(cal.read_text())["ms"]]


def main(cfg: Config) -> dict:
    cfg.ms = cfg.ms or trained_ms(cfg.results)
    qs = questions(cfg)
    shared = shared_flops(preset(cfg.preset), cfg.ms)
    folds = {seed: [fit_fold(a, b, cfg, shared, seed) for a, b in _swapped(
        split_halves(qs, seed))] for seed in cfg.seeds}
    fixed = fixed_points(qs, cfg.ms)
    sweep = [sweep_point(q, qs, folds, fixed, cfg, shared) for q in budgets(fixed, cfg.points)]
    result = {"questions": len(qs), "ms": cfg.ms, "seeds": cfg.seeds, "fixed": fixed,
              "lucky": sum(lucky(q, cfg.ms) for q in qs), "classifier": classified(folds),
              "sweep": sweep, "goals": goals(sweep), "pacing": pacing(cfg, folds, fixed, shared),
              "llava": llava(cfg)}
    text = report(cfg, result)
    print(text)
    write(cfg, result, text)
    return result


def questions(cfg: Config) -> list:
    """The calibration questions of `results` and `more_results`, by id, sorted."""
    return load_questions([cfg.results, *cfg.more_results], cfg.ms)


def _swapped(halves: tuple[list, list]) -> list[tuple[list, list]]:
    a, b = halves
    return [(a, b), (b, a)]


# ------------------------------------------------------------------ fitting and replay


def fit_fold(fit: list, held: list, cfg: Config, shared: dict, seed: int) -> dict:
    """Per policy, the curves fitted on `fit` (and the question classifier of the per-kind
    policies); `held` in a seeded arrival order."""
    curves = {}
    for name, (key, cascades, planner) in POLICIES.items():
        if key == KIND:  # the same groups with or without cascades (one fitted classifier)
            groups, curves[name], sizes = fit_groups(fit, cfg.ms, shared if cascades else None,
                                                     cfg.quantiles, cfg.cap_se)
        else:
            curves[name] = (with_cascades(fit, cfg.ms, shared, "task", cfg.quantiles)
                            if cascades else fixed_curves(fit, cfg.ms, "task"))
            if cfg.cap_se and planner is plan:
                curves[name] = capped(curves[name], cap_ms(fit, curves[name], cfg.cap_se))
    return {"curves": curves, "held": seeded_order(held, seed), "cap": cfg.cap_escalations,
            "groups": groups, "sizes": sizes, "fit": fit, "seed": seed,
            "ms": cfg.ms, "quantiles": cfg.quantiles, "alpha": {}, "inner": {},
            "cap_se": cfg.cap_se}


def shrinkage(name: str, fold: dict, q: float, shared: dict) -> float:
    """The shrinkage a per-kind policy plans with at q: cross-validated on the fit half
    only (pipeline.scheduler.kinds.choose_shrinkage), as `mqt annotate quota.by=kind` does on its
    calibration; cached per fold."""
    if (name, q) not in fold["alpha"]:
        if name not in fold["inner"]:
            fold["inner"][name] = shrinkage_folds(
                fold["fit"], fold["ms"], shared if POLICIES[name][1] else None,
                fold["quantiles"], fold["seed"], fold["cap_se"])
        fold["alpha"][name, q] = choose_shrinkage(fold["inner"][name], q, shared,
                                                  cap=fold["cap"])[0]
    return fold["alpha"][name, q]


def fitted_plan(name: str, fold: dict, q: float, shared: dict) -> dict | None:
    """A policy's plan for the held-out rows within q x rows, from what it fitted on the fit
    half and the held-out rows' count per group (their tasks and question texts, never
    whether they are answered right: tests/bench/test_scheduler.py permutes that and checks
    every plan stays the same); None if it cannot pay for the cheapest m of the fitted
    curves (the planner refuses the quota)."""
    key, _, planner = POLICIES[name]
    key = fold.get("keys", {}).get(name, key)  # another field (bench/learned_m.py)
    held, curves, groups = fold["held"], fold["curves"][name], fold.get("groups")
    alpha = shrinkage(name, fold, q, shared) if key == KIND else None
    if alpha is not None:
        curves = shrunk(curves, fold["sizes"], alpha)
    # the plan counts rows per group before the job, as `mqt annotate quota.by=kind` does
    rows = dict(Counter(groups.group(x.task, x.text) if key == KIND else getattr(x, key)
                        for x in held))
    Q = quota_for(q, len(held))
    try:
        p = planner(rows, curves, Quota(flops=Q))
    except InfeasibleQuota:
        return None
    if p is None:  # no single m fits
        return None
    return {"plan": p, "quota": Q, "key": key, "curves": curves, "rows": rows,
            "alpha": alpha, "planner": planner}


def run_policy(name: str, fold: dict, q: float, shared: dict) -> dict | None:
    """The plan for the held-out rows within q x rows (`fitted_plan`), replayed behind a
    ledger; None if the planner refuses the quota."""
    fitted = fitted_plan(name, fold, q, shared)
    if fitted is None:
        return None
    p, Q, key, curves = fitted["plan"], fitted["quota"], fitted["key"], fitted["curves"]
    held, groups, alpha = fold["held"], fold.get("groups"), fitted["alpha"]
    rows, planner = fitted["rows"], fitted["planner"]
    pot = escalation_budget(p, curves) if fold["cap"] else None
    if key == KIND:
        out = replay(held, GroupedPolicy(groups, p.policy()), shared, Q, "task", pot)
    else:
        out = replay(held, p.policy(), shared, Q, key, pot)
    s = summary(out)
    saturated = p.value >= _top(planner, rows, curves).value - 1e-9
    right = {x.id: o is not None and o.correct for x, o in zip(held, out, strict=True)}
    return dict(s, correct=round(s["accuracy"] * s["rows"]), quota=Q, planned=p.spend,
                over=int(s["spend"] > Q), short=int(not saturated and s["spend"] < 0.95 * Q),
                right=right, alpha=alpha)


def quota_for(q: float, rows: int) -> int:
    """Q = q x rows in whole FLOPs, rounded to the nearest: where q is a fixed m's own cost
    per row (its spend / rows), Q is that spend exactly, not one FLOP short of it from the
    float product (which would leave that m out of "best fixed m")."""
    return round(q * rows)


def _top(planner, rows: dict, curves: dict):
    """The plan with a quota that pays for the dearest option everywhere."""
    return planner(rows, curves, Quota(flops=sum(n * curves[t].dearest for t, n in rows.items())))


def both_folds(name: str, folds: list, q: float, shared: dict) -> dict | None:
    """A policy's totals over the two folds of one split (every question held out once)."""
    runs = [run_policy(name, f, q, shared) for f in folds]
    if any(r is None for r in runs):
        return None
    return {**{k: sum(r[k] for r in runs) for k in TOTALS},
            "right": {i: ok for r in runs for i, ok in r["right"].items()},
            "alphas": [r["alpha"] for r in runs]}


def over_seeds(name: str, folds: dict, q: float, shared: dict) -> dict | None:
    """Mean totals over the random splits; accuracy min..max; over-quota if any split is."""
    runs = [both_folds(name, f, q, shared) for f in folds.values()]
    if any(r is None for r in runs):
        return None
    accs = [r["correct"] / r["rows"] for r in runs]
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in TOTALS}
    return dict(mean, accuracy=sum(accs) / len(accs), accuracy_range=(min(accs), max(accs)),
                over=sum(r["over"] for r in runs), short=sum(r["short"] for r in runs),
                runs=2 * len(runs), right=[r["right"] for r in runs],
                alphas=[a for r in runs for a in r["alphas"]])


# ------------------------------------------------------------------ fixed m, the oracle


def fixed_points(qs: list, ms: list[int]) -> list[dict]:
    """Every row at m: accuracy and total spend (exact, nothing fitted)."""
    return [{"m": m, "accuracy": sum(q.correct[m] for q in qs) / len(qs),
             "spend": sum(q.flops[m] for q in qs), "rows": len(qs)} for m in ms]


def budgets(fixed: list[dict], points: int) -> list[float]:
    """Per-row budgets: a geometric grid from the cheapest to the dearest fixed m, and each
    fixed m's own cost per row (where that m just fits)."""
    lo, hi = fixed[0]["spend"] / fixed[0]["rows"], fixed[-1]["spend"] / fixed[-1]["rows"]
    grid = [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)]
    return sorted({*grid, *(f["spend"] / f["rows"] for f in fixed)})


def best_fixed(fixed: list[dict], quota: int) -> dict | None:
    fits = [f for f in fixed if f["spend"] <= quota]
    return max(fits, key=lambda f: (f["accuracy"], -f["spend"]), default=None)


def oracle(qs: list, ms: list[int], quota: int, needed: bool = False) -> dict | None:
    """The most right answers within `quota` knowing each question's right m: every row at
    the cheapest m, then the cheapest fixes first (optimal: every fix gains one answer).
    needed=True: a question counts right only at its needed m (`needed_m`) or dearer, so
    an m that happens to answer it right below one that answers it wrong does not count."""
    right_at = (lambda q: needed_m(q, ms)) if needed else (lambda q: _first_right(q, ms))
    spend = sum(q.flops[ms[0]] for q in qs)
    if spend > quota:
        return None
    picks = [(q, right_at(q)) for q in qs]
    right = sum(m == ms[0] for _, m in picks)
    fixes = sorted(q.flops[m] - q.flops[ms[0]] for q, m in picks if m not in (None, ms[0]))
    for d in fixes:
        if spend + d > quota:
            break
        spend, right = spend + d, right + 1
    return {"accuracy": right / len(qs), "spend": spend}


def _first_right(q, ms: list[int]) -> int | None:
    """The cheapest m is kept if it answers right, else the m with the fewest FLOPs that does."""
    if q.correct[ms[0]]:
        return ms[0]
    return min((m for m in ms if q.correct[m]), key=lambda m: q.flops[m], default=None)


def needed_m(q, ms: list[int]) -> int | None:
    """The smallest m from which every larger m of `ms` answers q right (None: the dearest m
    answers it wrong): the m the question needs, leaving out answers right by luck."""
    need = None
    for m in reversed(ms):
        if not q.correct[m]:
            break
        need = m
    return need


def lucky(q, ms: list[int]) -> bool:
    """Right at some m and wrong at a dearer one (below its needed m, or with none)."""
    need = needed_m(q, ms)
    return any(q.correct[m] for m in ms if need is None or m < need)


def sweep_point(q: float, qs: list, folds: list, fixed: list, cfg: Config,
                shared: dict) -> dict:
    """Every policy at per-row budget q: quota Q = q x rows (`quota_for`), all questions."""
    Q = quota_for(q, len(qs))
    best = best_fixed(fixed, Q)
    policies = {name: over_seeds(name, folds, q, shared) for name in POLICIES}
    fixed_right = {x.id: x.correct[best["m"]] for x in qs} if best else None
    for p in policies.values():
        if p is not None:
            right = p.pop("right")
            if fixed_right:
                p["vs_best"] = paired(right, fixed_right)
    return {"q": q, "quota": Q, "best_fixed": best, "oracle": oracle(qs, cfg.ms, Q),
            "needed": oracle(qs, cfg.ms, Q, needed=True),
            "ceiling": kind_ceiling(qs, cfg.ms, Q, shared), "policies": policies}


def paired(splits: list[dict], fixed: dict) -> dict:
    """A policy against a fixed m on the same questions, per split: the accuracy difference
    and its standard error from the discordant pairs (b questions only the policy answers
    right, c only the fixed m: SE = sqrt(b + c - (b - c)^2 / n) / n); means over the splits
    (the splits reuse the same questions, so the SE does not shrink with their number)."""
    diffs, ses = [], []
    for right in splits:
        n = len(right)
        b = sum(ok and not fixed[i] for i, ok in right.items())
        c = sum(fixed[i] and not ok for i, ok in right.items())
        diffs.append((b - c) / n)
        ses.append(math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n)
    return {"diff": _mean(diffs), "se": _mean(ses)}


def kind_ceiling(qs: list, ms: list[int], quota: int, shared: dict) -> dict | None:
    """The plan over the true (task, kind) groups fitted and measured on the same questions
    (in-sample): what a per-kind budget could reach at best on these rows. A ceiling to read
    the policies against, not a policy: it knows the held-out answers and kinds."""
    rows = dict(Counter(true_group(q) for q in qs))
    try:
        p = plan(rows, fixed_curves(qs, ms, true_group), Quota(flops=quota))
    except InfeasibleQuota:
        return None
    if p is None:
        return None
    return summary(replay(qs, p.policy(), shared, quota, true_group))


def true_group(q) -> str:
    return group_name(q.task, q.kind)


def classified(folds: dict) -> dict:
    """How the per-kind policies' classifier did on the held-out questions, over all folds:
    the share put in their true (task, kind) group, and the share left to their task's curve
    (a kind the classifier did not give, or a group too small for a curve of its own)."""
    n = right = left = 0
    for fs in folds.values():
        for fold in fs:
            for x in fold["held"]:
                g = fold["groups"].group(x.task, x.text)
                n, right, left = n + 1, right + (g == true_group(x)), left + (g == x.task)
    return {"questions": n, "right": right / n, "to_task": left / n}


# ------------------------------------------------------------------ pacing


def pacing(cfg: Config, folds: dict, fixed: list[dict], shared: dict) -> dict:
    """Per scenario: the static plan and the pacer, totals over every held-out half."""
    per_row = next(f["spend"] / f["rows"] for f in fixed if f["m"] == cfg.pacing_m)
    cases = []
    for est, cost in cfg.pacing_cases:
        runs = {"static": [], "paced": [], "paced_error": []}
        for fs in folds.values():
            for fold in fs:
                held = [_scaled(q, cost) for q in fold["held"]]
                Q = quota_for(per_row, len(held))
                true = Counter(q.task for q in held)
                estimate = {t: max(1, round(est * n)) for t, n in true.items()}
                curves = fold["curves"]["plan"]
                runs["static"].append(_static(held, curves, estimate, Q, shared))
                runs["paced"].append(_paced(held, curves, estimate, Q, shared, cfg.pacing_batch))
                runs["paced_error"].append(_paced(held, curves, estimate, Q, shared,
                                                  cfg.pacing_batch, cfg.pacing_error))
        cases.append({"estimate": est, "cost": cost,
                      **{k: _pacing_totals(v) for k, v in runs.items()}})
    over = sum(x["over"] for c in cases for k in ("static", "paced", "paced_error")
               if (x := c[k]) is not None)
    return {"per_row": per_row, "m": cfg.pacing_m, "batch": cfg.pacing_batch,
            "error": cfg.pacing_error, "cases": cases, "over": over}


def _scaled(q, cost: float):
    return q if cost == 1 else replace(q, flops={m: round(cost * f) for m, f in q.flops.items()})


def _static(held, curves, estimate, Q, shared) -> dict:
    try:
        p = plan(estimate, curves, Quota(flops=Q))
    except InfeasibleQuota:
        return {"infeasible": 1}
    return dict(summary(replay(held, p.policy(), shared, Q)), quota=Q, plans=1)


def _paced(held, curves, estimate, Q, shared, batch: int, error: float = 0.0) -> dict:
    ledger = Ledger(Q)
    pacer = Pacer(curves, Q, estimate, lambda: ledger.spent + ledger.reserved, error=error)
    out = replay(held, pacer, shared, Q, batch=batch, ledger=ledger)
    return dict(summary(out), quota=Q, plans=pacer.plans)


def _pacing_totals(runs: list[dict]) -> dict | None:
    if any("infeasible" in r for r in runs):
        return None
    n = sum(r["rows"] for r in runs)
    return {"accuracy": sum(r["accuracy"] * r["rows"] for r in runs) / n,
            "spend_share": sum(r["spend"] for r in runs) / sum(r["quota"] for r in runs),
            "min_share": min(r["spend"] / r["quota"] for r in runs),
            "over": sum(r["spend"] > r["quota"] for r in runs),
            "unanswered": sum(r["unanswered"] for r in runs) / len(runs),
            "plans": sum(r["plans"] for r in runs) / len(runs), "runs": len(runs)}


# ------------------------------------------------------------------ the goals


def goals(sweep: list[dict]) -> dict:
    """Per policy: against the best fixed m that fits (chosen in hindsight on all questions,
    as the issue states the goal) and against fixed-fit (the best fixed m chosen on the fit
    half, replayed like the others); the gap to the oracle recovered; spend > Q in any
    split; the q where a split spent < 95% of Q although the plan said more would help."""
    out = {}
    for name in POLICIES:
        pts = [(s, s["policies"][name]) for s in sweep if s["policies"][name] and s["best_fixed"]]
        deltas = [p["accuracy"] - s["best_fixed"]["accuracy"] for s, p in pts]
        fit = [p["accuracy"] - s["policies"]["fixed-fit"]["accuracy"] for s, p in pts
               if s["policies"]["fixed-fit"]]
        tied = [p["vs_best"]["diff"] >= -2 * p["vs_best"]["se"] for _, p in pts]
        out[name] = {"points": len(pts), "at_or_above": sum(d >= 0 for d in deltas),
                     "within_2se": sum(tied),
                     "se": _mean([p["vs_best"]["se"] for _, p in pts]),
                     "worst_delta": min(deltas, default=0.0), "mean_delta": _mean(deltas),
                     "vs_fit_at_or_above": sum(d >= 0 for d in fit), "vs_fit_points": len(fit),
                     "vs_fit_mean": _mean(fit),
                     "recovered": [r for r in (_recovered(s, p) for s, p in pts) if r is not None],
                     "recovered_needed": [r for r in (_recovered(s, p, "needed") for s, p in pts)
                                          if r is not None],
                     "runs": sum(p["runs"] for _, p in pts),
                     "over_quota": sum(p["over"] for _, p in pts),
                     "short": sum(p["short"] for _, p in pts),
                     "short_at": [s["q"] for s, p in pts if p["short"]]}
    return out


def _recovered(s: dict, p: dict, ref: str = "oracle") -> float | None:
    """The share of the gap between the best fixed m and `ref` (the oracle, or the
    needed-m oracle) that policy p closes; None where there is no gap."""
    gap = s[ref]["accuracy"] - s["best_fixed"]["accuracy"]
    return (p["accuracy"] - s["best_fixed"]["accuracy"]) / gap if gap > 0 else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


# ------------------------------------------------------------------ llava-7b, simulated


def llava(cfg: Config) -> dict:
    """The plan of a 1M-row job on the llava-7b prior at `llava_hours`, the saving against
    fixed m = 256 at matched accuracy, and the quota sweep."""
    curves, fps = llava_7b_prior(), cfg.flops_per_second
    pc = PlanConfig(prior="llava-7b", rows=cfg.llava_rows, match_m=256)
    p = plan(cfg.llava_rows, curves, Quota(seconds=cfg.llava_hours * 3600, flops_per_second=fps))
    matches = [matched(_within(pc, w), curves, p.quota, cfg.llava_rows, {})
               for w in cfg.match_within]
    sweep = [_llava_point(h, cfg, curves, best_fixed_plan) for h in cfg.llava_sweep]
    return {"hours": cfg.llava_hours, "flops_per_second": fps, "table": table(p),
            "accuracy": p.accuracy, "spend_hours": p.spend / fps / 3600,
            "match": [{k: v for k, v in m.items() if k != "plan"} for m in matches],
            "sweep": sweep}


def _within(pc, within: float):
    return replace(pc, match_within=within)


def _llava_point(hours: float, cfg: Config, curves: dict, best_fixed_plan) -> dict:
    q = Quota(seconds=hours * 3600, flops_per_second=cfg.flops_per_second)
    p, f = plan(cfg.llava_rows, curves, q), best_fixed_plan(cfg.llava_rows, curves, q)
    to_h = cfg.flops_per_second * 3600
    return {"hours": hours, "accuracy": p.accuracy, "spend_hours": p.spend / to_h,
            "fixed_m": f and f.tasks[0].parts[0].m, "fixed_accuracy": f and f.accuracy}


# ------------------------------------------------------------------ report


def report(cfg: Config, r: dict) -> str:
    n = r["questions"]
    cap = "escalations capped at the plan's escalation budget" if cfg.cap_escalations else \
        "escalations not capped (only the job's ledger)"
    if cfg.cap_se:
        cap += (f"; the plans' curves stop at each task's dearest m worth buying on the fit "
                f"half (cap_se = {cfg.cap_se:g}: the cheapest m within {cfg.cap_se:g} paired "
                "standard errors of its most accurate)")
    files = ", ".join([cfg.results, *cfg.more_results])
    lines = [f"Scheduler benchmark: {cfg.preset} calibration rows ({files}), {n} "
             f"questions, m in {cfg.ms}. Adaptive policies are fitted on one half of the "
             "questions and replayed on the other behind a ledger, then the halves swap, so "
             f"every question is held out once; numbers are means over {len(cfg.seeds)} "
             f"random splits (seeds {cfg.seeds}); {cap}.", "",
             "Accuracy (%) at per-row budget q (Q = q x rows):", "", accuracy_table(r), "",
             f"Spend as % of Q (escalated rows, unanswered rows: of {n}, mean over the "
             "splits):", "", spend_table(r), "",
             goals_text(r["goals"], n), "", classifier_text(r), "",
             ceiling_text(r), "", fixed_text(r), "",
             pacing_text(r["pacing"]), "",
             llava_text(cfg, r["llava"])]
    return "\n".join(lines)


def accuracy_table(r: dict) -> str:
    head = ("| q (GFLOPs/row) | best fixed m | " + " | ".join(POLICIES)
            + " | kind, in-sample | needed-m oracle | oracle |")
    lines = [head, "|" + "---:|" * (len(POLICIES) + 5)]
    for s in r["sweep"]:
        f = s["best_fixed"]
        best = f"m={f['m']}: {100 * f['accuracy']:.2f}" if f else "-"
        cells = [_acc(s["policies"][p]) for p in POLICIES]
        lines.append(f"| {s['q'] / 1e9:.2f} | {best} | " + " | ".join(cells)
                     + f" | {_acc(s['ceiling'])} | {_acc(s['needed'])} | {_acc(s['oracle'])} |")
    return "\n".join(lines)


def _acc(p: dict | None) -> str:
    return "-" if p is None else f"{100 * p['accuracy']:.2f}"


def spend_table(r: dict) -> str:
    lines = ["| q (GFLOPs/row) | " + " | ".join(POLICIES) + " |",
             "|" + "---:|" * (len(POLICIES) + 1)]
    for s in r["sweep"]:
        lines.append(f"| {s['q'] / 1e9:.2f} | "
                     + " | ".join(_spent(s["policies"][p]) for p in POLICIES) + " |")
    return "\n".join(lines)


def _spent(p: dict | None) -> str:
    if p is None:
        return "infeasible"
    extra = f" ({p['escalated']} esc" + (f", {p['unanswered']} unans)" if p["unanswered"]
                                         else ")")
    return f"{100 * p['spend'] / p['quota']:.1f}%" + (extra if p["escalated"] or
                                                      p["unanswered"] else "")


def goals_text(g: dict, n: int) -> str:
    lines = [f"Goals (one question = {100 / n:.2f} points; accuracy differences are means over "
             "the splits; SE: the standard error of a policy's difference from the best fixed "
             "m on the same questions, from the questions only one of the two answers right; "
             "a run is one held-out half of one split at one q):", "",
             "| policy | >= best fixed m (hindsight) | not below it by 2 SE (mean SE) | "
             "worst / mean difference (points) | "
             ">= fixed-fit | mean difference | gap to oracle recovered: median (min..max) | "
             "gap to the needed-m oracle recovered (q with a gap) | "
             "runs with spend > Q | runs < 95% of Q while more would help (at q) |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for name, x in g.items():
        lines.append(f"| {name} | {x['at_or_above']}/{x['points']} | "
                     f"{x['within_2se']}/{x['points']} ({100 * x['se']:.2f}) | "
                     f"{100 * x['worst_delta']:+.2f} / {100 * x['mean_delta']:+.2f} | "
                     f"{x['vs_fit_at_or_above']}/{x['vs_fit_points']} | "
                     f"{100 * x['vs_fit_mean']:+.2f} | {_median_range(x['recovered'])} | "
                     f"{_median_range(x['recovered_needed'])} ({len(x['recovered_needed'])}) | "
                     f"{x['over_quota']}/{x['runs']} | {_short(name, x)} |")
    return "\n".join(lines)


def classifier_text(r: dict) -> str:
    c = r["classifier"]
    kinds = [n for n, (key, _, _) in POLICIES.items() if key == KIND]
    lines = [f"The kind policies' question classifier (pipeline/scheduler/kinds.py, fitted on "
             f"each fit half) put {100 * c['right']:.1f}% of {c['questions']} held-out "
             f"questions (all splits) in their true (task, kind) group; "
             f"{100 * c['to_task']:.1f}% went to their task's curve (no kind given, or a group "
             "under the minimum rows). Their "
             "group curves are shrunk toward the task's by alpha pseudo-rows, alpha chosen "
             "at each q by two-fold cross-validation inside the fit half (alpha: runs):", "",
             "| q (GFLOPs/row) | " + " | ".join(kinds) + " |", "|---:|" + "---|" * len(kinds)]
    for s in r["sweep"]:
        cells = [_alphas(s["policies"][n]) for n in kinds]
        lines.append(f"| {s['q'] / 1e9:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _alphas(p: dict | None) -> str:
    if p is None:
        return "-"
    n = Counter(p["alphas"])
    return ", ".join(f"{'inf' if math.isinf(a) else f'{a:g}'}: {k}" for a, k in sorted(n.items()))


def ceiling_text(r: dict) -> str:
    """How much of the gap to the oracle even the in-sample per-kind plan closes."""
    pts = [(s, s["ceiling"]) for s in r["sweep"] if s["ceiling"] and s["best_fixed"]]
    rec = [x for x in (_recovered(s, c) for s, c in pts) if x is not None]
    gaps = sorted(100 * (s["oracle"]["accuracy"] - s["best_fixed"]["accuracy"]) for s, _ in pts)
    return (f"Ceiling: the per-kind plan fitted on all questions and measured on the same ones "
            f"(kind, in-sample) recovers {_median_range(rec)} of the gap between the best "
            f"fixed m and the oracle, a gap of {gaps[len(gaps) // 2]:.1f} points median "
            f"({gaps[0]:.1f}..{gaps[-1]:.1f}). The rest of the oracle is per question (which m "
            "answers this question right, often a small m where a larger one answers it "
            "wrong): a budget by task or kind cannot see it, and a cascade, which sees the "
            "answer's confidence, pays a second LM pass for each row it escalates.\n\n"
            + needed_text(r))


def needed_text(r: dict) -> str:
    """How the oracle's gap splits into questions that need a larger m and lucky answers."""
    pts = [s for s in r["sweep"] if s["needed"] and s["best_fixed"]]
    need = sorted(g for s in pts
                  if (g := 100 * (s["needed"]["accuracy"] - s["best_fixed"]["accuracy"])) > 0)
    luck = sorted(100 * (s["oracle"]["accuracy"] - s["needed"]["accuracy"]) for s in pts)
    own = sorted(x for s in pts if (x := _recovered(s, s["needed"])) is not None)
    return (f"The needed-m oracle counts a question right only at its needed m: the smallest m "
            f"from which every dearer m answers it right too (at the dearest m's cost it is "
            f"that m's accuracy). {r['lucky']} of the {r['questions']} questions are answered "
            "right at some m and wrong at a dearer one. Between the oracle and the needed-m "
            f"oracle lie {luck[len(luck) // 2]:.1f} points median ({luck[0]:.1f}..{luck[-1]:.1f}): "
            "answers a small m gets right and a dearer m wrong, which a policy keeps only where "
            "it happens to choose that m. Where the needed-m oracle is above the best fixed m (at "
            f"{len(need)} of the {len(pts)} q; elsewhere the best fixed m already has the "
            "dearest m's accuracy, or the cheapest m's lucky answers), it is above by "
            f"{need[len(need) // 2]:.1f} points median ({need[0]:.1f}..{need[-1]:.1f}): the "
            "part a budget that puts each question at the m it needs can win. The goals table "
            "gives the share of that part each policy recovers, at those q. This is a "
            "diagnostic beside the goal, not the goal: the goal is stated against the oracle. "
            f"Against it, the needed-m oracle itself recovers at most {100 * own[-1]:.0f}% "
            f"(median {100 * own[len(own) // 2]:.0f}% over the {len(own)} q) of the gap between "
            "the best fixed m and the oracle: a policy that put every question at exactly the m "
            f"it needs would recover half of it at {sum(x >= 0.5 for x in own)} of those q.")


def _median_range(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{100 * xs[len(xs) // 2]:.0f}% ({100 * xs[0]:.0f}..{100 * xs[-1]:.0f}%)" if xs else "-"


def _short(name: str, x: dict) -> str:
    if name == "fixed-fit":
        return "n/a (one m for every row)"
    at = ", ".join(f"{q / 1e9:.2f}" for q in x["short_at"])
    return f"{x['short']}/{x['runs']}" + (f" ({at})" if at else "")


def fixed_text(r: dict) -> str:
    cells = ", ".join(f"m={f['m']}: {100 * f['accuracy']:.2f}% at "
                      f"{f['spend'] / f['rows'] / 1e9:.2f}" for f in r["fixed"])
    return f"Fixed m (accuracy at GFLOPs/row): {cells}."


def pacing_text(pc: dict) -> str:
    e = f"{pc['error']:g}"
    lines = [f"Pacing: quota = fixed m = {pc['m']}'s cost per row ({pc['per_row'] / 1e9:.2f} "
             f"GFLOPs) x rows of each held-out half; the static plan is made once for the "
             f"estimated rows; the pacer re-plans every batch of {pc['batch']} rows, trusting "
             f"the estimate (error 0) or keeping the cheapest m paid for {e} x more rows "
             f"(error {e}). Per policy: accuracy over all held-out rows (unanswered = wrong) / "
             "spend as % of Q over all runs (the lowest run in brackets) / unanswered rows per "
             "run (mean). No run of any policy spent more than its Q "
             f"({pc['over']} over).", "",
             "| estimate / true rows | cost / calibrated | static plan | pacer, error 0 | "
             f"pacer, error {e} | plans per run |", "|---:|---:|---|---|---|---:|"]
    for c in pc["cases"]:
        cells = ["infeasible (the estimate's rows cost more than Q at the cheapest m)"
                 if x is None else f"{100 * x['accuracy']:.2f}% / {100 * x['spend_share']:.1f}%"
                 f" ({100 * x['min_share']:.1f}%) / {x['unanswered']:.1f}"
                 for x in (c["static"], c["paced"], c["paced_error"])]
        lines.append(f"| {c['estimate']:g} | {c['cost']:g} | " + " | ".join(cells)
                     + f" | {c['paced']['plans']:.0f} |")
    return "\n".join(lines)


def llava_text(cfg: Config, lv: dict) -> str:
    fps, h = lv["flops_per_second"], lv["hours"]
    rows = sum(cfg.llava_rows.values())
    lines = [f"llava-7b prior, {rows} rows, quota {h:g} GPU-hours at an assumed {fps:.3g} "
             f"FLOP/s per GPU (expected accuracy {100 * lv['accuracy']:.2f}%, "
             f"{lv['spend_hours']:.2f} GPU-hours):", "", lv["table"], ""]
    for m in lv["match"]:
        lines.append(f"- fixed m = 256: {100 * m['fixed_accuracy']:.2f}% with "
                     f"{m['fixed_spend'] / fps / 3600:.2f} GPU-hours; the plan within "
                     f"{m['within']:g} points ({100 * m['plan_accuracy']:.2f}%) needs "
                     f"{m['plan_spend'] / fps / 3600:.2f}: {100 * m['saving']:.1f}% less")
    lines += ["", "| quota (GPU-h) | plan accuracy | plan spend (GPU-h) | best fixed m | "
              "its accuracy |", "|---:|---:|---:|---:|---:|"]
    for s in lv["sweep"]:
        fixed = (f"{s['fixed_m']} | {100 * s['fixed_accuracy']:.2f}%" if s["fixed_m"]
                 else "- | -")
        lines.append(f"| {s['hours']:g} | {100 * s['accuracy']:.2f}% | "
                     f"{s['spend_hours']:.2f} | {fixed} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ outputs


def write(cfg: Config, result: dict, text: str) -> None:
    out = Path(cfg.output)
    save_config(cfg, out)
    (out / "bench.json").write_text(json.dumps(strict_json(result), indent=1, default=str))
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scheduler.md").write_text(f"```\n$ {COMMAND}\n```\n\n{text}\n")
        plot(result, folder / "scheduler.png")
    log(f"wrote {out / 'bench.json'}")


def plot(r: dict, path: Path) -> None:
    """Left: accuracy against the quota per row (the comparison at equal Q). Right: against
    what each policy really spent per row, with every fixed m."""
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    qs = [s["q"] / 1e9 for s in r["sweep"]]
    best = [s["best_fixed"] for s in r["sweep"]]
    left.step(qs, [100 * b["accuracy"] if b else None for b in best], "k:", where="post",
              label="best fixed m that fits (hindsight)")
    _fixed(right, r["fixed"])
    for name in [*POLICIES, "ceiling", "needed", "oracle"]:
        pts = [(s["q"], s[name] if name in ("ceiling", "needed", "oracle")
                else s["policies"][name])
               for s in r["sweep"]]
        pts = [(q, p) for q, p in pts if p]
        acc = [100 * p["accuracy"] for _, p in pts]
        label = {"ceiling": "kind, in-sample", "needed": "needed-m oracle"}.get(name, name)
        left.plot([q / 1e9 for q, _ in pts], acc, "-o", ms=3, label=label)
        right.plot([_per_row(p, r) / 1e9 for _, p in pts], acc, "o", ms=3, label=label)
    left.set(xlabel="quota, GFLOPs per row", ylabel="accuracy (%)", title="at equal quota")
    right.set(xlabel="spend, GFLOPs per row (cost model)", title="at the spend reached")
    left.legend(fontsize=8)
    fig.suptitle(f"mqt-smol, {r['questions']} calibration questions; adaptive policies on "
                 f"held-out halves, mean of {len(r['seeds'])} splits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fixed(ax, fixed: list[dict]) -> None:
    xs = [f["spend"] / f["rows"] / 1e9 for f in fixed]
    ax.plot(xs, [100 * f["accuracy"] for f in fixed], "ks:", label="fixed m")
    for x, f in zip(xs, fixed, strict=True):
        ax.annotate(f"m={f['m']}", (x, 100 * f["accuracy"]), textcoords="offset points",
                    xytext=(3, -10), fontsize=7)


def _per_row(p: dict, r: dict) -> float:
    return p["spend"] / p.get("rows", r["questions"])


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.scheduler"))
