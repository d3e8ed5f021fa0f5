"""What continuing an escalation from its m1 prompt prefix saves, live on `mqt-smol`.

    .venv/bin/python -m bench.escalation_prefix [ROWS_PER_TASK] [REPEATS]

A cascade row answered at m1 and escalated to m2 used to run its m2 answer over the whole
prompt again; it now continues from the LM's KV cache of the prompt's first P + m1
positions (the template's text before the image and the m1 visual tokens), kept from the
m1 answer. This runs the job's own `Engine` on rows of the bundled demo corpus (16 per
task by default: easy-vqa captions, VQA, multiple choice) with a cascade that escalates
every row (threshold +inf), at (m1, m2) = (1, 8), (4, 16), (16, 64), with the prefix reused
and without (`reuse_prefix=False`), alternating which runs first, 3 repeats, one torch
thread, batches of 16, after a warm-up. Per task and (m1, m2) it prints the FLOPs per row
of both attempts (what the ledger charges), the seconds per row (median over the repeats,
min..max), the ratios, and the share of rows whose final answer is the same both ways; it
writes the table to escalation_prefix.md and a plot to escalation_prefix.png beside this
file. The cost model's saving for `llava-7b` (35 prompt tokens before the image, a VQAv2
prompt of 60 text tokens, one new token) is printed below the table.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path

from jobs.profile import bundled_manifest
from mqt.load import ModelArgs, model_args
from pipeline.annotate import AnnotateConfig, job_tasks
from pipeline.engine import Engine
from pipeline.profile import decoded_batches, sample_lines
from pipeline.scheduler.cascade import CascadePolicy
from pipeline.scheduler.policy import Cascade

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [(1, 8), (4, 16), (16, 64)]
HERE = Path(__file__).resolve().parent


def run(pred: Engine, batches) -> list[dict]:
    return [r for b in batches for r in pred(b).to_pylist()]


def main(per_task: int = 16, repeats: int = 3) -> str:
    import torch

    torch.set_num_threads(1)
    tasks = job_tasks(AnnotateConfig())
    args = model_args(ModelArgs(preset="mqt-smol"))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = bundled_manifest(Path(tmp) / "corpus", 0)
        lines = sample_lines(manifest, per_task, 0)
        preds = {reuse: Engine(args, CascadePolicy({}), threads=1, tasks=tasks,
                                  reuse_prefix=reuse) for reuse in (False, True)}
        size = preds[True].model.cfg.vision.image_size
        batches = decoded_batches(lines, manifest.parent, size, 16, tasks)
    names = sorted({t for b in batches for t in b.column("task").to_pylist()})
    results = []
    for m1, m2 in PAIRS:
        policy = CascadePolicy({t: Cascade(m1, m2, math.inf) for t in names})
        seconds = {(r, t): [] for r in (False, True) for t in names}
        last = {}
        for pred in preds.values():
            pred.policy = policy
            run(pred, batches[:1])  # warm-up
        for rep in range(repeats):
            for reuse in ((False, True) if rep % 2 == 0 else (True, False)):
                last[reuse] = run(preds[reuse], batches)
                for t in names:
                    own = [r for r in last[reuse] if r["task"] == t and r["error"] is None]
                    seconds[reuse, t].append(sum(r["seconds"] for r in own) / len(own))
        for t in names:
            a = [r for r in last[False] if r["task"] == t]
            b = [r for r in last[True] if r["task"] == t]
            same = sum(x["prediction"] == y["prediction"]
                       for x, y in zip(a, b, strict=True)) / len(a)
            flops = [statistics.mean(r["flops"] for r in rows) for rows in (a, b)]
            sec = [seconds[False, t], seconds[True, t]]
            results.append({"m1": m1, "m2": m2, "task": t, "rows": len(a),
                            "flops": flops, "seconds": sec, "same": same})
    text = table(results, repeats) + "\n" + llava_line() + "\n"
    (HERE / "escalation_prefix.md").write_text(text)
    plot(results, HERE / "escalation_prefix.png")
    print(text)
    return text


def table(results: list[dict], repeats: int) -> str:
    head = ("| m1 -> m2 | task | rows | GFLOPs/row, whole prompt | GFLOPs/row, from the "
            "prefix | FLOPs ratio | s/row, whole prompt (min..max) | s/row, from the prefix "
            "(min..max) | time ratio (medians) | same answer |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in results:
        (f0, f1), (s0, s1) = r["flops"], r["seconds"]
        m0, m1_ = statistics.median(s0), statistics.median(s1)
        lines.append(f"| {r['m1']} -> {r['m2']} | {r['task']} | {r['rows']} | {f0 / 1e9:.2f} | "
                     f"{f1 / 1e9:.2f} | {f1 / f0:.3f} | {m0:.4f} ({min(s0):.4f}..{max(s0):.4f})"
                     f" | {m1_:.4f} ({min(s1):.4f}..{max(s1):.4f}) | {m1_ / m0:.3f} | "
                     f"{100 * r['same']:.0f}% |")
    return (f"Both attempts of a row escalated from m1 to m2 (every row escalates), `mqt-smol`, "
            f"one thread, batches of 16, {repeats} repeats:\n\n" + head + "\n".join(lines)
            + "\n")


def llava_line() -> str:
    from mqt.config import preset
    from mqt.cost import prefill_flops, total_flops

    cfg = preset("llava-7b")
    T, before = 60, 35
    parts = []
    for m1, m2 in [(2, 16), (16, 64), (36, 144), (64, 256)]:
        whole = total_flops(cfg, m2, T, 1).total
        cont = whole - prefill_flops(cfg, m2, T) + prefill_flops(cfg, m2, T, before + m1)
        first = total_flops(cfg, m1, T, 1).total
        shared = total_flops(cfg, m1, T, 1).vision + total_flops(cfg, m1, T, 1).query
        esc_old, esc_new = whole - shared, cont - shared
        parts.append(f"{m1} -> {m2}: escalation {esc_old / 1e12:.2f} -> {esc_new / 1e12:.2f} "
                     f"TFLOPs ({100 * (1 - esc_new / esc_old):.0f}% less; the row "
                     f"{100 * (1 - (first + esc_new) / (first + esc_old)):.0f}% less)")
    return ("Cost model, `llava-7b` (35 prompt tokens before the image, 60 text tokens, one new "
            "token): " + "; ".join(parts) + ".")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['task']}\n{r['m1']}->{r['m2']}" for r in results]
    flops = [r["flops"][1] / r["flops"][0] for r in results]
    times = [statistics.median(r["seconds"][1]) / statistics.median(r["seconds"][0])
             for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(results)), 4))
    ax.bar([i - 0.2 for i in x], flops, 0.4, label="FLOPs (cost model, charged)")
    ax.bar([i + 0.2 for i in x], times, 0.4, label="seconds (measured, median)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("from the m1 prefix / whole prompt")
    ax.set_title("An escalated row (both attempts), mqt-smol, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
