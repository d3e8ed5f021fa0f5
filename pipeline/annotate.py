"""Batch annotation on Ray Data: caption, answer or choose for every image of a corpus.

Stages: source rows (pipeline/sources.py) -> decode + resize in Ray tasks
(pipeline/decode.py) -> the model in an actor pool, one engine per actor
(pipeline/engine.py) -> streamed back to the driver and written as whole Parquet part files
in `output/data/` (pipeline/writer.py). Bad images become error rows. Re-running the same
job into the same output resumes: ids already written are skipped at the source, so after
any crash every id ends up exactly once. With a quota the scheduler's front door plans the
rows left (`pipeline.scheduler.prepare`, in `check`) and runs the job's ledger and pacer
(`pipeline.scheduler.runtime.start`). The summary (pipeline/summary.py) is computed by
streaming the written Parquet back, never by collecting the dataset on the driver; it is
printed and saved as `output/summary.json`, next to the resolved `output/config.yaml`.
`mqt annotate` (jobs/annotate.py) and `mqt demo` run `annotate`. Schema and limits:
docs/annotate.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import yaml
from tqdm import tqdm

from mqt.config import VLMConfig, preset
from mqt.configtree import to_dict
from mqt.console import log
from mqt.load import ModelArgs, model_args, resolved_config, validate_model
from mqt.model import weight_bytes
from mqt.tasks import TASKS, Task
from pipeline.batchfile import OUTPUT_FILES, write_output
from pipeline.connect import check_cluster, connect
from pipeline.decode import DEFAULT_MAX_PIXELS, decode_batch
from pipeline.engine import OUTPUT_SCHEMA, Engine, error_row
from pipeline.errors import retryable
from pipeline.metrics import JobMetrics
from pipeline.scheduler import Budget, InfeasibleQuota, QuotaArgs, prepare
from pipeline.scheduler.budget import SKIPPED
from pipeline.scheduler.ledger import LedgerClient, clear_state
from pipeline.scheduler.policy import FixedPolicy, TokenPolicy
from pipeline.scheduler.report import caps_text, table
from pipeline.scheduler.runtime import start
from pipeline.sizing import actor_memory, batch_bytes, fit_memory, needs, size
from pipeline.sources import Defaults, Source, build_dataset, open_source, row_error, source_rows
from pipeline.storage import StorageArgs, locate
from pipeline.summary import print_summary, quota_summary, steady, summarize
from pipeline.writer import RENAMED, OutputFolder, PartWriter

LLAVA_IMAGE_SIZE = 336
TASK_FIELDS = ("prompt", "max_new_tokens")  # what `tasks.<name>` may override
# Fields that make a job the same job: a resume into an output written with other values
# would mix answers of two jobs. The policy, batch sizes and actors may change.
JOB_IDENTITY = ("source", "columns", "task", "question", "tasks", "preset", "model",
                "checkpoint", "llava", "seed")
OUTPUT_FORMATS = ("parquet", "openai")
SIZING = ("actors", "threads", "cpus_per_actor", "gpus_per_actor",
          "memory_per_actor")  # 0 = sized at start


@dataclass
class PolicyArgs:
    """The token policy: a fixed m per task (`m: {caption: 4}`), else `default` (0 = M)."""

    m: dict = field(default_factory=dict)
    default: int = 0


@dataclass
class AnnotateConfig(ModelArgs):
    # a folder of images; a manifest .jsonl / .parquet / OpenAI Batch API .jsonl; a glob or a
    # list of manifest parts; local or s3:// (docs/annotate.md "Inputs")
    source: str | list[str] = ""
    columns: dict = field(default_factory=dict)  # our manifest column -> the file's name
    image_hosts: list[str] = field(default_factory=list)  # http(s) image hosts rows may use
    task: str = "caption"  # for rows that do not name one (every row of a folder)
    question: str = ""  # for rows that do not have one
    tasks: dict = field(default_factory=dict)  # per task: {prompt: ..., max_new_tokens: N}
    output: str = "runs/annotate"  # folder: data/*.parquet, summary.json, config.yaml
    output_format: str = "parquet"  # "openai": also openai/{output,errors}.jsonl (Batch API)
    retry_errors: bool = False  # on resume, ask the retryable error rows again
    # the Ray cluster (host:port of its GCS, ray://..., auto); "" = RAY_ADDRESS, else a local Ray
    address: str = ""
    overwrite: bool = False  # drop earlier rows in output/data instead of resuming
    storage: StorageArgs = field(default_factory=StorageArgs)  # for s3:// and other URLs
    policy: PolicyArgs = field(default_factory=PolicyArgs)
    quota: QuotaArgs = field(default_factory=QuotaArgs)  # with a quota, the plan picks m
    batch_size: int = 16  # rows per model call
    block_rows: int = 0  # rows per Ray block between stages (the unit of progress); 0 = batch_size
    # the engine actors (one model each) and what each holds; 0 = sized from the cluster's
    # resources when the job starts (pipeline/sizing.py: one actor per GPU; on CPUs several
    # one-thread actors, half a logical CPU per thread so the decode tasks get CPUs)
    actors: int = 0
    cpus_per_actor: float = 0.0
    gpus_per_actor: float = 0.0
    threads: int = 0  # torch threads per actor
    memory_per_actor: float = 0.0  # GB of host memory Ray reserves per actor; 0 = from the model
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error rows (decompression bombs)
    limit: int = 0  # only the first rows of the source; 0 = all
    rows_per_part: int = 1000  # output rows per Parquet part file
    flush_seconds: float = 30.0  # ... or a part at least this often: what a crash can lose
    progress: bool = True  # a progress bar with rows/s and ETA on stderr




class Prepared(NamedTuple):
    """What `check` found: the job's source and, with a quota, its budget (planned once)."""

    source: Source
    budget: Budget | None


