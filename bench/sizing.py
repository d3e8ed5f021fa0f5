"""Engine actors, threads and CPUs per actor: the chosen default against hand-tuned settings
(a benchmark).

    python -m bench.sizing docs=docs/bench

Runs `mqt annotate` with the shipped default on the same rows (`questions` easy-vqa test
questions from the bundled corpus, all at m = `m`) once per setting and repeat, on one
local Ray of all this machine's CPUs, in an order that changes every repeat. The settings:
`actors x threads` hand-tuned ones, and the default (every sizing field 0: chosen from the
cluster's resources by pipeline/sizing.py). Per setting: the end-to-end rows/s (start-up
included) and the steady rows/s after the first rows came back, median (min..max) over the
repeats, and the default's steady rows/s as a share of the best setting's. Writes
bench.json, sizing.md, sizing.json (the same raw runs) and sizing.png to `output` (and
`docs`); `from_json=` renders a saved bench.json again without running.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jobs.cli import run_module
from mqt.configtree import save_config
from mqt.data.corpus import bundled_examples, write_corpus
from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate
from pipeline.connect import connect

COMMAND = "python -m bench.sizing docs=docs/bench"
# (actors, threads, cpus_per_actor); 0 everywhere = the default
DEFAULT_SETTINGS = [[1, 1, 0.5], [1, 2, 1.0], [2, 1, 0.5], [0, 0, 0.0]]


@dataclass
class Config:
    preset: str = "mqt-smol"
    questions: int = 160
    m: int = 64
    batch_size: int = 16
    settings: list = field(default_factory=lambda: [list(s) for s in DEFAULT_SETTINGS])
    repeats: int = 3
    seed: int = 0
    output: str = "runs/bench-sizing"
    docs: str = ""
    from_json: str = ""  # a bench.json of an earlier run: render it again, run nothing


def validate(cfg: Config) -> None:
    if cfg.questions < cfg.batch_size or cfg.repeats < 1 or cfg.m < 1:
        raise ValueError("questions >= batch_size, repeats >= 1 and m >= 1")
    if not cfg.from_json and [0, 0, 0.0] not in [[a, t, float(c)] for a, t, c in cfg.settings]:
        raise ValueError("settings: include the default [0, 0, 0]")


def name(setting) -> str:
    a, t, c = setting
    return "default" if not (a or t or c) else f"{a} x {t} thread{'s' * (t != 1)} ({c:g} CPU)"


def main(cfg: Config) -> dict:
    out = Path(cfg.output)
    save_config(cfg, out)
    if cfg.from_json:
        result = json.loads(Path(cfg.from_json).read_text())
    else:
        result = measure(cfg, out)
        (out / "bench.json").write_text(json.dumps(result, indent=1))
    text = table(result)
    print(text)
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sizing.md").write_text(text)
        (folder / "sizing.json").write_text(json.dumps(result, indent=1))  # the raw runs
        plot(result, folder / "sizing.png")
    return result


def measure(cfg: Config, out: Path) -> dict:
    examples = bundled_examples(cfg.questions, 0, 0, 0, cfg.seed)
    manifest = write_corpus(out / "corpus", examples)
    connect("", include_dashboard=False)  # one local Ray of every CPU here, for every run
    runs: dict[str, list[dict]] = {name(s): [] for s in cfg.settings}
    for rep in range(cfg.repeats):
        order = cfg.settings[rep % len(cfg.settings):] + cfg.settings[:rep % len(cfg.settings)]
        for a, t, c in order:
            job = AnnotateConfig(preset=cfg.preset, source=str(manifest), seed=cfg.seed,
                                 output=str(out / "annotate"), overwrite=True,
                                 policy=PolicyArgs(default=cfg.m), batch_size=cfg.batch_size,
                                 block_rows=cfg.batch_size, actors=a, threads=t,
                                 cpus_per_actor=c, progress=False)
            r = annotate(job)["this_run"]
            runs[name([a, t, c])].append({k: r[k] for k in (
                "rows", "seconds", "rows_per_s", "startup_s", "steady_rows_per_s", "actors")})
    return {"cpus": os.cpu_count(), "questions": cfg.questions, "m": cfg.m,
            "batch_size": cfg.batch_size, "repeats": cfg.repeats, "preset": cfg.preset,
            "runs": runs}


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}..{max(xs):.2f})"


def table(result: dict) -> str:
    runs = result["runs"]
    steady = {n: [r["steady_rows_per_s"] for r in rs] for n, rs in runs.items()}
    best = max((n for n in steady if n != "default"), key=lambda n: statistics.median(steady[n]))
    share = [d / statistics.median(steady[best]) for d in steady["default"]]
    chosen = runs["default"][0]["actors"]
    lines = [
        "# Engine actors: the default against hand-tuned settings", "",
        f"Command: `{COMMAND}` ({result['questions']} easy-vqa test questions of the bundled "
        f"corpus at m = {result['m']}, {result['preset']}, batch_size={result['batch_size']}, "
        f"repeats={result['repeats']}; one local Ray of this machine's {result['cpus']} CPUs).",
        "", f"The default (`actors`, `threads`, `cpus_per_actor` all 0) chose "
        f"{chosen['actors']} actors x {chosen['threads']} threads, {chosen['cpus_per_actor']:g} "
        "CPU each (pipeline/sizing.py).", "",
        "Rows/s, median (min..max) over the repeats:", "",
        "| setting | steady rows/s | end to end rows/s | start-up s |", "|---|---:|---:|---:|"]
    for n, rs in runs.items():
        lines.append(f"| {n} | {_spread(steady[n])} | {_spread([r['rows_per_s'] for r in rs])}"
                     f" | {_spread([r['startup_s'] for r in rs])} |")
    lines += ["", f"Default / best hand-tuned setting ({best}), steady rows/s: "
              f"{_spread(share)} (goal: >= 0.90).", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = list(runs)
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for i, n in enumerate(names):
        v = [r["steady_rows_per_s"] for r in runs[n]]
        ax.bar(i, statistics.median(v), color="tab:blue" if n == "default" else "grey")
        ax.plot([i] * len(v), v, "k.", alpha=0.6)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel="steady rows/s", title=f"mqt annotate, m = {result['m']}, "
           f"{result['cpus']} CPUs")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.sizing"))
