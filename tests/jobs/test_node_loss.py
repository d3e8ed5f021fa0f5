"""A node lost in the middle of a submitted job, on a real two-node Ray cluster started with
`ray start` on 127.0.0.1 (tests/raycluster.py, token authentication on): `mqt submit` of an
annotate job over a generated corpus, one engine actor per node; once rows are being
written, every process of the second node is SIGKILLed. The job still succeeds and every
id is written exactly once. Slow (a cluster, a job of a few thousand rows)."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from raycluster import RayCluster

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1500


@pytest.mark.slow
def test_an_annotate_job_survives_the_loss_of_a_node(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(ROWS):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            images / f"{i:05d}.png")
    out = tmp_path / "out"
    cluster = RayCluster(cpus=3)
    try:
        worker = cluster.add_node(cpus=3)
        # 2 CPUs per actor: the two actors cannot share a node, so one runs on each, and
        # each node keeps a CPU for the read tasks
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "submit", "--address", cluster.dashboard,
             "annotate", "--preset", "tiny", "checkpoint=none", f"source={images}",
             f"output={out}", "actors=2", "cpus_per_actor=2", "batch_size=4",
             "block_rows=16", "threads=1", "rows_per_part=50", "flush_seconds=1",
             "progress=false"],
            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        deadline = time.monotonic() + 240
        while not list(out.glob("data/*.parquet")):
            assert job.poll() is None, job.stdout.read()
            if time.monotonic() > deadline:
                job.kill()
                raise AssertionError("no rows were written:\n" + job.communicate()[0][-4000:])
            time.sleep(0.5)
        cluster.kill_node(worker)  # a lost machine: its raylet and everything on it
        text, _ = job.communicate(timeout=600)
        assert job.returncode == 0, text[-4000:]
        written = pq.read_table(out / "data").column("id").to_pylist()
        assert len(written) == ROWS and len(set(written)) == ROWS
        assert sorted(Path(w).stem for w in written) == [f"{i:05d}" for i in range(ROWS)]
    finally:
        cluster.stop()