def check(cfg: AnnotateConfig) -> Prepared:
    """Everything that can be checked without Ray or a model (errors name the field), and
    with a quota the plan for the rows left (an infeasible quota fails with the minimum it
    needs)."""
    validate_model(cfg)
    _check_numbers(cfg)
    check_cluster(cfg.address)
    tasks = job_tasks(cfg)
    if cfg.task not in tasks:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(tasks)}")
    src = open_source(cfg.source, cfg.storage, cfg.columns)
    if src.kind == "folder" and (why := row_error(cfg.task, cfg.question, None, tasks)):
        raise ValueError(f"task/question: folder rows would all fail: {why}")
    _check_policy(cfg)
    _check_output(cfg)
    if not cfg.quota.enabled and cfg.quota.by != "task":
        raise ValueError("quota.by: plans per question kind need a quota (quota.flops or "
                         "quota.seconds)")
    return Prepared(src, budget_plan(cfg, src) if cfg.quota.enabled else None)


def ledger_state(cfg: AnnotateConfig) -> str:
    """Where the job's ledger keeps its spend: next to the output unless given (a local
    path, or a URL such as s3://bucket/job/ledger.json, reached with `storage`)."""
    if cfg.quota.ledger_state:
        return cfg.quota.ledger_state
    out = output_folder(cfg).loc
    return out.join("ledger.json").path if out.is_local else out.join("ledger.json").uri


def budget_plan(cfg: AnnotateConfig, src: Source) -> Budget:
    """The job's budget for the rows still to do (plan, earlier spend, declared-skipped
    rows); errors name the field, an infeasible quota gives its minimum."""
    if cfg.policy.m or cfg.policy.default:
        raise ValueError("policy: a job with a quota takes m from its plan; drop policy.*")
    done = output_folder(cfg).done_ids(retry(cfg)) if not cfg.overwrite else set()
    by_kind = cfg.quota.by == "kind"
    rows = source_rows(src, cfg.task, cfg.limit, (cfg.question or "") if by_kind else None)
    todo = [r for r in rows if r[0] not in done]
    state = ledger_state(cfg)
    try:  # overwrite=true starts the job afresh: its earlier spend goes with its rows
        return prepare(cfg.quota, todo, state, target_config(cfg), fresh=cfg.overwrite,
                       storage=cfg.storage)
    except InfeasibleQuota as e:
        raise ValueError(f"quota: {e} (or quota.infeasible=subset to answer the rows it "
                         "pays for and skip the others)") from None


