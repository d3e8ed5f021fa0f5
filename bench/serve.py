"""Latency, throughput and autoscaling of `mqt serve` on this machine (a benchmark).

    python -m bench.serve docs=docs/bench

Everything runs on this machine over loopback (127.0.0.1), bounded in requests and time:

1. Latency and throughput: the application `mqt serve` deploys (jobs/serve.py, one replica),
   asked easy-vqa test questions (each image sent as a `data:` URL) at each m of `ms`
   (`visual_tokens`) by `concurrency` clients at once, `requests` requests per cell,
   `repeats` times. Per cell: p50/p95/p99 latency (seconds from sending a request to its
   whole answer) and requests/s (requests over the cell's wall time).
2. Against the batch job: at each m, `mqt annotate` (one actor, the same threads and batch
   size) on `annotate_rows` of the same questions; its steady rows/s (after the first
   answered batch: the summary's `steady_rows_per_s`) against the endpoint's requests/s at
   the highest concurrency (saturated). Goal: >= 0.7x. The two alternate within a repeat.
3. Autoscaling: an application of 1..`max_replicas` replicas (`target_ongoing_requests`,
   short up- and downscale delays) under a load that rises and falls (`load`: clients, then
   seconds); running replicas, clients and answers/s sampled every second.

Writes bench.json, a Markdown table and a PNG to `output` (and with `docs=`, serve.md and
serve.png there). Ray starts here with `ray_cpus` logical CPUs: the endpoint's replica and
the batch job's actor hold theirs at once, though only one of them works at a time.
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.annotate import easyvqa_manifest
from jobs import serve as serve_job
from jobs.cli import configure, run_module
from mqt.configtree import save_config
from mqt.console import log
from mqt.load import ModelArgs, model_args, validate_model
from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate

COMMAND = "python -m bench.serve docs=docs/bench"


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    ms: list[int] = field(default_factory=lambda: [1, 16, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    requests: int = 48  # per (m, concurrency) cell and repeat
    repeats: int = 2
    annotate_rows: int = 160  # rows of each batch-job run (0: no comparison)
    threads: int = 1  # torch threads of the replica and of the batch job's actor alike
    max_batch_size: int = 16
    batch_wait_s: float = 0.02
    max_tokens: int = 0  # answer length of every request; 0 = the task's own (vqa: 8)
    # autoscaling run: clients and seconds of each phase, at m = autoscale_m
    load: list[list[float]] = field(default_factory=lambda: [[1, 10], [16, 45], [0, 45]])
    autoscale_m: int = 16
    max_replicas: int = 3
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 15.0
    ray_cpus: int = 4
    port: int = 0  # 0: a free port
    output: str = "runs/bench-serve"
    docs: str = ""  # also write serve.md and serve.png here
    # a bench.json of an earlier run: write its table and plot again, run nothing
    from_json: str = ""


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if not cfg.ms or not cfg.concurrency or min(cfg.concurrency) < 1:
        raise ValueError("ms and concurrency must be non-empty, every concurrency >= 1")
    if cfg.requests < 1 or cfg.repeats < 1 or cfg.annotate_rows < 0:
        raise ValueError("requests >= 1, repeats >= 1, annotate_rows >= 0")
    if any(len(p) != 2 or p[0] < 0 or p[1] <= 0 for p in cfg.load):
        raise ValueError("load: a list of [clients >= 0, seconds > 0]")
    if 0 < cfg.annotate_rows < 3 * cfg.max_batch_size:
        raise ValueError("annotate_rows: 0, or at least three batches (3 x max_batch_size) "
                         "for a steady rate after the first one")
    if cfg.max_replicas < 1 or cfg.ray_cpus < 2:
        raise ValueError("max_replicas >= 1, ray_cpus >= 2")


def main(cfg: Config) -> dict:
    import ray
    from ray import serve

    out = Path(cfg.output)
    if cfg.from_json:
        result = json.loads(Path(cfg.from_json).read_text())
        return write(result, cfg, out)
    save_config(cfg, out)
    manifest = easyvqa_manifest(out / "corpus", max(cfg.annotate_rows, cfg.requests), cfg.seed)
    bodies = request_bodies(manifest, cfg)
    apps = {"bench": serve_config(cfg, 1), "scaling": serve_config(cfg, cfg.max_replicas)}
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cfg.ray_cpus, include_dashboard=False)
    port = cfg.port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    try:
        result = {"device": device(), "cells": [], "annotate": {}, "autoscale": {}}
        deploy(apps["bench"], "bench")
        for rep in range(cfg.repeats):
            for m in cfg.ms if rep % 2 == 0 else cfg.ms[::-1]:
                order = ("serve", "annotate") if rep % 2 == 0 else ("annotate", "serve")
                for what in order:
                    if what == "serve":
                        for c in cfg.concurrency:
                            cell = load_cell(f"{base}/bench", bodies, m, c, cfg.requests)
                            result["cells"].append({"repeat": rep, "m": m, "clients": c, **cell})
                            log(f"m={m} clients={c}: {cell['requests_per_s']:.2f} req/s, p50 "
                                f"{cell['p50_s']:.3f} s, p99 {cell['p99_s']:.3f} s")
                    elif cfg.annotate_rows:
                        rate = annotate_rate(cfg, manifest, m, out / f"annotate-m{m}")
                        result["annotate"].setdefault(str(m), []).append(rate)
                        log(f"m={m} mqt annotate: {rate:.2f} steady rows/s")
                (out / "bench.json").write_text(json.dumps(result, indent=1))  # so far
        serve.delete("bench")
        if cfg.load:
            deploy(apps["scaling"], "scaling")
            result["autoscale"] = autoscale(cfg, f"{base}/scaling", bodies)
            serve.delete("scaling")
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    return write(result, cfg, out)


def write(result: dict, cfg: Config, out: Path) -> dict:
    """The table (printed) and the plot, into `out` and `docs`."""
    text = table(result, cfg)
    print(text)
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "serve.md").write_text(text)
        plot(result, cfg, folder / "serve.png")
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def request_bodies(manifest: Path, cfg: Config) -> list[dict]:
    """One chat request per manifest row: its question and its image as a data: URL."""
    out = []
    for line in manifest.read_text().splitlines()[: cfg.requests]:
        row = json.loads(line)
        data = Path(row["image"] if Path(row["image"]).is_absolute()
                    else manifest.parent / row["image"]).read_bytes()
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        body = {"model": cfg.preset, "messages": [{"role": "user", "content": [
            {"type": "text", "text": row["question"]},
            {"type": "image_url", "image_url": {"url": url}}]}]}
        if cfg.max_tokens:
            body["max_tokens"] = cfg.max_tokens
        out.append(body)
    return out


def serve_config(cfg: Config, replicas: int) -> serve_job.Config:
    """The `mqt serve` settings of an application of 1..`replicas` replicas (checked; the
    requests name their m, so detail=auto is never asked)."""
    settings = [f"detail.auto={cfg.autoscale_m}", f"preset={cfg.preset}",
                f"checkpoint={cfg.checkpoint}", f"threads={cfg.threads}",
                f"max_batch_size={cfg.max_batch_size}",
                f"batch_wait_s={cfg.batch_wait_s}", "replicas=1", f"max_replicas={replicas}",
                f"target_ongoing_requests={cfg.target_ongoing_requests}",
                f"upscale_delay_s={cfg.upscale_delay_s}",
                f"downscale_delay_s={cfg.downscale_delay_s}", "max_queued_requests=-1",
                f"max_ongoing_requests={max(cfg.max_batch_size, max(cfg.concurrency))}",
                f"cpus_per_replica={1 if replicas == 1 else 0.5}"]
    if cfg.max_tokens:
        settings.append(f"max_tokens={max(cfg.max_tokens, 64)}")
    job = configure(serve_job, None, settings, None)
    serve_job.validate(job)
    return job


def deploy(job: serve_job.Config, name: str) -> None:
    """The application `mqt serve` deploys with `job`'s settings, at /name."""
    from ray import serve

    serve.run(serve_job.application(job), name=name, route_prefix=f"/{name}")


