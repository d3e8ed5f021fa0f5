"""`mqt annotate` under a compute quota: the plan picks m per task before any work, the budget
ledger refuses rows past the quota, spend never exceeds it, and a resumed job spends nothing
twice (the ledger state is saved next to the output)."""

import functools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_annotate import TINY, image_bytes

from jobs import annotate, cli
from mqt.cost import total_flops
from mqt.load import ModelArgs, model_config
from mqt.tasks import get_task
from mqt.text import encode_prompt
from pipeline.annotate import check
from pipeline.scheduler.ledger import REFUSED, Ledger, LedgerClient

MS = (1, 4, 16)


def tiny_row_bound(m: int) -> int:
    """FLOPs of a tiny-model caption row at the most new tokens (what the engine reserves)."""
    from mqt.model import make_tokenizer

    cfg = model_config(ModelArgs())
    prompt_tokens = len(encode_prompt(make_tokenizer(cfg), _caption_prompt(), m)) - m
    return total_flops(cfg, m, prompt_tokens, get_task("caption").max_new_tokens).total


@functools.cache
def _caption_prompt() -> str:
    """The tiny model's caption prompt (built once: format_prompts needs a model)."""
    from mqt.model import build_model

    return build_model(model_config(ModelArgs())).format_prompts([get_task("caption").format()])[0]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A calibration file for the tiny model: accuracy rises with m, costs from the cost model."""
    path = tmp_path_factory.mktemp("cal") / "calibration.json"
    per_m = {str(m): {"accuracy": acc, "mean_flops": tiny_row_bound(m), "n": 10}
             for m, acc in zip(MS, (0.5, 0.7, 0.8), strict=True)}
    path.write_text(json.dumps({"ms": list(MS), "by_task": {"caption": per_m}}))
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        (root / f"{i:02d}.png").write_bytes(image_bytes(i))
    return root


def test_infeasible_quota_fails_before_work_with_the_minimum(monkeypatch, folder, calibration,
                                                             tmp_path):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    minimum = 12 * tiny_row_bound(1)
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}"]
    with pytest.raises(ValueError, match=rf"quota: .*the minimum quota is {minimum}"):
        cli.resolve("annotate", None, [*args, f"quota.flops={minimum - 1}"], "tiny")
    with pytest.raises(ValueError, match="quota.infeasible: must be"):
        cli.resolve("annotate", None, [*args, "quota.flops=1", "quota.infeasible=some"], "tiny")
    cli.resolve("annotate", None, [*args, f"quota.flops={minimum}"], "tiny")  # feasible
    with pytest.raises(ValueError, match="policy: a job with a quota"):
        cli.resolve("annotate", None, [*args, f"quota.flops={minimum}", "policy.default=2"],
                    "tiny")


def test_quota_job_spends_within_quota_and_resume_spends_nothing_twice(ray_local, folder,
                                                                      calibration, tmp_path):
    quota = 8 * tiny_row_bound(1) + 4 * tiny_row_bound(16)  # room for 4 rows at m = 16
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}", f"quota.flops={quota}"]
    cfg = cli.resolve("annotate", None, args, "tiny")[1]
    plan = check(cfg).budget.plan
    assert [(p.m, p.rows) for p in plan.task("caption").parts] == [(4, 10), (16, 2)]
    s = annotate.main(cfg)
    q = s["quota"]
    assert s["rows"] == 12 and s["errors"] == 0
    assert s["m_histogram"]["caption"] == {4: 10, 16: 2}  # the rows followed the plan
    assert 0.95 * quota <= q["spent_flops"] <= quota and q["quota_flops"] == quota
    assert q["spent_flops"] == s["flops"] and q["overrun_flops"] == 0
    assert q["share_per_task"] == {"caption": round(s["flops"] / quota, 4)}
    state = json.loads((tmp_path / "o" / "ledger.json").read_text())
    assert state["spent"] == q["spent_flops"] and len(state["committed"]) == 12
    again = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    assert again["this_run"]["rows"] == 0 and again["quota"]["this_run_flops"] == 0
    assert again["quota"]["spent_flops"] == q["spent_flops"]
    # overwrite=true starts afresh: the whole quota again, not what the first run left
    fresh = annotate.main(cli.resolve("annotate", None, [*args, "overwrite=true"], "tiny")[1])
    assert fresh["rows"] == 12 and fresh["m_histogram"]["caption"] == {4: 10, 16: 2}
    assert fresh["quota"]["spent_flops"] == fresh["quota"]["this_run_flops"] == q["spent_flops"]
    assert json.loads((tmp_path / "o" / "ledger.json").read_text())["spent"] == q["spent_flops"]


@pytest.mark.slow  # three runs of a quota job, ~25 s
def test_a_measured_seconds_quota_charges_the_time_rows_took(ray_local, folder, calibration,
                                                            tmp_path):
    """quota.measured=true: planned at quota.flops_per_second like a converted quota (the
    same plan as the FLOPs job above), charged the seconds rows really took. The tiny
    model takes far less than planned, so nothing is refused; the ledger's time is the
    rows' own seconds, saved in microseconds; a rerun spends nothing, and the same output
    with a quota in FLOPs is refused before work, naming quota.measured."""
    seconds = 1000.0
    fps = (8 * tiny_row_bound(1) + 4 * tiny_row_bound(16)) / seconds  # as the FLOPs job's Q
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}", f"quota.seconds={seconds}",
            "quota.measured=true", f"quota.flops_per_second={fps}"]
    cfg = cli.resolve("annotate", None, args, "tiny")[1]
    s = annotate.main(cfg)
    q = s["quota"]
    assert s["rows"] == 12 and s["errors"] == 0 and q["refused_rows"] == 0
    assert s["m_histogram"]["caption"] == {4: 10, 16: 2}  # the plan of the FLOPs job
    rows = pq.read_table(tmp_path / "o" / "data").to_pylist()
    took = sum(round(r["seconds"] * 1e6) for r in rows)
    state = json.loads((tmp_path / "o" / "ledger.json").read_text())
    assert state["unit"] == "us" and len(state["committed"]) == 12
    assert state["spent"] + state["overrun"] == took  # the time the rows took, to the us
    assert q["measured"] and q["quota_seconds"] == seconds
    assert q["spent_seconds"] + q["overrun_seconds"] == pytest.approx(took / 1e6)
    assert q["flops_per_second_measured"] == round(s["flops"] / (took / 1e6))
    assert s["seconds_per_task"]["caption"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert q["share_per_task"]["caption"] == pytest.approx(took / 1e6 / seconds, abs=1e-4)
    again = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    assert again["this_run"]["rows"] == 0 and again["quota"]["this_run_seconds"] == 0
    flops = [a for a in args if not a.startswith(("quota.seconds", "quota.measured"))]
    with pytest.raises(ValueError, match="quota.measured: ledger state .* counts us, not flops"):
        cli.resolve("annotate", None, [*flops, "quota.flops=1e12"], "tiny")
    # paced: once the first batch is in, the time left buys far more than the estimate
    # said (this model is fast), and the pacer moves the later rows to m = 16
    paced = annotate.main(cli.resolve("annotate", None, [*args, f"output={tmp_path / 'p'}",
                                                         "quota.pacing=true"], "tiny")[1])
    assert paced["rows"] == 12 and paced["quota"]["refused_rows"] == 0
    assert paced["m_histogram"]["caption"].get(16, 0) > 2 and paced["quota"]["share"] < 1
    assert paced["quota"]["pacing"]["plans"] >= 2


@pytest.mark.slow  # ~16 s
def test_a_measured_quota_planned_on_a_time_profile(ray_local, folder, calibration, tmp_path):
    """quota.time_profile: the plan is made in the profile's seconds (its per-call time
    included), the ledger charges the rows' measured seconds and keeps, behind them, the
    profile's microseconds for each row (exactly its units at the row's FLOPs), and the
    summary says how the measured time compares with the profile's."""
    from pipeline.scheduler.plan import plan
    from pipeline.scheduler.quality import from_calibration
    from pipeline.scheduler.quota import Quota
    from pipeline.scheduler.timing import TimeModel

    profile = TimeModel(1e-9, {"caption": 0.5})  # 1 s per GFLOP, half a second per call
    profile.save(tmp_path / "profile.json")
    units = {m: profile.units("caption", tiny_row_bound(m)) for m in MS}
    seconds = (8 * units[1] + 4 * units[16]) / 1e6
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}", f"quota.seconds={seconds}",
            "quota.measured=true", f"quota.time_profile={tmp_path / 'profile.json'}"]
    cfg = cli.resolve("annotate", None, args, "tiny")[1]
    expected = plan({"caption": 12}, profile.timed(from_calibration(calibration)),
                    Quota(flops=round(seconds * 1e6)))
    s = annotate.main(cfg)
    q = s["quota"]
    assert s["rows"] == 12 and s["errors"] == 0 and q["refused_rows"] == 0
    assert s["m_histogram"]["caption"] == {p.m: p.rows for p in expected.task("caption").parts}
    rows = pq.read_table(tmp_path / "o" / "data").to_pylist()
    took = sum(round(r["seconds"] * 1e6) for r in rows)
    modelled = sum(profile.units("caption", r["flops"]) for r in rows)
    state = json.loads((tmp_path / "o" / "ledger.json").read_text())
    assert state["spent"] + state["overrun"] == took and state["flops_spent"] == modelled
    assert q["time_profile"] == str(tmp_path / "profile.json")
    assert q["flops_per_second_planned"] is None
    assert q["time_vs_profile"] == round(took / modelled, 4)  # the tiny model: far faster
    with pytest.raises(ValueError, match="quota.flops_per_second: give it or"):
        cli.resolve("annotate", None, [*args, "quota.flops_per_second=1e9"], "tiny")
    # its output resumed without the profile: the ledger's work behind its time differs
    unprofiled = [a for a in args if not a.startswith("quota.time_profile")]
    with pytest.raises(ValueError, match="quota.time_profile: ledger state .* keeps "
                                         "profiled_us behind its time, not flops"):
        cli.resolve("annotate", None, [*unprofiled, "quota.flops_per_second=1e9"], "tiny")
    # paced: the rows run far faster than the profile says, and the pacer, re-planning on
    # measured time per modelled time, moves later rows to m = 16
    paced = annotate.main(cli.resolve("annotate", None, [*args, f"output={tmp_path / 'p'}",
                                                         "quota.pacing=true"], "tiny")[1])
    assert paced["rows"] == 12 and paced["quota"]["refused_rows"] == 0
    static16 = s["m_histogram"]["caption"].get(16, 0)
    assert paced["m_histogram"]["caption"].get(16, 0) > static16
    assert paced["quota"]["pacing"]["plans"] >= 2 and paced["quota"]["share"] < 1


