"""`mqt annotate`: caption, answer or choose for every image of a folder or manifest on Ray Data.

    mqt annotate source=IMAGES/ task=caption output=runs/annotate policy.m.caption=4
    mqt annotate source=s3://bucket/rows.jsonl output=s3://bucket/out storage.endpoint_url=...

Stages: source rows (pipeline.sources) -> decode + resize in Ray tasks (pipeline.decode)
-> the model in an actor pool, one model per actor (pipeline.predictor) -> streamed back to
the driver and written as whole Parquet part files in `output/data/` (pipeline.writer).
Bad images become error rows. Re-running the same job into the same output resumes: ids
already written are skipped at the source, so after any crash every id ends up exactly
once. The summary (rows, errors, rows/s, FLOPs, m histogram and accuracy per task) is
computed by streaming the written Parquet back, never by collecting the dataset on the
driver; it is printed and saved as `output/summary.json`, next to the resolved
`output/config.yaml`. Schema and limits: docs/annotate.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from jobs.common import log, strict_json
from mqt.config import VLMConfig
from mqt.configtree import to_dict
from mqt.load import ModelArgs, resolved_config, validate_model
from mqt.tasks import TASKS, Task
from pipeline.budget import QuotaArgs
from pipeline.decode import DEFAULT_MAX_PIXELS
from pipeline.policy import FixedPolicy
from pipeline.sources import Defaults, Source, open_source, row_error
from pipeline.storage import StorageArgs, locate
from pipeline.writer import OutputFolder

LLAVA_IMAGE_SIZE = 336
TASK_FIELDS = ("prompt", "max_new_tokens")  # what `tasks.<name>` may override
# Fields that make a job the same job: a resume into an output written with other values
# would mix answers of two jobs. The policy, batch sizes and actors may change.
JOB_IDENTITY = ("source", "task", "question", "tasks", "preset", "model", "checkpoint",
                "llava", "seed")


@dataclass
class PolicyArgs:
    """The token policy: a fixed m per task (`m: {caption: 4}`), else `default` (0 = M)."""

    m: dict = field(default_factory=dict)
    default: int = 0


@dataclass
class Config(ModelArgs):
    source: str = ""  # a folder of images, or a manifest .jsonl / .parquet; local or s3://
    task: str = "caption"  # for rows that do not name one (every row of a folder)
    question: str = ""  # for rows that do not have one
    tasks: dict = field(default_factory=dict)  # per task: {prompt: ..., max_new_tokens: N}
    output: str = "runs/annotate"  # folder: data/*.parquet, summary.json, config.yaml
    overwrite: bool = False  # drop earlier rows in output/data instead of resuming
    storage: StorageArgs = field(default_factory=StorageArgs)  # for s3:// and other URLs
    policy: PolicyArgs = field(default_factory=PolicyArgs)
    quota: QuotaArgs = field(default_factory=QuotaArgs)  # with a quota, the plan picks m
    batch_size: int = 16  # rows per model call
    block_rows: int = 64  # rows per Ray block between stages: the unit of progress
    actors: int = 1  # predictor actors, one model each
    cpus_per_actor: float = 0.5  # fractional: a whole CPU per actor starves the read tasks
    gpus_per_actor: float = 0.0  # > 0 on a GPU cluster
    threads: int = 1  # torch threads per actor; 0 = torch's default
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error rows (decompression bombs)
    limit: int = 0  # only the first rows of the source; 0 = all
    rows_per_part: int = 1000  # output rows per Parquet part file
    flush_seconds: float = 30.0  # ... or a part at least this often: what a crash can lose
    progress: bool = True  # a progress bar with rows/s and ETA on stderr


def validate(cfg: Config) -> Source:
    """Everything that can be checked without Ray or a model; errors name the field."""
    return checked(cfg)[0]


def checked(cfg: Config):
    """`validate`, returning the source and, for a quota job, its `pipeline.budget.Budget`
    (planned here, once: an infeasible quota fails with the minimum it needs)."""
    validate_model(cfg)
    _check_numbers(cfg)
    tasks = job_tasks(cfg)
    if cfg.task not in tasks:
        raise ValueError(f"task={cfg.task!r} is not one of {sorted(tasks)}")
    src = open_source(cfg.source, cfg.storage)
    if src.kind == "folder" and (why := row_error(cfg.task, cfg.question, None, tasks)):
        raise ValueError(f"task/question: folder rows would all fail: {why}")
    _check_policy(cfg)
    _check_output(cfg)
    if not cfg.quota.enabled and cfg.quota.by != "task":
        raise ValueError("quota.by: plans per question kind need a quota (quota.flops or "
                         "quota.seconds)")
    return src, budget_plan(cfg, src) if cfg.quota.enabled else None


def ledger_state(cfg: Config) -> str:
    """Where the job's ledger keeps its spend: next to the output unless given."""
    if cfg.quota.ledger_state:
        return cfg.quota.ledger_state
    out = output_folder(cfg).loc
    if not out.is_local:
        raise ValueError("quota.ledger_state: give a local file for the ledger of a job whose "
                         f"output is remote ({cfg.output})")
    return out.join("ledger.json").path


