"""How close the engine runs to this machine's peak: executed FLOPs per second against the
fp32 matmul peak measured in the same run (a benchmark).

    python -m bench.flops docs=docs/bench

For each m: batches of easy-vqa test questions (one image each, `batch_size` rows) go
through `pipeline.engine.Engine` as a batch job's actor runs them (decoded pixels in, rows
out: vision encoder, query transformer, prompt prefill, greedy decoding, pricing). One
batch runs under torch's `FlopCounterMode`, which counts the FLOPs of every matmul,
convolution and attention the batch really executed (not the cost model); the same batch is
then timed `repeats` times after a warm-up, with the counter off. Executed FLOP/s =
counted FLOPs / seconds per batch, as a fraction of the peak: a 2048 x 2048 fp32 matmul
timed with the same threads in the same process, before and after the m runs. The cost
model's FLOPs for the same rows (what the job charges) are reported beside the count, and
the vision encoder alone is timed on a batch's pixels as inference runs it (no gradients:
for MobileNetV2 its BatchNorms folded into the convolutions) and as the module itself runs
(with gradients enabled, as in training).
Writes flops.md, flops.json and flops.png (to `output`, and to `docs` if given).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.cli import run_module
from mqt.data import easyvqa_examples
from mqt.data.corpus import sample, write_corpus
from mqt.load import ModelArgs, model_args, validate_model
from pipeline.decode import decode_batch, pixels_to_image
from pipeline.engine import Engine
from pipeline.scheduler.policy import FixedPolicy
from pipeline.sources import Defaults, manifest_rows

COMMAND = "python -m bench.flops docs=docs/bench"


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    ms: list[int] = field(default_factory=lambda: [1, 16, 64])
    batch_size: int = 16
    batches: int = 3  # different batches per m (each counted and timed)
    repeats: int = 3  # timed runs of each batch
    threads: int = 0  # torch threads; 0 = every core
    matmul: int = 2048  # size of the square matmul that measures the peak
    output: str = "runs/bench-flops"
    docs: str = ""  # also write flops.md, flops.json and flops.png here


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if not cfg.ms or min(cfg.ms) < 1 or cfg.batch_size < 1 or cfg.batches < 1 \
            or cfg.repeats < 1 or cfg.matmul < 64:
        raise ValueError("ms: each >= 1; batch_size, batches, repeats >= 1; matmul >= 64")


def matmul_peak(n: int, repeats: int = 10) -> float:
    """fp32 FLOP/s of an n x n matmul (the best of `repeats` after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def batches(cfg: Config, out: Path, size: int) -> list[pa.Table]:
    """`batches` decoded batches of easy-vqa test questions (as the decode stage gives them)."""
    vqa = easyvqa_examples("test", tasks=("vqa",))
    manifest = write_corpus(out / "corpus", sample(vqa, cfg.batch_size * cfg.batches, cfg.seed))
    lines = manifest.read_text().splitlines()
    return [decode_batch(manifest_rows(pa.table({"text": lines[i: i + cfg.batch_size]}),
                                       str(manifest.parent), Defaults(), kind="jsonl"), size)
            for i in range(0, len(lines), cfg.batch_size)]


def measure(engine: Engine, batch: pa.Table, repeats: int) -> dict:
    """Counted FLOPs of one run of `batch`, its cost-model FLOPs, and seconds per run."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        rows = engine(batch).to_pylist()
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]]
    with torch.inference_mode():
        engine(batch)  # warm-up (allocator, caches)
        seconds = [_timed(lambda: engine(batch)) for _ in range(repeats)]
    return {"executed": counter.get_total_flops(), "cost_model": sum(r["flops"] for r in rows),
            "new_tokens": sum(r["new_tokens"] for r in rows), "seconds": seconds}


def encoder_seconds(engine: Engine, batch: pa.Table, repeats: int) -> dict:
    """Seconds of the vision encoder on one batch's pixels: without gradients (inference)
    and with them enabled (the module as training runs it); the best of `repeats`."""
    vision = engine.model.vision
    pv = engine.model.preprocess([pixels_to_image(p) for p in batch.column("pixels").to_pylist()])
    out = {}
    for name, grad in (("inference", False), ("module", True)):
        with torch.set_grad_enabled(grad):
            vision(pv)  # warm-up (and the folded copy made)
            out[name] = min(_timed(lambda: vision(pv)) for _ in range(repeats))
    return out


def main(cfg: Config) -> dict:
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    out = Path(cfg.output)
    peaks = [matmul_peak(cfg.matmul)]
    engine = Engine(model_args(cfg), FixedPolicy(default=cfg.ms[0]), threads=threads)
    data = batches(cfg, out, engine.model.cfg.vision.image_size)
    per_m = {}
    for m in cfg.ms:
        engine.policy = FixedPolicy(default=m).bind(engine.model.num_queries)
        runs = [measure(engine, b, cfg.repeats) for b in data]
        per_m[m] = runs
    peaks.append(matmul_peak(cfg.matmul))
    result = {"threads": threads, "batch_size": cfg.batch_size, "peak": peaks,
              "torch": torch.__version__, "per_m": {str(m): r for m, r in per_m.items()},
              "encoder": encoder_seconds(engine, data[0], cfg.repeats)}
    text = table(result, cfg)
    print(text)
    for folder in {out, Path(cfg.docs)} if cfg.docs else {out}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flops.md").write_text(text)
        (folder / "flops.json").write_text(json.dumps(result, indent=1))
        plot(result, folder / "flops.png")
    return result


def rates(result: dict, m: str) -> list[float]:
    """Executed FLOP/s of every timed run at m."""
    return [r["executed"] / s for r in result["per_m"][m] for s in r["seconds"]]


def table(result: dict, cfg: Config) -> str:
    peak = statistics.median(result["peak"])
    lines = [f"```\n$ {COMMAND}\n```", "",
             f"{cfg.preset}, batches of {result['batch_size']} easy-vqa test questions, "
             f"{result['threads']} torch threads, torch {result['torch']}. Peak: a "
             f"{cfg.matmul}x{cfg.matmul} fp32 matmul, "
             + " and ".join(f"{p / 1e9:.0f}" for p in result["peak"])
             + " GFLOP/s (before and after). Median (min..max) over "
             f"{cfg.batches} batches x {cfg.repeats} timed runs.", "",
             "| m | executed GFLOPs / batch | cost model GFLOPs / batch | new tokens / batch "
             "| seconds / batch | executed GFLOP/s | of peak |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for m, runs in result["per_m"].items():
        r = rates(result, m)
        secs = [s for x in runs for s in x["seconds"]]
        lines.append(
            f"| {m} | {statistics.mean(x['executed'] for x in runs) / 1e9:.1f} | "
            f"{statistics.mean(x['cost_model'] for x in runs) / 1e9:.1f} | "
            f"{statistics.mean(x['new_tokens'] for x in runs):.0f} | "
            f"{_spread(secs, 2)} | {_spread([x / 1e9 for x in r], 1)} | "
            f"{statistics.median(r) / peak:.0%} ({min(r) / peak:.0%}..{max(r) / peak:.0%}) |")
    enc = result["encoder"]
    lines += ["", f"Vision encoder on one batch's pixels (best of {cfg.repeats}): "
              f"{enc['inference']:.3f} s as inference runs it, {enc['module']:.3f} s as the "
              f"module runs with gradients enabled ({enc['module'] / enc['inference']:.1f}x)."]
    return "\n".join(lines) + "\n"


def _spread(xs: list[float], digits: int) -> str:
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}..{max(xs):.{digits}f})"


def plot(result: dict, path: Path) -> None:
    import matplotlib  # heavy and for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, see above

    peak = statistics.median(result["peak"])
    ms = list(result["per_m"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    med = [statistics.median(rates(result, m)) / peak for m in ms]
    lo = [med[i] - min(rates(result, m)) / peak for i, m in enumerate(ms)]
    hi = [max(rates(result, m)) / peak - med[i] for i, m in enumerate(ms)]
    ax.bar(ms, med, yerr=[lo, hi], capsize=4, color="#4a78b0")
    ax.axhline(0.6, ls="--", color="grey", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("m (visual tokens)")
    ax.set_ylabel("executed FLOP/s / fp32 matmul peak")
    ax.set_title(COMMAND, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m bench.flops"))
