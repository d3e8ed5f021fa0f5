"""`mqt profile`: times the engine at several m on a sample of rows and writes the
affine time model a measured quota plans on (pipeline/scheduler/timing.py). Tiny random model on
the bundled corpus; the times themselves are this machine's, so only their shape is
checked."""

import pytest

from jobs import cli
from jobs import profile as job
from pipeline.scheduler.timing import TimeModel


def test_profile_writes_a_time_model_of_every_task_at_every_m(tmp_path):
    cfg = cli.resolve("profile", None, ["rows=4", "repeats=2", "ms=[1,4]", "batch_size=8",
                                        f"output={tmp_path}"], "tiny")[1]
    job.main(cfg)
    tm = TimeModel.load(tmp_path / "time_profile.json")
    assert set(tm.seconds_per_call) == {"caption", "vqa", "mc"}  # the bundled tasks
    assert tm.batch_size == 8 and tm.device
    by = {(p["task"], p["m"]): p for p in tm.points}
    assert set(by) == {(t, m) for t in ("caption", "vqa", "mc") for m in (1, 4)}
    for t in ("caption", "vqa", "mc"):
        assert by[t, 4]["flops"] > by[t, 1]["flops"]  # more visual tokens, more FLOPs
        assert all(by[t, m]["rows"] == 4 and by[t, m]["seconds"] > 0 for m in (1, 4))
        lo, hi = by[t, 1]["seconds_range"]
        assert lo <= by[t, 1]["seconds"] <= hi
    assert (tmp_path / "profile.png").stat().st_size > 0
    text = (tmp_path / "profile.md").read_text()
    assert text.count("\n| ") == 1 + 6  # the header and one line per (task, m)


def test_profile_settings_are_checked_before_work(tmp_path):
    base = [f"output={tmp_path}"]
    with pytest.raises(ValueError, match="ms: two or more distinct"):
        cli.resolve("profile", None, [*base, "ms=[4,4]"], "tiny")
    with pytest.raises(ValueError, match="source: a local .jsonl manifest"):
        cli.resolve("profile", None, [*base, f"source={tmp_path}"], "tiny")
    with pytest.raises(ValueError, match="tasks.nope"):
        cli.resolve("profile", None, [*base, "tasks={nope: {prompt: x}}"], "tiny")
