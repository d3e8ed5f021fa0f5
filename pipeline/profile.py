"""Time profiles: how long the engine takes per row at each m here (`mqt profile`).

`time_rows` times the engine (the model stage of `mqt annotate`, batches of the job's size,
rows in source order so a batch mixes tasks as the job's will) on decoded rows sampled from
a manifest (`sample_lines`, `decoded_batches`), every m for the whole sample, several times;
pipeline/scheduler/timing.py `fit` turns the points into the affine time model a measured
quota is planned on. `table` and `plot` show the points against the fit and against a time
proportional to FLOPs.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from pathlib import Path

import pyarrow as pa
import torch

from mqt.tasks import Task
from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.policy import FixedPolicy
from pipeline.scheduler.timing import TimeModel
from pipeline.sources import Defaults, manifest_rows


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


def decoded_batches(lines: list[str], base: Path, size: int, batch_size: int,
                    tasks: dict[str, Task]) -> list[pa.Table]:
    """The lines as the engine's input: parsed as manifest rows and decoded at `size`, in
    batches of `batch_size` (the job decodes in a stage of its own: not timed)."""
    return [decode_batch(manifest_rows(pa.table({"text": lines[i:i + batch_size]}), str(base),
                                       Defaults(tasks=tasks), kind="jsonl"), size)
            for i in range(0, len(lines), batch_size)]


def time_rows(engine: Engine, batches: list[pa.Table], ms: list[int], repeats: int,
              progress=None) -> list[dict]:
    """Per (task, m): the median over `repeats` of the mean seconds and FLOPs per row the
    engine took on `batches` at fixed m (the order of the m reversed every other repeat,
    after one warm-up batch at the largest m); what `timing.fit` fits."""
    M = engine.model.num_queries
    engine.policy = FixedPolicy(default=max(ms)).bind(M)
    engine(batches[0])  # warm-up, not timed
    runs: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for rep in range(repeats):
        for m in ms if rep % 2 == 0 else ms[::-1]:
            engine.policy = FixedPolicy(default=m).bind(M)
            t0 = time.perf_counter()
            rows = [r for b in batches for r in engine(b).to_pylist() if r["error"] is None]
            for task in sorted({r["task"] for r in rows}):
                own = [r for r in rows if r["task"] == task]
                runs.setdefault((task, m), []).append(
                    (sum(r["seconds"] for r in own) / len(own),
                     sum(r["flops"] for r in own) / len(own), len(own)))
            if progress is not None:
                progress(f"repeat {rep + 1}/{repeats} m={m}: {len(rows)} rows in "
                         f"{time.perf_counter() - t0:.1f} s")
    return [{"task": t, "m": m, "flops": statistics.median(f for _, f, _ in v),
             "seconds": statistics.median(s for s, _, _ in v),
             "seconds_range": [min(s for s, _, _ in v), max(s for s, _, _ in v)],
             "rows": v[0][2]} for (t, m), v in sorted(runs.items())]


def device_name(threads: int) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu {platform.processor() or platform.machine()}, {threads or 'all'} threads"


def proportional_rate(model: TimeModel) -> float:
    """Seconds per FLOP of a time proportional to FLOPs (one FLOP/s for every m, what a plan
    at quota.flops_per_second assumes), fitted to the points by least squares through the
    origin."""
    pts = model.points
    return sum(p["seconds"] * p["flops"] for p in pts) / sum(p["flops"] ** 2 for p in pts)


def proportional_error(model: TimeModel) -> dict[tuple[str, int], float]:
    """Per point, the relative error of that proportional time."""
    rate = proportional_rate(model)
    return {(p["task"], p["m"]): rate * p["flops"] / p["seconds"] - 1 for p in model.points}


def table(model: TimeModel) -> str:
    """The profile's Markdown: the fit, and per point measured against fitted time."""
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


def plot(model: TimeModel, path: Path) -> None:
    """Seconds per row against GFLOPs per row, per task: the measured points (min..max over
    the repeats as bars), the affine model and the time proportional to FLOPs."""
    import matplotlib  # heavy and for this plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display here

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
