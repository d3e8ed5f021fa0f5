"""Resume after a real crash: `mqt annotate` runs as its own driver process on the test's Ray
cluster, is killed with SIGKILL once some part files are written, and the same command run
again finishes the job: every input id exactly once, and only the missing rows were redone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_annotate import TINY, small_pngs
from test_annotate_quota import calibration, tiny_row_bound  # noqa: F401 (a fixture)

from jobs import annotate, cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a killed run and its resume, ~22 s (CI's resume cases: test_formats,
# test_annotate_quota, test_annotate_s3)
def test_kill_9_of_the_driver_then_resume_exactly_once(ray_local, tmp_path):
    images = small_pngs(tmp_path / "images", 300)
    (images / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    args = [*TINY, f"source={images}", f"output={out}", "rows_per_part=8", "block_rows=8",
            "flush_seconds=1", "policy.m.caption=2", "progress=false"]
    kill_9_after_parts(args, out, ray_local)
    before = len(set(pq.read_table(out / "data").column("id").to_pylist()))
    assert 0 < before < 301
    summary = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    ids = pq.read_table(out / "data").column("id").to_pylist()
    assert sorted(ids) == sorted([f"{i:03d}.png" for i in range(300)] + ["broken.png"])
    assert len(ids) == len(set(ids)) == summary["rows"] == 301
    assert summary["this_run"]["rows"] == 301 - before  # only what was missing was redone
    assert summary["errors"] == 1 and summary["m_histogram"] == {"caption": {2: 300}}


def kill_9_after_parts(args: list[str], out: Path, ray_local, at_least: int = 3) -> None:
    """`mqt annotate ARGS` as its own driver on the test's Ray cluster, killed with SIGKILL
    (the driver and only what it started) once `at_least` part files are written."""
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "annotate", "--preset", "tiny",
                             *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parts = wait_for_parts(out / "data", proc, at_least)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert parts, "the job finished before it could be killed: make the corpus larger"


def wait_for_parts(data: Path, proc: subprocess.Popen, at_least: int, timeout: float = 240):
    """Part files once `at_least` exist while the job still runs; [] if it ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        parts = list(data.glob("part-*.parquet")) if data.is_dir() else []
        if len(parts) >= at_least:
            return parts
        time.sleep(0.2)
    return []


@pytest.mark.slow  # three runs of a quota job, ~35 s
def test_kill_9_of_a_quota_job_then_resume_spends_within_the_quota(
        ray_local, calibration, tmp_path):  # noqa: F811 (the fixture)
    """The same crash under a quota (`quota.pacing=true`): the killed run's commits are in
    the ledger's journal, so the resumed run plans only what is left of Q, charges only the
    rows it answers (none written before is paid again), and the job's spend, the killed
    run's compute included, stays within Q with every id written exactly once. The pacer
    learns its drift from the resumed run's own rows (the killed run's spend is its base):
    the job spends nearly all of Q (99.5-99.6% in two runs; 92.7-93.7% with m = 1 on
    140-165 rows when the earlier spend counted as drift)."""
    images = small_pngs(tmp_path / "images", 300)
    quota = 360 * tiny_row_bound(4)  # m = 4 on every row and m = 16 on about a third
    out = tmp_path / "out"
    args = [*TINY, f"source={images}", f"output={out}", "rows_per_part=8", "block_rows=8",
            "flush_seconds=1", f"quota.calibration={calibration}", f"quota.flops={quota}",
            "quota.pacing=true", "progress=false"]
    kill_9_after_parts(args, out, ray_local)
    before = {r["id"]: r["flops"] for r in pq.read_table(out / "data").to_pylist()}
    assert 0 < len(before) < 300
    summary = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    rows = pq.read_table(out / "data").to_pylist()
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"{i:03d}.png" for i in range(300)] and len(set(ids)) == 300
    assert summary["errors"] == 0 and summary["this_run"]["rows"] == 300 - len(before)
    q = summary["quota"]
    resumed = sum(r["flops"] for r in rows if r["id"] not in before)
    assert q["this_run_flops"] == resumed  # the resumed run paid for its own rows only
    killed = q["spent_flops"] - q["this_run_flops"]  # the killed run, from its journal
    assert killed >= sum(before.values())  # every row it wrote was paid (and maybe more)
    assert 0.97 * quota <= q["spent_flops"] <= quota and q["overrun_flops"] == 0
    state = json.loads((out / "ledger.json").read_text())
    assert state["spent"] == q["spent_flops"] and len(state["committed"]) >= 300


@pytest.mark.slow  # a killed run and its resume, ~30 s
def test_kill_9_with_openai_output_then_resume_every_custom_id_once(ray_local, tmp_path):
    from test_formats import data_url, request

    lines = [request(f"req-{i:03d}", data_url(i), max_tokens=2) for i in range(240)]
    lines.append(request("hot", data_url(0), temperature=1.0))
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    args = [*TINY, f"source={tmp_path / 'batch.jsonl'}", f"output={out}", "rows_per_part=8",
            "block_rows=8", "flush_seconds=1", "policy.default=2", "progress=false",
            "output_format=openai"]
    kill_9_after_parts(args, out, ray_local)
    assert not (out / "openai" / "output.jsonl").exists()  # written when the job ends
    summary = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    assert 0 < summary["this_run"]["rows"] < 241
    ok, bad = ([json.loads(x) for x in (out / "openai" / name).read_text().splitlines()]
               for name in ("output.jsonl", "errors.jsonl"))
    ids = [x["custom_id"] for x in ok + bad]
    assert len(ids) == len(set(ids)) == 241
    assert [x["custom_id"] for x in bad] == ["hot"]
    assert all(x["response"]["body"]["usage"]["completion_tokens"] <= 2 for x in ok)