def job_tasks(cfg: AnnotateConfig) -> dict[str, Task]:
    """The task registry with this job's `tasks.<name>` overrides (prompt, max_new_tokens)."""
    tasks = dict(TASKS)
    for name, over in cfg.tasks.items():
        if name not in TASKS:
            raise ValueError(f"tasks.{name}: unknown task; known: {sorted(TASKS)}")
        if not isinstance(over, dict) or (bad := sorted(set(over) - set(TASK_FIELDS))):
            what = bad[0] if isinstance(over, dict) else "(not a mapping)"
            raise ValueError(f"tasks.{name}.{what}: a task may override only {TASK_FIELDS}")
        if "max_new_tokens" in over and not (isinstance(over["max_new_tokens"], int)
                                             and over["max_new_tokens"] >= 1):
            raise ValueError(f"tasks.{name}.max_new_tokens must be an integer >= 1")
        try:
            tasks[name] = dataclasses.replace(TASKS[name], **over)
        except (ValueError, TypeError) as e:
            raise ValueError(f"tasks.{name}.prompt: {e}") from None
    return tasks


def _check_policy(cfg: AnnotateConfig) -> None:
    unknown = sorted(set(cfg.policy.m) - set(TASKS))
    if unknown:
        raise ValueError(f"policy.m.{unknown[0]}: unknown task; known: {sorted(TASKS)}")
    target = target_config(cfg)
    if target is not None:  # else each actor checks when its model is loaded
        fixed_policy(cfg).check(target.query.num_queries)


def target_config(cfg: AnnotateConfig) -> VLMConfig | None:
    """M and the image size come from the model that will load (mqt.load)."""
    return resolved_config(cfg)


def _check_numbers(cfg: AnnotateConfig) -> None:
    for name in ("batch_size", "max_pixels", "rows_per_part"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("actors", "cpus_per_actor", "gpus_per_actor", "threads", "limit",
                 "memory_per_actor", "block_rows"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 = chosen), got {getattr(cfg, name)}")
    if cfg.flush_seconds <= 0:
        raise ValueError(f"flush_seconds must be > 0, got {cfg.flush_seconds}")
    if not cfg.output:
        raise ValueError("output: give a folder for the Parquet rows")
    if cfg.output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got "
                         f"{cfg.output_format!r}")
    if bad := [h for h in cfg.image_hosts if not h or "/" in h or ":" in h]:
        raise ValueError(f"image_hosts: give host names (no scheme, port or path), got "
                         f"{bad[0]!r}")


def _check_output(cfg: AnnotateConfig) -> None:
    """The output is reachable, and rows already there come from this same job (resume)."""
    out = output_folder(cfg)
    try:
        has_rows = bool(out.parts())
        old = out.read_text("config.yaml") if has_rows and not cfg.overwrite else None
    except OSError as e:
        raise ValueError(f"output: cannot reach {cfg.output}: {e}") from None
    if old is None:
        return
    before, now, default = yaml.safe_load(old) or {}, to_dict(cfg), to_dict(AnnotateConfig())
    for name in JOB_IDENTITY:  # a field the earlier job did not have yet had its default
        if before.get(name, default[name]) != now.get(name):
            raise ValueError(
                f"{name}: output={cfg.output!r} holds rows of a job with {name}="
                f"{before.get(name)!r}, not {now.get(name)!r}; resuming would mix two jobs. "
                "Use another output, or overwrite=true to drop the earlier rows")


def output_folder(cfg: AnnotateConfig) -> OutputFolder:
    return OutputFolder(locate(cfg.output, cfg.storage))


