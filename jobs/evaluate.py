"""`mqt eval`: accuracy per task at many m, the per-question oracle, calibration data.

For every m (trained ones and, separately, m never drawn in training) each held-out
question is answered and scored (mqt.evaluation.run); the oracle is, per question, the
smallest m that answers it right: its accuracy and mean cost are the headroom a per-image
scheduler can chase. Outputs (mqt.evaluation.report): `results.parquet` (one row per
question and m), `calibration.json` (what other jobs read), `eval.md` and a PNG plot.
`merge=[...]` makes the same outputs from several runs' results.parquet without running the
model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mqt.configtree import save_config
from mqt.console import log
from mqt.evaluation.report import markdown, write_outputs
from mqt.evaluation.run import (
    EvalArgs,
    answer_all,
    calibration_beside,
    default_ms,
    eval_examples,
    merged_rows,
    validate_eval,
)
from mqt.load import load_model
from mqt.train.steps import FeatureCache

Config = EvalArgs  # which model, which questions, which m (mqt.evaluation.run)


def validate(cfg: Config) -> None:
    validate_eval(cfg)


def main(cfg: Config) -> dict:
    if cfg.merge:
        return merge(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output)
    save_config(cfg, out)
    model = load_model(cfg).eval()
    ms, unseen = cfg.ms or default_ms(model.num_queries), sorted(set(cfg.unseen_ms))
    examples = eval_examples(cfg)
    cache = FeatureCache(model, cfg.feature_cache or out / "features.pt")
    cache.add(examples)
    t0, every_m = time.perf_counter(), sorted(set(ms) | set(unseen))
    rows = answer_all(model, examples, cache.get(examples), every_m, cfg.batch_size)
    log(f"evaluated {len(examples)} questions at {len(every_m)} m values "
        f"in {time.perf_counter() - t0:.0f} s")
    return report(cfg, model.cfg.name, cfg.checkpoint, rows, ms, unseen)


def merge(cfg: Config) -> dict:
    """The outputs of several `mqt eval` runs of one model as one: the questions of all."""
    meta = calibration_beside(cfg.merge[0])
    ms = cfg.ms or [int(m) for m in meta["ms"]]
    unseen = cfg.unseen_ms or [int(m) for m in meta.get("unseen_ms", [])]
    rows, kept = merged_rows(cfg.merge, ms, unseen)
    if dropped := sorted(set(unseen) - set(kept)):
        log(f"unseen m {dropped} left out: not every file answered its questions there")
    save_config(cfg, Path(cfg.output))
    log(f"merged {len({r['id'] for r in rows})} questions from {len(cfg.merge)} files")
    return report(cfg, meta.get("model", cfg.preset), meta.get("checkpoint", ""), rows, ms,
                  kept)


def report(cfg: Config, name: str, checkpoint: str, rows: list[dict], ms: list[int],
           unseen: list[int]) -> dict:
    """Every output file, and the Markdown table on stdout; returns the calibration."""
    cal = write_outputs(cfg, name, checkpoint, rows, ms, unseen)
    print(markdown(cal))
    return cal