def load_cell(url: str, bodies: list[dict], m: int, clients: int, n: int) -> dict:
    """`n` requests at m from `clients` clients at once: latency percentiles and req/s."""
    post(url, {**bodies[0], "visual_tokens": m})  # warm: not counted
    latencies: list[float] = []
    lock, nxt = threading.Lock(), iter(range(n))

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = post(url, {**bodies[i % len(bodies)], "visual_tokens": m}, http)
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: client(), range(clients)))
    wall = time.perf_counter() - t0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"requests": n, "wall_s": round(wall, 3), "requests_per_s": n / wall,
            "p50_s": float(p50), "p95_s": float(p95), "p99_s": float(p99)}


def post(url: str, body: dict, http: httpx.Client | None = None) -> httpx.Response:
    if http is None:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    return http.post(f"{url}/v1/chat/completions", json=body)


def annotate_rate(cfg: Config, manifest: Path, m: int, out: Path) -> float:
    """`mqt annotate`'s steady rows/s at m (one actor; the same threads and batch size)."""
    job = AnnotateConfig(**model_args(cfg), source=str(manifest), output=str(out),
                         overwrite=True, progress=False, batch_size=cfg.max_batch_size,
                         block_rows=cfg.max_batch_size, threads=cfg.threads, actors=1,
                         cpus_per_actor=0.5, limit=cfg.annotate_rows,
                         policy=PolicyArgs(default=m))
    return annotate(job)["this_run"]["steady_rows_per_s"]


