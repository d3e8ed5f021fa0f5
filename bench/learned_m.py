"""Per-image budgets from a learned predictor of the m a question needs (a measurement).

    .venv/bin/python -m bench.learned_m [--layout] [results.parquet ...]

The scheduler benchmark's per-kind plan groups questions by their template. This script
tries finer groups, learned: a multi-output regression tree from cheap question features
(task, kind, the question's words and word pairs; with `--layout` also each mosaic's grid
size and the asked cell's index, which no cheap feature gives for free: an upper bound for
image features that found the layout) to the question's right/wrong vector over the trained
m. Its leaves are the groups; a leaf's curve is the mean of that vector over its fit rows
(the per-question oracle data of `mqt eval`). The leaf size is chosen by 3-fold
cross-validation inside the fit half (squared error), then the per-task planner
(pipeline/scheduler/plan.py) plans over leaves as it plans over tasks or kinds, and the plan is
replayed behind a ledger on the held-out half, exactly as `python -m bench.scheduler` does (same
halves, same seeds, same per-row budgets q). Prints a Markdown table: accuracy (%) of the
per-task plan, the per-kind plan and the tree's plan at each q, over all held-out halves.
Needs scikit-learn (installed with the project's data extra).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import KFold
from sklearn.tree import DecisionTreeRegressor

from bench.scheduler import (
    Config,
    best_fixed,
    budgets,
    fixed_points,
    oracle,
    quota_for,
    run_policy,
    trained_ms,
)
from mqt.config import preset
from pipeline.scheduler.cascade import (
    cap_ms,
    capped,
    fixed_curves,
    load_questions,
    seeded_order,
    shared_flops,
    split_halves,
)
from pipeline.scheduler.quality import group_name

SEEDS = (0, 1, 2, 3, 4)
LEAF_SIZES = (8, 16, 32, 64)


def question_texts(results: str, layout: bool) -> dict[str, str]:
    """Per question id: the features' text (task, kind, question; layout words if asked)."""
    rows = pq.read_table(results, columns=["id", "task", "kind", "question"]).to_pylist()
    text = {r["id"]: f"{r['task']} {r['kind']} {r['question'] or ''}" for r in rows}
    if layout:
        for ex in _mosaics(text):
            g, meta = ex.meta["grid"], ex.meta
            cell = f" cell{g}x{(meta['row'] - 1) * g + meta['col'] - 1}" if "row" in meta else ""
            text[ex.id] += f" grid{g}{cell}"
    return text


def _mosaics(text: dict[str, str]) -> list:
    """The test mosaics of these questions (ids mosaic/test/s<seed>/<index>/...)."""
    from mqt.data import mosaic_examples

    last: dict[int, int] = {}
    for i in text:
        if i.startswith("mosaic/"):
            seed, index = int(i.split("/")[2][1:]), int(i.split("/")[3])
            last[seed] = max(last.get(seed, 0), index)
    return [ex for seed, n in last.items()
            for ex in mosaic_examples("test", n + 1, seed=seed, tasks=("vqa", "mc"))
            if ex.id in text]


def fit_tree(fit: list, text: dict, ms: list[int]):
    vec = CountVectorizer(binary=True, ngram_range=(1, 2), token_pattern=r"[a-z0-9]+")
    X = vec.fit_transform([text[q.id] for q in fit])
    y = np.array([[q.correct[m] for m in ms] for q in fit], float)

    def cv_error(leaf: int) -> float:
        err = 0.0
        for tr, te in KFold(3, shuffle=True, random_state=0).split(X):
            tree = DecisionTreeRegressor(min_samples_leaf=leaf, random_state=0)
            err += float(((tree.fit(X[tr], y[tr]).predict(X[te]) - y[te]) ** 2).sum())
        return err

    leaf = min(LEAF_SIZES, key=cv_error)
    return vec, DecisionTreeRegressor(min_samples_leaf=leaf, random_state=0).fit(X, y), leaf


def leafed(qs: list, vec, tree, text: dict) -> list:
    """The questions with `kind` replaced by their leaf: the planner then plans over leaves."""
    leaves = tree.apply(vec.transform([text[q.id] for q in qs]))
    return [replace(q, kind=f"leaf{leaf}") for q, leaf in zip(qs, leaves, strict=True)]


