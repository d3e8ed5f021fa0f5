"""Training throughput of one process against DDP and ZeRO-2 workers (`mqt train` runs).

    python -m bench.train preset=tiny workers=[1,2] zero2=[1,2] steps=30
    python -m bench.train preset=mqt-smol workers=[1,2] zero2=[] batch_size=8 steps=12
    python -m bench.train preset=tiny local=false workers=[2] zero2=[] report=[2]   # report cost

Each run is a short `mqt train` at a fixed m (stage 1 only, no alignment, one checkpoint at
the end) on the same global batch; samples/s and tokens/s (visual + text tokens the LM
read) are medians over the steps after `skip` (the first steps warm caches and
allocators). Prints a table, writes `bench.md`, `bench.png` and the config into `output`.
Options as for a job: `--config FILE.yaml`, `--preset NAME`, `--print-config`, `key=value`.
"""

from __future__ import annotations

import csv
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jobs import train
from jobs.cli import configure, run_module
from mqt.configtree import merge, save_config, to_dict
from mqt.console import log
from mqt.load import ModelArgs, model_config, validate_model


@dataclass
class Config(ModelArgs):
    checkpoint: str = "none"  # throughput does not depend on the weights
    local: bool = True  # include one process without Ray (backend=local)
    workers: list[int] = field(default_factory=lambda: [1, 2])  # one DDP run per entry
    zero2: list[int] = field(default_factory=lambda: [1, 2])  # one DeepSpeed ZeRO-2 run per entry
    # one DDP run per entry with a ray.train.report every step (report_every=1)
    report: list[int] = field(default_factory=list)
    cpus_per_worker: float = 1.0
    batch_size: int = 16  # global
    m: int = 0  # visual tokens per step; 0 = M
    steps: int = 20
    skip: int = 3  # first steps left out of the median
    easyvqa_images: int = 64
    threads: int = 0  # torch threads of the local run; 0 = torch's default
    output: str = "runs/train-bench"


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if not 0 <= cfg.m <= model_config(cfg).query.num_queries:
        raise ValueError(f"m={cfg.m} is outside 0..M")
    if cfg.steps <= cfg.skip or any(w < 1 for w in cfg.workers + cfg.zero2 + cfg.report):
        raise ValueError("steps must exceed skip, and workers must be >= 1")
    for backend, w in runs(cfg):
        train.validate(run_config(cfg, backend, w))


def resolve(overrides: list[str]) -> Config:
    """The checked config of `python -m bench.train key=value ...` (what jobs.cli resolves)."""
    cfg = configure(sys.modules[__name__], None, overrides, None)
    validate(cfg)
    return cfg


def runs(cfg: Config) -> list[tuple[str, int]]:
    """(backend, workers) of each run, in the table's order."""
    return (([("local", 1)] if cfg.local else []) + [("ddp", w) for w in cfg.workers]
            + [("deepspeed", w) for w in cfg.zero2] + [("ddp+report", w) for w in cfg.report])


def run_config(cfg: Config, backend: str, workers: int) -> train.Config:
    """The `mqt train` config of one run: stage 1 at a fixed m, one checkpoint at the end."""
    label = {"local": "local", "ddp": f"ddp-{workers}", "deepspeed": f"zero2-{workers}",
             "ddp+report": f"ddp-{workers}+report"}[backend]
    return merge(train.Config(), {
        **{k: v for k, v in to_dict(cfg).items() if k in ("preset", "model", "checkpoint",
                                                         "llava", "seed", "batch_size")},
        "data": {"easyvqa_images": cfg.easyvqa_images, "eval_examples": 1},
        "stage1": {"steps": cfg.steps, "schedule": {"kind": "fixed",
                                                    "values": [cfg.m] if cfg.m else []}},
        "stage2": {"steps": 0}, "align": {"steps": 0}, "eval_ms": [1], "checkpoint_every": 0,
        "threads": cfg.threads if backend == "local" else 0,
        "backend": backend.removesuffix("+report"),
        "report_every": 1 if backend.endswith("+report") else 0,
        "scaling": {"workers": workers, "cpus_per_worker": cfg.cpus_per_worker},
        "deepspeed": {"stage": 2},
        "output": str(Path(cfg.output) / label), "name": label,
        "feature_cache": str(Path(cfg.output) / "features.pt")})


def main(cfg: Config) -> list[dict]:
    save_config(cfg, cfg.output)
    rows = [measure(cfg, backend, w) for backend, w in runs(cfg)]
    text = markdown(rows, cfg)
    print(text)
    (Path(cfg.output) / "bench.md").write_text(text + "\n")
    plot(rows, Path(cfg.output) / "bench.png")
    log(f"wrote {Path(cfg.output) / 'bench.md'} and bench.png")
    return rows


def measure(cfg: Config, backend: str, workers: int) -> dict:
    """One fresh run (its old output and Ray storage removed: the same name would resume)."""
    tc = run_config(cfg, backend, workers)
    shutil.rmtree(tc.output, ignore_errors=True)
    train.main(tc)
    with (Path(tc.output) / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[cfg.skip:]
    sps = statistics.median(float(r["samples_per_s"]) for r in rows)
    tps = statistics.median(float(r["tokens_per_s"]) for r in rows)
    return {"run": tc.name, "workers": workers, "per_worker": cfg.batch_size // workers,
            "step_s": round(cfg.batch_size / sps, 3), "samples_per_s": round(sps, 2),
            "tokens_per_s": round(tps)}


def markdown(rows: list[dict], cfg: Config) -> str:
    base = rows[0]["samples_per_s"]
    lines = [f"preset {cfg.preset}, global batch {cfg.batch_size}, m = {cfg.m or 'M'}, "
             f"median over steps {cfg.skip + 1}..{cfg.steps}\n",
             "| run | workers | batch per worker | s/step | samples/s | tokens/s | vs first row |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['workers']} | {r['per_worker']} | {r['step_s']} | "
              f"{r['samples_per_s']} | {r['tokens_per_s']} | {r['samples_per_s'] / base:.2f}x |"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # optional and heavy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # with the backend chosen above

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["run"] for r in rows], [r["samples_per_s"] for r in rows], color="tab:blue")
    ax.set_ylabel("samples/s")
    ax.set_title("mqt train throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.train"))