def budget_plan(cfg: Config, src: Source):
    """The job's `pipeline.budget.Budget` for the rows still to do (plan, earlier spend,
    declared-skipped rows); errors name the field, an infeasible quota gives its minimum."""
    from pipeline.budget import prepare, source_rows
    from pipeline.plan import InfeasibleQuota

    if cfg.policy.m or cfg.policy.default:
        raise ValueError("policy: a job with a quota takes m from its plan; drop policy.*")
    done = output_folder(cfg).done_ids() if not cfg.overwrite else set()
    by_kind = cfg.quota.by == "kind"
    rows = source_rows(src, cfg.task, cfg.limit, (cfg.question or "") if by_kind else None)
    todo = [r for r in rows if r[0] not in done]
    state = ledger_state(cfg)  # (checked even with overwrite: a remote output needs one)
    try:  # overwrite=true starts the job afresh: its earlier spend goes with its rows
        return prepare(cfg.quota, todo, None if cfg.overwrite else state, target_config(cfg))
    except InfeasibleQuota as e:
        raise ValueError(f"quota: {e} (or quota.infeasible=subset to answer the rows it "
                         "pays for and skip the others)") from None


def job_tasks(cfg: Config) -> dict[str, Task]:
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


def _check_policy(cfg: Config) -> None:
    unknown = sorted(set(cfg.policy.m) - set(TASKS))
    if unknown:
        raise ValueError(f"policy.m.{unknown[0]}: unknown task; known: {sorted(TASKS)}")
    target = target_config(cfg)
    if target is not None:  # else each actor checks when its model is loaded
        policy(cfg).check(target.query.num_queries)


def target_config(cfg: Config) -> VLMConfig | None:
    """M and the image size come from the model that will load (see mqt.load)."""
    return resolved_config(cfg)


