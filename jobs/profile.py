"""`mqt profile`: how long a row takes at each m on this machine, for quotas of measured time.

    mqt profile [--preset mqt-smol] [source=rows.jsonl] [ms=[1,4,16,64]] [batch_size=16]
                [output=runs/profile]

Times the model stage of `mqt annotate` (the same `Predictor`, batches of the job's size,
rows in source order so a batch mixes tasks as the job's will) on a sample of rows: every m
of `ms` for the whole sample, `repeats` times (the order of the m reversed every other
time), after one warm-up batch. The images are decoded before timing, as the job decodes
them in a stage of their own. Per (task, m) it takes the mean seconds and FLOPs per row, the
median over the repeats, and fits the affine time model of pipeline/timing.py: seconds =
a x FLOPs + b[task]. Writes `time_profile.json` (the model, what it was fitted on, the
device and batch size), `profile.md` (a table of the points, with the error of the fit and
of a time proportional to FLOPs, one FLOP/s for every m) and `profile.png` (seconds per row
against FLOPs per row, both fits drawn) to `output`. Run it on the kind of
accelerator the job will run on, with the job's batch size and threads, then:

    mqt annotate ... quota.seconds=S quota.measured=true \
        quota.time_profile=runs/profile/time_profile.json

Without `source`, the sample is drawn from the bundled corpus of `mqt demo` (easy-vqa
captions, VQA and multiple choice; mosaic VQA and multiple choice).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.common import log, save_config
from mqt.load import ModelArgs, model_args, validate_model

DEFAULT_MS = [1, 4, 16, 64]


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    source: str = ""  # a local JSONL manifest (its rows' task, question, options); "" = bundled
    rows: int = 16  # rows sampled per task
    ms: list[int] = field(default_factory=lambda: list(DEFAULT_MS))  # those above M are dropped
    batch_size: int = 16  # the job's rows per model call
    threads: int = 1  # torch threads, as the job's actors (annotate's threads)
    tasks: dict = field(default_factory=dict)  # the job's `tasks.<name>` overrides
    repeats: int = 3
    output: str = "runs/profile"


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if cfg.rows < 1 or cfg.batch_size < 1 or cfg.repeats < 1 or cfg.threads < 0:
        raise ValueError("rows, batch_size and repeats must be >= 1, threads >= 0")
    if len(set(cfg.ms)) < 2 or any(not isinstance(m, int) or m < 1 for m in cfg.ms):
        raise ValueError(f"ms: two or more distinct m >= 1 (a line needs two points), "
                         f"got {cfg.ms}")
    if cfg.source and not (cfg.source.endswith(".jsonl") and Path(cfg.source).is_file()):
        raise ValueError(f"source: a local .jsonl manifest, got {cfg.source!r}")
    from jobs.annotate import job_tasks

    job_tasks(_annotate_like(cfg))  # checks tasks.* as annotate does


def _annotate_like(cfg: Config):
    from jobs.annotate import Config as AnnotateConfig

    return AnnotateConfig(tasks=dict(cfg.tasks))


def sample_lines(manifest: Path, per_task: int, seed: int) -> list[str]:
    """Up to `per_task` lines of each task (seeded), kept in the manifest's order."""
    lines = [x for x in manifest.read_text().splitlines() if x.strip()]
    by_task: dict[str, list[int]] = {}
    for i, x in enumerate(lines):
        try:
            task = json.loads(x).get("task") or "caption"
        except (json.JSONDecodeError, AttributeError):
            continue  # a bad line is an error row in the job, no time to profile
        by_task.setdefault(task, []).append(i)
    rng = random.Random(seed)
    keep = sorted(i for idx in by_task.values() for i in rng.sample(idx, min(per_task, len(idx))))
    if not keep:
        raise ValueError(f"source: no rows to profile in {manifest}")
    return [lines[i] for i in keep]


def decoded_batches(lines: list[str], base: Path, size: int, batch_size: int, tasks) -> list:
    import pyarrow as pa

    from pipeline.decode import decode_batch
    from pipeline.sources import Defaults, manifest_rows

    return [decode_batch(manifest_rows(pa.table({"text": lines[i:i + batch_size]}), str(base),
                                       Defaults(tasks=tasks), jsonl=True), size)
            for i in range(0, len(lines), batch_size)]


