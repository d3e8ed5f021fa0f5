"""Throughput and memory of `mqt annotate` on this machine (a benchmark).

    python -m bench.annotate docs=docs/bench

Two measurements, written as a Markdown table and a PNG (with the command) to `docs=`:

1. Throughput: the same model, the same labelled images (easy-vqa test questions, one
   image each), the same stages (manifest rows -> decode -> `Engine`): the Ray Data job
   (`jobs.annotate.main`, one actor) against a plain single-process loop that calls the same
   functions batch by batch, at several m, each `repeats` times alternating the two. Times
   are end to end including the model load (and for Ray the actor start; `ray.init` is done
   once before); images/s = rows / seconds; median and min..max over the repeats.
2. Memory: a generated corpus of `rss_rows` tiny PNGs through the whole job with a fast
   model (`rss_preset`, random weights, one new token), sampling the resident memory of
   the driver's whole process tree (Ray's GCS, raylet, workers and object store included)
   every `rss_every_s` seconds: it must stay
   flat while rows stream through, not grow with the corpus. The corpus is a folder of
   image files (the common source): bytes are read per file in Ray read tasks.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
from PIL import Image

from jobs.cli import run_module
from mqt.configtree import save_config
from mqt.console import log
from mqt.data import easyvqa_examples
from mqt.data.corpus import sample, write_corpus
from mqt.load import ModelArgs, model_args, validate_model
from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate
from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.policy import FixedPolicy
from pipeline.sources import Defaults, manifest_rows

COMMAND = "python -m bench.annotate docs=docs/bench"


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    rows: int = 240  # easy-vqa test questions per throughput run
    ms: list[int] = field(default_factory=lambda: [1, 16, 64])
    repeats: int = 3
    batch_size: int = 16
    threads: int = 1  # torch threads of the model, in the loop and in the actor alike
    rss_rows: int = 100_000  # generated images for the memory run; 0 = skip it
    rss_preset: str = "tiny"
    rss_every_s: float = 2.0
    output: str = "runs/bench-annotate"
    docs: str = ""  # also write annotate.md and annotate.png here


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if cfg.rows < 1 or cfg.repeats < 0 or not cfg.ms or cfg.rss_rows < 0:
        raise ValueError("rows >= 1; repeats >= 0 (0: memory only); ms non-empty; rss_rows >= 0")


def main(cfg: Config) -> dict:
    import ray

    out = Path(cfg.output)
    save_config(cfg, out)
    manifest = easyvqa_manifest(out / "corpus", cfg.rows, cfg.seed)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    result = {"throughput": throughput(cfg, manifest, out) if cfg.repeats else {}}
    if cfg.rss_rows:
        result["memory"] = memory(cfg, out)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    print(table(result, cfg))
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "annotate.md").write_text(table(result, cfg))
        plot(result, folder / "annotate.png")
    return result


def easyvqa_manifest(folder: Path, rows: int, seed: int) -> Path:

    vqa = [e for e in easyvqa_examples("test", tasks=("vqa",))]
    return write_corpus(folder, sample(vqa, rows, seed))


def throughput(cfg: Config, manifest: Path, out: Path) -> dict:
    """Per m and kind: lists of images/s end to end, images/s after the first batch came
    back, and seconds until it did."""
    runs: dict = {str(m): {k: {"total": [], "steady": [], "startup": []}
                           for k in ("loop", "pipeline")} for m in cfg.ms}
    for rep in range(cfg.repeats):
        for m in cfg.ms:
            for kind in ("loop", "pipeline") if rep % 2 == 0 else ("pipeline", "loop"):
                fn = plain_loop if kind == "loop" else pipeline
                total, steady, startup = fn(cfg, manifest, m, out / f"pipe-m{m}")
                for name, value in (("total", total), ("steady", steady), ("startup", startup)):
                    runs[str(m)][kind][name].append(value)
                log(f"m={m} {kind}: {total:.2f} images/s end to end, {steady:.2f} after the "
                    f"first batch, which came after {startup:.1f} s")
    return runs


def plain_loop(cfg: Config, manifest: Path, m: int, _out: Path) -> tuple[float, float, float]:
    """The same stages as the job, in this process, one batch at a time; (images/s end to
    end, images/s after the first batch, seconds until the first batch was answered), as the
    job's summary measures them."""

    t0 = time.perf_counter()
    pred = Engine(model_args(cfg), FixedPolicy(default=m), threads=cfg.threads)
    size = pred.model.cfg.vision.image_size
    lines = manifest.read_text().splitlines()
    n, first = 0, None
    for i in range(0, len(lines), cfg.batch_size):
        src = manifest_rows(pa.table({"text": lines[i: i + cfg.batch_size]}),
                            str(manifest.parent), Defaults(), kind="jsonl")
        n += pred(decode_batch(src, size)).num_rows
        first = first or (time.perf_counter(), n)
    end = time.perf_counter()
    return n / (end - t0), (n - first[1]) / (end - first[0]), first[0] - t0


def pipeline(cfg: Config, manifest: Path, m: int, out: Path) -> tuple[float, float, float]:
    job = AnnotateConfig(**model_args(cfg), source=str(manifest), output=str(out),
                          overwrite=True, progress=False, batch_size=cfg.batch_size,
                          block_rows=cfg.batch_size, threads=cfg.threads,
                          actors=1, cpus_per_actor=0.5,  # one model, as the loop's
                          policy=PolicyArgs(default=m))
    run = annotate(job)["this_run"]
    return run["rows_per_s"], run["steady_rows_per_s"], run["startup_s"]


