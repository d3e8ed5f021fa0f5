"""Ray's C++ log lines stay off a job's terminal (pipeline/quiet.py): the filter drops
them wherever they start and passes everything else, in any chunking; the filter process
sits on a real process's stderr, loses nothing when that process dies, and `--verbose`
(MQT_VERBOSE) leaves stderr alone."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.quiet import LineFilter

ROOT = Path(__file__).resolve().parents[2]
NATIVE = (b"[2026-12-08 02:34:37,459 E 23046 23046] core_worker.cc:2465: Actor with class "
          b"name: 'MapWorker(MapBatches(Engine))' has constructor arguments in the object store\n")
WARN = b"[2026-12-08 02:34:38,001 W 23046 23099] raylet_client.cc:12: a warning [x]\n"
FATAL = b"[2026-12-08 02:34:39,000 F 1 1] logging.cc:1: check failed\n"
KEPT = (b"annotate:   0%|          | 0/208 [00:00<?, ?row/s]",  # a bar mid-line when Ray logs
        b"\rannotate:   8%|8         | 16/208 [00:10<02:10,  1.47row/s]",
        b"\rannotate: 100%|##########| 208/208\n", b"[a list] and [2026] are not log lines\n",
        b"Traceback (most recent call last):\n  ValueError: bad [\n", FATAL, b"[2026-12")


def test_native_lines_are_dropped_wherever_they_start_in_any_chunking():
    kept = list(KEPT)
    stream = kept[0] + NATIVE + b"".join(kept[1:3]) + WARN + b"".join(kept[3:])
    rng = random.Random(0)
    for _ in range(300):
        lf, out, i = LineFilter(), b"", 0
        while i < len(stream):
            n = rng.randint(1, 40)
            out, i = out + lf.feed(stream[i:i + n]), i + n
        assert out + lf.end() == b"".join(kept)


def test_a_line_that_cannot_become_a_log_line_is_not_held():
    lf = LineFilter()
    assert lf.feed(b"annotate:  50%") == b"annotate:  50%"  # a bar shows at once
    assert lf.feed(b" [00:01<00:01]") == b" [00:01<00:01]"
    assert lf.feed(b" [2026-12-08 0") == b" "  # may still be a log line: held
    assert lf.feed(b"x") == b"[2026-12-08 0x"  # it is not


def run_child(code: str, start_new_session: bool = False, **env) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import os, sys
        from pipeline.quiet import drop_native_logs
        drop_native_logs()
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          start_new_session=start_new_session)


def test_a_process_stderr_goes_through_the_filter_and_nothing_else_is_lost():
    code = f"""
        os.write(2, b"before\\n" + {NATIVE!r} + b"after\\n")
        print("a Python line", file=sys.stderr)
        print("stdout is untouched")
        os.write(2, {WARN!r})
        raise ValueError("the job failed")
    """
    r = run_child(code)
    assert r.returncode == 1
    assert r.stdout == b"stdout is untouched\n"
    assert r.stderr.startswith(b"before\nafter\na Python line\nTraceback")
    assert r.stderr.endswith(b"ValueError: the job failed\n") and b"core_worker" not in r.stderr


def test_killed_process_loses_nothing_it_wrote():
    r = run_child(f"""
        os.write(2, b"last words\\n" + {NATIVE!r})
        os.kill(os.getpid(), 9)
    """)
    assert r.returncode == -9 and r.stderr == b"last words\n"


def test_ctrl_c_to_the_process_group_leaves_the_filter_running_for_what_follows():
    r = run_child("""
        import signal, time
        try:
            os.killpg(os.getpgid(0), signal.SIGINT)  # Ctrl-C: the job and the filter
            time.sleep(5)
        except KeyboardInterrupt:
            print("stopped following; the job is left running", file=sys.stderr)
    """, start_new_session=True)
    assert r.stderr == b"stopped following; the job is left running\n"


def test_verbose_leaves_stderr_alone():
    r = run_child(f"os.write(2, {NATIVE!r})", MQT_VERBOSE="1")
    assert r.stderr == NATIVE


@pytest.mark.slow
def test_rays_own_notice_stays_in_its_log_file():
    """A Ray actor with its arguments in the object store and restarts on: the driver's
    C++ core worker writes its notice (ray-project/ray#53727) to stderr, and the filter
    keeps it off it."""
    code = """
        import ray
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")

        @ray.remote(max_restarts=-1)
        class A:
            def __init__(self, x):
                self.n = len(x)

            def n_(self):
                return self.n

        print(ray.get(A.remote(ray.put(b"x" * 200_000)).n_.remote()))
        ray.shutdown()
    """
    loud = run_child(code, MQT_VERBOSE="1")
    assert loud.stdout == b"200000\n" and b"constructor arguments" in loud.stderr
    quiet = run_child(code)
    assert quiet.stdout == b"200000\n" and b"constructor arguments" not in quiet.stderr


MQT = Path(sys.executable).with_name("mqt")  # the installed command, as a user runs it
RAYS_OWN = (b"core_worker.cc", b"constructor arguments", b"(raylet)", b"used up to",
            b"uses", b"Setting accelerator", b"Token authentication", b"WARNING")


def run_mqt(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MQT_VERBOSE")}
    return subprocess.run([str(MQT), *args], cwd=cwd, capture_output=True, timeout=300,
                          env=env)


@pytest.mark.slow
def test_an_annotate_and_a_deepspeed_train_job_print_only_their_own_lines(tmp_path):
    """What a user sees: `mqt annotate` (two engine actors on a local Ray) and `mqt train
    backend=deepspeed` (a Ray Train worker) print their progress and summaries and nothing
    of Ray's or DeepSpeed's notices."""
    from test_annotate import image_bytes

    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(i))
    ann = run_mqt(tmp_path, "annotate", "--preset", "tiny", "checkpoint=none", "source=.",
                  "output=out", "task=caption", "batch_size=2", "block_rows=2")
    assert ann.returncode == 0, ann.stderr.decode()[-3000:]
    assert b"rows 6  errors 0" in ann.stdout
    assert not [w for w in RAYS_OWN if w in ann.stderr], ann.stderr.decode()
    train = run_mqt(tmp_path, "train", "--preset", "tiny", "backend=deepspeed",
                    "deepspeed.stage=2", "scaling.workers=1", "scaling.cpus_per_worker=1",
                    "data.easyvqa_images=8", "data.eval_examples=4", "stage1.steps=2",
                    "stage2.steps=2", "batch_size=4", f"output={tmp_path / 'train'}",
                    f"storage_path={tmp_path / 'ray'}")
    assert train.returncode == 0, train.stderr.decode()[-3000:]
    both = train.stdout + train.stderr
    assert not [w for w in RAYS_OWN if w in both], both.decode()[-5000:]
