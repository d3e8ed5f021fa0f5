"""`mqt plan`: the table and plan.json on the shipped calibration and the llava-7b prior, and
bad configs (unknown task, bad quota, infeasible quota) failing before work, field named."""

import json
import re

import pytest
import yaml

from jobs.cli import main, resolve
from jobs.plan import main as plan_main
from pipeline.scheduler.plan import PlanPolicy
from pipeline.scheduler.quality import from_calibration

PRIOR_ROWS = ["rows.vqav2=40000", "rows.gqa=20000", "rows.pope=20000", "rows.mmbench=10000",
              "rows.scienceqa-img=10000"]


def test_plan_on_the_shipped_calibration(tmp_path, capsys):
    rows = {"vqa": 1000, "mc": 200, "caption": 300}
    args = ["plan", *(f"rows.{t}={n}" for t, n in rows.items()), "quota=1.5e13",
            f"output={tmp_path}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| task | rows | m | expected accuracy | spend (FLOPs) | share of Q |" in out
    assert "Best fixed m within the quota" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["spend"] <= 1.5e13 == plan["quota"]["total_flops"]
    assert {t["task"]: t["rows"] for t in plan["tasks"]} == rows
    assert plan["best_fixed"]["value"] <= plan["bound"] + 1e-9
    curves = from_calibration()
    for t in plan["tasks"]:  # each part's numbers are the calibration's
        for p in t["parts"]:
            assert (p["accuracy"], p["flops"]) == curves[t["task"]].at(p["m"])
        assert f"| {t['task']} | {t['rows']} |" in out
    policy = PlanPolicy.from_dict(plan)
    policy.check(64)  # mqt-smol's M
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["rows"] == rows


def test_a_generous_plan_stops_where_the_calibration_shows_no_gain(tmp_path, capsys):
    """cap_se (default 1): vqa is planned up to m = 32, not its most accurate m = 64, whose
    +0.19 points on the shipped calibration are within one paired standard error (mc up to
    m = 32, not m = 48: +1.25 points); the best fixed m is still found on every calibrated
    m; cap_se=0 plans m = 64."""
    args = ["plan", "rows.vqa=1000", "rows.mc=200", "quota=1e14"]
    assert main([*args, f"output={tmp_path / 'a'}"]) == 0
    out = capsys.readouterr().out
    capped = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert {t["task"]: [p["m"] for p in t["parts"]] for t in capped["tasks"]} == \
        {"vqa": [32], "mc": [32]}
    assert capped["planned_up_to_m"] == {"vqa": 32, "mc": 32}
    assert "cap_se=1: planned mc up to m = 32, not its most accurate m = 48" in out
    assert "vqa up to m = 32, not its most accurate m = 64" in out
    assert capped["best_fixed"]["tasks"][0]["parts"][0]["m"] == 64
    assert main([*args, "cap_se=0", f"output={tmp_path / 'b'}"]) == 0
    assert "cap_se" not in capsys.readouterr().out
    every = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert [p["m"] for p in every["tasks"][0]["parts"]] == [64]
    assert capped["spend"] < every["spend"] <= 1e14


def test_plan_on_the_llava_prior_in_gpu_seconds_with_a_match(tmp_path, capsys):
    _, cfg = resolve("plan", None, ["prior=llava-7b", *PRIOR_ROWS, "quota_seconds=720",
                                    "flops_per_second=4e14", "match_m=256",
                                    f"output={tmp_path}"], None)
    result = plan_main(cfg)
    out = capsys.readouterr().out
    assert result["quota"]["total_flops"] == 720 * 4e14 and result["spend"] <= 720 * 4e14
    assert "accelerator-hours" in out and "Fixed m = 256 on every row" in out
    match = result["match"]
    assert match["plan_value"] >= match["fixed_value"] * (1 - 1e-12)
    assert 0 < match["saving"] < 1 and match["plan_spend"] < match["fixed_spend"]
    assert result["accuracy"] >= result["best_fixed"]["accuracy"]  # all weights are 1


def test_plan_on_a_time_profile(tmp_path, capsys):
    """quota_seconds with time_profile: the plan's costs are the profile's microseconds
    per row (a x FLOPs + the task's time per call) and the report says so; an infeasible
    quota's minimum is in seconds on the profile, and re-planned at it, fits."""
    from pipeline.scheduler.timing import TimeModel

    profile = TimeModel(1e-11, {"vqa": 0.05, "mc": 0.08})
    profile.save(tmp_path / "p.json")
    _, cfg = resolve("plan", None, ["rows.vqa=1000", "rows.mc=200", "quota_seconds=150",
                                    f"time_profile={tmp_path / 'p.json'}",
                                    f"output={tmp_path / 'o'}"], None)
    result = plan_main(cfg)
    out = capsys.readouterr().out
    assert "quota 150 s on the time profile = 1.5e+08 profiled us" in out
    assert "spend (profiled us)" in out and result["quota"]["timed"]
    assert result["spend"] <= 150e6
    cal = from_calibration()
    for t in result["tasks"]:
        for p in t["parts"]:
            assert p["flops"] == profile.units(t["task"], cal[t["task"]].at(p["m"])[1])
    args = ["plan", "rows.vqa=1000", f"time_profile={tmp_path / 'p.json'}",
            f"output={tmp_path / 'x'}"]
    assert main([*args, "quota_seconds=1"]) == 2
    err = capsys.readouterr().err
    minimum = re.search(r"the minimum quota is ([0-9.e+]+) ", err).group(1)
    assert "s on the time profile" in err
    assert main([*args, f"quota_seconds={minimum}"]) == 0
    assert main([*args, "quota_seconds=1", "flops_per_second=1e9"]) == 2
    assert "flops_per_second: give it or time_profile" in capsys.readouterr().err
    assert main(["plan", "rows.caption=5", "quota_seconds=100",
                 f"time_profile={tmp_path / 'p.json'}", f"output={tmp_path / 'y'}"]) == 2
    assert "time_profile: the time profile has no time for task 'caption'" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["rows.nosuch=10", "quota=1e15"], "rows.nosuch: unknown task"),
    (["rows.vqa=10", "weights.zz=2", "quota=1e15"], "weights.zz: unknown task"),
    (["rows.vqa=-3", "quota=1e15"], "rows.vqa: must be an int >= 0"),
    (["rows.vqa=10", "quota=-1"], "quota: must be >= 0"),
    (["rows.vqa=10"], "quota: give quota="),
    (["rows.vqa=10", "quota=1e15", "quota_seconds=5"], "quota: give quota="),
    (["rows.vqa=10", "quota_seconds=5"], "flops_per_second: give the FLOP/s"),
    (["rows.vqa=10", "quota_seconds=-5", "flops_per_second=1e12"], "quota_seconds: must be"),
    (["quota=1e15"], "rows: give rows per task"),
    (["prior=llava-13b", "rows.vqav2=1", "quota=1e15"], "prior: unknown prior"),
    (["prior=llava-7b", "calibration=x.json", "rows.vqav2=1", "quota=1e15"], "not both"),
    (["calibration=/no/such.json", "rows.vqa=1", "quota=1e15"], "calibration: no such file"),
    (["rows.vqa=10", "quota=1e15", "match_m=3"], "match_m: 3 is not an m"),
    (["rows.vqa=10", "quota=1e15", "cap_se=-1"], "cap_se: must be >= 0"),
    (["rows.vqa=10", "quota=1e10"], "quota: a quota of 1e+10 FLOPs cannot pay"),
])
def test_bad_config_fails_before_work(args, message, tmp_path, capsys):
    assert main(["plan", *args, f"output={tmp_path / 'out'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("unit", ["quota=1", "quota_seconds=0.001"])
def test_infeasible_quota_prints_a_minimum_that_works(unit, tmp_path, capsys):
    fps = ["flops_per_second=3.3e14"] if unit.startswith("quota_seconds") else []
    args = ["plan", "prior=llava-7b", *PRIOR_ROWS, unit, *fps, f"output={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    minimum = re.search(r"the minimum quota is (\S+) ", err).group(1)
    field = unit.split("=")[0]
    assert err.startswith(f"mqt plan: bad config: {field}: ")
    assert main([*args[:-2 - len(fps)], f"{field}={minimum}", *fps, f"output={tmp_path}"]) == 0
    assert "| **total** | 100000 |" in capsys.readouterr().out


@pytest.fixture
def manifest(tmp_path):
    """20 easy-vqa yes/no and 20 mosaic cell-digit multiple-choice questions of the shipped
    calibration as a manifest (the images are not read to plan)."""
    import pyarrow.parquet as pq

    from pipeline.scheduler.quality import shipped_calibration

    rows = pq.read_table(shipped_calibration().with_name("results.parquet"),
                         columns=["id", "task", "kind", "question"]).to_pylist()
    lines, seen = [], set()
    for task, kind in (("vqa", "easy-vqa/yesno"), ("mc", "mosaic/cell_digit")):
        picked = [r for r in rows
                  if (r["task"], r["kind"]) == (task, kind) and r["id"] not in seen][:20]
        assert len(picked) == 20
        seen |= {r["id"] for r in picked}
        lines += [{"id": r["id"], "image": "x.png", "task": r["task"],
                   "question": r["question"]} for r in picked]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_plan_the_rows_of_a_manifest_per_task_and_per_kind(manifest, tmp_path, capsys):
    quota = 40 * 25e9  # between the cheapest (20.8 GFLOPs/row) and the dearest m
    by_task = plan_main(resolve("plan", None, [f"source={manifest}", f"quota={quota}",
                                               f"output={tmp_path / 't'}"], None)[1])
    assert {t["task"]: t["rows"] for t in by_task["tasks"]} == {"vqa": 20, "mc": 20}
    by_kind = plan_main(resolve("plan", None, [f"source={manifest}", f"quota={quota}",
                                               "by=kind", f"output={tmp_path / 'k'}"], None)[1])
    assert {t["task"]: t["rows"] for t in by_kind["tasks"]} == {
        "vqa:easy-vqa/yesno": 20, "mc:mosaic/cell_digit": 20}
    assert by_kind["spend"] <= quota and by_task["spend"] <= quota
    out = capsys.readouterr().out
    assert f"rows of {manifest} per (task, question kind)" in out
    assert "| vqa:easy-vqa/yesno | 20 |" in out


@pytest.mark.parametrize("args,message", [
    (["rows.vqa=10", "quota=1e15", "by=kind"], "by: plans per question kind need"),
    (["rows.vqa=10", "quota=1e15", "source=M"], "rows: give rows.* or source="),
    (["prior=llava-7b", "quota=1e15", "source=M"], "source: plans a corpus on an `mqt eval`"),
    (["quota=1e15", "source=M", "by=image"], "by: must be 'task' or 'kind'"),
    (["quota=1e15", "source=M", "by=kind", "results=/no/such.parquet"],
     "results: no such file /no/such.parquet"),
    (["quota=1e9", "source=M"], "quota: a quota of 1e+09 FLOPs cannot pay"),
])
def test_bad_source_plans_fail_before_work(args, message, manifest, tmp_path, capsys):
    args = [a.replace("source=M", f"source={manifest}") for a in args]
    assert main(["plan", *args, f"output={tmp_path / 'out'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