def fixed_policy(cfg: AnnotateConfig) -> FixedPolicy:
    return FixedPolicy(dict(cfg.policy.m), cfg.policy.default)


def build(cfg: AnnotateConfig, src: Source, done: frozenset[str] = frozenset(),
          token_policy: TokenPolicy | None = None, ledger: LedgerClient | None = None,
          escalation_ledger: LedgerClient | None = None):
    """The lazy dataset of output rows: source -> decode (tasks) -> engine (actors)."""
    import ray.data  # heavy (~1 s): only a job that runs imports it

    cfg = sized(cfg)
    target = target_config(cfg)
    # LLaVA's CLIP-336 when unknown: the engine resizes again if the guess is wrong
    size = target.vision.image_size if target is not None else LLAVA_IMAGE_SIZE
    tasks = job_tasks(cfg)
    ds = build_dataset(src, Defaults(cfg.task, cfg.question, tasks), cfg.limit, done)
    # Small blocks (streaming, no shuffle): a source file read as one big block would
    # otherwise reach the actors, the progress bar and the part files whole.
    block = cfg.block_rows or cfg.batch_size
    ds = ds.repartition(target_num_rows_per_block=block)
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=block,
                        fn_kwargs={"image_size": size, "max_pixels": cfg.max_pixels,
                                   "storage": cfg.storage, "hosts": tuple(cfg.image_hosts)})
    return ds.map_batches(
        Engine, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"model_args": model_args(cfg),
                               "policy": token_policy or fixed_policy(cfg), "threads": cfg.threads,
                               "tasks": tasks, "ledger": ledger,
                               "escalation_ledger": escalation_ledger},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
        memory=int(cfg.memory_per_actor * 1e9))


def annotate(cfg: AnnotateConfig, prepared: Prepared | None = None) -> dict:
    """Run the job: rows of `cfg.source` annotated into `cfg.output`, resuming what an
    earlier run of the same job wrote; returns the summary. `prepared`: what `check`
    returned for this config (checked again if not given)."""
    src, budget = prepared or check(cfg)  # before Ray starts or any model loads
    out = output_folder(cfg)
    if cfg.overwrite:
        out.clear()
        if budget is not None:
            clear_state(ledger_state(cfg), cfg.storage)
    out.drop_temporaries()
    if upgraded := out.upgrade():
        log(f"{upgraded} part files of an earlier release rewritten with today's column names"
            f" ({', '.join(f'{a} -> {b}' for a, b in RENAMED.items())})")
    if (rule := retry(cfg)) is not None and (asked := out.drop_rows(rule)):
        log(f"retry_errors: {asked} retryable error rows of earlier runs are asked again")
    done = frozenset(out.done_ids())
    todo = max(0, (min(src.rows, cfg.limit) if cfg.limit else src.rows) - len(done))
    log(f"source {cfg.source}: {src.rows} rows ({src.kind}); "
        + (f"resuming: {len(done)} already in {cfg.output}, {todo} to do" if done
           else f"{todo} to do"))
    out.write_text("config.yaml", _yaml(cfg))
    if budget is not None:
        _start_budget(cfg, budget, out)
        done = done | frozenset(i for i, _ in budget.skipped)
        todo = budget.rows
    t0 = time.perf_counter()
    if todo == 0 and budget is None and _all_done(cfg, src, done):
        written, first, ledger, ran = 0, None, None, None  # no Ray, no model: nothing to do
    else:
        written, first, ledger, ran = _run(cfg, src, out, done, todo, budget)
    t_end = time.perf_counter()
    summary = summarize(out, job_tasks(cfg), t_end - t0, written)
    summary["this_run"].update(steady(first, t0, t_end, written))
    summary["this_run"]["actors"] = ran and {k: getattr(ran, k) for k in SIZING}
    if budget is not None:
        summary["quota"] = quota_summary(budget, summary, ledger, cfg.gpus_per_actor or 1.0)
    out.write_text("summary.json", json.dumps(summary, indent=1))
    print_summary(summary)
    log(f"rows in {out.data.uri}/ (Parquet), summary in {out.loc.join('summary.json').uri}")
    if cfg.output_format == "openai":
        answered, failed = write_output(out, model_name(cfg), job_tasks(cfg))
        log(f"OpenAI Batch API output: {answered} lines in {out.loc.join(OUTPUT_FILES[0]).uri}"
            f", {failed} in {out.loc.join(OUTPUT_FILES[1]).uri}")
    return summary


