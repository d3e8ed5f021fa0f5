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

import signal
import threading
from dataclasses import dataclass

from ray import serve

from mqt.configtree import from_dict, to_dict
from mqt.console import log
from pipeline.connect import check_cluster, connect
from pipeline.serve.app import MQTServer, ServeArgs, bind, check

APP = "mqt"


@dataclass
class Config(ServeArgs):
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    # the Ray cluster (host:port of its GCS, ray://..., auto); "" = RAY_ADDRESS, else a local Ray
    address: str = ""
    port: int = 8000
    replicas: int = 1  # the fewest replicas (autoscaling's min_replicas)
    max_replicas: int = 1  # > replicas: scale up under load, back down after
    target_ongoing_requests: float = 4.0  # per replica, what autoscaling aims for
    upscale_delay_s: float = 10.0  # load above target this long adds replicas
    downscale_delay_s: float = 60.0  # load below target this long removes them
    max_ongoing_requests: int = 16  # per replica; more wait in the proxy's queue
    # requests waiting for a replica past this are refused at once with a 503 and
    # Retry-After (-1: no limit; never a hang under load)
    max_queued_requests: int = 64
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0


def validate(cfg: Config) -> None:
    check(cfg)
    check_cluster(cfg.address)
    if not 0 < cfg.port < 65536:
        raise ValueError(f"port must be in 1..65535, got {cfg.port}")
    if cfg.replicas < 1 or cfg.max_replicas < cfg.replicas:
        raise ValueError("replicas must be >= 1 and max_replicas >= replicas")
    if cfg.target_ongoing_requests <= 0 or cfg.max_ongoing_requests < 1:
        raise ValueError("target_ongoing_requests must be > 0, max_ongoing_requests >= 1")
    if cfg.upscale_delay_s < 0 or cfg.downscale_delay_s < 0:
        raise ValueError("upscale_delay_s and downscale_delay_s must be >= 0")
    if cfg.max_queued_requests == 0 or cfg.max_queued_requests < -1:
        raise ValueError("max_queued_requests must be >= 1, or -1 for no limit")
    if cfg.cpus_per_replica <= 0 or cfg.gpus_per_replica < 0:
        raise ValueError("cpus_per_replica must be > 0, gpus_per_replica >= 0")


def application(cfg: Config):
    """The application with this config's replicas and resources."""
    args = {k: v for k, v in to_dict(cfg).items() if k in ServeArgs.__dataclass_fields__}
    server = MQTServer.options(
        autoscaling_config={"min_replicas": cfg.replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests,
                            "upscale_delay_s": cfg.upscale_delay_s,
                            "downscale_delay_s": cfg.downscale_delay_s},
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": 1},
        ray_actor_options={"num_cpus": cfg.cpus_per_replica,
                           "num_gpus": cfg.gpus_per_replica},
    )
    return bind(server, from_dict(ServeArgs, args))


def main(cfg: Config) -> int:
    connect(cfg.address, include_dashboard=False)  # or the cluster of address=, RAY_ADDRESS
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
