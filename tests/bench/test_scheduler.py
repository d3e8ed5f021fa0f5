"""`python -m bench.scheduler` on the shipped calibration rows, cut down (one split, three budgets):
the tables and files come out, no policy ever spends more than its quota, the fixed m and
the oracle are exact, and bad configs fail before work, naming the field."""

import json
from pathlib import Path

import pytest

import bench.scheduler as bench_scheduler
from bench import pick_by_confidence
from jobs import cli

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "eval" / "results.parquet"
SMALL = ["seeds=[0]", "points=3", "llava_sweep=[2.0]", "match_within=[0.5]"]


def resolve(overrides: list[str]) -> tuple:
    """(module, config) as `python -m bench.scheduler key=value ...` resolves them."""
    cfg = cli.configure(bench_scheduler, None, overrides, None)
    bench_scheduler.validate(cfg)
    return bench_scheduler, cfg


def run(argv: list[str]) -> int:
    return cli.run_module(bench_scheduler, "python -m bench.scheduler", argv)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    assert RESULTS.exists(), "docs/eval is a committed file"
    out = tmp_path_factory.mktemp("bench")
    cfg = resolve([*SMALL, f"results={RESULTS}", f"output={out}", f"docs={out / 'docs'}"])[1]
    return bench_scheduler.main(cfg), out


def test_the_bench_writes_its_tables_and_plot(result):
    r, out = result
    text = (out / "docs" / "scheduler.md").read_text()
    assert text.startswith(f"```\n$ {bench_scheduler.COMMAND}\n```")
    for head in ("| q (GFLOPs/row) | best fixed m | fixed-fit | plan | plan+casc |",
                 "| policy | >= best fixed m (hindsight) |", "| vqav2 | 400000 | 144 |"):
        assert head in text
    assert (out / "docs" / "scheduler.png").stat().st_size > 10_000
    assert json.loads((out / "bench.json").read_text())["questions"] == 830
    assert "question classifier" in text


def test_the_kind_policies_classify_held_out_questions(result):
    """The per-kind policies group rows by the question classifier fitted on the fit half:
    on the shipped rows (templated questions) nearly every held-out question lands in its
    true (task, kind) group; every held-out row is counted once."""
    c = result[0]["classifier"]
    assert c["questions"] == 830  # one split: both halves held out once
    assert c["right"] >= 0.9 and c["right"] + c["to_task"] <= 1


def test_no_policy_spends_more_than_its_quota(result):
    r, _ = result
    for s in r["sweep"]:
        for name, p in s["policies"].items():
            if p is not None:
                assert p["spend"] <= p["quota"] and p["over"] == 0, (name, s["q"])
                assert p["rows"] == r["questions"]  # both halves held out once
        if s["oracle"]:
            assert s["oracle"]["spend"] <= s["quota"]
        if s["ceiling"]:  # the in-sample per-kind plan: within Q, never above the oracle
            assert s["ceiling"]["spend"] <= s["quota"]
            assert s["ceiling"]["accuracy"] <= s["oracle"]["accuracy"]
    assert all(g["over_quota"] == 0 for g in r["goals"].values())
    for case in r["pacing"]["cases"]:
        for p in (case["static"], case["paced"], case["paced_error"]):
            assert p is None or p["over"] == 0
    assert r["pacing"]["over"] == 0


def test_pacing_answers_rows_the_static_plan_leaves_unanswered(result):
    """On the calibration rows: with the estimate 20% low, the static plan runs out of
    quota before the last rows and the pacer with error bound 0.25 answers every one; with
    rows 30% dearer than calibrated (the quota then cannot pay even the cheapest m on every
    row) both pacers leave fewer rows unanswered than the static plan."""
    r, _ = result
    cases = {(c["estimate"], c["cost"]): c for c in r["pacing"]["cases"]}
    low, dear = cases[(0.8, 1.0)], cases[(1.0, 1.3)]
    assert low["static"]["unanswered"] > 0 and low["paced_error"]["unanswered"] == 0
    for k in ("paced", "paced_error"):
        assert dear[k]["unanswered"] < dear["static"]["unanswered"]


