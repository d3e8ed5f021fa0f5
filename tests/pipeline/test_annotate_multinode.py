"""`mqt annotate` under a quota on a real two-node Ray cluster on this machine.

A head node and a second node of 3 CPUs each (tests/multinode.py). Two engine actors
of 2 CPUs each cannot share a node, so one runs on each; both charge the job's one ledger
actor and ask its one pacer actor. The quota binds (the paced plan puts a mix of m on the
rows): spend stays within Q, the ledger's spend is exactly the sum of the rows' FLOPs, every
row is answered once, and a rerun into the same output spends nothing. ~30 s.
"""

import json

import pyarrow.parquet as pq
import pytest
from multinode import on_two_nodes
from test_annotate import TINY, image_bytes
from test_annotate_quota import calibration, tiny_row_bound  # noqa: F401 (a fixture)

ROWS = 24

BODY = """
    from ray._private.state import actors  # the GCS's actor table (no dashboard here)
    from jobs import annotate
    from jobs.cli import resolve

    runs = [annotate.main(resolve("annotate", None, sys.argv[1:], "tiny")[1])
            for _ in range(2)]  # the second resumes: nothing left to do
    table = actors().values()
    nodes = {a["Address"]["NodeID"] for a in table if "Engine" in a["ActorClassName"]}
    ledgers = {a["Address"]["NodeID"] for a in table if a["Name"].startswith("mqt-ledger-")}
    driver = ray.get_runtime_context().get_node_id()
    alive = len([n for n in ray.nodes() if n["Alive"]])
    print("RESULT " + json.dumps({"runs": runs, "nodes": alive, "engine_nodes": len(nodes),
                                  "ledger_on_driver": ledgers == {driver}}), flush=True)
"""


@pytest.mark.slow  # a second Ray cluster of two nodes, ~40 s
def test_a_paced_quota_job_on_two_nodes_charges_one_ledger(tmp_path, calibration):  # noqa: F811
    root = tmp_path / "images"
    root.mkdir()
    for i in range(ROWS):
        (root / f"{i:02d}.png").write_bytes(image_bytes(i))
    # all rows at m = 4 and about 5 of them at m = 16 beside the pacer's spare row
    quota = 12 * tiny_row_bound(1) + 12 * tiny_row_bound(16)
    out = tmp_path / "o"
    args = [*TINY, f"source={root}", f"output={out}", f"quota.calibration={calibration}",
            f"quota.flops={quota}", "quota.pacing=true", "actors=2", "cpus_per_actor=2",
            "batch_size=2", "block_rows=2", "progress=false"]
    result = on_two_nodes(BODY, args, cpus=3)
    assert result["nodes"] == 2 and result["engine_nodes"] == 2
    assert result["ledger_on_driver"]  # both runs' ledger actors, beside its state file
    first, again = result["runs"]
    q = first["quota"]
    assert first["rows"] == ROWS and first["errors"] == 0  # nothing refused
    assert len(first["m_histogram"]["caption"]) >= 2  # the quota binds: a mix of m
    rows = pq.read_table(out / "data").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"{i:02d}.png" for i in range(ROWS))
    assert q["spent_flops"] == sum(r["flops"] for r in rows) <= quota
    assert q["overrun_flops"] == 0 and q["pacing"]["seen"] == {"caption": ROWS}
    state = json.loads((out / "ledger.json").read_text())
    assert state["spent"] == q["spent_flops"] and len(state["committed"]) == ROWS
    assert again["this_run"]["rows"] == 0 and again["quota"]["this_run_flops"] == 0
    assert again["quota"]["spent_flops"] == q["spent_flops"]
