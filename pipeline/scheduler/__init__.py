"""The token-budget scheduler: m per task, per question kind or per row within a compute quota.

The front door, for batch jobs, `mqt plan` and the Serve endpoint alike:

    budget = prepare(QuotaArgs(...), rows, state_path, model_cfg)   # pure: plan before work
    runtime = start(budget, job)    # Ray: the job's ledger (and pacer) actors
    ... engines answer rows with runtime.policy, charging runtime.ledger ...
    totals = runtime.close()

Pure modules (no Ray): quota (settings, units), quality (curves), plan (the planner),
policy (token policies), cascade, kinds, timing, pacing, ledger (the ledger and its client),
budget (`prepare`). Ray: runtime (`start`), imported only where a job runs.
"""

from pipeline.scheduler.budget import Budget, prepare
from pipeline.scheduler.quota import FieldError, InfeasibleQuota, Quota, QuotaArgs

__all__ = ["Budget", "FieldError", "InfeasibleQuota", "Quota", "QuotaArgs", "prepare"]
