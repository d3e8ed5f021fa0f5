"""The per-task planner: quality curves, the hull, the greedy against brute force and the LP,
quotas (FLOPs and seconds), infeasibility, and the plan as a TokenPolicy."""

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqt.config import preset
from mqt.cost import total_flops
from pipeline.scheduler.plan import (
    PlanPolicy,
    best_fixed_plan,
    fixed_plan,
    hull,
    minimum_cost,
    plan,
    quota_to_match,
)
from pipeline.scheduler.policy import TokenPolicy
from pipeline.scheduler.quality import (
    LLAVA_7B_TOKENS,
    QualityCurve,
    from_calibration,
    llava_7b_prior,
    shipped_calibration,
)
from pipeline.scheduler.quota import InfeasibleQuota, Quota

EPS = 1e-9

# ------------------------------------------------------------------ quality curves


def test_shipped_calibration_curves_match_the_json():
    cal = json.loads(shipped_calibration().read_text())
    curves = from_calibration()
    assert sorted(curves) == sorted(cal["by_task"]) == ["caption", "mc", "vqa"]
    for task, c in curves.items():
        assert c.ms == tuple(cal["ms"])  # trained m only: 3 and 33 were never drawn
        for m, acc, flops in c.points():
            s = cal["by_task"][task][str(m)]
            assert acc == s["accuracy"] and flops == math.ceil(s["mean_flops"])
    unseen = from_calibration(include_unseen=True)["vqa"]
    assert set(unseen.ms) == set(cal["ms"]) | set(cal["unseen_ms"])


def test_shipped_calibration_is_the_one_in_docs():
    docs = Path(__file__).parents[3] / "docs" / "eval" / "calibration.json"
    assert docs.exists(), "docs/eval is a committed file"
    assert json.loads(docs.read_text()) == json.loads(shipped_calibration().read_text())
    rows = docs.with_name("results.parquet")  # what quota.cascades fits cascades on
    assert rows.read_bytes() == shipped_calibration().with_name("results.parquet").read_bytes()


def test_llava_prior_has_the_published_points_and_the_cost_model_prices():
    curves = llava_7b_prior()
    assert sorted(curves) == ["gqa", "mmbench", "pope", "scienceqa-img", "vqav2"]
    exact = {"vqav2": (61.0, 73.7, 76.8), "gqa": (50.8, 58.8, 61.6),
             "mmbench": (54.4, 63.4, 64.3), "pope": (74.5, 81.9, 84.4),
             "scienceqa-img": (65.0, 66.8, 67.6)}
    cfg = preset("llava-7b")
    for task, c in curves.items():
        assert [round(100 * c.at(m)[0], 1) for m in (2, 36, 256)] == list(exact[task])
        T, K = LLAVA_7B_TOKENS[task]
        assert c.cost == tuple(total_flops(cfg, m, T, K).total for m in c.ms)
        assert list(c.cost) == sorted(c.cost)


@pytest.mark.parametrize("kwargs,message", [
    (dict(ms=(), accuracy=(), cost=()), "one value per m"),
    (dict(ms=(4, 2), accuracy=(0.1, 0.2), cost=(1, 2)), "increasing"),
    (dict(ms=(1,), accuracy=(1.5,), cost=(1,)), "accuracy"),
    (dict(ms=(1,), accuracy=(0.5,), cost=(1.5,)), "cost"),
])
def test_bad_curves_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QualityCurve("t", **kwargs)


# ------------------------------------------------------------------ the hull


def test_hull_drops_dominated_and_non_concave_points():
    # m=2 is dominated (costs more than m=1, no gain); m=4 lies below the chord 1 -> 8;
    # m=16 gains nothing over m=8; m=8 -> 32 has a smaller slope than 1 -> 8: kept.
    c = QualityCurve("t", (1, 2, 4, 8, 16, 32), (0.5, 0.5, 0.55, 0.7, 0.7, 0.75),
                     (10, 12, 20, 30, 40, 60))
    assert [p.m for p in hull(c)] == [1, 8, 32]
    assert [p.m for p in hull(c, weight=0.0)] == [1]  # no value: the cheapest point only