def _all_done(cfg: AnnotateConfig, src: Source, done: frozenset[str]) -> bool:
    """Every source row (the first `limit`) already written: checked by id, not by count."""
    return all(r[0] in done for r in source_rows(src, cfg.task, cfg.limit))


def retry(cfg: AnnotateConfig):
    """What makes an error row not done: `retryable` with retry_errors=true, else None."""
    return retryable if cfg.retry_errors and not cfg.overwrite else None


def model_name(cfg: AnnotateConfig) -> str:
    """The model the job's answers name: its checkpoint or published folder, else preset."""
    path = cfg.llava or (cfg.checkpoint if cfg.checkpoint not in ("", "none") else "")
    return path.rstrip("/").rsplit("/", 1)[-1] if path else cfg.preset


def _start_budget(cfg: AnnotateConfig, budget: Budget, out: OutputFolder) -> None:
    """Log the quota job's plan and write its declared-skipped rows as error rows."""
    q = cfg.quota.quota()
    if cfg.quota.measured:
        planned_at = (f"the time profile {cfg.quota.time_profile}" if cfg.quota.time_profile
                      else f"{q.flops_per_second:.4g} FLOP/s")
        given = (f"{q.seconds:.4g} s of measured accelerator time (planned at {planned_at}), "
                 f"{budget.spent / 1e6:.4g} s")
    else:
        given = f"{q.total_cost:.4g} FLOPs, {budget.spent:.4g}"
    log(f"quota {given} spent by earlier runs"
        + (f"; plan for the rows left:\n{table(budget.plan)}" if budget.plan
           else ": nothing left to plan"))
    if budget.caps is None or budget.caps_changed:
        if (capped := caps_text(budget.caps, budget.uncapped, cfg.quota.cap_se)) is not None:
            log(capped)
    if cfg.quota.time_profile:
        tm = cfg.quota.time_model()
        log(f"time profile: {tm.device}, batches of {tm.batch_size} (this job: "
            f"{cfg.batch_size}); measured time per modelled time is learned as the job runs")
    if budget.groups is not None:
        log(f"planned by (task, question kind): {len(budget.groups.groups)} groups from the "
            f"calibration's questions, their curves shrunk toward the task's by "
            f"{budget.shrinkage:g} pseudo-rows (cross-validated on the calibration)")
    if budget.skipped:
        why = SKIPPED.format(kept=budget.rows, rows=budget.rows + len(budget.skipped))
        log(why)
        writer = PartWriter(out, OUTPUT_SCHEMA, rows_per_part=len(budget.skipped) + 1)
        writer.add(pa.Table.from_pylist([error_row({"id": i, "task": t, "question": None},
                                                   why) for i, t in budget.skipped],
                                        schema=OUTPUT_SCHEMA))
        writer.flush()


