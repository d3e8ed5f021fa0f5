"""Plans as text: the tables `mqt plan` prints and `mqt annotate` logs, and what the cap did."""

from __future__ import annotations

from pipeline.scheduler.plan import Plan


def report(p: Plan, source: str, best: Plan | None, match: dict | None,
           capped: str | None = None) -> str:
    """`mqt plan`'s text: the plan's table and value, what the cap did, the best fixed m,
    and with a match the quota at which the plan matches fixed m."""
    q, unit = p.quota, p.quota.cost_unit
    given = q.flops if q.flops is not None else q.seconds
    flops = "" if q.flops is not None else f" = {p.quota_cost:.4g} {unit}"
    lines = [f"Plan for {p.rows} rows, quota {q.describe(given)}{flops} ({source})", "",
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
    """The plan per task (group): rows, m, expected accuracy, spend and share of Q."""
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
