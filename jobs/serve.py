"""`mqt serve`: the model behind an OpenAI-compatible HTTP endpoint on Ray Serve.

    mqt serve --preset mqt-smol [host=127.0.0.1] [port=8000] [replicas=1 max_replicas=4]
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d \\
      '{"messages": [{"role": "user", "content": [{"type": "text", "text": "What shape?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,...",
         "detail": "low"}}]}]}'

Starts Ray Serve on a local Ray, or on the cluster `RAY_ADDRESS` names, deploys the
application of pipeline/serve/app.py (autoscaled between `replicas` and `max_replicas`
replicas at `target_ongoing_requests` per replica) and blocks until interrupted (Ctrl-C or
SIGTERM), then deletes the application and stops what it started. The same application
deploys from cluster/serve/mqt-smol.yaml with `serve run` or `serve deploy`. API and
limits: docs/serve.md.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

import ray
from ray import serve

from mqt.configtree import to_dict
from mqt.console import log
from pipeline.serve.app import MQTServer, ServeArgs, check

APP = "mqt"


@dataclass
class Config(ServeArgs):
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    port: int = 8000
    replicas: int = 1  # the fewest replicas (autoscaling's min_replicas)
    max_replicas: int = 1  # > replicas: scale up under load, back down after
    target_ongoing_requests: float = 4.0  # per replica, what autoscaling aims for
    max_ongoing_requests: int = 16  # per replica; more wait in the proxy's queue
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0


def validate(cfg: Config) -> None:
    check(cfg)
    if not 0 < cfg.port < 65536:
        raise ValueError(f"port must be in 1..65535, got {cfg.port}")
    if cfg.replicas < 1 or cfg.max_replicas < cfg.replicas:
        raise ValueError("replicas must be >= 1 and max_replicas >= replicas")
    if cfg.target_ongoing_requests <= 0 or cfg.max_ongoing_requests < 1:
        raise ValueError("target_ongoing_requests must be > 0, max_ongoing_requests >= 1")
    if cfg.cpus_per_replica <= 0 or cfg.gpus_per_replica < 0:
        raise ValueError("cpus_per_replica must be > 0, gpus_per_replica >= 0")


def application(cfg: Config):
    """The application with this config's replicas and resources."""
    args = {k: v for k, v in to_dict(cfg).items() if k in ServeArgs.__dataclass_fields__}
    return MQTServer.options(
        autoscaling_config={"min_replicas": cfg.replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests},
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica,
                           "num_gpus": cfg.gpus_per_replica},
    ).bind(args)


def main(cfg: Config) -> int:
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)  # or RAY_ADDRESS's
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(application(cfg), name=APP, route_prefix="/")
        log(f"serving {cfg.name or cfg.preset} at http://{cfg.host}:{cfg.port}/v1 "
            "(OpenAI chat completions); Ctrl-C stops it")
        stop.wait()
    finally:
        log("stopping the endpoint")
        serve.delete(APP)
        serve.shutdown()
    return 0