def test_a_measured_quota_needs_seconds_and_an_estimate(folder, calibration, tmp_path):
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}", "quota.measured=true"]
    with pytest.raises(ValueError, match="quota.measured: measured spend needs a quota in "
                                         "seconds"):
        cli.resolve("annotate", None, [*args, "quota.flops=1e12"], "tiny")
    with pytest.raises(ValueError, match="quota.flops_per_second: a measured quota still plans"):
        cli.resolve("annotate", None, [*args, "quota.seconds=60"], "tiny")
    with pytest.raises(ValueError, match="quota.margin: must be >= 1"):
        cli.resolve("annotate", None, [*args, "quota.seconds=60", "quota.flops_per_second=1e9",
                                       "quota.margin=0.5"], "tiny")


def test_engine_rows_past_the_quota_are_refused_and_spend_stays_within():
    """Without Ray: a plain Ledger behind the engine; a quota of ~2.5 rows answers 2.
    The three refused ask once more after the two are charged, but the tiny random model
    never stops before its max new tokens, so the two spent their whole holds and nothing
    came back: refused again."""
    from pipeline.decode import decode_batch
    from pipeline.engine import Engine
    from pipeline.scheduler.policy import FixedPolicy

    bound = tiny_row_bound(4)
    ledger = Ledger(int(2.5 * bound))
    pred = Engine({"preset": "tiny", "checkpoint": "none"}, FixedPolicy(default=4),
                     ledger=LedgerClient(ledger))
    src = [{"id": str(i), "path": None, "image": image_bytes(i), "task": "caption",
            "question": "", "options": None, "error": None} for i in range(5)]
    out = pred(decode_batch(pa.Table.from_pylist(src), image_size=32)).to_pylist()
    answered = [r for r in out if r["error"] is None]
    assert len(answered) == 2 and all(r["error"] == REFUSED for r in out[2:])
    assert ledger.spent == sum(r["flops"] for r in answered) <= ledger.quota
    assert ledger.reserved == 0  # every hold was committed or released