def autoscale(cfg: Config, url: str, bodies: list[dict]) -> dict:
    """Replicas over time while `cfg.load`'s phases run: per second (t, clients, running
    replicas, answers in that second)."""
    from ray import serve

    body = {"visual_tokens": cfg.autoscale_m}
    clients, done, stop = [0], [0], threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = k
            while not stop.is_set():
                if k >= clients[0]:
                    time.sleep(0.05)
                    continue
                r = post(url, {**bodies[i % len(bodies)], **body}, http)
                if r.status_code == 200:
                    with lock:
                        done[0] += 1
                i += 1

    most = int(max(p[0] for p in cfg.load))
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(most)]
    for t in threads:
        t.start()
    samples, t0, last = [], time.perf_counter(), 0
    try:
        for n, seconds in cfg.load:
            clients[0] = int(n)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                time.sleep(1.0)
                app = serve.status().applications["scaling"]
                running = app.deployments["MQTServer"].replica_states.get("RUNNING", 0)
                with lock:
                    answered, last = done[0] - last, done[0]
                samples.append((round(time.perf_counter() - t0, 1), int(n), running, answered))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    return {"samples": samples, "max_replicas": cfg.max_replicas}


def cell_stats(result: dict, m: int, c: int) -> dict:
    """Per statistic, the list over repeats of the (m, clients) cell."""
    cells = [x for x in result["cells"] if x["m"] == m and x["clients"] == c]
    return {k: [x[k] for x in cells] for k in ("requests_per_s", "p50_s", "p95_s", "p99_s")}


def saturated(result: dict, m: int) -> list[float]:
    """Per repeat, the most requests/s the endpoint served at m over the client counts."""
    best: dict[int, float] = {}
    for x in result["cells"]:
        if x["m"] == m:
            best[x["repeat"]] = max(best.get(x["repeat"], 0.0), x["requests_per_s"])
    return [best[r] for r in sorted(best)]


def _spread(xs: list[float], digits: int = 2) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}..{max(xs):.{digits}f})"


