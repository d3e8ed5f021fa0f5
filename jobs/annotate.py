"""`mqt annotate`: caption, answer or choose for every image of a folder or manifest on Ray Data.

    mqt annotate source=IMAGES/ task=caption output=runs/annotate policy.m.caption=4

Stages: source rows (pipeline.sources) -> decode + resize in Ray tasks (pipeline.decode)
-> the model in an actor pool, one model per actor (pipeline.predictor) -> Parquet files in
`output/data/`. Bad images become error rows. The summary (rows, errors, rows/s, FLOPs, m
histogram per task) is computed by streaming the written Parquet back, never by collecting
the dataset on the driver; it is printed and saved as `output/summary.json`, next to the
resolved `output/config.yaml`. Schema and limits: docs/annotate.md.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from jobs.common import ModelArgs, log, resolved_config, save_config, validate_model
from mqt.config import VLMConfig
from mqt.configtree import to_dict
from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.policy import FixedPolicy
from pipeline.sources import Defaults, check_source, row_error
from pipeline.tasks import TASKS

LLAVA_IMAGE_SIZE = 336


@dataclass
class PolicyArgs:
    """The token policy: a fixed m per task (`m: {caption: 4}`), else `default` (0 = M)."""

    m: dict = field(default_factory=dict)
    default: int = 0


@dataclass
class Config(ModelArgs):
    source: str = ""  # a folder of images, or a manifest .jsonl / .parquet
    task: str = "caption"  # for rows that do not name one (every row of a folder)
    question: str = ""  # for rows that do not have one
    output: str = "runs/annotate"  # folder: data/*.parquet, summary.json, config.yaml
    overwrite: bool = False  # replace earlier rows in output/data (no resume yet)
    policy: PolicyArgs = field(default_factory=PolicyArgs)
    batch_size: int = 16  # rows per model call
    actors: int = 1  # predictor actors, one model each
    cpus_per_actor: float = 0.5  # fractional: a whole CPU per actor starves the read tasks
    gpus_per_actor: float = 0.0  # > 0 on a GPU cluster
    threads: int = 1  # torch threads per actor; 0 = torch's default
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error rows (decompression bombs)
    limit: int = 0  # only the first rows of the source; 0 = all


def validate(cfg: Config) -> None:
    """Everything that can be checked without Ray or a model; errors name the field."""
    validate_model(cfg)
    check_source(cfg.source)
    if cfg.task not in TASKS:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(TASKS)}")
    if Path(cfg.source).is_dir() and (why := row_error(cfg.task, cfg.question, None)):
        raise ValueError(f"task/question: folder rows would all fail: {why}")
    _check_policy(cfg)
    _check_numbers(cfg)
    if not cfg.overwrite and any(Path(cfg.output, "data").glob("*.parquet")):
        raise ValueError(f"output={cfg.output!r} already holds rows; resume is not implemented "
                         "yet: pass overwrite=true or another folder")


def _check_policy(cfg: Config) -> None:
    unknown = sorted(set(cfg.policy.m) - set(TASKS))
    if unknown:
        raise ValueError(f"policy.m.{unknown[0]}: unknown task; known: {sorted(TASKS)}")
    target = target_config(cfg)
    if target is not None:  # else each actor checks when its model is loaded
        policy(cfg).check(target.query.num_queries)


def target_config(cfg: Config) -> VLMConfig | None:
    """M and the image size come from the model that will load (see jobs.common)."""
    return resolved_config(cfg)


def _check_numbers(cfg: Config) -> None:
    for name in ("batch_size", "actors", "max_pixels"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.cpus_per_actor or cfg.gpus_per_actor < 0 or cfg.limit < 0 or cfg.threads < 0:
        raise ValueError("cpus_per_actor must be > 0; gpus_per_actor, limit, threads >= 0")
    if not cfg.output:
        raise ValueError("output: give a folder for the Parquet rows")


def policy(cfg: Config) -> FixedPolicy:
    return FixedPolicy(dict(cfg.policy.m), cfg.policy.default)


def build(cfg: Config):
    """The lazy dataset of output rows: source -> decode (tasks) -> predictor (actors)."""
    import ray.data

    from pipeline.decode import decode_batch
    from pipeline.predictor import Predictor
    from pipeline.sources import build_dataset

    target = target_config(cfg)
    # LLaVA's CLIP-336 when unknown: the predictor resizes again if the guess is wrong
    size = target.vision.image_size if target is not None else LLAVA_IMAGE_SIZE
    ds = build_dataset(cfg.source, Defaults(cfg.task, cfg.question), cfg.limit)
    ds = ds.map_batches(decode_batch, batch_format="pyarrow",
                        fn_kwargs={"image_size": size, "max_pixels": cfg.max_pixels})
    model_args = {k: v for k, v in to_dict(cfg).items() if k in ModelArgs.__dataclass_fields__}
    return ds.map_batches(
        Predictor, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"model_args": model_args, "policy": policy(cfg),
                               "threads": cfg.threads},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)


def main(cfg: Config) -> dict:
    validate(cfg)  # before Ray starts or any model loads
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    out = Path(cfg.output)
    if cfg.overwrite:
        shutil.rmtree(out / "data", ignore_errors=True)
    save_config(cfg, out)
    t0 = time.perf_counter()
    build(cfg).write_parquet(str(out / "data"))
    summary = summarize(out / "data", time.perf_counter() - t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    log(f"wrote {out / 'data'} and {out / 'summary.json'}")
    return summary


def summarize(data_dir: Path, seconds: float) -> dict:
    """Rows, errors, rows/s, FLOPs and m per task, streamed from the written Parquet."""
    import pyarrow.dataset as pads

    rows = errors = flops = 0
    hist: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    for b in pads.dataset(str(data_dir), format="parquet").to_batches(
            columns=["task", "m", "flops", "error"]):
        for task, m, f, err in zip(*(b.column(i).to_pylist() for i in range(4)), strict=True):
            rows, flops = rows + 1, flops + (f or 0)
            if err:
                errors += 1
                reasons[err.split(":")[0]] += 1
            else:
                hist[task][m] += 1
    return {"rows": rows, "errors": errors, "error_kinds": dict(reasons.most_common()),
            "seconds": round(seconds, 3), "rows_per_s": round(rows / max(seconds, 1e-9), 3),
            "flops": flops, "m_histogram": {t: dict(sorted(c.items())) for t, c in hist.items()}}


def print_summary(s: dict) -> None:
    print(f"rows {s['rows']}  errors {s['errors']}  {s['rows_per_s']} rows/s  "
          f"{s['seconds']} s  {s['flops'] / 1e9:.3f} GFLOPs")
    for task, hist in sorted(s["m_histogram"].items()):
        print(f"  {task}: " + ", ".join(f"m={m}: {n}" for m, n in hist.items()))
    for kind, n in s["error_kinds"].items():
        print(f"  error {kind}: {n}")
