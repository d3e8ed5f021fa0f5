"""pipeline.scheduler.kinds: the question-kind classifier, the plan groups it makes, their
curves, and a per-task policy asked by group."""

import pickle

import pytest

from pipeline.scheduler.cascade import Question
from pipeline.scheduler.kinds import GroupedPolicy, KindClassifier, KindGroups, group_curves
from pipeline.scheduler.plan import PlanPolicy
from pipeline.scheduler.quality import QualityCurve, task_of

MS = (1, 4, 16)
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]


def yesno(i: int) -> str:
    return f"is there a {COLOURS[i % 6]} {SHAPES[i % 5]} in the image?"


def count(i: int) -> str:
    return f"how many {COLOURS[i % 6]} dots are in cell {i % 9}?"


def question(i: int, task: str, kind: str, text: str, right_from: int,
             extra: int = 0) -> Question:
    """Right at every m >= right_from; FLOPs 10 m (+ extra at m = 16)."""
    return Question(f"{kind}{i}", task, kind, {m: m >= right_from for m in MS},
                    {m: 0.0 for m in MS}, {m: 10 * m + extra * (m == 16) for m in MS}, text)


def calibration(n: int = 30) -> list[Question]:
    """n yes/no questions right at every m, n counting questions right only at m = 16 and
    a little dearer there (longer answers)."""
    return ([question(i, "vqa", "yesno", yesno(i), 1) for i in range(n)]
            + [question(i, "vqa", "count", count(i), 16, extra=5) for i in range(n)])


def test_classifier_tells_kinds_apart_and_knows_what_it_does_not_know():
    qs = calibration()
    clf = KindClassifier.fit([q.text for q in qs], [q.kind for q in qs])
    assert clf.kinds == ["count", "yesno"]
    assert clf.predict("is there a purple circle?") == "yesno"  # one unseen word of five
    assert clf.predict("How many dots are in cell 12?") == "count"  # case, unseen number
    assert clf.predict("") is None and clf.predict(None) is None
    assert clf.predict("describe the weather outside today") is None  # no word seen
    scores = clf.scores("how many dots")
    assert scores["count"] > scores["yesno"]
    again = pickle.loads(pickle.dumps(clf))  # shipped to engine actors
    assert [again.predict(q.text) for q in qs] == [q.kind for q in qs]
    with pytest.raises(ValueError, match="min_known"):
        KindClassifier.fit(["a"], ["k"], min_known=2)


def test_groups_need_enough_calibration_rows_and_fall_back_to_the_task():
    qs = calibration(30)[:40]  # 30 yes/no, 10 counting questions
    groups = KindGroups.fit(qs, min_rows=20)
    assert groups.groups == {"vqa:yesno"}
    assert groups.group("vqa", yesno(3)) == "vqa:yesno"
    assert groups.group("vqa", count(3)) == "vqa"  # too few calibration rows of its own
    assert groups.group("caption", "") == "caption"
    assert groups.group("mc", yesno(3)) == "mc"  # no (mc, yesno) group in the calibration
    assert task_of("vqa:yesno") == "vqa" and task_of("vqa") == "vqa"


def test_group_curves_are_measured_on_the_questions_classified_there():
    qs = calibration()
    groups = KindGroups.fit(qs)
    task = {"vqa": QualityCurve("vqa", MS, (0.5, 0.5, 1.0), (10, 40, 160))}
    cs = group_curves(qs, MS, groups, task)
    assert cs["vqa"] is task["vqa"]
    assert cs["vqa:yesno"].accuracy == (1.0, 1.0, 1.0)
    assert cs["vqa:count"].accuracy == (0.0, 0.0, 1.0)
    assert cs["vqa:count"].cost == (10, 40, 165)


def test_grouped_policy_asks_the_plan_by_group():
    groups = KindGroups.fit(calibration())
    plan = PlanPolicy({"vqa:yesno": ((1, 2),), "vqa:count": ((16, 2),), "caption": ((4, 1),)})
    pol = GroupedPolicy(groups, plan)
    got = pol.choose(["vqa", "vqa", "caption", "vqa", "vqa"],
                     [yesno(1), count(2), "", count(5), yesno(7)])
    assert got == [1, 16, 4, 16, 1]
    assert plan.seen == {"vqa:yesno": 2, "vqa:count": 2, "caption": 1}
    with pytest.raises(ValueError, match="not in the plan"):
        pol.choose(["vqa"], ["what is the capital of france?"])  # no kind: group "vqa"


def test_shrunk_pulls_group_accuracy_toward_the_task():
    import math

    from pipeline.scheduler.kinds import shrunk

    task = QualityCurve("vqa", MS, (0.5, 0.5, 1.0), (10, 40, 160))
    group = QualityCurve("vqa:count", MS, (0.0, 0.0, 1.0), (12, 42, 170))
    cs = {"vqa": task, "vqa:count": group}
    assert shrunk(cs, {"vqa:count": 30}, 0)["vqa:count"] is group
    half = shrunk(cs, {"vqa:count": 30}, 30)
    assert half["vqa:count"].accuracy == (0.25, 0.25, 1.0)  # (30 x 0 + 30 x 0.5) / 60
    assert half["vqa:count"].cost == group.cost and half["vqa"] is task
    assert shrunk(cs, {"vqa:count": 30}, math.inf)["vqa:count"].accuracy == task.accuracy


