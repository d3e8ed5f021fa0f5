"""`mqt annotate` under one quota, planned per task and per (task, question kind), live.

    .venv/bin/python -m bench.annotate_by_kind [GFLOPS_PER_ROW ...]

The corpus: the questions of the second `mqt eval` run (docs/eval-s1: its config rebuilds
the same examples, images included), less those in the shipped calibration, so every row is
held out from what the plans are fitted on (the shipped mqt-smol calibration, docs/eval).
For each per-row budget q (default 7.8 and 9.9 GFLOPs/row: between fixed m = 4's and 8's
cost per row on these rows, 7.36 and 8.24, and between m = 8's and 16's, 8.24 and 9.99) it
runs `mqt annotate` on a local Ray with quota.flops = q x rows, quota.by=task and
quota.by=kind, and prints accuracy (the task's own scoring of the written answers; a row
the ledger refused counts wrong), spend as % of Q, the rows refused, the m used, the paired
difference (kind - task) with its standard error from the rows only one of the two got
right, and the best single m whose mean cost on these rows (as eval recorded it) fits q.
The model is the shipped default; nothing is trained. It also checks every written row
against what `mqt eval` recorded for that question at the same m (docs/eval-s1): right or
wrong the same, and the FLOPs the job charged against the FLOPs eval priced.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from jobs import evaluate
from mqt.data.corpus import write_corpus
from mqt.tasks import TASKS
from pipeline.annotate import AnnotateConfig, annotate
from pipeline.scheduler.quality import shipped_calibration
from pipeline.scheduler.quota import QuotaArgs

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "runs" / "annotate-by-kind"


def corpus() -> Path:
    """The eval-s1 examples not in the shipped calibration, as a manifest."""
    cfg = evaluate.Config(**yaml.safe_load((ROOT / "docs/eval-s1/config.yaml").read_text()))
    shipped = set(pq.read_table(shipped_calibration().with_name("results.parquet"),
                                columns=["id"]).column("id").to_pylist())
    examples = [e for e in evaluate.eval_examples(cfg) if e.id not in shipped]
    return write_corpus(OUT / "corpus", examples)


def run(manifest: Path, rows: int, q: float, by: str) -> tuple[dict, dict]:
    out = OUT / f"q{q / 1e9:g}-{by}"
    cfg = AnnotateConfig(preset="mqt-smol", source=str(manifest), output=str(out),
                          overwrite=True, batch_size=32, block_rows=32, progress=False,
                          quota=QuotaArgs(flops=round(q * rows), by=by))
    summary = annotate(cfg)
    written = pq.read_table(out / "data").to_pylist()
    right = {r["id"]: bool(r["error"] is None and r["reference"] is not None
                           and TASKS[r["task"]].is_correct(r["prediction"] or "", r["reference"]))
             for r in written}
    return summary, right, written


def as_recorded(written: list[dict], right: dict, recorded: dict) -> str:
    """How many answered rows were right or wrong as `mqt eval` recorded at that m, and how
    many cost the FLOPs eval priced (to 1e-6, relative), with the largest difference."""
    rows = [r for r in written if r["error"] is None]
    same = sum(right[r["id"]] == recorded[r["id"], r["m"]]["correct"] for r in rows)
    rel = [abs(r["flops"] / recorded[r["id"], r["m"]]["flops"] - 1) for r in rows]
    return (f"{same}/{len(rows)} right or wrong as eval recorded, {sum(x < 1e-6 for x in rel)}"
            f"/{len(rows)} at eval's FLOPs (largest difference {100 * max(rel):.4f}%)")


def best_fixed(recorded: dict, ids: set, q: float) -> str:
    """The single m with the most right answers on the rows whose mean recorded cost fits q."""
    by_m = {}
    for (i, m), r in recorded.items():
        if i in ids:
            by_m.setdefault(m, []).append(r)
    fits = {m: rs for m, rs in by_m.items() if sum(r["flops"] for r in rs) / len(rs) <= q}
    if not fits:
        return "no single m fits"
    m = max(fits, key=lambda m: (sum(r["correct"] for r in fits[m]), -m))
    rs = fits[m]
    acc, cost = sum(r["correct"] for r in rs) / len(rs), sum(r["flops"] for r in rs) / len(rs)
    return f"best single m that fits: m = {m}, {100 * acc:.2f}% at {cost / 1e9:.2f} GFLOPs/row"


def main(qs: list[float]) -> None:
    manifest = corpus()
    rows = sum(1 for line in manifest.read_text().splitlines() if line.strip())
    lines = [f"{rows} held-out rows ({manifest}), mqt-smol, shipped calibration", "",
             "| q (GFLOPs/row) | plan by | accuracy | spend / Q | refused rows | m used | kind "
             "shrinkage |", "|---:|---|---:|---:|---:|---|---:|"]
    diffs, checks = [], []
    recorded = {(r["id"], r["m"]): r for r in pq.read_table(
        ROOT / "docs/eval-s1/results.parquet", columns=["id", "m", "correct", "flops"]).to_pylist()}
    for q in qs:
        got = {}
        for by in ("task", "kind"):
            s, right, written = run(manifest, rows, q, by)
            got[by] = right
            checks.append(f"q = {q / 1e9:g}, by {by}: {as_recorded(written, right, recorded)}")
            acc = sum(right.values()) / len(right)
            used = Counter()
            for hist in s["m_histogram"].values():
                used.update(hist)
            ms = ", ".join(f"{m}: {n}" for m, n in sorted(used.items()))
            alpha = s["quota"]["kind_shrinkage"]
            lines.append(f"| {q / 1e9:g} | {by} | {100 * acc:.2f}% | "
                         f"{100 * s['quota']['share']:.1f}% | {s['quota']['refused_rows']} | "
                         f"{ms} | {'-' if alpha is None else f'{alpha:g}'} |")
        b = sum(got["kind"][i] and not got["task"][i] for i in got["task"])
        c = sum(got["task"][i] and not got["kind"][i] for i in got["task"])
        n = len(got["task"])
        se = math.sqrt(b + c - (b - c) ** 2 / n) / n
        diffs.append(f"q = {q / 1e9:g}: kind - task = {100 * (b - c) / n:+.2f} points "
                     f"(paired SE {100 * se:.2f}; {b} rows only kind answers right, {c} only "
                     f"task); {best_fixed(recorded, set(got['task']), q)}")
    print("\n".join(lines + [""] + diffs + [""] + checks))


if __name__ == "__main__":
    main([float(a) * 1e9 for a in sys.argv[1:]] or [7.8e9, 9.9e9])