def _check_numbers(cfg: Config) -> None:
    for name in ("batch_size", "block_rows", "actors", "max_pixels", "rows_per_part"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.cpus_per_actor or cfg.gpus_per_actor < 0 or cfg.limit < 0 or cfg.threads < 0:
        raise ValueError("cpus_per_actor must be > 0; gpus_per_actor, limit, threads >= 0")
    if cfg.flush_seconds <= 0:
        raise ValueError(f"flush_seconds must be > 0, got {cfg.flush_seconds}")
    if not cfg.output:
        raise ValueError("output: give a folder for the Parquet rows")


def _check_output(cfg: Config) -> None:
    """The output is reachable, and rows already there come from this same job (resume)."""
    out = output_folder(cfg)
    try:
        has_rows = bool(out.parts())
        old = out.read_text("config.yaml") if has_rows and not cfg.overwrite else None
    except OSError as e:
        raise ValueError(f"output: cannot reach {cfg.output}: {e}") from None
    if old is None:
        return
    import yaml

    before, now = yaml.safe_load(old) or {}, to_dict(cfg)
    for name in JOB_IDENTITY:
        if before.get(name) != now.get(name):
            raise ValueError(
                f"{name}: output={cfg.output!r} holds rows of a job with {name}="
                f"{before.get(name)!r}, not {now.get(name)!r}; resuming would mix two jobs. "
                "Use another output, or overwrite=true to drop the earlier rows")


def output_folder(cfg: Config) -> OutputFolder:
    return OutputFolder(locate(cfg.output, cfg.storage))


def policy(cfg: Config) -> FixedPolicy:
    return FixedPolicy(dict(cfg.policy.m), cfg.policy.default)


def build(cfg: Config, src: Source, done: frozenset[str] = frozenset(), token_policy=None,
          ledger=None, escalation_ledger=None):
    """The lazy dataset of output rows: source -> decode (tasks) -> predictor (actors)."""
    import ray.data

    from pipeline.decode import decode_batch
    from pipeline.predictor import Predictor
    from pipeline.sources import build_dataset

    target = target_config(cfg)
    # LLaVA's CLIP-336 when unknown: the predictor resizes again if the guess is wrong
    size = target.vision.image_size if target is not None else LLAVA_IMAGE_SIZE
    tasks = job_tasks(cfg)
    ds = build_dataset(src, Defaults(cfg.task, cfg.question, tasks), cfg.limit, done)
    # Small blocks (streaming, no shuffle): a source file read as one big block would
    # otherwise reach the actors, the progress bar and the part files whole.
    ds = ds.repartition(target_num_rows_per_block=cfg.block_rows)
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=cfg.block_rows,
                        fn_kwargs={"image_size": size, "max_pixels": cfg.max_pixels,
                                   "storage": cfg.storage})
    model_args = {k: v for k, v in to_dict(cfg).items() if k in ModelArgs.__dataclass_fields__}
    return ds.map_batches(
        Predictor, batch_format="pyarrow", batch_size=cfg.batch_size,
        fn_constructor_kwargs={"model_args": model_args,
                               "policy": token_policy or policy(cfg), "threads": cfg.threads,
                               "tasks": tasks, "ledger": ledger,
                               "escalation_ledger": escalation_ledger},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)


def main(cfg: Config) -> dict:
    src, budget = checked(cfg)  # before Ray starts or any model loads
    out = output_folder(cfg)
    if cfg.overwrite:
        out.clear()
        if budget is not None:
            from pipeline.ledger import clear_state

            clear_state(ledger_state(cfg))
    out.drop_temporaries()
    done = frozenset(out.done_ids())
    todo = max(0, (min(src.rows, cfg.limit) if cfg.limit else src.rows) - len(done))
    log(f"source {cfg.source}: {src.rows} rows ({src.kind}); "
        + (f"resuming: {len(done)} already in {cfg.output}, {todo} to do" if done
           else f"{todo} to do"))
    out.write_text("config.yaml", _yaml(cfg))
    if budget is not None:
        start_budget(cfg, budget, out)
        done = done | frozenset(i for i, _ in budget.skipped)
        todo = budget.rows
    t0 = time.perf_counter()
    written, first, ledger = run(cfg, src, out, done, todo, budget)
    t_end = time.perf_counter()
    summary = summarize(out, job_tasks(cfg), t_end - t0, written)
    summary["this_run"].update(_steady(first, t0, t_end, written))
    if budget is not None:
        summary["quota"] = quota_summary(cfg, summary, ledger, budget)
    out.write_text("summary.json", json.dumps(summary, indent=1))
    print_summary(summary)
    log(f"rows in {out.data.uri}/ (Parquet), summary in {out.loc.join('summary.json').uri}")
    return summary


def start_budget(cfg: Config, budget, out: OutputFolder) -> None:
    """Print the quota job's plan and write its declared-skipped rows as error rows."""
    from jobs.plan import table
    from pipeline.budget import SKIPPED, caps_text
    from pipeline.predictor import OUTPUT_SCHEMA, error_row
    from pipeline.writer import PartWriter

    q = cfg.quota.quota()
    if cfg.quota.measured:
        planned_at = (f"the time profile {cfg.quota.time_profile}" if cfg.quota.time_profile
                      else f"{q.flops_per_second:.4g} FLOP/s")
        given = (f"{q.seconds:.4g} s of measured accelerator time (planned at {planned_at}), "
                 f"{budget.spent / 1e6:.4g} s")
    else:
        given = f"{q.total_flops:.4g} FLOPs, {budget.spent:.4g}"
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