def test_hull_keeps_the_cheaper_point_of_equal_cost():
    c = QualityCurve("t", (1, 2, 3), (0.6, 0.5, 0.9), (10, 10, 20))
    assert [p.m for p in hull(c)] == [1, 3]


# ------------------------------------------------------------------ hand-checked plan


def test_a_hand_checked_plan_splits_one_task():
    a = QualityCurve("a", (1, 2), (0.5, 0.9), (10, 20))  # 0.04 per FLOP
    b = QualityCurve("b", (1, 2), (0.5, 0.6), (10, 20))  # 0.01 per FLOP
    p = plan({"a": 10, "b": 10}, {"a": a, "b": b}, Quota(flops=255))
    # base 200; a's step costs 10 per row: 5 rows fit exactly, b gets nothing.
    assert [(x.m, x.rows) for x in p.task("a").parts] == [(1, 5), (2, 5)]
    assert [(x.m, x.rows) for x in p.task("b").parts] == [(1, 10)]
    assert p.spend == 250 and p.value == pytest.approx(5 * 0.5 + 5 * 0.9 + 10 * 0.5)
    assert p.bound == pytest.approx(p.value + 0.5 * 0.4)  # half a row more in the LP


def test_leftover_goes_to_a_cheaper_step_of_another_task():
    a = QualityCurve("a", (1, 2), (0.1, 0.9), (10, 110))  # 0.008 per FLOP, 100 a row
    b = QualityCurve("b", (1, 2), (0.1, 0.2), (10, 15))  # 0.02 per FLOP, 5 a row
    p = plan({"a": 3, "b": 4}, {"a": a, "b": b}, Quota(flops=70 + 20 + 150))
    # b's 4 steps first (20), then a: 150 // 100 = 1 row; 50 left, b has nothing left.
    assert [(x.m, x.rows) for x in p.task("a").parts] == [(1, 2), (2, 1)]
    assert [(x.m, x.rows) for x in p.task("b").parts] == [(2, 4)]
    a2 = QualityCurve("a", (1, 2), (0.1, 0.9), (10, 110))
    b2 = QualityCurve("b", (1, 2), (0.1, 0.12), (10, 15))  # 0.004 per FLOP: after a
    p2 = plan({"a": 3, "b": 4}, {"a": a2, "b": b2}, Quota(flops=70 + 150))
    # a takes 1 row (100), 50 left: the fill pass gives b 4 rows at 5 each (20).
    assert [(x.m, x.rows) for x in p2.task("b").parts] == [(2, 4)]
    assert p2.spend == 70 + 100 + 20


def test_weights_move_the_budget():
    a = QualityCurve("a", (1, 2), (0.5, 0.7), (10, 20))
    b = QualityCurve("b", (1, 2), (0.5, 0.6), (10, 20))
    curves, rows = {"a": a, "b": b}, {"a": 10, "b": 10}
    assert plan(rows, curves, Quota(flops=300)).task("a").parts[-1].m == 2
    p = plan(rows, curves, Quota(flops=300), weights={"b": 3.0})
    assert [(x.m, x.rows) for x in p.task("b").parts] == [(2, 10)]
    assert [(x.m, x.rows) for x in p.task("a").parts] == [(1, 10)]


def test_zero_rows_cost_nothing():
    a = QualityCurve("a", (1, 2), (0.5, 0.7), (10, 20))
    p = plan({"a": 0}, {"a": a}, Quota(flops=0))
    assert p.spend == 0 and p.task("a").parts[0].m == 1


