"""A node lost in the middle of a submitted job, on a real two-node Ray cluster started with
`ray start` on 127.0.0.1 (tests/raycluster.py, token authentication on). `mqt submit` of an
annotate job over a generated corpus, one engine actor per node: once rows are being
written, every process of the second node is SIGKILLed; the job still succeeds and every
id is written exactly once. `mqt submit` of a 2-worker DDP job: the node is lost after a
checkpoint and replaced; the job resumes from it and finishes. Slow (~1-2 minutes each)."""

import csv
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


@pytest.mark.slow
def test_a_training_job_resumes_from_its_checkpoint_after_a_node_loss(tmp_path):
    """`mqt submit` of a 2-worker DDP job with `scaling.max_failures`, one worker per node;
    after its first registered checkpoint the second node is SIGKILLed and a new node joins
    (as an autoscaler would replace it). Ray Train starts a new worker group from the last
    checkpoint: the job succeeds, no step is lost, and no step before that checkpoint runs
    twice."""
    out, steps, every = tmp_path / "run", 300, 20
    cluster = RayCluster(cpus=3)
    try:
        worker = cluster.add_node(cpus=3)
        # 2 CPUs per worker: one worker per node
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "submit", "--address", cluster.dashboard,
             "train", "data.easyvqa_images=24", "data.eval_examples=8", "stage1.steps=6",
             f"stage2.steps={steps - 6}", "batch_size=8", f"checkpoint_every={every}",
             "backend=ddp", "scaling.workers=2", "scaling.cpus_per_worker=2",
             "scaling.max_failures=2", f"output={out}"],
            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        snapshot = out / "ray" / "run" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 300
        while not (snapshot.exists() and f"checkpoint_{every:06d}" in snapshot.read_text()):
            assert job.poll() is None, job.stdout.read()[-4000:]
            if time.monotonic() > deadline:
                job.kill()
                raise AssertionError("no checkpoint:\n" + job.communicate()[0][-4000:])
            time.sleep(0.05)
        cluster.kill_node(worker)
        cluster.add_node(cpus=3)  # the replacement
        text, _ = job.communicate(timeout=600)
        assert job.returncode == 0, text[-4000:]
        with (out / "metrics.csv").open() as f:
            done = [int(float(r["step"])) for r in csv.DictReader(f)]
        assert set(done) == set(range(1, steps + 1))  # no step lost
        assert done.count(1) == 1 and len(done) - steps <= 2 * every  # resumed, not restarted
    finally:
        cluster.stop()
