"""Resume after a real crash: `mqt annotate` runs as its own driver process on the test's Ray
cluster, is killed with SIGKILL once some part files are written, and the same command run
again finishes the job: every input id exactly once, and only the missing rows were redone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from test_annotate import TINY, image_bytes

from jobs import annotate, cli

ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_of_the_driver_then_resume_exactly_once(ray_local, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(300):
        (images / f"{i:03d}.png").write_bytes(image_bytes(i, size=(16, 16)))
    (images / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    args = [*TINY, f"source={images}", f"output={out}", "rows_per_part=8", "block_rows=8",
            "flush_seconds=1", "policy.m.caption=2", "progress=false"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "annotate", "--preset", "tiny",
                             *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parts = wait_for_parts(out / "data", proc, at_least=3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and only what it started
        proc.wait()
    assert parts, "the job finished before it could be killed: make the corpus larger"
    before = len(set(pq.read_table(out / "data").column("id").to_pylist()))
    assert 0 < before < 301
    summary = annotate.main(cli.resolve("annotate", None, args, "tiny")[1])
    ids = pq.read_table(out / "data").column("id").to_pylist()
    assert sorted(ids) == sorted([f"{i:03d}.png" for i in range(300)] + ["broken.png"])
    assert len(ids) == len(set(ids)) == summary["rows"] == 301
    assert summary["this_run"]["rows"] == 301 - before  # only what was missing was redone
    assert summary["errors"] == 1 and summary["m_histogram"] == {"caption": {2: 300}}


def wait_for_parts(data: Path, proc: subprocess.Popen, at_least: int, timeout: float = 240):
    """Part files once `at_least` exist while the job still runs; [] if it ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        parts = list(data.glob("part-*.parquet")) if data.is_dir() else []
        if len(parts) >= at_least:
            return parts
        time.sleep(0.2)
    return []