def fold(fit: list, held: list, seed: int, ms: list[int]) -> dict:
    """A fold as `python -m bench.scheduler` replays it (bench.scheduler.run_policy): the
    per-task ("plan") and per-kind ("kind") curves of `fit`, `held` in the split's order.
    "kind" plans over the questions' `kind` field (the true kind, or here a tree leaf), not
    over the benchmark's classifier groups. Every curve stops at its task's dearest m worth
    buying on `fit` (the benchmark's default `cap_se`)."""
    tasks = fixed_curves(fit, ms, "task")
    tops = cap_ms(fit, tasks, Config.cap_se) if Config.cap_se else {}
    curves = {"plan": capped(tasks, tops), "kind": capped(fixed_curves(tagged(fit), ms, "kind"),
                                                          tops)}
    return {"curves": curves, "held": seeded_order(tagged(held), seed), "cap": True,
            "keys": {"kind": "kind"}}


def tagged(qs: list) -> list:
    """The questions with `kind` named as the planner names a task's group ("task:kind")."""
    return [replace(q, kind=group_name(q.task, q.kind)) for q in qs]


def right_of(name: str, f: dict, q: float, shared: dict) -> tuple[int, int] | None:
    """(right answers, rows) of one held-out half; pooled over the halves of all splits
    they give the benchmark's accuracy (every split holds each question out once)."""
    r = run_policy(name, f, q, shared)
    return None if r is None else (r["correct"], r["rows"])


def main(results: list[str], layout: bool) -> None:
    """`results`: `mqt eval` rows of one model; a question in several files from the first."""
    ms = trained_ms(results[0])
    qs, text = load_questions(results, ms), {}
    for path in results:
        for i, t in question_texts(path, layout).items():
            text.setdefault(i, t)
    shared = shared_flops(preset("mqt-smol"), ms)
    fixed = fixed_points(qs, ms)
    grid = budgets(fixed, 12)
    acc = {k: [[] for _ in grid] for k in ("task", "kind", "tree")}
    leaves = []
    for seed in SEEDS:
        a, b = split_halves(qs, seed)
        for fit, held in ((a, b), (b, a)):
            vec, tree, leaf = fit_tree(fit, text, ms)
            leaves.append(f"{tree.get_n_leaves()} (min {leaf})")
            plain = fold(fit, held, seed, ms)
            tree_fold = fold(leafed(fit, vec, tree, text), leafed(held, vec, tree, text), seed,
                             ms)
            runs = {"task": ("plan", plain), "kind": ("kind", plain), "tree": ("kind", tree_fold)}
            for i, q in enumerate(grid):
                for name, (policy, f) in runs.items():
                    if (r := right_of(policy, f, q, shared)) is not None:
                        acc[name][i].append(r)
    print(f"{len(qs)} questions, m in {ms}; features: task, kind, question words"
          + (" + mosaic layout (grid, cell index)" if layout else "")
          + f"; leaves per fold: {', '.join(leaves)}\n")
    print("| q (GFLOPs/row) | best fixed m (hindsight) | plan (task) | plan (kind) | "
          "plan (tree leaves) | oracle |\n|---:|---:|---:|---:|---:|---:|")
    for i, q in enumerate(grid):
        Q = quota_for(q, len(qs))
        bf, orc = best_fixed(fixed, Q), oracle(qs, ms, Q)
        cells = [f"{100 * sum(c for c, _ in acc[k][i]) / sum(n for _, n in acc[k][i]):.2f}"
                 if len(acc[k][i]) == 2 * len(SEEDS) else "-" for k in ("task", "kind", "tree")]
        best = f"m={bf['m']}: {100 * bf['accuracy']:.2f}" if bf else "-"
        top = f"{100 * orc['accuracy']:.2f}" if orc else "-"
        print(f"| {q / 1e9:.2f} | {best} | " + " | ".join(cells) + f" | {top} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--layout"]
    main(args or [str(Path("docs/eval/results.parquet"))], "--layout" in sys.argv)
