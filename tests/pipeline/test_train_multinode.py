"""`mqt train backend=ddp` on a real two-node Ray cluster on this machine.

`ray.cluster_utils.Cluster` starts a head node and a second node (separate raylets, 1 CPU
each) in a child process, so the session's `ray_local` is untouched; with one CPU per
worker Ray must place the two ranks on different nodes. Each node's local rank 0 computes
the feature cache (both save into the same output folder, as nodes on a shared mount
would). The child stops only the cluster it started. ~60 s.
"""

import pytest
from multinode import on_two_nodes
from test_train_ray import ARGS, metrics

BODY = """
    from jobs.cli import resolve
    from jobs.train import main
    cfg = resolve("train", None, sys.argv[1:], None)[1]
    result = main(cfg)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    print("RESULT " + json.dumps({"last": result["last"], "nodes": nodes}), flush=True)
"""


@pytest.mark.slow  # a second Ray cluster of two nodes, ~40 s
def test_ddp_ranks_on_two_ray_nodes(tmp_path):
    out = tmp_path / "run"
    args = [*ARGS, f"output={out}", "backend=ddp", "scaling.workers=2",
            "scaling.cpus_per_worker=1", "report_every=7"]
    result = on_two_nodes(BODY, args, cpus=1, timeout=400)
    assert result["nodes"] == 2 and result["last"]["step"] == 14
    from pipeline.train.ray_train import read_reports

    reports = read_reports(out)
    assert [r["step"] for r in reports] == [5, 7, 10, 14]
    assert all(r["ranks"] == 2 and r["nodes"] == 2 for r in reports)  # one rank per node
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, 15))
    assert (out / "model" / "query.safetensors").exists()
