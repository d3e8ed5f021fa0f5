"""The dearest m worth buying (quota.cap_se): `cap_m` is the cheapest m within z paired
standard errors of the most accurate, curves are cut there (a task's groups at the task's
m), and a job's plan on the shipped calibration stops at it, by task and by kind, while
`cap_se=0` plans every calibrated m."""

import json

import pytest

from pipeline.scheduler.budget import prepare
from pipeline.scheduler.cascade import Question, cap_m, cap_ms, capped, with_cascades
from pipeline.scheduler.quality import from_calibration, task_of
from pipeline.scheduler.quota import FieldError, QuotaArgs
from pipeline.scheduler.report import caps_text


def answers(rights: dict, n: int = 100) -> list[Question]:
    """n questions; at each m the first rights[m] are right (an int), or those in it (a set)."""
    right = {m: set(range(r)) if isinstance(r, int) else r for m, r in rights.items()}
    return [Question(f"q{i}", "vqa", "k", {m: i in r for m, r in right.items()},
                     dict.fromkeys(rights, 0.0), {m: 10 * m for m in rights})
            for i in range(n)]


def test_top_m_is_the_cheapest_m_within_z_paired_standard_errors_of_the_best():
    qs = answers({1: 50, 2: 80, 4: 82})
    # m = 4 - m = 2: 2 of 100 questions differ, mean 0.02, sd 0.1407, paired SE 0.0141
    assert cap_m(qs, (1, 2, 4), z=1.0) == 4  # 0.02 > 1 SE: the gain is told from noise
    assert cap_m(qs, (1, 2, 4), z=2.0) == 2  # 0.02 <= 2 SE = 0.0281: it is not
    assert cap_m(qs, (1, 2, 4), z=0.0) == 4  # z = 0: the most accurate m
    # (unpaired, the SE of 82% on 100 questions is 0.038: z = 1 would call it noise)
    assert cap_m(qs, (1, 2, 4), z=100.0) == 1  # everything is within a wide enough band
    assert cap_m(answers({1: 50, 2: 80, 4: 80}), (1, 2, 4), z=0.0) == 2  # cheapest of equals
    assert cap_m(answers({1: 60, 2: 80, 4: 70}), (1, 2, 4), z=1.0) == 2  # best below dearest
    assert cap_m(qs[:1], (1, 2, 4), z=1.0) == 4  # one question tells nothing: no cap


def test_capped_curves_stop_at_their_tasks_top_m_and_keep_what_is_cheaper():
    # m = 4 answers 3 questions m = 2 does not and misses 2 it answers: +0.01, SE 0.022
    qs = answers({1: 50, 2: 80, 4: set(range(78)) | {80, 81, 82}}) + [
        Question("mc0", "mc", "k", {1: False, 2: False, 4: True}, dict.fromkeys((1, 2, 4), 0.0),
                 {1: 10, 2: 20, 4: 40})]
    curves = with_cascades(qs, [1, 2, 4], {1: 1, 2: 2, 4: 4})
    curves["vqa:k"] = curves["vqa"]
    curves["other"] = curves["mc"]  # no question of its own here: unchanged
    tops = cap_ms(qs, curves, z=1.0)
    assert tops == {"vqa": 2, "mc": 4}  # one mc question: nothing to tell, no cap
    out = capped(curves, tops)
    for g in ("vqa", "vqa:k"):
        assert out[g].ms == (1, 2) and out[g].accuracy == curves["vqa"].accuracy[:2]
        assert out[g].cascades and all(c.m2 <= 2 for c, _, _ in out[g].cascades)
        assert set(out[g].cascades) < set(curves["vqa"].cascades)
    assert out["mc"] is curves["mc"] and out["other"] is curves["other"]
    assert curves["vqa"].upto(64) is curves["vqa"] and curves["vqa"].upto(0).ms == (1,)


ROWS = [(f"v{i}", "vqa", "what colour is the shape?") for i in range(90)] + \
    [(f"c{i}", "mc", "which shape is in the image?") for i in range(10)]


def parts(budget) -> dict[str, set[int]]:
    return {t.task: {p.m for p in t.parts} for t in budget.plan.tasks}