@pytest.mark.parametrize("rows,weights,message", [
    ({"nope": 1}, None, "rows.nope: unknown task"),
    ({"a": -1}, None, "rows.a: must be an int >= 0"),
    ({"a": 1.5}, None, "rows.a: must be an int >= 0"),
    ({"a": 1}, {"zz": 1.0}, "weights.zz: unknown task"),
    ({"a": 1}, {"a": -1.0}, "weights.a: must be a finite number >= 0"),
])
def test_bad_rows_and_weights_name_the_field(rows, weights, message):
    a = QualityCurve("a", (1, 2), (0.5, 0.7), (10, 20))
    with pytest.raises(ValueError, match=message):
        plan(rows, {"a": a}, Quota(flops=100), weights)


# ------------------------------------------------------------------ quotas


def test_infeasible_quota_names_the_exact_minimum_in_flops():
    curves = llava_7b_prior()
    rows = {t: 1000 for t in curves}
    need = minimum_cost(rows, curves)
    with pytest.raises(InfeasibleQuota) as e:
        plan(rows, curves, Quota(flops=need - 1))
    assert e.value.minimum_cost == need and e.value.minimum == need
    assert "minimum quota is" in str(e.value) and repr(float(need)) in str(e.value)
    assert plan(rows, curves, Quota(flops=need)).spend == need  # every row at m = 2


def test_infeasible_quota_in_seconds_gives_seconds_that_suffice():
    curves = llava_7b_prior()
    rows = {"vqav2": 12345, "pope": 777}
    fps = 3.7e14
    with pytest.raises(InfeasibleQuota) as e:
        plan(rows, curves, Quota(seconds=1.0, flops_per_second=fps))
    s = e.value.minimum
    assert " s at " in str(e.value) and repr(s) in str(e.value)
    assert plan(rows, curves, Quota(seconds=s, flops_per_second=fps)).spend <= s * fps
    with pytest.raises(InfeasibleQuota):  # the next float down is not enough
        plan(rows, curves, Quota(seconds=math.nextafter(s, 0), flops_per_second=fps))


@pytest.mark.parametrize("kwargs", [
    dict(), dict(flops=1.0, seconds=1.0, flops_per_second=1.0), dict(flops=-1.0),
    dict(seconds=5.0), dict(seconds=5.0, flops_per_second=0.0), dict(flops=math.inf),
])
def test_bad_quotas_are_refused(kwargs):
    with pytest.raises(ValueError, match="quota"):
        Quota(**kwargs)


# ------------------------------------------------------------------ properties

@st.composite
def instances(draw, max_tasks=4, max_ms=5, max_rows=60):
    """Random curves (any shape: not monotone, not concave), rows, weights and a quota."""
    n = draw(st.integers(1, max_tasks))
    curves, rows, weights = {}, {}, {}
    for t in (f"t{i}" for i in range(n)):
        k = draw(st.integers(1, max_ms))
        acc = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
        flops = draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k))
        curves[t] = QualityCurve(t, tuple(range(1, k + 1)), tuple(acc), tuple(flops))
        rows[t] = draw(st.integers(0, max_rows))
        weights[t] = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 3.0]))
    top = sum(rows[t] * max(c.cost) for t, c in curves.items())
    quota = draw(st.integers(0, int(1.2 * top) + 10))
    return curves, rows, weights, quota


def _step_gains(curves, rows, weights):
    """Per-row value of each hull step of each task with rows (what one row can gain)."""
    return [b.value - a.value for t, c in curves.items() if rows[t]
            for a, b in itertools.pairwise(hull(c, weights[t]))]