def run(cfg: Config, src: Source, out: OutputFolder, done: frozenset[str], todo: int,
        budget=None) -> tuple[int, tuple[float, int] | None, dict | None]:
    """Stream the output rows to part files; returns the rows written by this run,
    (time, rows) of the first batch that came back (None if none did), and the ledger's
    totals at the end (None without a quota)."""
    import ray
    from tqdm import tqdm

    from pipeline.predictor import OUTPUT_SCHEMA
    from pipeline.writer import PartWriter

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours shows rows/s, ETA
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the bar and summary say it
    writer = PartWriter(out, OUTPUT_SCHEMA, cfg.rows_per_part, cfg.flush_seconds)
    first, actor, client, token_policy = None, None, None, None
    esc_actor, esc_client, pacer = None, None, None
    if budget is not None:
        from pipeline.budget import LedgerClient, in_ledger_units, ledger_quota, ledger_work
        from pipeline.ledger import get_or_create_ledger
        from pipeline.pacing import RemotePacer

        units, unit = ledger_quota(cfg.quota)
        work, profile = ledger_work(cfg.quota), cfg.quota.time_model()
        actor = get_or_create_ledger(_job_id(out), units, ledger_state(cfg), unit=unit,
                                     work=work)
        cards = cfg.gpus_per_actor or 1.0  # a measured second is this many accelerator-seconds
        client = LedgerClient(actor, measured_rate(cfg), profile, accelerators=cards)
        token_policy = budget.plan.policy() if budget.plan else None
        if budget.escalations:  # this run's pot for escalations; the main ledger still caps
            esc_actor = get_or_create_ledger(f"{_job_id(out)}-escalations",
                                             in_ledger_units(cfg.quota, budget.escalations),
                                             unit=unit, work=work)
            esc_client = LedgerClient(esc_actor, measured_rate(cfg), profile,
                                      accelerators=cards)
        if cfg.quota.pacing and budget.plan:
            pacer = start_pacer(cfg, budget, actor, _job_id(out))
            token_policy = RemotePacer(pacer)
        if budget.groups is not None and token_policy is not None:  # quota.by=kind
            from pipeline.kinds import GroupedPolicy

            token_policy = GroupedPolicy(budget.groups, token_policy)
    try:
        with tqdm(total=todo, unit="row", disable=not cfg.progress, dynamic_ncols=True,
                  desc="annotate") as bar:
            for batch in build(cfg, src, done, token_policy, client, esc_client).iter_batches(
                    batch_format="pyarrow", batch_size=None):
                first = first or (time.perf_counter(), batch.num_rows)
                writer.add(batch)
                bar.update(batch.num_rows)
            writer.flush()
    finally:
        escalated = _close_ledger(esc_actor)
    if pacer is not None:
        stats = ray.get(pacer.stats.remote())
        ray.kill(pacer)
    totals = _close_ledger(actor)
    if totals is not None and pacer is not None:
        totals["pacing"] = stats
    if totals is not None and escalated is not None:
        totals["escalation_spent"] = escalated["spent"]  # in the ledger's unit
    return writer.written, first, totals


def measured_rate(cfg: Config):
    """A measured-seconds quota: each predictor's own `MeasuredRate`, starting from the
    job's FLOP/s estimate (or, with a time profile, from the profile's time); None for a
    quota in FLOPs."""
    from pipeline.budget import MeasuredRate

    q = cfg.quota
    return MeasuredRate(1 / q.quota().flops_per_second, q.margin) if q.measured else None


def start_pacer(cfg: Config, budget, ledger, job: str):
    """The job's PacerActor: re-plans the rows left of this run on the ledger's spend."""
    from pipeline.budget import ledger_quota
    from pipeline.pacing import pacer_actor_class

    estimate = {t.task: t.rows for t in budget.plan.tasks}  # per group with quota.by=kind
    fps = cfg.quota.quota().flops_per_second if cfg.quota.measured else None
    return pacer_actor_class().options(name=f"mqt-pacer-{job}").remote(
        budget.curves, ledger_quota(cfg.quota)[0], estimate, ledger, budget.weights,
        cfg.quota.pacing_every, tail=0.0, flops_per_second=fps)  # the rows are counted


