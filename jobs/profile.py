"""`mqt profile`: how long a row takes at each m on this machine, for quotas of measured time.

    mqt profile [--preset mqt-smol] [source=rows.jsonl] [ms=[1,4,16,64]] [batch_size=16]
                [output=runs/profile]

Times the model stage of `mqt annotate` (the same `Engine`, batches of the job's size,
rows in source order so a batch mixes tasks as the job's will) on a sample of rows: every m
of `ms` for the whole sample, `repeats` times (the order of the m reversed every other
time), after one warm-up batch. The images are decoded before timing, as the job decodes
them in a stage of their own. Per (task, m) it takes the mean seconds and FLOPs per row, the
median over the repeats, and fits the affine time model of pipeline/scheduler/timing.py: seconds =
a x FLOPs + b[task]. Writes `time_profile.json` (the model, what it was fitted on, the
device and batch size), `profile.md` (a table of the points, with the error of the fit and
of a time proportional to FLOPs, one FLOP/s for every m) and `profile.png` (seconds per row
against FLOPs per row, both fits drawn) to `output`. Run it on the kind of
accelerator the job will run on, with the job's batch size and threads, then:

    mqt annotate ... quota.seconds=S quota.measured=true \
        quota.time_profile=runs/profile/time_profile.json

Without `source`, the sample is drawn from the bundled corpus of `mqt demo` (easy-vqa
captions, VQA and multiple choice; mosaic VQA and multiple choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mqt.configtree import save_config
from mqt.console import log
from mqt.data.corpus import bundled_examples, write_corpus
from mqt.load import ModelArgs, model_args, validate_model
from pipeline.annotate import AnnotateConfig, job_tasks
from pipeline.engine import Engine
from pipeline.profile import decoded_batches, device_name, plot, sample_lines, table, time_rows
from pipeline.scheduler.policy import FixedPolicy
from pipeline.scheduler.timing import fit

DEFAULT_MS = [1, 4, 16, 64]


@dataclass
class Config(ModelArgs):
    preset: str = "mqt-smol"
    source: str = ""  # a local JSONL manifest (its rows' task, question, options); "" = bundled
    rows: int = 16  # rows sampled per task
    ms: list[int] = field(default_factory=lambda: list(DEFAULT_MS))  # those above M are dropped
    batch_size: int = 16  # the job's rows per model call
    threads: int = 1  # torch threads, as the job's actors (annotate's threads)
    tasks: dict = field(default_factory=dict)  # the job's `tasks.<name>` overrides
    repeats: int = 3
    output: str = "runs/profile"


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if cfg.rows < 1 or cfg.batch_size < 1 or cfg.repeats < 1 or cfg.threads < 0:
        raise ValueError("rows, batch_size and repeats must be >= 1, threads >= 0")
    if len(set(cfg.ms)) < 2 or any(not isinstance(m, int) or m < 1 for m in cfg.ms):
        raise ValueError(f"ms: two or more distinct m >= 1 (a line needs two points), "
                         f"got {cfg.ms}")
    if cfg.source and not (cfg.source.endswith(".jsonl") and Path(cfg.source).is_file()):
        raise ValueError(f"source: a local .jsonl manifest, got {cfg.source!r}")
    job_tasks(AnnotateConfig(tasks=dict(cfg.tasks)))  # checks tasks.* as annotate does


def main(cfg: Config) -> dict:
    out = Path(cfg.output)
    save_config(cfg, out)
    manifest = Path(cfg.source) if cfg.source else bundled_manifest(out / "corpus", cfg.seed)
    lines = sample_lines(manifest, cfg.rows, cfg.seed)
    tasks = job_tasks(AnnotateConfig(tasks=dict(cfg.tasks)))
    engine = Engine(model_args(cfg), FixedPolicy(default=1), threads=cfg.threads, tasks=tasks)
    M = engine.model.num_queries
    ms = sorted({m for m in cfg.ms if m <= M})
    if len(ms) < 2:
        raise ValueError(f"ms: fewer than two of {cfg.ms} are <= M = {M}")
    batches = decoded_batches(lines, manifest.parent, engine.model.cfg.vision.image_size,
                              cfg.batch_size, tasks)
    log(f"profiling {len(lines)} rows of {manifest} at m = {ms}, {cfg.repeats} repeats, "
        f"batches of {cfg.batch_size}")
    points = time_rows(engine, batches, ms, cfg.repeats, progress=log)
    model = fit(points, device_name(cfg.threads), cfg.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "time_profile.json")
    text = table(model)
    (out / "profile.md").write_text(text)
    plot(model, out / "profile.png")
    print(text)
    log(f"time profile in {out / 'time_profile.json'}: give it to a measured quota as "
        f"quota.time_profile={out / 'time_profile.json'}")
    return model.to_json()


def bundled_manifest(folder: Path, seed: int) -> Path:
    """The bundled corpus of `mqt demo` as a manifest: what is profiled without `source`."""
    return write_corpus(folder, bundled_examples(seed=seed))