def memory(cfg: Config, out: Path) -> dict:
    """Peak and sampled RSS of the driver's process tree while a large corpus streams."""
    corpus = generated_corpus(out / f"rss-corpus-{cfg.rss_rows}", cfg.rss_rows)
    job = AnnotateConfig(preset=cfg.rss_preset, checkpoint="none", source=str(corpus),
                          output=str(out / "rss-out"), overwrite=True, progress=True,
                          batch_size=64, block_rows=256, rows_per_part=5000,
                          policy=PolicyArgs(default=1),
                          tasks={"caption": {"max_new_tokens": 1}})
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(samples, stop, cfg.rss_every_s))
    sampler.start()
    t0 = time.perf_counter()
    try:
        summary = annotate(job)
    finally:
        stop.set()
        sampler.join()
    return {"rows": summary["rows"], "seconds": round(time.perf_counter() - t0, 1),
            "samples": samples, "peak_mb": max(s[1] for s in samples)}


def _sample_rss(samples: list, stop: threading.Event, every: float) -> None:
    """(seconds, MB of the whole tree, MB of the driver alone) every `every` seconds."""

    me, t0 = psutil.Process(), time.perf_counter()
    while not stop.wait(every):
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that just exited
                pass
        samples.append((round(time.perf_counter() - t0, 1), round(total / 2**20, 1),
                        round(me.memory_info().rss / 2**20, 1)))


def generated_corpus(folder: Path, rows: int, per_dir: int = 1000) -> Path:
    """`rows` distinct random 16 x 16 PNGs in subfolders of `per_dir` (kept between runs)."""

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(rows):
        sub = folder / f"{i // per_dir:04d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            sub / f"{i:06d}.png")
    done.touch()
    return folder


def table(result: dict, cfg: Config) -> str:
    lines = [f"# `mqt annotate` throughput and memory ({cfg.preset})", "",
             f"Command: `{COMMAND}` (defaults: rows={cfg.rows}, ms={cfg.ms}, "
             f"repeats={cfg.repeats}, batch_size={cfg.batch_size}, threads={cfg.threads}).", "",
             "Images/s, median (min..max) over the repeats. *End to end*: all rows over the "
             "whole time, the model load (and for the job Ray's actor start) included. "
             "*Steady*: the rows after the first answered batch over the time after it. "
             "*First batch*: seconds until the first batch was answered.", "",
             "| m | how | plain loop | Ray Data job | job / loop |", "|---:|---|---:|---:|---:|"]
    for m, r in result["throughput"].items():
        for how in ("total", "steady"):
            lo, pi = r["loop"][how], r["pipeline"][how]
            ratios = [p / q for p, q in zip(pi, lo, strict=True)]
            name = "end to end" if how == "total" else "steady"
            lines.append(f"| {m} | {name} images/s | {_spread(lo)} | {_spread(pi)} | "
                         f"{_spread(ratios)} |")
        lines.append(f"| {m} | first batch (s) | {_spread(r['loop']['startup'], 1)} | "
                     f"{_spread(r['pipeline']['startup'], 1)} | |")
    mem = result.get("memory")
    if mem:
        mbs = [s[1] for s in mem["samples"]]
        half = len(mbs) // 2
        driver = [s[2] for s in mem["samples"]]
        lines += ["", f"Memory: {mem['rows']} generated images in {mem['seconds']} s "
                  f"({cfg.rss_preset} preset): RSS of the whole Ray process tree, peak "
                  f"{mem['peak_mb']:.0f} MB; median of the first half of the run "
                  f"{statistics.median(mbs[:half] or mbs):.0f} MB, of the second half "
                  f"{statistics.median(mbs[half:]):.0f} MB. The driver alone: "
                  f"{statistics.median(driver[:half] or driver):.0f} MB, then "
                  f"{statistics.median(driver[half:]):.0f} MB."]
    return "\n".join(lines) + "\n"


def _spread(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}..{max(xs):.{digits}f})"


def plot(result: dict, path: Path) -> None:
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ms = [int(m) for m in result["throughput"]]  # none for a memory-only run
    for kind in ("loop", "pipeline"):
        for how, style in (("total", "--o"), ("steady", "-o")):
            med = [statistics.median(result["throughput"][str(m)][kind][how]) for m in ms]
            name = {"loop": "plain loop", "pipeline": "Ray Data job"}[kind]
            axes[0].plot(ms, med, style, label=f"{name}, {'end to end' if how == 'total' else how}")
    axes[0].set(xscale="log", xlabel="visual tokens m", ylabel="images/s (median)")
    axes[0].set_xscale("log", base=2)
    axes[0].legend()
    mem = result.get("memory")
    if mem:
        axes[1].plot([s[0] for s in mem["samples"]], [s[1] for s in mem["samples"]],
                     label="Ray process tree")
        axes[1].plot([s[0] for s in mem["samples"]], [s[2] for s in mem["samples"]],
                     label="driver")
        axes[1].legend()
        axes[1].set(xlabel="seconds", ylabel="RSS of the Ray process tree (MB)",
                    title=f"{mem['rows']} images streamed", ylim=(0, None))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.annotate"))