def test_fixed_m_and_the_oracle_are_the_calibration_numbers(result):
    r, _ = result
    cal = json.loads((RESULTS.parent / "calibration.json").read_text())
    for f in r["fixed"]:
        per = [cal["by_task"][t][str(f["m"])] for t in cal["by_task"]]
        assert f["accuracy"] == pytest.approx(sum(x["accuracy"] * x["n"] for x in per) / 830)
    top = r["sweep"][-1]  # the dearest fixed m's cost: room for every fix
    assert top["oracle"]["accuracy"] == pytest.approx(cal["oracle_all"]["accuracy"])
    for s in r["sweep"]:  # knowing the answers never does worse than any m that fits
        if s["oracle"] and s["best_fixed"]:
            assert s["oracle"]["accuracy"] >= s["best_fixed"]["accuracy"]
    # at the cheapest m's own cost the only room is rows answered right at a larger m with a
    # shorter answer (the cost of generating it is less): count them independently
    from pipeline.scheduler.cascade import load_questions
    qs = load_questions(RESULTS, r["ms"])
    m1 = r["ms"][0]
    free = sum(1 for q in qs if not q.correct[m1]
               and any(q.correct[m] and q.flops[m] <= q.flops[m1] for m in r["ms"]))
    low = r["sweep"][0]["oracle"]
    assert low["accuracy"] * 830 >= r["fixed"][0]["accuracy"] * 830 + free - 1e-9


@pytest.mark.parametrize("override,field", [
    ("results=/nonexistent.parquet", "results"), ("ms=[4,2]", "ms"), ("points=1", "points"),
    ("quantiles=[0.5,1.5]", "quantiles"), ("pacing_m=3", "pacing_m"),
    ("pacing_cases=[[1.0]]", "pacing_cases"), ("cap_se=-1", "cap_se")])
def test_bad_configs_fail_naming_the_field(override, field, capsys):
    assert run([override]) == 2
    assert f"bad config: {field}" in capsys.readouterr().err


def test_paired_difference_and_its_standard_error():
    # 10 questions: the policy alone right on 3, the fixed m alone right on 1, both on 4
    fixed = {i: i in (0, 1, 2, 3, 4) for i in range(10)}
    policy = {i: i in (1, 2, 3, 4, 5, 6, 7) for i in range(10)}
    got = bench_scheduler.paired([policy, policy], fixed)
    assert got["diff"] == pytest.approx((3 - 1) / 10)
    assert got["se"] == pytest.approx((4 - 2 ** 2 / 10) ** 0.5 / 10)
    assert bench_scheduler.paired([fixed], fixed) == {"diff": 0.0, "se": 0.0}


def test_the_goals_say_how_far_below_the_best_fixed_m_is_noise(result):
    r, _ = result
    for name, g in r["goals"].items():
        assert g["at_or_above"] <= g["within_2se"] <= g["points"], name
        assert 0 < g["se"] < 0.05, name  # hundreds of questions: a few points at most
    for s in r["sweep"]:
        for p in s["policies"].values():
            if p is not None and s["best_fixed"]:
                assert "right" not in p and p["vs_best"]["se"] >= 0


def _q(i, right):
    from pipeline.scheduler.cascade import Question
    ms = [1, 2, 4]
    return Question(f"q{i}", "vqa", "k", dict(zip(ms, right, strict=True)),
                    dict.fromkeys(ms, 0.0), {1: 10, 2: 20, 4: 40})


def test_the_needed_m_leaves_out_answers_right_below_a_wrong_one():
    ms = [1, 2, 4]
    lucky, steady, never = _q(0, [True, False, True]), _q(1, [False, True, True]), \
        _q(2, [True, True, False])
    assert bench_scheduler.needed_m(lucky, ms) == 4
    assert bench_scheduler.needed_m(steady, ms) == 2
    assert bench_scheduler.needed_m(never, ms) is None
    assert [bench_scheduler.lucky(q, ms) for q in (lucky, steady, never)] == [True, False, True]
    qs = [lucky, steady, never]
    # at the cheapest m's cost: the oracle keeps both right answers at m=1, the needed-m
    # oracle none (m=1 is below a wrong m for both)
    assert bench_scheduler.oracle(qs, ms, 30)["accuracy"] == pytest.approx(2 / 3)
    assert bench_scheduler.oracle(qs, ms, 30, needed=True)["accuracy"] == 0
    # room for one fix (10 FLOPs): steady at m=2; lucky needs 30 more for m=4
    got = bench_scheduler.oracle(qs, ms, 40, needed=True)
    assert got == {"accuracy": pytest.approx(1 / 3), "spend": 40}
    assert bench_scheduler.oracle(qs, ms, 70, needed=True)["accuracy"] == pytest.approx(2 / 3)


def test_the_needed_m_oracle_reaches_the_dearest_m_and_never_passes_the_oracle(result):
    r, _ = result
    for s in r["sweep"]:
        if s["needed"]:
            assert s["needed"]["accuracy"] <= s["oracle"]["accuracy"]
            assert s["needed"]["spend"] <= s["quota"]
    assert r["sweep"][-1]["needed"]["accuracy"] == pytest.approx(r["fixed"][-1]["accuracy"])
    for g in r["goals"].values():
        assert len(g["recovered_needed"]) <= g["points"]


