"""The endpoint as users start it, each in a process of its own with a Ray of its own:
`mqt serve` (blocks, answers, stops cleanly on Ctrl-C), `serve run` of the Serve config
file in cluster/serve/ (the shipped model), and `serve deploy` of that file to a running
`ray start` cluster. Loopback only; each process is stopped by its own pid."""

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import free_port
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]


def image_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{base} did not come up in {timeout} s")


def ask(base: str, **more) -> dict:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What colour is the shape?"},
        {"type": "image_url", "image_url": {"url": image_url(), "detail": "low"}}]}], **more}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Ctrl-C, as a user stops it; killed (by its pid) if it does not stop in time."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the server did not stop within {timeout} s of Ctrl-C") from None


@pytest.mark.slow  # its own Ray and Serve in a child process, ~30 s
def test_mqt_serve_answers_then_stops_on_ctrl_c(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "--preset", "tiny", "checkpoint=none",
         f"port={port}", "detail.low=2", "detail.auto=2", "cpus_per_replica=0.5"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        assert ask(base)["usage"]["visual_tokens"] == 2
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "err.log").read_text()[-2000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health", timeout=2)


@pytest.mark.bundled
@pytest.mark.slow  # its own Ray in a child process, ~30 s
def test_serve_run_of_the_config_file(tmp_path):
    """cluster/serve/mqt-smol.yaml as it ships, on a free port: the shipped model answers."""
    config = yaml.safe_load((ROOT / "cluster" / "serve" / "mqt-smol.yaml").read_text())
    config["http_options"]["port"] = port = free_port()
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    serve = Path(sys.executable).with_name("serve")
    proc = subprocess.Popen([str(serve), "run", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        c = ask(base, max_tokens=8)
        assert c["model"] == "mqt-smol" and c["usage"]["visual_tokens"] == 4  # detail.low
        assert "red" in c["choices"][0]["message"]["content"].lower()
    finally:
        stop(proc)


@pytest.mark.slow  # a `ray start` cluster and the shipped model, ~1 minute
def test_serve_deploy_of_the_config_file_to_a_running_cluster(tmp_path):
    """`serve deploy` of cluster/serve/mqt-smol.yaml (on a free port) to a cluster started
    with `ray start` (tests/raycluster.py, token auth on): the application comes up on the
    cluster, answers, and `serve shutdown` takes it down again."""
    from raycluster import RayCluster

    config = yaml.safe_load((ROOT / "cluster" / "serve" / "mqt-smol.yaml").read_text())
    config["http_options"]["port"] = port = free_port()
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = str(Path(sys.executable).with_name("serve"))
    cluster = RayCluster(cpus=2)
    base = f"http://127.0.0.1:{port}"
    try:
        r = subprocess.run([serve, "deploy", str(path), "--address", cluster.dashboard],
                           cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        end = time.monotonic() + 240
        while True:  # deploy returns at once; the replica loads the model meanwhile
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "the deployed application never came up"
            time.sleep(1)
        c = ask(base, max_tokens=8)
        assert c["model"] == "mqt-smol" and c["usage"]["visual_tokens"] == 4  # detail.low
        r = subprocess.run([serve, "shutdown", "--address", cluster.dashboard, "--yes"],
                           env=cluster.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        cluster.stop()
