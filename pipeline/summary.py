"""What a batch job reports: its summary, streamed from the rows it wrote, and the spend.

`summarize` reads the written Parquet back (never the dataset on the driver): rows, errors
by kind and how many of them are retryable (pipeline.errors), rows/s, FLOPs and seconds
per task, the m histogram and accuracy per task.
`quota_summary` adds a quota job's spend from its ledger: in FLOPs, or in measured seconds
against the time planned. `print_summary` prints both. Pure Python, no Ray.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from mqt.console import strict_json
from mqt.tasks import Task
from pipeline.errors import retryable
from pipeline.scheduler.budget import Budget
from pipeline.scheduler.ledger import REFUSED
from pipeline.scheduler.quota import QuotaArgs
from pipeline.writer import OutputFolder


def summarize(out: OutputFolder, tasks: dict[str, Task], seconds: float, written: int) -> dict:
    """Rows, errors, FLOPs, m and accuracy per task, streamed from the written Parquet;
    rows/s is this run's (the rows it wrote over its wall time)."""
    rows = errors = flops = refused = retry = 0
    per_task: Counter = Counter()
    hist: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    took: Counter = Counter()  # task -> seconds its written rows took
    scored: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # task -> [correct, labelled]
    cols = ["task", "m", "flops", "seconds", "error", "prediction", "reference"]
    for b in out.batches(cols):
        for task, m, f, sec, err, prediction, reference in zip(
                *(b.column(c).to_pylist() for c in cols), strict=True):
            rows, flops = rows + 1, flops + (f or 0)
            per_task[task] += f or 0
            took[task] += sec or 0.0
            if err:
                errors += 1
                refused += err == REFUSED  # the engine's text for a row the ledger refused
                retry += retryable(err)
                reasons[_error_kind(err)] += 1
                continue
            hist[task][m] += 1
            if reference is not None:
                scored[task][0] += tasks[task].is_correct(prediction or "", reference)
                scored[task][1] += 1
    return {"rows": rows, "errors": errors, "retryable_errors": retry,
            "error_kinds": dict(reasons.most_common()), "refused_rows": refused,
            "this_run": {"rows": written, "seconds": round(seconds, 3),
                         "rows_per_s": round(written / max(seconds, 1e-9), 3)},
            "flops": flops, "flops_per_task": dict(sorted(per_task.items())),
            "seconds_per_task": {t: round(x, 6) for t, x in sorted(took.items())},
            "m_histogram": {t: dict(sorted(c.items())) for t, c in hist.items()},
            "accuracy": {t: {"correct": c, "labelled": n, "accuracy": round(c / n, 4)}
                         for t, (c, n) in sorted(scored.items()) if n}}


def _error_kind(err: str) -> str:
    """What the summary counts: the text before the first ':' ("quota: refused ..." and
    "quota: skipped ..." are told apart)."""
    head = err.split(":")[0]
    return err.split("(")[0].strip() if head == "quota" else head


def print_summary(s: dict) -> None:
    r = s["this_run"]
    print(f"rows {s['rows']}  errors {s['errors']}  {s['flops'] / 1e9:.3f} GFLOPs  "
          f"(this run: {r['rows']} rows in {r['seconds']} s, {r['rows_per_s']} rows/s)")
    for task, hist in sorted(s["m_histogram"].items()):
        acc = s["accuracy"].get(task)
        score = f"  accuracy {100 * acc['accuracy']:.1f}% of {acc['labelled']}" if acc else ""
        print(f"  {task}: " + ", ".join(f"m={m}: {n}" for m, n in hist.items()) + score)
    for kind, n in s["error_kinds"].items():
        print(f"  error {kind}: {n}")
    if s.get("retryable_errors"):
        print(f"  {s['retryable_errors']} of the errors may succeed when asked again: resume "
              "with retry_errors=true")
    if "quota" in s and s["quota"].get("measured"):
        q = s["quota"]
        print(f"quota {q['quota_seconds']:.4g} s measured: spent {q['spent_seconds']:.4g} s "
              f"+ {q['overrun_seconds']:.4g} s past reservations ({100 * q['share']:.1f}%), "
              f"this run {q['this_run_seconds']:.4g} s, refused rows {q['refused_rows']}, "
              f"skipped {q['skipped_rows']}; per task: "
              + ", ".join(f"{t} {100 * x:.1f}%" for t, x in q["share_per_task"].items())
              + f"; {q['flops_per_second_measured'] or 0:.4g} FLOP/s "
              + (f"measured; time {q['time_vs_profile'] or 0:.3g}x the profile's "
                 f"({q['time_profile']})" if q.get("time_profile") else
                 f"measured (planned at {q['flops_per_second_planned']:.4g})"))
    elif "quota" in s:
        q = s["quota"]
        print(f"quota {q['quota_flops']:.4g} FLOPs: spent {q['spent_flops']:.4g} "
              f"({100 * q['share']:.1f}%), this run {q['this_run_flops']:.4g}, "
              f"refused rows {q['refused_rows']}, skipped {q['skipped_rows']}; per task: "
              + ", ".join(f"{t} {f:.3g} ({100 * q['share_per_task'][t]:.1f}%)"
                          for t, f in q["flops_per_task"].items()))