@pytest.mark.slow  # ~16 s
def test_infeasible_quota_with_subset_answers_the_first_rows_and_skips_the_rest(
        ray_local, folder, calibration, tmp_path):
    """quota.infeasible=subset: Q pays for 5 rows at the cheapest m; the first 5 ids in
    source order are answered, the other 7 are error rows that say why, spend <= Q, and a
    rerun with the same quota does nothing more."""
    quota = 5 * tiny_row_bound(1) + 10  # a little over five rows: not enough for a sixth
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}",
            f"quota.calibration={calibration}", f"quota.flops={quota}", "quota.infeasible=subset"]
    s = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "o" / "data").to_pylist()}
    assert sorted(rows) == [f"{i:02d}.png" for i in range(12)]
    answered = sorted(i for i, r in rows.items() if r["error"] is None)
    assert answered == [f"{i:02d}.png" for i in range(5)]
    assert all("quota: skipped" in rows[f"{i:02d}.png"]["error"] for i in range(5, 12))
    assert s["quota"]["skipped_rows"] == 7 and s["quota"]["spent_flops"] <= quota
    assert s["m_histogram"] == {"caption": {1: 5}}
    again = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    assert again["this_run"]["rows"] == 0 and again["quota"]["this_run_flops"] == 0


def cal_flops(m: int) -> int:
    return tiny_row_bound(m) * (3 if m == 16 else 1)


