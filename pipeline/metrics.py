"""A batch job's progress as Ray metrics, for the Ray dashboard and Prometheus.

The driver records each batch of output rows as it arrives (`JobMetrics.record`), tagged
with the job (its output's id, `pipeline.annotate.job_id`) and the row's task:

| metric (Prometheus adds Ray's `ray_` prefix) | kind | what |
| --- | --- | --- |
| `mqt_annotate_rows` | counter | rows written |
| `mqt_annotate_error_rows` | counter | error rows written |
| `mqt_annotate_flops` | counter | FLOPs of the answered rows (the cost model) |
| `mqt_annotate_seconds` | counter | seconds charged to the answered rows |
| `mqt_annotate_quota_left` | gauge | what a quota job's ledger has left, in its unit |

(The ledger's unit: FLOPs, or microseconds of measured time.)

Ray's metrics agent on each node serves them on its metrics export port, which a
Prometheus scrapes (Ray's service discovery file lists the ports); a counter shows up there
with a `_total` suffix.
"""

from __future__ import annotations

from collections import Counter as Tally

import pyarrow as pa


class JobMetrics:
    """The metrics of one job, recorded by its driver."""

    def __init__(self, job: str):
        from ray.util.metrics import Counter, Gauge  # heavy: only a job that runs needs them

        self.job = job
        keys = ("job", "task")
        self.rows = Counter("mqt_annotate_rows", "rows written", keys)
        self.errors = Counter("mqt_annotate_error_rows", "error rows written", keys)
        self.flops = Counter("mqt_annotate_flops", "FLOPs of the answered rows", keys)
        self.seconds = Counter("mqt_annotate_seconds", "seconds charged to the rows", keys)
        self.left = Gauge("mqt_annotate_quota_left", "what is left of the job's quota, in "
                          "its ledger's unit", ("job",))

    def record(self, batch: pa.Table) -> None:
        rows, errors, flops, seconds = Tally(), Tally(), Tally(), Tally()
        for task, err, f, s in zip(*(batch.column(c).to_pylist() for c in (
                "task", "error", "flops", "seconds")), strict=True):
            task = task or "unknown"
            rows[task] += 1
            errors[task] += bool(err)
            flops[task] += f or 0
            seconds[task] += s or 0.0
        for task, n in rows.items():
            tags = {"job": self.job, "task": task}
            self.rows.inc(n, tags)
            for metric, tally in ((self.errors, errors), (self.flops, flops),
                                  (self.seconds, seconds)):
                if tally[task]:
                    metric.inc(tally[task], tags)

    def quota_left(self, left: float) -> None:
        self.left.set(left, {"job": self.job})
