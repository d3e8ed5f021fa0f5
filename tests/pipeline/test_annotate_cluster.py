"""A quota job on a real Ray cluster (`ray start` on 127.0.0.1, tests/raycluster.py),
submitted with `mqt submit`, stopped in the middle with `mqt jobs stop`, and submitted
again into the same output: the ledger's journal (beside the output) carries the stopped
run's spend, so the whole job stays within its quota and every id is written exactly once.
Slow (~1 minute)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from raycluster import RayCluster
from test_annotate import small_pngs
from test_annotate_quota import calibration, tiny_row_bound  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]


def mqt(cluster: RayCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args[:1], "--address",
                           cluster.dashboard, *args[1:]], cwd=ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_quota_job_stopped_and_submitted_again_spends_within_its_quota(
        tmp_path, calibration):  # noqa: F811 (the fixture)
    images = small_pngs(tmp_path / "images", 300)
    quota = 360 * tiny_row_bound(4)  # m = 4 on every row and m = 16 on about a third
    out = tmp_path / "out"
    job = ["annotate", "--preset", "tiny", "checkpoint=none", "batch_size=4", "threads=1",
           f"source={images}", f"output={out}", "rows_per_part=8", "block_rows=8",
           "flush_seconds=1", f"quota.calibration={calibration}", f"quota.flops={quota}",
           "cpus_per_actor=1", "progress=false"]
    cluster = RayCluster(cpus=3)
    try:
        r = mqt(cluster, "submit", "--no-wait", "--submission-id", "quota-1", *job)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 240
        while len(list(out.glob("data/part-*.parquet"))) < 2:
            assert time.monotonic() < deadline, mqt(cluster, "jobs", "logs", "quota-1").stdout
            time.sleep(0.2)
        assert mqt(cluster, "jobs", "stop", "quota-1").returncode == 0
        while "STOPPED" not in mqt(cluster, "jobs", "status", "quota-1").stdout:
            assert time.monotonic() < deadline + 60
            time.sleep(0.5)
        before = {r["id"] for r in pq.read_table(out / "data").to_pylist()}
        assert 0 < len(before) < 300  # stopped in the middle
        again = mqt(cluster, "submit", "--submission-id", "quota-2", *job)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    finally:
        cluster.stop()
    rows = pq.read_table(out / "data").to_pylist()
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"{i:03d}.png" for i in range(300)] and len(set(ids)) == 300
    assert all(r["error"] is None for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    q = summary["quota"]
    assert q["spent_flops"] <= quota and q["overrun_flops"] == 0
    stopped = q["spent_flops"] - q["this_run_flops"]  # the stopped run's, from the journal
    assert stopped >= sum(r["flops"] for r in rows if r["id"] in before)
    assert q["this_run_flops"] == sum(r["flops"] for r in rows if r["id"] not in before)
