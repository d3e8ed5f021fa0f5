"""The same test questions asked both ways, free text (task "vqa") and multiple choice
(task "mc", the question's candidate options scored by likelihood), at m = 4, 16 and M on
the shipped default, before and after the multiple-choice scoring fix:

    .venv/bin/python -m bench.mc_vs_free after
    mkdir /tmp/mc-before && git archive aba255e | tar -x -C /tmp/mc-before  # before the fix
    PYTHONPATH=/tmp/mc-before .venv/bin/python bench/mc_vs_free.py before
    .venv/bin/python -m bench.mc_vs_free          # the table and plot from both

Questions: the 300 easy-vqa test questions of docs/eval (its seed-0 sample) and the four
questions of each of the first `MOSAICS` test mosaics (docs/eval's, seed 0); each one's
multiple-choice twin has the same image, question and answer, with the options
`mqt.data` draws for it. Rows are answered by `mqt eval`'s own `run_m` (fp16 grid
features, batches of 32), so each way is answered and priced as `mqt eval` does it in the
code that runs. A run with a label writes mc_vs_free.LABEL.json beside this file's
docs/bench/ table; without a label it reads the runs there and writes mc_vs_free.md and
mc_vs_free.png. The script imports only `mqt`, so the code before the fix runs it too.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from mqt.data import easyvqa_examples, mosaic_examples
from mqt.evaluation.run import EvalArgs, eval_examples, run_m
from mqt.load import load_model
from mqt.train.steps import FeatureCache

OUT = Path(__file__).resolve().parents[1] / "docs/bench"
EASYVQA, MOSAICS, SEED = 300, 50, 0  # docs/eval's easy-vqa sample; its first 50 mosaics
LABELS = ("before", "after")


def questions() -> list:
    """The free-text questions, then their multiple-choice twins (same order)."""
    vqa = [e for e in eval_examples(EvalArgs(easyvqa_questions=EASYVQA, captions=0,
                                             mosaic_images=0, seed=SEED)) if e.task == "vqa"]
    twins = {e.id: e for e in easyvqa_examples("test", tasks=("mc",))}
    mosaics = mosaic_examples("test", MOSAICS, seed=SEED, tasks=("vqa", "mc"))
    return (vqa + mosaics[: len(mosaics) // 2]
            + [twins[f"{e.id}/mc"] for e in vqa] + mosaics[len(mosaics) // 2:])


def run(label: str) -> None:
    """Answer every question at each m; write the rows to mc_vs_free.LABEL.json."""
    torch.manual_seed(0)
    model = load_model(EvalArgs()).eval()
    ms = [4, 16, model.num_queries]
    examples = questions()
    t0 = time.time()
    cache = FeatureCache(model)
    cache.add(examples)
    feats = cache.get(examples)
    rows = []
    with torch.no_grad():
        for m in ms:
            rows += run_m(model, examples, feats, m, 32)
    meta = {"label": label, "ms": ms, "seconds": round(time.time() - t0),
            "questions": len(examples) // 2}
    (OUT / f"mc_vs_free.{label}.json").write_text(json.dumps({**meta, "rows": rows}))
    print(f"{label}: {len(rows)} rows in {meta['seconds']} s")


def summary(rows: list[dict]) -> dict:
    """{(source, kind or "all", task, m): (accuracy %, mean GFLOPs, n)}."""
    cells = defaultdict(list)
    for r in rows:
        source, kind = r["kind"].split("/")
        for k in ("all", kind):
            cells[source, k, r["task"], r["m"]].append(r)
    return {key: (100 * sum(r["correct"] for r in rs) / len(rs),
                  sum(r["flops"] for r in rs) / len(rs) / 1e9, len(rs))
            for key, rs in cells.items()}


def table(runs: dict[str, dict]) -> str:
    """Markdown: per source and kind and m, free text and mc before/after (accuracy %),
    and the mc rows' mean GFLOPs before/after."""
    s = {label: summary(run["rows"]) for label, run in runs.items()}
    head = ("| questions | kind | m | n | free text | mc before | mc after | mc - free before "
            "| mc - free after | mc GFLOPs before | mc GFLOPs after |")
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    keys = sorted({k[:2] + k[3:] for k in s["after"] if k[2] == "mc"},
                  key=lambda k: (k[0], k[1] != "all", k[1], k[2]))
    for source, kind, m in keys:
        free = s["after"][source, kind, "vqa", m]
        mc = {lb: s[lb][source, kind, "mc", m] for lb in LABELS}
        lines.append(f"| {source} | {kind} | {m} | {free[2]} | {free[0]:.1f} | "
                     f"{mc['before'][0]:.1f} | {mc['after'][0]:.1f} | "
                     f"{mc['before'][0] - free[0]:+.1f} | {mc['after'][0] - free[0]:+.1f} | "
                     f"{mc['before'][1]:.2f} | {mc['after'][1]:.2f} |")
    return "\n".join(lines)


def check_same_free_text(runs: dict[str, dict]) -> None:
    """The fix leaves free text alone: both runs answer every VQA row the same."""
    free = {lb: {(r["id"], r["m"]): r["output"] for r in run["rows"] if r["task"] == "vqa"}
            for lb, run in runs.items()}
    assert free["before"] == free["after"], "free-text answers differ between the runs"


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib  # optional heavy dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = {label: summary(run["rows"]) for label, run in runs.items()}
    ms = runs["after"]["ms"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, source in zip(axes, ("easy-vqa", "mosaic"), strict=True):
        ax.plot(ms, [s["after"][source, "all", "vqa", m][0] for m in ms], "k-o",
                label="free text")
        for label, style in (("before", "r--s"), ("after", "b-^")):
            ax.plot(ms, [s[label][source, "all", "mc", m][0] for m in ms], style,
                    label=f"multiple choice, {label}")
        ax.set(title=f"{source} test", xlabel="m (visual tokens)", xscale="log", xticks=ms,
               xticklabels=[str(m) for m in ms])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report() -> None:
    runs = {lb: json.loads((OUT / f"mc_vs_free.{lb}.json").read_text()) for lb in LABELS}
    check_same_free_text(runs)
    text = table(runs)
    print(text)
    (OUT / "mc_vs_free.md").write_text(
        "# Multiple choice against free text on the same test questions\n\n"
        "Made by `bench/mc_vs_free.py` (its docstring has the commands); raw rows in "
        "`mc_vs_free.before.json` and `mc_vs_free.after.json`. Shipped `mqt-smol`, "
        f"{runs['after']['questions']} questions, each asked both ways at each m; accuracy "
        "in %, mean cost of a multiple-choice row in GFLOPs (cost model, as `mqt eval` "
        "prices it). Before: the code of aba255e, the options listed in the prompt "
        "(\"{question} Choose one: {options}.\") and scored without the end-of-turn marker; "
        "after: scored as answers to the VQA prompt, with the marker. Free text is the same "
        "before and after (checked row by row).\n\n"
        f"{text}\n\n![accuracy against m](mc_vs_free.png)\n")
    plot(runs, OUT / "mc_vs_free.png")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        report()
