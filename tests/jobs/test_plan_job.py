"""`mqt plan`: the table and plan.json on the shipped calibration and the llava-7b prior, and
bad configs (unknown task, bad quota, infeasible quota) failing before work, field named."""

import json
import re

import pytest
import yaml

from jobs.cli import main, resolve
from jobs.plan import main as plan_main
from pipeline.plan import PlanPolicy
from pipeline.quality import from_calibration

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