@pytest.fixture(scope="module")
def cascade_calibration(tmp_path_factory):
    """Calibration where a cascade pays: of 40 questions, the 20 that m = 1 answers with
    confidence -0.001 are right at every m; the 20 it answers with confidence -50 are
    wrong at m = 1 and 4 and right at m = 16. Cascade(1, 16, t) with -50 < t <= -0.001
    is right on all 40 and escalates half of them. The FLOPs at m = 16 are 3x the tiny
    model's (as for a model whose visual tokens dominate the cost; on the tiny model the
    text dominates and m = 16 costs only 1.4x m = 1, so no cascade beats m = 16 there)."""
    folder = tmp_path_factory.mktemp("cascal")
    rows = []
    for q in range(40):
        sure = q < 20
        for m in MS:
            rows.append({"id": f"q{q:02d}", "task": "caption", "kind": "caption", "m": m,
                         "correct": sure or m == 16, "confidence": -0.001 if sure else -50.0,
                         "output": "", "answer": "", "flops": float(cal_flops(m))})
    pq.write_table(pa.Table.from_pylist(rows), folder / "results.parquet")
    per_m = {str(m): {"accuracy": acc, "mean_flops": cal_flops(m), "n": 40}
             for m, acc in zip(MS, (0.5, 0.5, 1.0), strict=True)}
    (folder / "calibration.json").write_text(
        json.dumps({"ms": list(MS), "by_task": {"caption": per_m}}))
    return folder / "calibration.json"


def test_quota_job_with_cascades_escalates_within_the_plan_and_the_quota(
        ray_local, folder, cascade_calibration, tmp_path):
    """quota.cascades=true: the plan answers every caption with the cascade 1 -> 16 (its
    fitted accuracy 1.0 at less than the cost of m = 16). The tiny model's confidences
    (mean log-probabilities of a random model) are far below the threshold, so every row
    escalates; escalations draw on the plan's escalation pot (Q less the planned first
    attempts) as well as the ledger. Spend <= Q, escalations <= their pot."""
    from pipeline.scheduler.budget import curves
    from pipeline.scheduler.policy import Cascade

    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}", "quota.cascades=true",
            f"quota.calibration={cascade_calibration}"]
    cfg = cli.resolve("annotate", None, [*args, f"quota.flops={10 ** 15}"], "tiny")[1]
    fitted = curves(cfg.quota, {"caption"}, model_config(ModelArgs()))["caption"]
    best = max(fitted.cascades, key=lambda o: (o[1], -o[2]))  # (cascade, accuracy, FLOPs)
    assert best[0] == Cascade(1, 16, -0.001) and best[1] == 1.0
    assert best[2] < fitted.cost[-1]  # cheaper than m = 16 on every row
    quota = 12 * best[2]  # the cascade on every row, at its fitted mean cost
    cfg = cli.resolve("annotate", None, [*args, f"quota.flops={quota}"], "tiny")[1]
    budget = check(cfg).budget
    (part,) = budget.plan.task("caption").parts
    assert isinstance(part.m, Cascade) and (part.m.m1, part.m.m2, part.rows) == (1, 16, 12)
    assert budget.escalations == quota - 12 * cal_flops(1)
    s = annotate.main(cfg)
    q = s["quota"]
    assert s["rows"] == 12 and s["errors"] == 0 and q["refused_rows"] == 0
    assert s["m_histogram"]["caption"] == {16: 12}  # all escalated, none refused
    assert q["spent_flops"] <= quota and q["overrun_flops"] == 0
    assert 0 < q["escalation_flops"] <= q["escalation_budget_flops"] == budget.escalations
    rows = pq.read_table(tmp_path / "o" / "data").to_pylist()
    assert sum(r["flops"] for r in rows) == q["spent_flops"]