@settings(max_examples=300, deadline=None)
@given(instances())
def test_plan_never_exceeds_the_quota_and_leaves_no_affordable_step(inst):
    curves, rows, weights, Q = inst
    need = minimum_cost(rows, curves)
    if Q < need:
        with pytest.raises(InfeasibleQuota) as e:
            plan(rows, curves, Quota(flops=Q), weights)
        assert e.value.minimum_cost == need
        return
    p = plan(rows, curves, Quota(flops=Q), weights)
    assert p.spend <= Q
    left = Q - p.spend
    for t in p.tasks:
        h = hull(curves[t.task], weights[t.task])
        ms = [x.m for x in h]
        assert sum(x.rows for x in t.parts) == t.rows and all(x.rows > 0 for x in t.parts[1:])
        k = ms.index(t.parts[0].m)
        assert [x.m for x in t.parts] == ms[k: k + len(t.parts)]  # one or two adjacent
        if t.rows and k + 1 < len(h):  # the next one-row step does not fit what is left
            assert h[k + 1].cost - h[k].cost > left
    assert p.value <= p.bound + EPS * (1 + p.bound)


@settings(max_examples=200, deadline=None)
@given(instances(max_tasks=3, max_ms=3, max_rows=3))
def test_greedy_against_brute_force(inst):
    """Brute force over every count of rows per (task, m). The honest claim: the plan is
    feasible, so OPT >= plan; OPT <= the LP optimum = `bound`; and bound - plan is less than
    one row's gain on one hull step (rounding the one split task down, then refilling)."""
    curves, rows, weights, Q = inst
    if Q < minimum_cost(rows, curves):
        return
    p = plan(rows, curves, Quota(flops=Q), weights)
    best = _brute_force(curves, rows, weights, Q)
    gain = max(_step_gains(curves, rows, weights), default=0.0)
    assert p.value <= best + EPS
    assert best <= p.bound + EPS
    assert p.bound - p.value <= gain + EPS


def _brute_force(curves, rows, weights, Q) -> float:
    per_task = []
    for t, c in curves.items():
        options = []
        for counts in _compositions(rows[t], len(c.ms)):
            cost = sum(n * f for n, f in zip(counts, c.cost, strict=True))
            value = weights[t] * sum(n * a for n, a in zip(counts, c.accuracy, strict=True))
            options.append((cost, value))
        per_task.append(options)
    return max(sum(v for _, v in combo) for combo in itertools.product(*per_task)
               if sum(c for c, _ in combo) <= Q)


def _compositions(n: int, k: int):
    """Every way to put n rows into k m values."""
    for cuts in itertools.combinations(range(n + k - 1), k - 1):
        edges = (-1, *cuts, n + k - 1)
        yield tuple(b - a - 1 for a, b in itertools.pairwise(edges))


