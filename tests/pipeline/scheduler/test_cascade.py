"""The cascade on calibration rows: the simulation's spend is exactly the sum of the per-row
costs, a replay behind the ledger never passes its quota, the planner with cascade options
never passes Q and its policy hands out cascades, the halves split, and the fit on the
shipped rows agrees with the shipped calibration."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scheduler.cascade import (
    CascadePolicy,
    Question,
    candidates,
    cascade_accuracies,
    escalation_budget,
    fixed_curves,
    load_questions,
    replay,
    simulate,
    split_halves,
    summary,
    with_cascades,
)
from pipeline.scheduler.plan import PlanPolicy, hull, minimum_cost, plan
from pipeline.scheduler.policy import Cascade
from pipeline.scheduler.quality import QualityCurve, from_calibration
from pipeline.scheduler.quota import InfeasibleQuota, Quota

MS = (1, 2, 4, 8)
RESULTS = Path(__file__).parents[3] / "docs" / "eval" / "results.parquet"


@st.composite
def questions(draw, n_max=25):
    """Calibration questions at MS: random right/wrong, confidences and FLOPs, and `shared`
    (vision + MQT per m) below every row's cost, as in the cost model."""
    base = draw(st.integers(0, 50))
    shared = {m: base + m for m in MS}  # grows with m, as the MQT's cost does
    n = draw(st.integers(1, n_max))
    qs = []
    for i in range(n):
        qs.append(Question(f"q{i}", draw(st.sampled_from(["a", "b"])), "k",
                           {m: draw(st.booleans()) for m in MS},
                           {m: draw(st.floats(-3, 0)) for m in MS},
                           {m: shared[m] + draw(st.integers(1, 1000)) for m in MS}))
    return qs, shared


cascades = st.integers(0, len(MS) - 2).flatmap(lambda i: st.builds(
    lambda j, t: Cascade(MS[i], MS[j], t), st.integers(i + 1, len(MS) - 1), st.floats(-3, 0.5)))


def row_cost(q: Question, c: Cascade, shared) -> int:
    """The documented cost, written out independently of the module."""
    if q.confidence[c.m1] >= c.threshold:
        return q.flops[c.m1]
    return q.flops[c.m1] + q.flops[c.m2] - shared[c.m1]


@settings(max_examples=150, deadline=None)
@given(questions(), cascades)
def test_simulated_spend_is_exactly_the_sum_of_row_costs(data, c):
    qs, shared = data
    out = simulate(qs, [c] * len(qs), shared)
    assert summary(out)["spend"] == sum(row_cost(q, c, shared) for q in qs)
    for q, o in zip(qs, out, strict=True):
        up = q.confidence[c.m1] < c.threshold
        assert o.escalated == up and o.m == (c.m2 if up else c.m1)
        assert o.correct == q.correct[o.m]
    assert summary(out)["escalated"] == sum(q.confidence[c.m1] < c.threshold for q in qs)


@settings(max_examples=150, deadline=None)
@given(questions(), cascades, st.integers(0, 30_000), st.none() | st.integers(0, 5_000))
def test_replay_behind_the_ledger_never_passes_its_quota(data, c, quota, pot):
    qs, shared = data
    out = replay(qs, CascadePolicy({"a": c, "b": 2}), shared, quota, escalation_flops=pot)
    s = summary(out)
    assert s["spend"] <= quota
    extra = sum(o.flops - q.flops[c.m1] for o, q in zip(out, qs, strict=True)
                if o is not None and o.escalated)
    assert pot is None or extra <= pot  # escalations stay within their own budget
    free = simulate(qs, [c if q.task == "a" else 2 for q in qs], shared)
    for o, f, q in zip(out, free, qs, strict=True):
        if o is not None:  # answered: the full answer, or its m1 answer (escalation refused)
            assert o == f or (f.escalated and o.m == c.m1 and o.flops == q.flops[c.m1])
    if quota >= summary(free)["spend"] and (pot is None or pot >= summary(free)["spend"]):
        assert out == free  # enough quota: the ledgers change nothing


def curve_with_cascades(draw, task: str) -> QualityCurve:
    n = draw(st.integers(1, 4))
    acc = st.floats(0, 1)
    fixed = sorted(draw(st.lists(st.integers(1, 500), min_size=n, max_size=n)))
    casc = [(Cascade(1, 2 + k, draw(st.floats(-2, 0))), draw(acc), draw(st.integers(1, 900)))
            for k in range(draw(st.integers(0, 5)))]
    return QualityCurve(task, tuple(range(1, n + 1)), tuple(draw(acc) for _ in range(n)),
                        tuple(fixed), tuple(casc))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_planner_with_cascade_options_never_passes_the_quota(data):
    draw = data.draw
    curves = {t: curve_with_cascades(draw, t) for t in ("a", "b", "c")}
    rows = {t: draw(st.integers(0, 40)) for t in curves}
    least = minimum_cost(rows, curves)
    assert least == sum(n * min(f for _, _, f in curves[t].points()) for t, n in rows.items())
    q = draw(st.integers(0, least + 40 * 3 * 900))
    if q < least:
        with pytest.raises(InfeasibleQuota):
            plan(rows, curves, Quota(flops=q))
        return
    p = plan(rows, curves, Quota(flops=q))
    assert p.spend <= q
    for t in p.tasks:
        assert {part.m for part in t.parts} <= {pt.m for pt in hull(curves[t.task])}
    assert _policy_counts(p.policy(), rows) == {
        (t.task, part.m): part.rows for t in p.tasks for part in t.parts if part.rows}