def _run(cfg: AnnotateConfig, src: Source, out: OutputFolder, done: frozenset[str], todo: int,
         budget: Budget | None = None
         ) -> tuple[int, tuple[float, int] | None, dict | None, AnnotateConfig]:
    """Stream the output rows to part files; returns the rows written by this run,
    (time, rows) of the first batch that came back (None if none did), the ledger's
    totals at the end (None without a quota) and the config it ran (actors sized)."""
    import ray  # heavy; only a job that runs imports it

    connect(cfg.address, include_dashboard=False)  # or the cluster of address=, RAY_ADDRESS
    ran = sized(cfg, say=True)
    metrics = JobMetrics(job_id(out))
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours shows rows/s, ETA
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the bar and summary say it
    writer = PartWriter(out, OUTPUT_SCHEMA, cfg.rows_per_part, cfg.flush_seconds)
    first, runtime = None, None
    if budget is not None:
        runtime = start(budget, job_id(out), accelerators=ran.gpus_per_actor or 1.0)
    policy, client, esc_client = ((runtime.policy, runtime.ledger, runtime.escalation_ledger)
                                  if runtime is not None else (None, None, None))
    try:
        with tqdm(total=todo, unit="row", disable=not cfg.progress, dynamic_ncols=True,
                  desc="annotate") as bar:
            for batch in build(ran, src, done, policy, client, esc_client).iter_batches(
                    batch_format="pyarrow", batch_size=None):
                first = first or (time.perf_counter(), batch.num_rows)
                writer.add(batch)
                bar.update(batch.num_rows)
                metrics.record(batch)
                if runtime is not None:
                    metrics.quota_left(ray.get(runtime.actors["ledger"].totals.remote())[
                        "remaining"])
            writer.flush()
    finally:
        totals = runtime.close() if runtime is not None else None
    return writer.written, first, totals, ran


def sized(cfg: AnnotateConfig, say: bool = False) -> AnnotateConfig:
    """The config with its actors, threads, CPUs and GPUs per actor chosen where they are 0
    (pipeline/sizing.py), from the resources of the Ray cluster the job runs on (its
    totals, and what is free of them now)."""
    cfg = dataclasses.replace(cfg, memory_per_actor=cfg.memory_per_actor or round(
        model_memory(cfg) / 1e9, 3))
    if cfg.actors and cfg.threads and cfg.cpus_per_actor:
        return cfg
    import ray  # heavy; only a job that runs imports it

    connect(cfg.address, include_dashboard=False)
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 1.0), total.get("GPU", 0.0)
    given = (cfg.actors, cfg.threads, cfg.cpus_per_actor, cfg.gpus_per_actor)
    want, end = needs(size(cpus, gpus, *given)), time.monotonic() + 2.0
    while True:  # an earlier job's actors may still be releasing what they held
        res = ray.available_resources()
        free = (res.get("CPU", 0.0), res.get("GPU", 0.0))
        if cfg.actors or (free[0] >= want[0] and free[1] >= want[1]) or time.monotonic() > end:
            break
        time.sleep(0.2)
    sz = size(cpus, gpus, *given, free=free)
    actors, memory = fit_memory(sz.actors, cfg.memory_per_actor * 1e9, res.get("memory", 0.0),
                                total.get("memory", 0.0), chosen=not cfg.actors)
    memory = round(memory / 1e9, 3)
    if say:
        log(dataclasses.replace(sz, actors=actors).describe(cpus, gpus)
            + f", {memory:g} GB of memory each")
    return dataclasses.replace(cfg, actors=actors, threads=sz.threads, memory_per_actor=memory,
                               cpus_per_actor=sz.cpus_per_actor, gpus_per_actor=sz.gpus_per_actor)


def model_memory(cfg: AnnotateConfig) -> int:
    """Bytes of host memory an engine actor of this job asks Ray for (pipeline/sizing.py)."""
    target = target_config(cfg)
    if target is None:  # a published MQT-LLaVA folder (its config needs its weights): its
        # half-precision files as float32, batches of the MQT-LLaVA-7B preset's shape
        files = [p for p in Path(cfg.llava).rglob("*") if p.suffix in (".safetensors", ".bin")]
        weights, target = 2 * sum(p.stat().st_size for p in files), preset("llava-7b")
    else:
        weights = weight_bytes(target)
    return actor_memory(weights, batch_bytes(target, cfg.batch_size))


def job_id(out: OutputFolder) -> str:
    """The job's name for its ledger and pacer actors: the same output, the same job."""
    return hashlib.sha1(out.loc.uri.encode()).hexdigest()[:16]


def _yaml(cfg: AnnotateConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
