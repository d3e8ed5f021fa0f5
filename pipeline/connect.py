"""Connecting a job to Ray: a cluster only when asked, else a Ray of its own, and never a
silent wait on a cluster that is gone.

`ray.init()` with no address connects to `RAY_ADDRESS`, else to the last cluster a
`ray start` on this machine wrote to /tmp/ray/ray_current_cluster, and only then starts a
local Ray; an address nobody answers at makes it retry for minutes. `connect(address)`
instead:

- `address` (a job's `address=`), else `RAY_ADDRESS`: that cluster. Its GCS (`host:port`,
  or `ray://host:port` for Ray Client, or `auto` for the cluster of this machine's
  `ray start`) must accept a TCP connection within `timeout_s` (20 s; 3 s of refused
  connections: nothing listens there), else `ClusterUnreachable` names the address and where
  it came from, before `ray.init` runs.
- neither: a new local Ray (`address="local"`), whatever cluster files lie in /tmp/ray.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlparse

from pipeline.quiet import verbose


class ClusterUnreachable(ValueError):
    """A cluster address was given and nothing answers there (a bad setting: jobs fail
    before any work, exit status 2)."""


def cluster_address(address: str = "") -> tuple[str, str]:
    """(the address to connect to, where it came from); ("", "") for a local Ray."""
    if address:
        return address, "address="
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else ("", "")


def host_port(address: str) -> tuple[str, int]:
    """The host and port to reach for a Ray address (`host:port`, `ray://host:port`,
    `http://host:port`, or `auto`: this machine's running cluster)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address  # heavy: Ray

        found = canonicalize_bootstrap_address("auto")
        if not found:
            raise ClusterUnreachable("address=auto: no Ray cluster was started on this "
                                     "machine (no /tmp/ray/ray_current_cluster)")
        address = found
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or parsed.port is None:
        raise ValueError(f"address: {address!r} is not host:port, ray://host:port or auto")
    return parsed.hostname, parsed.port


def reachable(host: str, port: int, timeout_s: float, refused_s: float = 3.0) -> bool:
    """Whether something accepts a TCP connection at host:port within `timeout_s` (a host
    that refuses, where nothing listens, is given `refused_s`: a cluster starting up)."""
    t0 = time.monotonic()
    while True:
        left = t0 + timeout_s - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 5.0))):
                return True
        except ConnectionRefusedError:
            if time.monotonic() - t0 + 0.5 >= min(refused_s, timeout_s):
                return False
        except OSError:
            if time.monotonic() + 0.5 >= t0 + timeout_s:
                return False
        time.sleep(0.5)


def check_reachable(address: str, source: str, timeout_s: float = 20.0) -> None:
    """Raise ClusterUnreachable unless the cluster at `address` answers within `timeout_s`."""
    host, port = host_port(address)
    if not reachable(host, port, timeout_s):
        hint = (" (unset it to start a local Ray)" if source == "RAY_ADDRESS"
                else " (a cluster that was stopped?)")
        raise ClusterUnreachable(f"{source} {address}: no Ray cluster answers at "
                                 f"{host}:{port}{hint}")


def check_cluster(address: str = "", timeout_s: float = 20.0) -> None:
    """A job's validation: the cluster it will connect to answers (no cluster: nothing to
    check)."""
    target, source = cluster_address(address)
    if target:
        check_reachable(target, source, timeout_s)


# Ray's notices that ask nothing of a job's user: token auth on (the default of Ray 2.60),
# and Ray Data's own progress bars off (the jobs draw theirs)
QUIET_LOGGERS = ("ray._private.authentication.authentication_token_setup",
                 "ray.data._internal.progress")


def connect(address: str = "", timeout_s: float = 20.0, **local) -> str:
    """Initialise Ray for a job: the cluster at `address` or RAY_ADDRESS (checked first),
    else a local Ray started with `local` (ray.init's keyword arguments). Returns what it
    connected to ("local" for a Ray of its own). A no-op when Ray is already initialised."""
    import ray  # heavy; jobs that run on Ray import this module

    if ray.is_initialized():
        return "initialised"
    loud = verbose()
    for name in () if loud else QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    target, source = cluster_address(address)
    settings = {"logging_level": logging.INFO if loud else logging.WARNING, **local}
    if target:
        check_reachable(target, source, timeout_s)
        for key in ("num_cpus", "num_gpus", "include_dashboard", "object_store_memory"):
            settings.pop(key, None)  # a cluster's resources are its own
        ray.init(address=target, **settings)
        return target
    ray.init(address="local", **settings)
    return "local"
