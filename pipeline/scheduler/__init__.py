"""The token-budget scheduler: m per task, per question kind or per row within a compute quota.

The front door, for batch jobs, `mqt plan` and a Serve deployment alike:

    budget = prepare(QuotaArgs(...), rows, state_path, model_cfg)   # pure: plan before work
    runtime = start(budget, job)    # on Ray: the job's ledger (and pacer) actors
    ... engines answer rows with runtime.policy, charging runtime.ledger ...
    totals = runtime.close()

Pure modules: quota (settings, units), quality (curves), plan (the planner), policy (token
policies), cascade, kinds, timing, pacing, ledger (the ledger and its client), windows (an
endpoint's quota per time window and caller, on ledgers), budget (`prepare`), report
(plans as text). runtime (`start`) holds the Ray actors; Ray itself is
imported only when they start.
"""

from pipeline.scheduler.budget import Budget, prepare
from pipeline.scheduler.quota import FieldError, InfeasibleQuota, Quota, QuotaArgs
from pipeline.scheduler.runtime import Runtime, start

__all__ = ["Budget", "FieldError", "InfeasibleQuota", "Quota", "QuotaArgs", "Runtime",
           "prepare", "start"]
