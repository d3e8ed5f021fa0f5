"""The time model of a measured quota (pipeline/scheduler/timing.py, `quota.time_profile`): seconds
per row affine in FLOPs with a per-task time per call, fitted by non-negative least
squares; curves priced in its microseconds; a ledger client that keeps the modelled time
behind the measured time; the quota's fields. No Ray, no model (test_profile.py and
test_annotate_quota.py run `mqt profile` and a job with its profile)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scheduler.budget import prepare
from pipeline.scheduler.ledger import Ledger, LedgerClient, MeasuredRate
from pipeline.scheduler.plan import plan
from pipeline.scheduler.policy import Cascade
from pipeline.scheduler.quality import QualityCurve, from_calibration, shipped_calibration
from pipeline.scheduler.quota import FieldError, Quota, QuotaArgs
from pipeline.scheduler.timing import UNITS_PER_SECOND, TimeModel, fit


def points(a: float, b: dict, flops: dict) -> list[dict]:
    return [{"task": t, "m": m, "flops": f, "seconds": a * f + b[t]}
            for t, fs in flops.items() for m, f in fs.items()]


def test_fit_recovers_an_exact_affine_time():
    flops = {"vqa": {1: 6e9, 16: 9.4e9, 64: 20e9}, "caption": {1: 5.4e9, 64: 19e9},
             "mc": {1: 8e9, 4: 8.7e9}}
    b = {"vqa": 0.07, "caption": 0.21, "mc": 0.0}
    tm = fit(points(1e-11, b, flops), device="cpu", batch_size=16)
    assert tm.seconds_per_flop == pytest.approx(1e-11, rel=1e-9)
    assert tm.seconds_per_call == pytest.approx(b, abs=1e-12)
    assert (tm.device, tm.batch_size, len(tm.points)) == ("cpu", 16, 7)


def _nnls_kkt(tm: TimeModel, pts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    tasks = sorted(tm.seconds_per_call)
    x = np.array([[p["flops"] / 1e9] + [float(p["task"] == t) for t in tasks] for p in pts])
    coef = np.array([tm.seconds_per_flop * 1e9] + [tm.seconds_per_call[t] for t in tasks])
    grad = x.T @ (np.array([p["seconds"] for p in pts]) - x @ coef)  # -d(SSE)/d(coef) / 2
    return coef, grad


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["vqa", "caption", "mc"]),
                          st.floats(1.0, 30.0), st.floats(0.0, 0.5)),
                min_size=3, max_size=12, unique_by=lambda p: (p[0], p[1])))
def test_fit_is_the_non_negative_least_squares_optimum(raw):
    """Whatever the measurements (noise, time falling with FLOPs), the coefficients are
    >= 0 and satisfy the optimality conditions of least squares under that constraint: no
    coefficient can move to lower the squared error (the gradient is 0 where a
    coefficient is > 0, and points down where it is 0)."""
    pts = [{"task": t, "m": i, "flops": f * 1e9, "seconds": s}
           for i, (t, f, s) in enumerate(raw)]
    try:
        tm = fit(pts)
    except ValueError as e:  # every coefficient 0 is not a model
        assert "no time" in str(e)
        assert all(p["seconds"] == 0 for p in pts) or _all_zero_is_optimal(pts)
        return
    coef, grad = _nnls_kkt(tm, pts)
    assert (coef >= 0).all()
    scale = 1e-6 * max(1.0, float(np.abs(grad).max()))
    for c, g in zip(coef, grad, strict=True):
        assert g <= 1e-6 + scale if c == 0 else abs(g) <= 1e-6 + scale


def _all_zero_is_optimal(pts: list[dict]) -> bool:
    x = np.array([[p["flops"] / 1e9] + [1.0] for p in pts])
    return bool((x.T @ np.array([p["seconds"] for p in pts]) <= 1e-9).all())


def test_a_negative_intercept_is_clamped_and_the_slope_refitted():
    """Time that grows faster than affine within a task would give it a negative time per
    call; the fit sets that to 0 and the slope is what least squares through the origin
    gives for that task."""
    pts = [{"task": "vqa", "m": 1, "flops": 1e9, "seconds": 0.1},
           {"task": "vqa", "m": 2, "flops": 2e9, "seconds": 0.3}]
    tm = fit(pts)
    assert tm.seconds_per_call == {"vqa": 0.0}
    assert tm.seconds_per_flop == pytest.approx((0.1 * 1 + 0.3 * 2) / 5 / 1e9)


def test_curves_are_priced_in_microseconds_cascades_with_their_expected_calls():
    tm = TimeModel(1e-11, {"vqa": 0.05, "caption": 0.2})
    shared = {2: 1_000_000_000}
    f1, f8 = 6_000_000_000, 8_000_000_000
    p = 0.25  # a quarter of the rows escalate
    casc = f1 + round(p * (f8 - shared[2]))
    curve = QualityCurve("vqa:easy-vqa/color", (2, 8), (0.5, 0.7), (f1, f8),
                         cascades=((Cascade(2, 8, -0.5), 0.66, casc),))
    out = tm.timed({"vqa:easy-vqa/color": curve}, shared)["vqa:easy-vqa/color"]
    assert out.cost == (math.ceil((1e-11 * f1 + 0.05) * 1e6),
                         math.ceil((1e-11 * f8 + 0.05) * 1e6))
    assert out.cascades[0][2] == math.ceil((1e-11 * casc + 0.05 * (1 + p)) * 1e6)
    assert out.accuracy == curve.accuracy and out.ms == curve.ms
    with pytest.raises(KeyError, match="no time for task 'mc'"):
        tm.timed({"mc": QualityCurve("mc", (1,), (0.5,), (1,))})
    with pytest.raises(ValueError, match="shared"):
        tm.timed({"vqa": curve})


def test_a_profile_round_trips_and_a_bad_file_names_itself(tmp_path):
    tm = fit(points(2e-11, {"vqa": 0.1}, {"vqa": {1: 1e9, 4: 2e9}}), "gpu", 8)
    tm.save(tmp_path / "p.json")
    back = TimeModel.load(tmp_path / "p.json")
    assert back.seconds_per_flop == tm.seconds_per_flop
    assert back.seconds_per_call == tm.seconds_per_call and back.batch_size == 8
    (tmp_path / "bad.json").write_text(json.dumps({"seconds_per_call": {}}))
    with pytest.raises(ValueError, match="bad.json: not a time profile"):
        TimeModel.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=">= 0"):
        TimeModel(1e-11, {"vqa": -1.0})


def test_a_client_with_a_time_model_keeps_the_modelled_time_behind_the_measured():
    """Holds are the profile's microseconds for the row (its task's per-call time included)
    x the rate (1e-6 s per microsecond: the profile taken as right) x the margin; a commit
    charges the measured seconds, keeps the row's modelled time as the work behind them
    and teaches the rate how much slower the rows ran than the profile said."""
    tm = TimeModel(1e-9, {"vqa": 0.5, "caption": 1.0})  # 1 s per GFLOP + per call
    ledger = Ledger(10_000_000, unit="us")
    client = LedgerClient(ledger, MeasuredRate(prior=1 / UNITS_PER_SECOND, margin=2.0), tm)
    keys, ok = client.reserve(["a", "b"], [1e9, 2e9], ["vqa", "caption"])  # 1.5 s, 3 s
    assert ok == [True, True] and ledger.reserved == 2 * (1_500_000 + 3_000_000)
    assert ledger.flops_reserved == 1_500_000 + 3_000_000
    client.commit(keys, [1e9, 2e9], [3.0, 6.0], ["vqa", "caption"])  # 2x the profile
    assert (ledger.spent, ledger.flops_spent) == (9_000_000, 4_500_000)
    assert client.rate.rate == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="task"):
        client.reserve(["c"], [1e9])
    with pytest.raises(ValueError, match="MeasuredRate"):
        LedgerClient(ledger, None, tm)


def test_quota_fields_of_a_time_profile(tmp_path):
    path = tmp_path / "p.json"
    TimeModel(1e-11, {"vqa": 0.05}).save(path)
    q = QuotaArgs(seconds=60, measured=True, time_profile=str(path)).quota()
    assert q == Quota(seconds=60, flops_per_second=UNITS_PER_SECOND, timed=True)  # in us
    assert q.describe(60) == "60 s on the time profile"
    with pytest.raises(FieldError, match="quota.time_profile: .*quota.measured=true"):
        QuotaArgs(seconds=60, time_profile=str(path)).quota()
    with pytest.raises(FieldError, match="quota.flops_per_second: give it or"):
        QuotaArgs(seconds=60, measured=True, flops_per_second=1e9,
                  time_profile=str(path)).quota()
    with pytest.raises(FieldError, match="quota.time_profile: .*missing.json: not a time"):
        QuotaArgs(seconds=60, measured=True,
                  time_profile=str(tmp_path / "missing.json")).time_model()


def test_a_plan_on_a_time_profile_prices_each_m_by_its_modelled_time(tmp_path):
    """On the shipped calibration, with a profile whose time per call is large (most of a
    row's time at small m, as on an accelerator where small m is launch-bound), the plan in
    seconds equals the planner run on the curves priced by hand and stays within Q, while
    a plan in FLOPs at the profile's marginal FLOP/s, blind to the time per call, would
    take more time than Q."""
    tm = TimeModel(1e-11, {"vqa": 0.1, "caption": 0.1, "mc": 0.1})
    path = tmp_path / "p.json"
    tm.save(path)
    rows = [(str(i), t) for i, t in enumerate(["vqa"] * 60 + ["caption"] * 20 + ["mc"] * 20)]
    args = QuotaArgs(seconds=20.0, measured=True, time_profile=str(path))
    budget = prepare(args, rows, None)
    cs = from_calibration(shipped_calibration())
    by_hand = plan({"vqa": 60, "caption": 20, "mc": 20}, tm.timed(cs),
                   Quota(flops=20 * UNITS_PER_SECOND))
    assert budget.plan.tasks == by_hand.tasks
    assert budget.plan.spend <= 20 * UNITS_PER_SECOND
    assert budget.curves["vqa"].cost[0] == tm.units("vqa", cs["vqa"].cost[0])
    # the same 20 s as FLOPs at the profile's marginal FLOP/s, ignoring the time per call
    flops_plan = plan({"vqa": 60, "caption": 20, "mc": 20}, cs, Quota(flops=20 / 1e-11))
    modelled = sum(tm.units(t.task, p.cost) * p.rows for t in flops_plan.tasks
                   for p in t.parts)
    assert modelled > 20 * UNITS_PER_SECOND  # that plan would overrun the time
    missing = TimeModel(1e-11, {"vqa": 0.1})
    missing.save(path)
    with pytest.raises(FieldError, match="quota.time_profile: .*no time for task 'caption'"):
        prepare(args, rows, None)
    only_vqa = prepare(args, rows[:60], None)  # the calibration's other tasks are not timed
    assert [t.task for t in only_vqa.plan.tasks] == ["vqa"] and set(only_vqa.curves) == {"vqa"}


def test_group_names_take_their_tasks_time():
    tm = TimeModel(0.0, {"vqa": 0.25})
    assert tm.units("vqa:mosaic/count", 1e12) == 250_000
    assert tm.flops_for(1.0) == math.inf  # time does not grow with FLOPs
