"""A compute quota for a batch job: the per-task plan before it starts, the ledger while it runs.

Before any model work (`prepare`): the rows left to do are counted per task, the job's
ledger state (saved spend of earlier runs of the same job) is read, and the planner
(pipeline.plan) picks m per task for the rows left within the quota left; a quota that cannot
pay the cheapest m on every row fails here with the minimum needed. While the job runs, every
predictor reserves an upper bound of each row's FLOPs in the job's ledger actor before it
spends them and commits the actual cost after (`LedgerClient`); a refused row becomes an
error row (`quota: ...`), so the spend recorded in the ledger never exceeds the quota, crashes,
retries and resumed runs included: every attempt is charged (keys are row id + attempt), and
the ledger state is saved next to the output.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.ledger import Ledger
from pipeline.plan import Plan, Quota, plan
from pipeline.quality import QualityCurve, from_calibration, shipped_calibration
from pipeline.sources import Source
from pipeline.storage import read_bytes

REFUSED = "quota: refused by the budget ledger (the job's compute quota is spent)"


@dataclass
class QuotaArgs:
    """The job's compute quota: `flops`, or `seconds` at `flops_per_second`; none = no quota."""

    flops: float = 0.0
    seconds: float = 0.0
    flops_per_second: float = 0.0
    calibration: str = ""  # quality curves: an `mqt eval` calibration.json; "" = the shipped
    weights: dict = field(default_factory=dict)  # per task, default 1
    ledger_state: str = ""  # local file; "" = <output>/ledger.json (output must be local)

    @property
    def enabled(self) -> bool:
        return bool(self.flops or self.seconds)

    def quota(self) -> Quota:
        if self.flops and self.seconds:
            raise ValueError("quota.flops / quota.seconds: give one of them, not both")
        if self.flops:
            return Quota(flops=self.flops)
        return Quota(seconds=self.seconds, flops_per_second=self.flops_per_second or None)


def curves(args: QuotaArgs, tasks: set[str]) -> dict[str, QualityCurve]:
    path = args.calibration or shipped_calibration()
    if not Path(path).is_file():
        raise ValueError(f"quota.calibration: no such file {path}")
    found = from_calibration(path)
    missing = sorted(tasks - set(found))
    if missing:
        raise ValueError(f"quota.calibration: {path} has no curve for task {missing[0]!r} "
                         f"(it has {sorted(found)}); run `mqt eval` with that task")
    return found


def remaining(args: QuotaArgs, spent: int) -> Quota:
    """The quota left after `spent` FLOPs, in the unit the quota was given in."""
    q = args.quota()
    left = max(0, q.total_flops - spent)
    return Quota(flops=left) if q.flops is not None else Quota(
        seconds=left / q.flops_per_second, flops_per_second=q.flops_per_second)


def task_counts(src: Source, default_task: str, limit: int) -> Counter:
    """Rows per task in the source (the first `limit` rows if limit > 0)."""
    if src.kind == "folder":
        return Counter({default_task: min(src.rows, limit) if limit else src.rows})
    tasks = _jsonl_tasks(src) if src.kind == "jsonl" else _parquet_tasks(src)
    return Counter(t or default_task for t in (tasks[:limit] if limit else tasks))


def _jsonl_tasks(src: Source) -> list[str | None]:
    out = []
    for line in read_bytes(src.loc).splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None  # an error row; counted under the default task (costs nothing)
            out.append(row.get("task") if isinstance(row, dict) else None)
    return out


def _parquet_tasks(src: Source) -> list[str | None]:
    with src.loc.fs.open_input_file(src.loc.path) as f:
        pf = pq.ParquetFile(f)
        if "task" not in pf.schema_arrow.names:
            return [None] * pf.metadata.num_rows
        return pf.read(columns=["task"]).column("task").to_pylist()


def prepare(args: QuotaArgs, todo: Counter, state_path: str) -> tuple[Plan, int]:
    """The plan for the rows left (per task) within the quota left; (plan, spent before)."""
    q = args.quota()
    spent = Ledger(q.total_flops, state_path).spent if Path(state_path).exists() else 0
    todo = Counter({t: n for t, n in todo.items() if n > 0})
    p = plan(dict(todo), curves(args, set(todo)), remaining(args, spent),
             {t: float(w) for t, w in args.weights.items()} or None)
    return p, spent


class LedgerClient:
    """What a predictor holds: the job's ledger actor behind plain calls (a plain `Ledger`
    works the same in tests without Ray). Keys are row id + a fresh attempt id, so every
    attempt at a row is charged: a block retried after a crash pays again, never past Q."""

    def __init__(self, actor):
        self.actor = actor

    def _call(self, method: str, *args):
        if isinstance(self.actor, Ledger):
            return getattr(self.actor, method)(*args)
        import ray

        return ray.get(getattr(self.actor, method).remote(*args))

    def reserve(self, ids: list[str], bounds: list[int]) -> tuple[list[str], list[bool]]:
        """Attempt keys and whether each row's upper bound was granted."""
        attempt = uuid.uuid4().hex[:12]
        keys = [f"{i}@{attempt}" for i in ids]
        return keys, self._call("reserve_many", list(zip(keys, bounds, strict=True)))

    def commit(self, keys: list[str], flops: list[int]) -> None:
        self._call("commit_many", list(zip(keys, flops, strict=True)))

    def release(self, keys: list[str]) -> None:
        self._call("release_many", keys)