def test_a_groups_cascades_are_shrunk_toward_the_same_cascades_on_its_task():
    """A group's cascade options carry their accuracy on all the task's questions
    (`cascade_prior`), and shrinkage pulls them there as it pulls the fixed m."""
    import math

    from pipeline.scheduler.kinds import shrunk
    from pipeline.scheduler.policy import Cascade

    qs = [Question(f"y{i}", "vqa", "yesno", {1: True, 4: True, 16: True},
                   {1: -0.1, 4: -0.1, 16: -0.1}, {1: 10, 4: 40, 16: 160}, yesno(i))
          for i in range(30)] + [
          Question(f"c{i}", "vqa", "count", {1: False, 4: False, 16: True},
                   {1: -2.0, 4: -2.0, 16: -0.1}, {1: 10, 4: 40, 16: 160}, count(i))
          for i in range(30)]
    groups = KindGroups.fit(qs, min_rows=20)
    task = {"vqa": QualityCurve("vqa", MS, (0.5, 0.5, 1.0), (10, 40, 160))}
    cs = group_curves(qs, MS, groups, task, shared={1: 5, 4: 20, 16: 80}, quantiles=(0.5,))
    yes = cs["vqa:yesno"]
    # on its own questions every cascade is right (every yes/no answer is); on the task's,
    # the counting rows (confidence -2.0 at m1, below the threshold -0.1) escalate: right
    # at m2 = 16, wrong at m2 = 4
    prior = dict(zip((c for c, _, _ in yes.cascades), yes.cascade_prior, strict=True))
    assert all(a == 1.0 for _, a, _ in yes.cascades)
    assert prior[Cascade(1, 16, -0.1)] == 1.0 and prior[Cascade(1, 4, -0.1)] == 0.5
    sizes = {"vqa:yesno": 30, "vqa:count": 30}
    full = shrunk(cs, sizes, math.inf)["vqa:yesno"]
    assert [a for _, a, _ in full.cascades] == list(yes.cascade_prior)
    assert [f for _, _, f in full.cascades] == [f for _, _, f in yes.cascades]  # own costs
    half = shrunk(cs, sizes, 30)["vqa:yesno"]
    assert [a for _, a, _ in half.cascades] == pytest.approx(
        [(1.0 + p) / 2 for p in yes.cascade_prior])
    assert shrunk(cs, sizes, 0)["vqa:yesno"] is yes


def test_cross_validation_keeps_kinds_apart_when_they_differ():
    """Kinds that differ (yes/no right at every m, counting only at m = 16): the plans of
    every finite alpha answer all held-out rows right at a quota for the counting half at
    m = 16; on the task's curve (alpha = inf) the kinds look alike and the cheaper yes/no
    upgrade wins, which answers only half right. The tie among the finite ones goes to
    the curves that predict the held-out answers best: no shrinkage."""
    import math

    from pipeline.scheduler.kinds import choose_shrinkage, shrinkage_folds

    qs = calibration(50)
    folds = shrinkage_folds(qs, MS)
    assert [len(held) for held, *_ in folds] == [50, 50]
    per_row = (10 * 1 + 10 * 16 + 5) / 2
    alpha, scores = choose_shrinkage(folds, per_row, dict.fromkeys(MS, 0))
    assert alpha == 0 and scores[0] == (100, 0.0)
    assert scores[math.inf][0] < 100
    errors = [scores[a][1] for a in sorted(scores)]
    assert errors == sorted(errors)  # more shrinkage, worse predictions of these answers
    assert choose_shrinkage(folds, 1.0, dict.fromkeys(MS, 0))[0] == 0  # infeasible: none


def test_a_quota_that_pays_every_task_its_best_m_plans_on_the_task_curves():
    """Where the quota pays every row its task's best fixed m (here m = 16 for vqa: 162.5
    FLOPs per row on average, 163 as the curve rounds it up), the shrinkage is alpha = inf
    without cross-validation: the groups plan on their task's curve, which gives every row
    m = 16. Without inf among the alphas the rule does not apply."""
    import math

    from pipeline.scheduler.kinds import choose_shrinkage, saturated, shrinkage_folds

    qs = calibration(50)
    folds = shrinkage_folds(qs, MS)
    held, _, curves, _ = folds[0]
    assert saturated(held, curves, 163) and not saturated(held, curves, 162.9)
    assert choose_shrinkage(folds, 163, dict.fromkeys(MS, 0)) == (math.inf, {})
    alpha, scores = choose_shrinkage(folds, 162.9, dict.fromkeys(MS, 0))
    assert scores and alpha < math.inf  # just below: cross-validated as before
    assert choose_shrinkage(folds, 1e9, dict.fromkeys(MS, 0), alphas=(0.0, 10.0))[0] != math.inf
