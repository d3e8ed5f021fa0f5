"""`mqt train backend=ddp` on a real two-node Ray cluster on this machine.

`ray.cluster_utils.Cluster` starts a head node and a second node (separate raylets, 1 CPU
each) in a child process, so the session's `ray_local` is untouched; with one CPU per
worker Ray must place the two ranks on different nodes. Each node's local rank 0 computes
the feature cache (both save into the same output folder, as nodes on a shared mount
would). The child stops only the cluster it started. ~60 s.
"""

import json
import subprocess
import sys
import textwrap

from test_train_ray import ARGS, metrics

SCRIPT = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        from jobs.cli import resolve
        from jobs.train import main
        cfg = resolve("train", None, sys.argv[1:], None)[1]
        result = main(cfg)
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        print("RESULT " + json.dumps({"last": result["last"], "nodes": nodes}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_ddp_ranks_on_two_ray_nodes(tmp_path):
    out = tmp_path / "run"
    args = [*ARGS, f"output={out}", "backend=ddp", "scaling.workers=2",
            "scaling.cpus_per_worker=1", "report_every=7"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["nodes"] == 2 and result["last"]["step"] == 14
    from jobs.train_ray import read_reports

    reports = read_reports(out)
    assert [r["step"] for r in reports] == [5, 7, 10, 14]
    assert all(r["ranks"] == 2 and r["nodes"] == 2 for r in reports)  # one rank per node
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, 15))
    assert (out / "model" / "query.safetensors").exists()
