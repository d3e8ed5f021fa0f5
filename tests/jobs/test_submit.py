"""`mqt submit` and `mqt jobs` against a real Ray cluster started with `ray start` on
127.0.0.1 (tests/raycluster.py): the job's config checked here first, the project uploaded
as the working directory, the logs followed, the exit status the job's; and a stale
cluster address fails fast, naming it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from raycluster import RayCluster

ROOT = Path(__file__).resolve().parents[2]


def mqt(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    c = RayCluster(cpus=2)
    yield c
    c.stop()


def on(cluster: RayCluster, command: str, *args: str) -> subprocess.CompletedProcess:
    """`mqt submit|jobs --address ... ARGS` as a client of `cluster` (with its token)."""
    return mqt(command, "--address", cluster.dashboard, *args, env=cluster.env)


@pytest.mark.slow  # a cluster and a job, ~20 s
def test_a_job_runs_on_the_cluster_and_its_exit_status_is_the_jobs(cluster):
    r = on(cluster, "submit", "cost", "--preset", "tiny", "ms=[1,4]")
    assert r.returncode == 0, r.stderr
    assert "submitted mqt-cost-" in r.stdout and "SUCCEEDED" in r.stderr
    assert "| tiny | 4 |" in r.stdout  # the job's own output, followed from its logs
    sid = r.stdout.split("submitted ")[1].split()[0]
    listed = on(cluster, "jobs", "list")
    assert sid in listed.stdout and "SUCCEEDED" in listed.stdout
    status = on(cluster, "jobs", "status", sid)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = on(cluster, "jobs", "logs", sid)
    assert logs.returncode == 0 and logs.stdout.strip() in r.stdout


@pytest.mark.slow  # three submissions, ~20 s
def test_a_failing_job_exits_1_with_its_status_and_a_bad_config_is_never_sent(cluster):
    before = on(cluster, "jobs", "list").stdout.count("\n")
    bad = on(cluster, "submit", "cost", "--preset", "tiny",
              "ms=[0]")  # m = 0: the job's own validation refuses it, here
    assert bad.returncode == 2 and "ms" in bad.stderr
    unknown = on(cluster, "submit", "cost", "nonsense=1")
    assert unknown.returncode == 2 and "nonsense" in unknown.stderr
    assert on(cluster, "jobs", "list").stdout.count("\n") == before
    # --no-check sends it: the cluster's run of the job fails the same way
    failed = on(cluster, "submit", "--no-check", "cost", "--preset",
                 "tiny", "ms=[0]")
    assert failed.returncode == 1 and "FAILED" in failed.stderr, failed.stderr


@pytest.mark.slow  # ~13 s
def test_no_wait_prints_the_id_and_logs_follow_it_to_the_end(cluster):
    r = on(cluster, "submit", "--no-wait", "--submission-id",
            "mqt-test-nowait", "cost", "--preset", "tiny")
    assert r.returncode == 0 and r.stdout.strip().endswith("mqt-test-nowait")
    follow = on(cluster, "jobs", "logs", "mqt-test-nowait", "--follow")
    assert follow.returncode == 0 and "SUCCEEDED" in follow.stderr


def test_a_config_file_must_be_inside_the_uploaded_folder(tmp_path):
    outside = tmp_path / "cost.yaml"
    outside.write_text("ms: [1, 2]\n")
    dead = f"http://127.0.0.1:{free_port()}"  # refused before any cluster is asked
    r = mqt("submit", "--address", dead, "cost", "--preset", "tiny", "--config", str(outside))
    assert r.returncode == 2 and "working directory" in r.stderr


def test_a_stale_cluster_address_fails_fast_naming_it(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": dead}
    t0 = time.monotonic()
    r = mqt("annotate", "--preset", "tiny", "checkpoint=none", f"source={ROOT / 'docs'}",
            f"output={tmp_path / 'out'}", env=env, timeout=120)
    assert r.returncode == 2 and dead in r.stderr and "RAY_ADDRESS" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    r = mqt("jobs", "list", env=env, timeout=120)
    assert r.returncode == 2 and dead in r.stderr