@settings(max_examples=100, deadline=None)
@given(instances())
def test_bound_is_the_lp_optimum(inst):
    """`bound` equals the LP relaxation (rows of a task spread over its m at will) solved by
    scipy's HiGHS, over every point of every curve, not only the hull."""
    from scipy.optimize import linprog  # scipy: scikit-learn's, of the data extra
    curves, rows, weights, Q = inst
    if Q < minimum_cost(rows, curves):
        return
    p = plan(rows, curves, Quota(flops=Q), weights)
    cost, value, eq, eq_rhs = [], [], [], []
    for t, c in curves.items():
        start = len(cost)
        cost += list(c.cost)
        value += [weights[t] * a for a in c.accuracy]
        eq_rhs.append(rows[t])
        eq.append((start, len(cost)))
    a_eq = [[1.0 if lo <= j < hi else 0.0 for j in range(len(cost))] for lo, hi in eq]
    res = linprog([-v for v in value], A_ub=[cost], b_ub=[Q], A_eq=a_eq, b_eq=eq_rhs,
                  method="highs")
    assert res.status == 0
    assert p.bound == pytest.approx(-res.fun, rel=1e-7, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(instances())
def test_plan_is_at_least_the_best_fixed_m_less_one_row(inst):
    curves, rows, weights, Q = inst
    if Q < minimum_cost(rows, curves):
        return
    p = plan(rows, curves, Quota(flops=Q), weights)
    fixed = best_fixed_plan(rows, curves, Quota(flops=Q), weights)
    gain = max(_step_gains(curves, rows, weights), default=0.0)
    if fixed is not None:
        assert fixed.spend <= Q and fixed.value <= p.bound + EPS
        assert p.value >= fixed.value - gain - EPS


def test_on_the_llava_prior_the_plan_beats_every_fixed_m_that_fits():
    curves = llava_7b_prior()
    rows = {"vqav2": 4000, "gqa": 2000, "pope": 2000, "mmbench": 1000, "scienceqa-img": 1000}
    for tflops_per_row in (1.5, 2.0, 3.0, 4.0):
        q = Quota(flops=tflops_per_row * 1e12 * 10_000)
        p, fixed = plan(rows, curves, q), best_fixed_plan(rows, curves, q)
        assert p.spend <= q.total_cost and p.value >= fixed.value
        assert p.spend >= 0.99 * q.total_cost  # more spend would still help here


def test_quota_to_match_a_fixed_m():
    curves = llava_7b_prior()
    rows = {"vqav2": 4000, "pope": 2000, "scienceqa-img": 1000}
    fixed = fixed_plan(rows, curves, 256, Quota(flops=0))
    # m = 256 is the best point of each of these curves: matching it means m = 256 everywhere
    assert quota_to_match(rows, curves, fixed.value) == fixed.spend
    rows["mmbench"] = 2000  # MMBench is 0.1 point better at 144 than at 256
    fixed = fixed_plan(rows, curves, 256, Quota(flops=0))
    q = quota_to_match(rows, curves, fixed.value)
    assert plan(rows, curves, Quota(flops=q)).value >= fixed.value * (1 - 1e-12)
    assert q < fixed.spend
    assert plan(rows, curves, Quota(flops=q - 1)).value < fixed.value
    assert quota_to_match(rows, curves, fixed.value + 10.0) is None  # best: +2 rows


# ------------------------------------------------------------------ as a policy


def test_plan_policy_gives_exactly_the_planned_rows():
    policy = PlanPolicy({"a": ((4, 7), (16, 3)), "b": ((2, 5),)})
    assert isinstance(policy, TokenPolicy)
    ms = policy.choose(["a"] * 10 + ["b"] * 5, [""] * 15)
    assert ms[:10].count(16) == 3 and ms[:10].count(4) == 7 and ms[10:] == [2] * 5
    assert ms[:10] == [4, 4, 4, 16, 4, 4, 16, 4, 4, 16]  # spread evenly, deterministic
    policy.check(16)
    with pytest.raises(ValueError, match="plan.a=16 is outside 1..8"):
        policy.check(8)
    with pytest.raises(ValueError, match="'c' is not in the plan"):
        policy.choose(["c"], [""])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.data())
def test_policy_copies_never_give_more_upgrades_than_planned(total, data):
    """Engine actors each hold a copy and see an arbitrary share of a task's rows."""
    n2 = data.draw(st.integers(0, total))
    copies = data.draw(st.integers(1, 6))
    shares = data.draw(st.lists(st.integers(0, copies - 1), min_size=total, max_size=total))
    policies = [PlanPolicy({"t": ((1, total - n2), (8, n2))}) for _ in range(copies)]
    got = [policies[c].choose(["t"], [""])[0] for c in shares]
    assert got.count(8) <= n2
    assert got.count(8) > n2 - copies
    if copies == 1:
        assert got.count(8) == n2


def test_plan_policy_round_trips_through_plan_json():
    curves = llava_7b_prior()
    p = plan({"vqav2": 100, "pope": 50}, curves, Quota(flops=3e14))
    policy = PlanPolicy.from_dict(json.loads(json.dumps(p.to_dict())))
    assert policy == p.policy()
    for t in p.tasks:
        ms = policy.choose([t.task] * t.rows, [""] * t.rows)
        assert sorted(ms) == sorted(itertools.chain.from_iterable(
            [x.m] * x.rows for x in t.parts))
