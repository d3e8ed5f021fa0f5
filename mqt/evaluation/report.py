"""What `mqt eval` writes: calibration.json, the Parquet of rows, the Markdown table, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mqt.evaluation.run import EvalArgs, calibration


def write_outputs(cfg: EvalArgs, name: str, checkpoint: str, rows: list[dict], ms: list[int],
                  unseen: list[int]) -> dict:
    """calibration.json, results.parquet, eval.md and accuracy.png in `cfg.output` (eval.md
    and the plot also in `cfg.docs` if set); returns the calibration."""
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cal = calibration(name, checkpoint, rows, ms, unseen)
    (out / "calibration.json").write_text(json.dumps(cal, indent=1, default=str))
    write_rows(rows, out / "results.parquet")
    text = markdown(cal)
    (out / "eval.md").write_text(text)
    plots(cal, out)
    if cfg.docs:
        Path(cfg.docs).mkdir(parents=True, exist_ok=True)
        (Path(cfg.docs) / "eval.md").write_text(text)
        plots(cal, Path(cfg.docs))
    return cal


def write_rows(rows: list[dict], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def _acc_row(name: str, per_m: dict, ms: list[int]) -> str:
    cells = [f"{100 * per_m[m]['accuracy']:.1f}" if m in per_m else "" for m in ms]
    n = max(s["n"] for s in per_m.values())
    return f"| {name} | {n} | " + " | ".join(cells) + " |"


def accuracy_table(groups: dict, ms: list[int], title: str) -> list[str]:
    head = [f"| {title} | questions | " + " | ".join(f"m={m}" for m in ms) + " |",
            "|---|---:|" + "---:|" * len(ms)]
    return head + [_acc_row(g, groups[g], ms) for g in sorted(groups)]


def oracle_table(cal: dict) -> list[str]:
    M = max(cal["ms"])
    lines = ["| task | oracle accuracy | oracle mean GFLOPs | accuracy at M | GFLOPs at M |",
             "|---|---:|---:|---:|---:|"]
    for task, o in sorted(cal["oracle"].items()) + [("all", cal["oracle_all"])]:
        at_m = _at(cal, task, M)
        lines.append(f"| {task} | {100 * o['accuracy']:.1f} | {o['mean_flops'] / 1e9:.2f} | "
                     f"{100 * at_m['accuracy']:.1f} | {at_m['mean_flops'] / 1e9:.2f} |")
    return lines


def _at(cal: dict, task: str, m: int) -> dict:
    if task != "all":
        return cal["by_task"][task][m]
    per = [cal["by_task"][t][m] for t in cal["by_task"]]
    n = sum(p["n"] for p in per)
    return {"accuracy": sum(p["accuracy"] * p["n"] for p in per) / n,
            "mean_flops": sum(p["mean_flops"] * p["n"] for p in per) / n}


def markdown(cal: dict) -> str:
    ms, unseen = cal["ms"], cal["unseen_ms"]
    all_ms = sorted(set(ms) | set(unseen))
    lines = [f"# Evaluation of `{cal['model']}`", "",
             "Accuracy (%) per task and per question kind at m visual tokens"
             + (f"; m = {unseen} were never drawn in training." if unseen else "."), ""]
    lines += accuracy_table(cal["by_task"], all_ms, "task") + [""]
    lines += accuracy_table(cal["by_kind"], all_ms, "kind") + [""]
    lines += ["Oracle: per question the smallest trained m that answers it right.", ""]
    lines += oracle_table(cal) + [""]
    return "\n".join(lines) + "\n"


def plots(cal: dict, folder: Path) -> None:
    """accuracy.png: accuracy against m and against FLOPs, per task and per kind."""
    import matplotlib  # optional and heavy: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # with the backend chosen above

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, per in sorted({**cal["by_task"], **cal["by_kind"]}.items()):
        ms = sorted(per)
        style = "-o" if name in cal["by_task"] else ":."
        axes[0].plot(ms, [100 * per[m]["accuracy"] for m in ms], style, label=name)
        axes[1].plot([per[m]["mean_flops"] / 1e9 for m in ms],
                     [100 * per[m]["accuracy"] for m in ms], style, label=name)
    for ax, xl in zip(axes, ("visual tokens m", "GFLOPs per question (cost model)"), strict=True):
        ax.set_xscale("log", base=2 if xl.startswith("visual") else 10)
        ax.set_xlabel(xl)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{cal['model']}: accuracy vs m and vs FLOPs")
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)
    plt.close(fig)