def _job_id(out: OutputFolder) -> str:
    import hashlib

    return hashlib.sha1(out.loc.uri.encode()).hexdigest()[:16]


def _close_ledger(actor) -> dict | None:
    """The ledger's totals, its state saved; the actor lives as long as the job."""
    if actor is None:
        return None
    import ray

    ray.get(actor.save.remote())
    totals = ray.get(actor.totals.remote())
    ray.kill(actor)
    return totals


def quota_summary(cfg: Config, summary: dict, totals: dict | None, budget) -> dict:
    """The summary's `quota`: the spend in the quota's unit, then what every quota job has."""
    totals = totals or {"spent": budget.spent, "overrun": 0}  # nothing ran this time
    spend = (measured_spend if cfg.quota.measured else flops_spend)(cfg, summary, totals, budget)
    return {**spend, "skipped_rows": len(budget.skipped), "plan_by": cfg.quota.by,
            "planned_up_to_m": budget.caps,
            "kind_shrinkage": strict_json(budget.shrinkage), "pacing": totals.get("pacing"),
            "refused_rows": summary["error_kinds"].get("quota: refused by the budget ledger", 0),
            "flops_per_task": summary["flops_per_task"],
            "share_per_task": share_per_task(cfg, summary)}


def share_per_task(cfg: Config, summary: dict) -> dict[str, float]:
    """Per task, what its written rows spent as a share of Q: their FLOPs, or (measured)
    their seconds as the ledger charges them (x the accelerators an actor holds). Rows
    computed but lost in a crash are in the ledger's spend, not here."""
    q = cfg.quota.quota()
    if cfg.quota.measured:
        per = {t: x * (cfg.gpus_per_actor or 1.0) for t, x in summary["seconds_per_task"].items()}
        return {t: round(x / max(q.seconds, 1e-9), 4) for t, x in per.items()}
    return {t: round(f / max(q.total_flops, 1), 4) for t, f in summary["flops_per_task"].items()}


def flops_spend(cfg: Config, summary: dict, totals: dict, budget) -> dict:
    q = cfg.quota.quota()
    return {"quota_flops": q.total_flops, "spent_flops": totals["spent"],
            "this_run_flops": totals["spent"] - budget.spent,
            "escalation_budget_flops": budget.escalations,
            "escalation_flops": totals.get("escalation_spent", 0),
            "share": round(totals["spent"] / max(q.total_flops, 1), 4),
            "overrun_flops": totals["overrun"]}


def measured_spend(cfg: Config, summary: dict, totals: dict, budget) -> dict:
    """A measured-seconds job: time against the quota, and the FLOP/s the job really
    reached (a better estimate for the next job)."""
    q = cfg.quota.quota()
    spent, over = totals["spent"] / 1e6, totals["overrun"] / 1e6
    took = spent + over
    return {"measured": True, "quota_seconds": q.seconds, "spent_seconds": round(spent, 6),
            "overrun_seconds": round(over, 6),
            "this_run_seconds": round(took - budget.spent / 1e6, 6),
            "share": round(took / max(q.seconds, 1e-9), 4),
            "flops_per_second_planned": None if cfg.quota.time_profile else q.flops_per_second,
            "time_profile": cfg.quota.time_profile or None,
            # measured time / the profile's time for the same rows (1: the profile was right)
            "time_vs_profile": (round(took * 1e6 / totals["flops_spent"], 4)
                                if cfg.quota.time_profile and totals.get("flops_spent")
                                else None),
            "flops_per_second_measured": round(summary["flops"] / took) if took else None,
            "escalation_budget_seconds": round(budget.escalations / q.flops_per_second, 6),
            "escalation_seconds": totals.get("escalation_spent", 0) / 1e6}


def _steady(first: tuple[float, int] | None, t0: float, t_end: float, written: int) -> dict:
    """Start-up (Ray, actors, model load: until the first rows came back) and the rate after."""
    if first is None or written <= first[1]:
        return {"startup_s": None, "steady_rows_per_s": None}
    t_first, n_first = first
    rate = (written - n_first) / max(t_end - t_first, 1e-9)
    return {"startup_s": round(t_first - t0, 3), "steady_rows_per_s": round(rate, 3)}