def main(cfg: Config) -> dict:
    from jobs.annotate import job_tasks
    from pipeline.policy import FixedPolicy
    from pipeline.predictor import Predictor
    from pipeline.timing import fit

    out = Path(cfg.output)
    save_config(cfg, out)
    manifest = Path(cfg.source) if cfg.source else bundled_manifest(out / "corpus", cfg.seed)
    lines = sample_lines(manifest, cfg.rows, cfg.seed)
    tasks = job_tasks(_annotate_like(cfg))
    pred = Predictor(model_args(cfg), FixedPolicy(default=1), threads=cfg.threads,
                     tasks=tasks)
    M = pred.model.num_queries
    ms = sorted({m for m in cfg.ms if m <= M})
    if len(ms) < 2:
        raise ValueError(f"ms: fewer than two of {cfg.ms} are <= M = {M}")
    batches = decoded_batches(lines, manifest.parent, pred.model.cfg.vision.image_size,
                              cfg.batch_size, tasks)
    log(f"profiling {len(lines)} rows of {manifest} at m = {ms}, {cfg.repeats} repeats, "
        f"batches of {cfg.batch_size}")
    pred.policy = FixedPolicy(default=max(ms)).bind(M)
    pred(batches[0])  # warm-up, not timed
    runs: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for rep in range(cfg.repeats):
        for m in ms if rep % 2 == 0 else ms[::-1]:
            pred.policy = FixedPolicy(default=m).bind(M)
            t0 = time.perf_counter()
            rows = [r for b in batches for r in pred(b).to_pylist() if r["error"] is None]
            for task in sorted({r["task"] for r in rows}):
                own = [r for r in rows if r["task"] == task]
                runs.setdefault((task, m), []).append(
                    (sum(r["seconds"] for r in own) / len(own),
                     sum(r["flops"] for r in own) / len(own), len(own)))
            log(f"repeat {rep + 1}/{cfg.repeats} m={m}: {len(rows)} rows in "
                f"{time.perf_counter() - t0:.1f} s")
    points = [{"task": t, "m": m, "flops": statistics.median(f for _, f, _ in v),
               "seconds": statistics.median(s for s, _, _ in v),
               "seconds_range": [min(s for s, _, _ in v), max(s for s, _, _ in v)],
               "rows": v[0][2]} for (t, m), v in sorted(runs.items())]
    model = fit(points, device_name(cfg.threads), cfg.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "time_profile.json")
    text = table(model)
    (out / "profile.md").write_text(text)
    plot(model, out / "profile.png")
    print(text)
    log(f"time profile in {out / 'time_profile.json'}: give it to a measured quota as "
        f"quota.time_profile={out / 'time_profile.json'}")
    return model.to_json()


def bundled_manifest(folder: Path, seed: int) -> Path:
    from mqt.data.corpus import bundled_examples, write_corpus

    return write_corpus(folder, bundled_examples(seed=seed))


def device_name(threads: int) -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu {platform.processor() or platform.machine()}, {threads or 'all'} threads"


def proportional_rate(model) -> float:
    """Seconds per FLOP of a time proportional to FLOPs (one FLOP/s for every m, what a plan
    at quota.flops_per_second assumes), fitted to the points by least squares through the
    origin."""
    pts = model.points
    return sum(p["seconds"] * p["flops"] for p in pts) / sum(p["flops"] ** 2 for p in pts)


def proportional_error(model) -> dict[tuple[str, int], float]:
    """Per point, the relative error of that proportional time."""
    rate = proportional_rate(model)
    return {(p["task"], p["m"]): rate * p["flops"] / p["seconds"] - 1 for p in model.points}


def table(model) -> str:
    prop = proportional_error(model)
    lines = [f"Time profile: {model.device}, batches of {model.batch_size}. seconds per row = "
             f"a x FLOPs + b[task], a = {model.seconds_per_flop * 1e9:.4g} s/GFLOP "
             + (f"({1 / model.seconds_per_flop / 1e9:.1f} GFLOP/s at the margin), b = "
                if model.seconds_per_flop else "(time does not grow with FLOPs here), b = ")
             + ", ".join(f"{t} {b * 1e3:.1f} ms" for t, b in model.seconds_per_call.items()),
             "", "| task | m | rows | GFLOPs/row | s/row measured (median, min..max) | "
             "affine model | error | proportional to FLOPs: error |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for p in model.points:
        fitted = model.seconds(p["task"], p["flops"])
        lo, hi = p["seconds_range"]
        lines.append(f"| {p['task']} | {p['m']} | {p['rows']} | {p['flops'] / 1e9:.2f} | "
                     f"{p['seconds'] * 1e3:.1f} ms ({lo * 1e3:.1f}..{hi * 1e3:.1f}) | "
                     f"{fitted * 1e3:.1f} ms | {100 * (fitted / p['seconds'] - 1):+.1f}% | "
                     f"{100 * prop[p['task'], p['m']]:+.1f}% |")
    return "\n".join(lines) + "\n"


def plot(model, path: Path) -> None:
    """Seconds per row against GFLOPs per row, per task: the measured points (min..max over
    the repeats as bars), the affine model and the time proportional to FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts, rate = model.points, proportional_rate(model)
    top = max(p["flops"] for p in pts) * 1.05
    for i, task in enumerate(sorted(model.seconds_per_call)):
        own = sorted((p for p in pts if p["task"] == task), key=lambda p: p["flops"])
        color = f"C{i}"
        x = [p["flops"] / 1e9 for p in own]
        y = [p["seconds"] * 1e3 for p in own]
        err = [[(p["seconds"] - p["seconds_range"][0]) * 1e3 for p in own],
               [(p["seconds_range"][1] - p["seconds"]) * 1e3 for p in own]]
        ax.errorbar(x, y, yerr=err, fmt="o", color=color, label=f"{task} (m = "
                    + ", ".join(str(p["m"]) for p in own) + ")")
        ax.plot([0, top / 1e9], [model.seconds(task, 0) * 1e3, model.seconds(task, top) * 1e3],
                "-", color=color, alpha=0.7)
    ax.plot([0, top / 1e9], [0, rate * top * 1e3], "k:", label="proportional to FLOPs")
    ax.set(xlabel="GFLOPs per row", ylabel="seconds per row (ms)", xlim=(0, top / 1e9),
           ylim=(0, None), title=f"{model.device}, batches of {model.batch_size}: "
           "affine fits (lines)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