def steady(first: tuple[float, int] | None, t0: float, t_end: float, written: int) -> dict:
    """Start-up (Ray, actors, model load: until the first rows came back) and the rate after."""
    if first is None or written <= first[1]:
        return {"startup_s": None, "steady_rows_per_s": None}
    t_first, n_first = first
    rate = (written - n_first) / max(t_end - t_first, 1e-9)
    return {"startup_s": round(t_first - t0, 3), "steady_rows_per_s": round(rate, 3)}


def quota_summary(budget: Budget, summary: dict, totals: dict | None,
                  accelerators: float = 1.0) -> dict:
    """The summary's `quota`: the spend in the quota's unit, then what every quota job has.
    `accelerators`: what each engine's actor held (a measured second is charged as that
    many accelerator-seconds)."""
    args = budget.args
    totals = totals or {"spent": budget.spent, "overrun": 0}  # nothing ran this time
    spend = (measured_spend if args.measured else flops_spend)(args, summary, totals, budget)
    return {**spend, "skipped_rows": len(budget.skipped), "plan_by": args.by,
            "planned_up_to_m": budget.caps,
            "kind_shrinkage": strict_json(budget.shrinkage), "pacing": totals.get("pacing"),
            "refused_rows": summary["refused_rows"],
            "flops_per_task": summary["flops_per_task"],
            "share_per_task": share_per_task(args, summary, accelerators)}


def share_per_task(args: QuotaArgs, summary: dict, accelerators: float) -> dict[str, float]:
    """Per task, what its written rows spent as a share of Q: their FLOPs, or (measured)
    their seconds as the ledger charges them (x the accelerators an actor holds). Rows
    computed but lost in a crash are in the ledger's spend, not here."""
    q = args.quota()
    if args.measured:
        per = {t: x * accelerators for t, x in summary["seconds_per_task"].items()}
        return {t: round(x / max(q.seconds, 1e-9), 4) for t, x in per.items()}
    return {t: round(f / max(q.total_cost, 1), 4) for t, f in summary["flops_per_task"].items()}


def flops_spend(args: QuotaArgs, summary: dict, totals: dict, budget: Budget) -> dict:
    q = args.quota()
    return {"quota_flops": q.total_cost, "spent_flops": totals["spent"],
            "this_run_flops": totals["spent"] - budget.spent,
            "escalation_budget_flops": budget.escalations,
            "escalation_flops": totals.get("escalation_spent", 0),
            "share": round(totals["spent"] / max(q.total_cost, 1), 4),
            "overrun_flops": totals["overrun"]}


def measured_spend(args: QuotaArgs, summary: dict, totals: dict, budget: Budget) -> dict:
    """A measured-seconds job: time against the quota, and the FLOP/s the job really
    reached (a better estimate for the next job)."""
    q = args.quota()
    spent, over = totals["spent"] / 1e6, totals["overrun"] / 1e6
    took = spent + over
    return {"measured": True, "quota_seconds": q.seconds, "spent_seconds": round(spent, 6),
            "overrun_seconds": round(over, 6),
            "this_run_seconds": round(took - budget.spent / 1e6, 6),
            "share": round(took / max(q.seconds, 1e-9), 4),
            "flops_per_second_planned": None if args.time_profile else q.flops_per_second,
            "time_profile": args.time_profile or None,
            # measured time / the profile's time for the same rows (1: the profile was right)
            "time_vs_profile": (round(took * 1e6 / totals["flops_spent"], 4)
                                if args.time_profile and totals.get("flops_spent")
                                else None),
            "flops_per_second_measured": round(summary["flops"] / took) if took else None,
            "escalation_budget_seconds": round(budget.escalations / q.flops_per_second, 6),
            "escalation_seconds": totals.get("escalation_spent", 0) / 1e6}