def table(result: dict, cfg: Config) -> str:
    lines = [f"# `mqt serve` latency, throughput and autoscaling ({cfg.preset})", "",
             f"Command: `{COMMAND}` (settings: ms={cfg.ms}, concurrency={cfg.concurrency}, "
             f"requests={cfg.requests} per cell, repeats={cfg.repeats}, "
             f"annotate_rows={cfg.annotate_rows}, threads={cfg.threads}, "
             f"max_batch_size={cfg.max_batch_size}). Machine: {result['device']}; loopback "
             "HTTP, the clients on the same machine.", "",
             "One replica. Latency: from sending a request to its whole answer. Median "
             "(min..max) over the repeats of each cell's figure.", "",
             "| m | clients | requests/s | p50 (s) | p95 (s) | p99 (s) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for m in cfg.ms:
        for c in cfg.concurrency:
            s = cell_stats(result, m, c)
            lines.append(f"| {m} | {c} | {_spread(s['requests_per_s'])} | "
                         f"{_spread(s['p50_s'], 3)} | {_spread(s['p95_s'], 3)} | "
                         f"{_spread(s['p99_s'], 3)} |")
    if result["annotate"]:
        lines += ["", "The saturated endpoint (per repeat, its most requests/s over the client "
                  "counts) against `mqt annotate`'s steady rows/s (one actor, the same model, "
                  "threads and batch size, the same questions), same m, same machine; the "
                  "ratio per repeat (goal >= 0.7x). The clients (JSON, base64) share the "
                  "machine's cores with the endpoint; the batch job reads files.", "",
                  "| m | endpoint requests/s | annotate rows/s | endpoint / annotate |",
                  "|---:|---:|---:|---:|"]
        for m in cfg.ms:
            ep = saturated(result, m)
            an = result["annotate"][str(m)]
            ratios = [e / a for e, a in zip(ep, an, strict=False)]
            lines.append(f"| {m} | {_spread(ep)} | {_spread(an)} | {_spread(ratios)} |")
    scale = result.get("autoscale") or {}
    if scale.get("samples"):
        s = scale["samples"]
        peak = max(x[2] for x in s)
        loaded = [x for x in s if x[1] == max(p[0] for p in cfg.load)]
        up = next((x[0] for x in loaded if x[2] > 1), None)
        tail = s[-1]
        lines += ["", f"Autoscaling (m = {cfg.autoscale_m}, 1..{cfg.max_replicas} replicas, "
                  f"target_ongoing_requests={cfg.target_ongoing_requests}, "
                  f"upscale_delay_s={cfg.upscale_delay_s}, "
                  f"downscale_delay_s={cfg.downscale_delay_s}; load phases [clients, s] "
                  f"{cfg.load}): peak {peak} replicas"
                  + (f", a second replica running {up:.0f} s into the run" if up else "")
                  + f"; {tail[2]} running at the end ({tail[0]:.0f} s). The plot shows "
                  "replicas, clients and answers per second over time."]
    return "\n".join(lines) + "\n"


def plot(result: dict, cfg: Config, path: Path) -> None:
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m in cfg.ms:
        rps = [statistics.median(cell_stats(result, m, c)["requests_per_s"])
               for c in cfg.concurrency]
        p99 = [statistics.median(cell_stats(result, m, c)["p99_s"]) for c in cfg.concurrency]
        axes[0].plot(cfg.concurrency, rps, "-o", label=f"m={m}")
        axes[1].plot(cfg.concurrency, p99, "-o", label=f"m={m}")
        if str(m) in result["annotate"]:
            axes[0].axhline(statistics.median(result["annotate"][str(m)]), ls=":",
                            color=axes[0].lines[-1].get_color())
    axes[0].set(xlabel="clients", ylabel="requests/s (median)",
                title="throughput (dotted: mqt annotate)")
    axes[1].set(xlabel="clients", ylabel="p99 latency (s)", title="tail latency")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.legend()
    s = (result.get("autoscale") or {}).get("samples") or []
    if s:
        t = [x[0] for x in s]
        axes[2].step(t, [x[2] for x in s], where="post", label="running replicas")
        axes[2].step(t, [x[1] for x in s], where="post", ls="--", label="clients")
        ax2 = axes[2].twinx()
        ax2.plot(t, [x[3] for x in s], color="grey", alpha=0.5, label="answers/s")
        ax2.set_ylabel("answers/s")
        axes[2].set(xlabel="seconds", ylabel="replicas / clients", title="autoscaling")
        axes[2].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.serve"))