def test_a_generous_plan_stops_at_the_dearest_m_worth_buying_on_the_shipped_calibration():
    """On the shipped calibration m = 64 is vqa's most accurate m, +0.19 points over m = 32
    on 540 questions, within one paired SE (1.0 point): a quota that pays m = 64 everywhere
    plans m = 32 and spends less; cap_se=0 buys m = 64. mc's most accurate m = 48 is +1.25
    points over m = 32 on 240 questions, also within one paired SE: capped at 32 too."""
    full = from_calibration()
    assert max(full["vqa"].accuracy) == full["vqa"].at(64)[0] > full["vqa"].at(32)[0]
    quota = 100 * full["vqa"].dearest * 2
    rows = [(i, t) for i, t, _ in ROWS]
    budget = prepare(QuotaArgs(flops=quota), rows, None)
    assert parts(budget) == {"vqa": {32}, "mc": {32}} and budget.caps == {"vqa": 32, "mc": 32}
    assert budget.curves["vqa"].ms[-1] == 32 and budget.uncapped["vqa"].ms[-1] == 64
    assert budget.caps_changed
    text = caps_text(budget.caps, budget.uncapped, 1.0)
    assert text.startswith("quota.cap_se=1: planned mc up to m = 32, not its most accurate "
                           "m = 48 (+1.25 points")
    assert "; vqa up to m = 32, not its most accurate m = 64 (+0.19 points" in text
    every = prepare(QuotaArgs(flops=quota, cap_se=0), rows, None)
    assert parts(every) == {"vqa": {64}, "mc": {48}} and every.caps == {}
    assert caps_text(every.caps, every.uncapped, 0) is None and not every.caps_changed
    tight = prepare(QuotaArgs(flops=100 * full["vqa"].at(8)[1]), rows, None)
    assert tight.caps == budget.caps and not tight.caps_changed  # m = 64 was out of reach
    assert budget.plan.spend < every.plan.spend <= quota
    by_kind = prepare(QuotaArgs(flops=quota, by="kind"), ROWS, None)
    assert all(m <= 32 for ms in parts(by_kind).values() for m in ms)
    planned = {g: c for g, c in by_kind.curves.items() if task_of(g) in ("vqa", "mc")}
    assert len(planned) > 2 and all(c.ms[-1] == 32 for c in planned.values())
    assert by_kind.curves["caption"].ms[-1] == 64  # no caption row: no cap computed
    from mqt.config import preset

    casc = prepare(QuotaArgs(flops=quota, by="kind", cascades=True), ROWS, None,
                   preset("mqt-smol"))
    groups = {g: c for g, c in casc.curves.items() if ":" in g and task_of(g) in ("vqa", "mc")}
    assert groups and all(c.cascades and len(c.cascade_prior) == len(c.cascades)
                          and all(x.m2 <= 32 for x, _, _ in c.cascades) for c in groups.values())


def test_without_per_question_results_nothing_is_capped(tmp_path):
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"ms": [1, 4], "by_task": {"vqa": {
        "1": {"accuracy": 0.5, "mean_flops": 10, "n": 9},
        "4": {"accuracy": 0.51, "mean_flops": 40, "n": 9}}}}))
    budget = prepare(QuotaArgs(flops=1000, calibration=str(cal)), [("a", "vqa")], None)
    assert budget.caps is None and parts(budget) == {"vqa": {4}}
    assert "no per-question calibration results found" in caps_text(budget.caps, {}, 1.0)


def test_a_negative_cap_se_is_refused_by_name():
    with pytest.raises(FieldError, match=r"quota.cap_se: must be >= 0"):
        QuotaArgs(flops=1.0, cap_se=-1).quota()


def test_a_cut_curve_keeps_each_cascades_prior_beside_it():
    from pipeline.scheduler.policy import Cascade
    from pipeline.scheduler.quality import QualityCurve

    opts = ((Cascade(1, 2, 0.0), 0.6, 15), (Cascade(1, 4, 0.0), 0.7, 30),
            (Cascade(2, 4, 0.0), 0.8, 35))
    c = QualityCurve("vqa:k", (1, 2, 4), (0.5, 0.6, 0.9), (10, 20, 40), opts, (0.1, 0.2, 0.3))
    cut = c.upto(2)
    assert cut.cascades == opts[:1] and cut.cascade_prior == (0.1,)
    with pytest.raises(ValueError, match="cascade_prior needs one accuracy"):
        QualityCurve("vqa:k", (1, 2, 4), (0.5, 0.6, 0.9), (10, 20, 40), opts, (0.1,))
