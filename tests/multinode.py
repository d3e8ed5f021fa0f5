"""A real two-node Ray cluster on this machine, for tests that must cross nodes.

`on_two_nodes(body, args, cpus)` runs `body` (Python, indented by 4) in a child process
between the start of a `ray.cluster_utils.Cluster` (a head node and a second node, separate
raylets, `cpus` CPUs each, connected to with `ray.init`) and its shutdown, so the session's
`ray_local` is untouched and the child stops only the cluster it started. `body` reads the
job's arguments from `sys.argv[1:]` and prints one line `RESULT <json>`, which is returned.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True,
                  head_node_args={{"num_cpus": {cpus}, "include_dashboard": False}})
cluster.add_node(num_cpus={cpus})
try:
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
{body}
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def on_two_nodes(body: str, args: list[str], cpus: int, timeout: float = 500) -> dict:
    script = SCRIPT.format(cpus=cpus, body=textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])