def _policy_counts(policy: PlanPolicy, rows) -> dict:
    counts = {}
    for task, n in rows.items():
        for choice in policy.choose([task] * n, [""] * n):
            counts[task, choice] = counts.get((task, choice), 0) + 1
    return counts


def test_a_plan_with_a_cascade_round_trips_through_json_and_checks_m():
    a = QualityCurve("a", (1, 4), (0.5, 0.6), (10, 40), ((Cascade(1, 4, -0.5), 0.58, 20),))
    p = plan({"a": 10}, {"a": a}, Quota(flops=150))
    assert [(x.m, x.rows) for x in p.task("a").parts] == [(1, 5), (Cascade(1, 4, -0.5), 5)]
    again = PlanPolicy.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again.parts == p.policy().parts
    again.check(4)
    with pytest.raises(ValueError, match=r"plan.a.m2=4 is outside 1..2"):
        again.check(2)
    # first attempts: 5 rows at m=1 and 5 cascade rows at m1=1, 10 each: 50 left of 150
    assert escalation_budget(p, {"a": a}) == 150 - 10 * 10


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cascade_accuracies_are_what_the_simulation_counts(data):
    qs, _ = data.draw(questions())
    nan = data.draw(st.sets(st.integers(0, len(qs) - 1)))  # a missing confidence escalates
    qs = [replace(q, confidence={**q.confidence, MS[0]: math.nan}) if i in nan else q
          for i, q in enumerate(qs)]
    cs = data.draw(st.lists(cascades, min_size=1, max_size=6))
    cs += [Cascade(c.m1, c.m2, q.confidence[c.m1]) for c in cs[:1] for q in qs[:3]
           if not math.isnan(q.confidence[c.m1])]  # thresholds equal to a confidence
    got = cascade_accuracies(qs, cs)
    for c, a in zip(cs, got, strict=True):
        assert a == pytest.approx(summary(simulate(qs, [c] * len(qs), {m: 0 for m in MS}))
                                  ["accuracy"], abs=1e-12)


def test_cascade_rules():
    c = Cascade(1, 4, -0.5)
    assert c.escalates(-0.6) and not c.escalates(-0.5) and c.escalates(None)
    assert c.escalates(float("nan"))
    for bad in [(4, 4, 0.0), (0, 2, 0.0), (1, 2, float("nan"))]:
        with pytest.raises(ValueError, match="cascade"):
            Cascade(*bad)
    with pytest.raises(ValueError, match="no choice"):
        CascadePolicy({"a": c}).choose(["b"], [""])


def test_thresholds_at_quantiles_escalate_those_shares():
    qs = [Question(f"q{i}", "a", "k", {1: True, 2: True}, {1: -i / 10, 2: 0.0}, {1: 5, 2: 9})
          for i in range(10)]
    cs = candidates(qs, (1, 2), quantiles=(0.1, 0.5))
    assert [(c.m1, c.m2) for c in cs] == [(1, 2), (1, 2)]
    shares = [summary(simulate(qs, [c] * 10, {1: 0}))["escalated"] / 10 for c in cs]
    assert shares == [0.1, 0.5]  # thresholds ascending: the lower one escalates fewer


def test_cascade_options_are_measured_on_the_fit_questions():
    # confident and right at m=1, or unsure and wrong at m=1 but right at m=2
    qs = [Question("x", "a", "k", {1: True, 2: True}, {1: -0.1, 2: -0.1}, {1: 10, 2: 30}),
          Question("y", "a", "k", {1: False, 2: True}, {1: -2.0, 2: -0.2}, {1: 10, 2: 30})]
    curve = with_cascades(qs, (1, 2), {1: 3}, quantiles=(0.5,))["a"]
    assert curve.points()[:2] == [(1, 0.5, 10), (2, 1.0, 30)]
    assert curve.cascades == ((Cascade(1, 2, -0.1), 1.0, math.ceil((10 + 10 + 30 - 3) / 2)),)
    assert [p.m for p in hull(curve)] == [1, Cascade(1, 2, -0.1)]  # cheaper than m=2 here


def test_halves_are_disjoint_cover_and_stratify_by_kind():
    qs = [Question(f"q{i}", "a", f"k{i % 3}", {}, {}, {}) for i in range(31)]
    a, b = split_halves(qs, seed=1)
    ids_a, ids_b = {q.id for q in a}, {q.id for q in b}
    assert ids_a | ids_b == {q.id for q in qs} and not ids_a & ids_b
    for k in ("k0", "k1", "k2"):
        assert abs(sum(q.kind == k for q in a) - sum(q.kind == k for q in b)) <= 1
    assert split_halves(qs, seed=1) == (a, b) != split_halves(qs, seed=2)


def test_fixed_curves_of_the_shipped_rows_are_the_shipped_calibration():
    assert RESULTS.exists(), "docs/eval is a committed file"
    shipped = from_calibration()
    qs = load_questions(RESULTS, shipped["vqa"].ms)
    assert len(qs) == 830
    for task, c in fixed_curves(qs, shipped["vqa"].ms).items():
        assert c.accuracy == pytest.approx(shipped[task].accuracy, abs=1e-12)
        assert all(abs(x - y) <= 1 for x, y in zip(c.cost, shipped[task].cost, strict=True))