def test_cascades_need_the_per_question_results(folder, calibration, tmp_path):
    args = [*TINY, f"source={folder}", f"output={tmp_path / 'o'}", "quota.cascades=true",
            f"quota.calibration={calibration}", f"quota.flops={10 ** 15}"]
    with pytest.raises(ValueError, match="quota.results: no such file .*results.parquet"):
        cli.resolve("annotate", None, args, "tiny")


@pytest.mark.slow  # ~19 s
def test_pacing_spends_what_failed_rows_leave_on_the_others(ray_local, calibration, tmp_path):
    """12 rows, the first 4 corrupt (error rows, nothing spent), a quota for m = 4 on all 12.
    The static plan gives every row m = 4 and leaves a third of Q unused; with
    quota.pacing=true the pacer learns the 4 rows failed and gives the 8 good ones dearer m,
    spending more of Q, never more than Q."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        (root / f"{i:02d}.png").write_bytes(b"not an image" if i < 4 else image_bytes(i))
    quota = 12 * tiny_row_bound(4)
    base = [*TINY, f"source={root}", f"quota.calibration={calibration}", f"quota.flops={quota}"]
    fixed = annotate.main(cli.resolve("annotate", None, [*base, f"output={tmp_path / 's'}"],
                                      "tiny")[1])
    paced = annotate.main(cli.resolve("annotate", None, [*base, f"output={tmp_path / 'p'}",
                                                         "quota.pacing=true"], "tiny")[1])
    assert fixed["errors"] == paced["errors"] == 4
    assert fixed["m_histogram"]["caption"] == {4: 8}
    assert paced["m_histogram"]["caption"].get(16, 0) >= 1
    assert fixed["quota"]["spent_flops"] < paced["quota"]["spent_flops"] <= quota
    assert paced["quota"]["pacing"]["seen"] == {"caption": 12}
    assert paced["quota"]["pacing"]["plans"] >= 2


EXTRA = 100_000


def kind_flops(kind: str, m: int) -> int:
    return 3 * tiny_row_bound(m) + (EXTRA if kind == "count" and m == 16 else 0)


@pytest.fixture(scope="module")
def kind_calibration(tmp_path_factory):
    """A vqa calibration of two question kinds: 50 yes/no questions right at every m, 50
    counting questions right only at m = 16 (enough for groups in half of them, where the
    shrinkage is cross-validated); FLOPs 3x the tiny model's caption bound (above
    what a tiny vqa row costs, so the ledger refuses nothing), a counting question at m = 16
    EXTRA more (longer answers): shrunk to the task's accuracy, the two kinds would look
    alike and the cheaper yes/no upgrade would win, so cross-validation keeps them apart."""
    from tests.pipeline.scheduler.test_kinds import count, yesno

    folder = tmp_path_factory.mktemp("kindcal")
    rows = [{"id": f"{kind}{i}", "task": "vqa", "kind": kind, "m": m, "question": text(i),
             "correct": m >= right_from, "confidence": 0.0, "output": "", "answer": "",
             "flops": float(kind_flops(kind, m))}
            for kind, text, right_from in (("yesno", yesno, 1), ("count", count, 16))
            for i in range(50) for m in MS]
    pq.write_table(pa.Table.from_pylist(rows), folder / "results.parquet")
    per_m = {str(m): {"accuracy": acc, "n": 100,
                      "mean_flops": (kind_flops("yesno", m) + kind_flops("count", m)) // 2}
             for m, acc in zip(MS, (0.5, 0.5, 1.0), strict=True)}
    (folder / "calibration.json").write_text(
        json.dumps({"ms": list(MS), "by_task": {"vqa": per_m}}))
    return folder / "calibration.json"


@pytest.mark.slow  # ~17 s; mqt plan by=kind and the served auto per kind stay
def test_quota_by_kind_plans_m_per_question_kind(ray_local, kind_calibration, tmp_path):
    """quota.by=kind: 6 counting then 6 yes/no questions, a quota for half the rows at m = 16.
    The per-task plan can only split the task (6 rows at m = 16 spread evenly over the
    source, expected accuracy 0.75); planned by kind, every counting question gets m = 16
    and every yes/no question m = 1 (expected 1.0), spend <= Q; with pacing too, the pacer
    counts rows per group."""
    from tests.pipeline.scheduler.test_kinds import count, yesno

    lines = [{"id": f"r{i:02d}", "image": f"{i:02d}.png", "task": "vqa",
              "question": count(i + 3) if i < 6 else yesno(i + 3)} for i in range(12)]
    for i in range(12):
        (tmp_path / f"{i:02d}.png").write_bytes(image_bytes(i))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    quota = 6 * kind_flops("yesno", 1) + 6 * kind_flops("count", 16)
    base = [*TINY, f"source={manifest}", f"quota.calibration={kind_calibration}",
            f"quota.flops={quota}"]

    def resolve(*more):
        return cli.resolve("annotate", None, [*base, *more], "tiny")[1]

    by_task = check(resolve(f"output={tmp_path / 't'}")).budget.plan
    assert by_task.accuracy == pytest.approx(0.75, abs=0.02)  # ~half the rows at m = 16
    cfg = resolve(f"output={tmp_path / 'k'}", "quota.by=kind")
    budget = check(cfg).budget
    assert {t.task: [(p.m, p.rows) for p in t.parts] for t in budget.plan.tasks} == {
        "vqa:count": [(16, 6)], "vqa:yesno": [(1, 6)]}
    assert budget.plan.accuracy == pytest.approx(1.0) and budget.plan.spend <= quota
    # the same plan in measured seconds on a time profile: groups take their task's time
    from pipeline.scheduler.timing import TimeModel

    profile = TimeModel(1e-9, {"vqa": 0.5})
    profile.save(tmp_path / "profile.json")
    seconds = (6 * profile.units("vqa", kind_flops("yesno", 1))
               + 6 * profile.units("vqa", kind_flops("count", 16))) / 1e6
    timed = cli.resolve("annotate", None, [
        *base[:-1], f"output={tmp_path / 's'}", "quota.by=kind", f"quota.seconds={seconds}",
        "quota.measured=true", f"quota.time_profile={tmp_path / 'profile.json'}"], "tiny")[1]
    in_time = check(timed).budget.plan
    assert {t.task: [(p.m, p.rows) for p in t.parts] for t in in_time.tasks} == {
        "vqa:count": [(16, 6)], "vqa:yesno": [(1, 6)]}
    assert in_time.spend <= seconds * 1e6
    s = annotate.main(cfg)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "k" / "data").to_pylist()}
    assert s["errors"] == 0 and s["quota"]["plan_by"] == "kind"
    assert s["quota"]["kind_shrinkage"] == budget.shrinkage == 0  # the kinds truly differ
    assert [rows[f"r{i:02d}"]["m"] for i in range(12)] == [16] * 6 + [1] * 6
    assert s["quota"]["spent_flops"] <= quota and s["quota"]["refused_rows"] == 0
    # the pacer re-plans per group; it holds back one row at the cheapest m for noise
    spare = quota + 3 * tiny_row_bound(1)
    paced = annotate.main(cli.resolve("annotate", None, [*base, f"output={tmp_path / 'p'}",
                                      "quota.by=kind", "quota.pacing=true",
                                      f"quota.flops={spare}"], "tiny")[1])
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "p" / "data").to_pylist()}
    assert paced["quota"]["pacing"]["seen"] == {"vqa:count": 6, "vqa:yesno": 6}
    assert [rows[f"r{i:02d}"]["m"] for i in range(12)] == [16] * 6 + [1] * 6
    assert paced["quota"]["spent_flops"] <= spare
    with pytest.raises(ValueError, match="quota.by: must be"):
        resolve(f"output={tmp_path / 'x'}", "quota.by=image")
    with pytest.raises(ValueError, match="quota.by: plans per question kind need a quota"):
        cli.resolve("annotate", None, [*TINY, f"source={manifest}", f"output={tmp_path / 'y'}",
                                       "quota.by=kind"], "tiny")
