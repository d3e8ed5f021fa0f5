"""A real Ray cluster started with `ray start`, as operators start one, on 127.0.0.1.

`RayCluster(cpus)` starts a head node (GCS, raylet, dashboard with the Jobs API) in a temp
dir of its own; `add_node(cpus)` starts more nodes (separate raylets) joined to it;
`kill_node(i)` kills a node's processes (a lost machine). Token authentication is on, as
Ray 2.60 wants it for nodes that join: a token of this cluster's own, in its temp dir;
`env` is the environment a client of this cluster runs with. `stop()` ends only the
processes this cluster started (found by their temp dir on the command line, and what
they started), never `ray stop`, which would stop every Ray on the machine, and removes
the temp dir and a /tmp/ray/ray_current_cluster that names this cluster. Nodes run with
this interpreter's folder first on PATH, so a job's `mqt` entrypoint is this project's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")
CURRENT = Path("/tmp/ray/ray_current_cluster")


class RayCluster:
    def __init__(self, cpus: int = 1, timeout_s: float = 120):
        # short: Ray's unix sockets live under it (paths are limited to 107 characters)
        self.temp = Path(tempfile.mkdtemp(prefix="mqtray", dir="/tmp"))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        token = self.temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[list[int]] = []  # per node, the pids it started with
        self.timeout_s = timeout_s
        try:
            self._start(["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                         "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={self.dashboard_port}",
                         f"--temp-dir={self.temp}"], cpus)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        """The GCS address (`ray.init(address=...)`, a job's `address=`)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """The Jobs API address (`mqt submit --address`, `ray job submit`)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_node(self, cpus: int = 1) -> int:
        """Start one more node joined to the head; returns its index."""
        self._start([f"--address={self.address}"], cpus)
        return len(self.nodes) - 1

    def _start(self, args: list[str], cpus: int) -> None:
        before = set(self._pids())
        # the agents' ports of its own: Ray's defaults (52365, ...) may be held by another
        # Ray on this machine (the session's), and the job agent would then never come up
        agents = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")]
        subprocess.run([RAY, "start", *args, *agents, "--node-ip-address=127.0.0.1",
                        f"--num-cpus={cpus}", "--disable-usage-stats"], env=self.env,
                       check=True, capture_output=True, timeout=self.timeout_s)
        self.nodes.append(sorted(set(self._pids()) - before))

    def _pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir, and their children."""
        mine = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(str(self.temp) in part for part in p.info["cmdline"] or ()):
                    mine.add(p.pid)
                    mine.update(c.pid for c in p.children(recursive=True))
            except psutil.Error:
                pass
        return sorted(mine)

    def kill_node(self, index: int) -> None:
        """SIGKILL a (non-head) node's raylet and everything it started."""
        _kill(self.nodes[index], grace_s=0)

    def stop(self) -> None:
        _kill(self._pids(), grace_s=3)
        if CURRENT.exists() and CURRENT.read_text().strip() == self.address:
            CURRENT.unlink(missing_ok=True)
        shutil.rmtree(self.temp, ignore_errors=True)


def _kill(pids: list[int], grace_s: float) -> None:
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate() if grace_s else p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s or 5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