def _yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def summarize(out: OutputFolder, tasks: dict[str, Task], seconds: float, written: int) -> dict:
    """Rows, errors, FLOPs, m and accuracy per task, streamed from the written Parquet;
    rows/s is this run's (the rows it wrote over its wall time)."""
    rows = errors = flops = 0
    per_task: Counter = Counter()
    hist: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    took: Counter = Counter()  # task -> seconds its written rows took
    scored: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # task -> [correct, labelled]
    cols = ["task", "m", "flops", "seconds", "error", "output", "answer"]
    for b in out.batches(cols):
        for task, m, f, sec, err, output, answer in zip(
                *(b.column(c).to_pylist() for c in cols), strict=True):
            rows, flops = rows + 1, flops + (f or 0)
            per_task[task] += f or 0
            took[task] += sec or 0.0
            if err:
                errors += 1
                reasons[_error_kind(err)] += 1
                continue
            hist[task][m] += 1
            if answer is not None:
                scored[task][0] += tasks[task].is_correct(output or "", answer)
                scored[task][1] += 1
    return {"rows": rows, "errors": errors, "error_kinds": dict(reasons.most_common()),
            "this_run": {"rows": written, "seconds": round(seconds, 3),
                         "rows_per_s": round(written / max(seconds, 1e-9), 3)},
            "flops": flops, "flops_per_task": dict(sorted(per_task.items())),
            "seconds_per_task": {t: round(x, 6) for t, x in sorted(took.items())},
            "m_histogram": {t: dict(sorted(c.items())) for t, c in hist.items()},
            "accuracy": {t: {"correct": c, "labelled": n, "accuracy": round(c / n, 4)}
                         for t, (c, n) in sorted(scored.items()) if n}}


def _error_kind(err: str) -> str:
    """What the summary counts: the text before the first ':' ("quota: refused ..." and
    "quota: skipped ..." are told apart)."""
    head = err.split(":")[0]
    return err.split("(")[0].strip() if head == "quota" else head


def print_summary(s: dict) -> None:
    r = s["this_run"]
    print(f"rows {s['rows']}  errors {s['errors']}  {s['flops'] / 1e9:.3f} GFLOPs  "
          f"(this run: {r['rows']} rows in {r['seconds']} s, {r['rows_per_s']} rows/s)")
    for task, hist in sorted(s["m_histogram"].items()):
        acc = s["accuracy"].get(task)
        score = f"  accuracy {100 * acc['accuracy']:.1f}% of {acc['labelled']}" if acc else ""
        print(f"  {task}: " + ", ".join(f"m={m}: {n}" for m, n in hist.items()) + score)
    for kind, n in s["error_kinds"].items():
        print(f"  error {kind}: {n}")
    if "quota" in s and s["quota"].get("measured"):
        q = s["quota"]
        print(f"quota {q['quota_seconds']:.4g} s measured: spent {q['spent_seconds']:.4g} s "
              f"+ {q['overrun_seconds']:.4g} s past reservations ({100 * q['share']:.1f}%), "
              f"this run {q['this_run_seconds']:.4g} s, refused rows {q['refused_rows']}, "
              f"skipped {q['skipped_rows']}; per task: "
              + ", ".join(f"{t} {100 * x:.1f}%" for t, x in q["share_per_task"].items())
              + f"; {q['flops_per_second_measured'] or 0:.4g} FLOP/s "
              + (f"measured; time {q['time_vs_profile'] or 0:.3g}x the profile's "
                 f"({q['time_profile']})" if q.get("time_profile") else
                 f"measured (planned at {q['flops_per_second_planned']:.4g})"))
    elif "quota" in s:
        q = s["quota"]
        print(f"quota {q['quota_flops']:.4g} FLOPs: spent {q['spent_flops']:.4g} "
              f"({100 * q['share']:.1f}%), this run {q['this_run_flops']:.4g}, "
              f"refused rows {q['refused_rows']}, skipped {q['skipped_rows']}; per task: "
              + ", ".join(f"{t} {f:.3g} ({100 * q['share_per_task'][t]:.1f}%)"
                          for t, f in q["flops_per_task"].items()))