def test_more_results_join_by_question_id(tmp_path):
    assert RESULTS.exists(), "docs/eval is a committed file"
    import pyarrow.parquet as pq
    t = pq.read_table(RESULTS)
    ids = sorted(set(t.column("id").to_pylist()))
    keep = set(ids[:100])
    pq.write_table(t.filter([i in keep for i in t.column("id").to_pylist()]),
                   tmp_path / "part.parquet")
    cfg = resolve([f"results={tmp_path / 'part.parquet'}", f"more_results=[{RESULTS}]",
                   f"ms={[1, 2, 4, 8, 16, 32, 48, 64]}"])[1]
    assert [q.id for q in bench_scheduler.questions(cfg)] == ids
    assert run(["more_results=[/nonexistent.parquet]"]) == 2


def test_picking_among_several_m_by_confidence_or_vote():
    pick = pick_by_confidence
    by_m = {1: {"m": 1, "output": "red", "correct": False, "confidence": -0.1},
            2: {"m": 2, "output": "blue", "correct": True, "confidence": -0.5},
            4: {"m": 4, "output": "blue", "correct": True, "confidence": -0.9}}
    assert pick.keep_most_confident(by_m, (1, 2, 4))["m"] == 1
    assert pick.keep_vote(by_m, (1, 2, 4))["m"] == 2  # two votes; the more confident of them
    assert pick.keep_vote(by_m, (1, 4))["m"] == 1  # one vote each: confidence decides
    if not RESULTS.exists():
        return
    ms = [1, 2, 4, 8, 16, 32, 48, 64]
    from mqt.config import preset
    from mqt.evaluation.results import rows_by_question
    from pipeline.scheduler.cascade import shared_flops
    per = rows_by_question([RESULTS, RESULTS], ms)
    assert len(per) == 830
    for r in pick.measure(per, ms, shared_flops(preset("mqt-smol"), ms)):
        assert max(r["max_conf"], r["vote"], r["dearest"]) <= r["any"]  # a picker's ceiling
        # every pass after the first costs more than what it shares: the dearest m fits
        assert r["best_fixed"] >= r["dearest"]


def test_at_a_fixed_m_own_cost_that_m_fits(result):
    """The sweep includes each fixed m's cost per row; Q there pays for that m exactly (a
    float product one FLOP short once left it out of the best fixed m)."""
    r, _ = result
    for f in r["fixed"]:
        s = next(s for s in r["sweep"] if s["q"] == f["spend"] / f["rows"])
        assert s["quota"] == f["spend"]
        assert s["best_fixed"]["accuracy"] >= f["accuracy"]
    assert bench_scheduler.quota_for(19273460781.0 / 830, 830) == 19273460781


def test_no_plan_sees_whether_held_out_questions_are_answered_right():
    """Leakage: a policy plans for the held-out half from the fit half and the held-out
    rows' tasks and question texts only. Permuting the held-out questions' outcomes (right
    or not, and the confidence, at every m) among them leaves every policy's plan the same
    at every budget; permuting the fit half's outcomes changes some (the check can fail)."""
    import random
    from dataclasses import replace

    from mqt.config import preset
    from pipeline.scheduler.cascade import shared_flops, split_halves

    cfg = resolve([f"results={RESULTS}", "seeds=[0]"])[1]
    cfg.ms = bench_scheduler.trained_ms(cfg.results)
    qs = bench_scheduler.questions(cfg)
    shared = shared_flops(preset(cfg.preset), cfg.ms)
    fit, held = split_halves(qs, 0)

    def scrambled(part: list) -> list:
        order = list(range(len(part)))
        random.Random(1).shuffle(order)
        return [replace(x, correct=part[j].correct, confidence=part[j].confidence)
                for x, j in zip(part, order, strict=True)]

    moved = sum(a.correct != b.correct for a, b in zip(held, scrambled(held), strict=True))
    assert moved > len(held) / 4
    folds = [bench_scheduler.fit_fold(f, h, cfg, shared, 0)
             for f, h in ((fit, held), (fit, scrambled(held)), (scrambled(fit), held))]
    budgets = bench_scheduler.budgets(bench_scheduler.fixed_points(qs, cfg.ms), 4)
    changed = 0
    for q in budgets:
        for name in bench_scheduler.POLICIES:
            base, same, other = (bench_scheduler.fitted_plan(name, f, q, shared) for f in folds)
            assert (base is None) == (same is None), (name, q)
            if base is not None:
                assert (same["plan"], same["rows"], same["alpha"]) == \
                    (base["plan"], base["rows"], base["alpha"]), (name, q)
                changed += other is None or other["plan"] != base["plan"]
    assert changed > 0
