"""The scheduler at run time, on Ray: the job's ledger and pacer actors behind one `start`.

`start(budget, job)` starts what a job planned by `pipeline.scheduler.prepare` needs while
it runs: its ledger actor (one named actor per job, Ray runs its methods one at a time so
concurrent engines see one consistent ledger), a second ledger for the plan's escalation
budget when it has cascades, and with `quota.pacing` the pacer actor that re-plans m as rows
arrive. It returns a `Runtime`: the token policy and the ledger clients every engine holds
(plain picklable objects that call the actors), and `close()`, which saves the ledgers,
stops the actors and returns the spend. Batch jobs, and next a Serve deployment, call
exactly this; the pure parts it runs are in the other modules of this package.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.scheduler.budget import Budget
from pipeline.scheduler.kinds import GroupedPolicy
from pipeline.scheduler.ledger import Ledger, LedgerClient, MeasuredRate
from pipeline.scheduler.pacing import Pacer, measured_left
from pipeline.scheduler.policy import Choice, TokenPolicy
from pipeline.scheduler.quota import QuotaArgs, in_ledger_units, ledger_quota, ledger_work


@dataclass
class Runtime:
    """What a running quota job hands its engines, and how it ends."""

    policy: TokenPolicy | None  # None: the budget has no plan (every row was skipped)
    ledger: LedgerClient
    escalation_ledger: LedgerClient | None = None
    actors: dict = field(default_factory=dict)  # name -> Ray actor (ledger, escalations, pacer)

    def close(self) -> dict:
        """The ledger's totals (its state saved) with the escalations' spend and the pacer's
        statistics; every actor of the job is stopped."""
        import ray  # heavy; this module is only imported where a job runs on Ray

        escalated = _close_ledger(self.actors.pop("escalations", None))
        pacer = self.actors.pop("pacer", None)
        stats = None
        if pacer is not None:
            stats = ray.get(pacer.stats.remote())
            ray.kill(pacer)
        totals = _close_ledger(self.actors.pop("ledger"))
        if stats is not None:
            totals["pacing"] = stats
        if escalated is not None:
            totals["escalation_spent"] = escalated["spent"]  # in the ledger's unit
        return totals


def start(budget: Budget, job: str, accelerators: float = 1.0) -> Runtime:
    """Start the ledger (and escalation ledger, pacer) of a job planned as `budget`, named
    after `job` (a resumed job must use the same name), its state at `budget.state_path`.
    `accelerators`: what each engine's actor holds (annotate's `gpus_per_actor`; 1 without
    accelerators): a measured second is charged as that many accelerator-seconds."""
    args = budget.args
    units, unit = ledger_quota(args)
    work, profile = ledger_work(args), args.time_model()
    actors = {"ledger": ledger_actor(job, units, budget.state_path, unit=unit, work=work,
                                     storage=budget.storage)}
    client = LedgerClient(actors["ledger"], measured_rate(args), profile, accelerators=accelerators)
    esc_client = None
    if budget.escalations:  # this run's pot for escalations; the main ledger still caps them
        actors["escalations"] = ledger_actor(f"{job}-escalations",
                                             in_ledger_units(args, budget.escalations),
                                             unit=unit, work=work)
        esc_client = LedgerClient(actors["escalations"], measured_rate(args), profile,
                                  accelerators=accelerators)
    policy = budget.plan.policy() if budget.plan else None
    if args.pacing and budget.plan:
        actors["pacer"] = pacer_actor(budget, actors["ledger"], job)
        policy = RemotePacer(actors["pacer"])
    if budget.groups is not None and policy is not None:  # quota.by=kind
        policy = GroupedPolicy(budget.groups, policy)
    return Runtime(policy, client, esc_client, actors)


def measured_rate(args: QuotaArgs) -> MeasuredRate | None:
    """A measured-seconds quota: each engine's own `MeasuredRate`, starting from the job's
    FLOP/s estimate (or, with a time profile, from the profile's time); None for a quota in
    FLOPs."""
    return MeasuredRate(1 / args.quota().flops_per_second, args.margin) if args.measured else None


# ------------------------------------------------------------------------ the ledger actor

def ledger_name(job: str) -> str:
    return f"mqt-ledger-{job}"


def ledger_actor(job: str, quota: int, state_path: str | None = None,
                 namespace: str | None = None, unit: str = "flops", work: str = "flops",
                 storage=None):
    """The job's ledger actor: the running one named after the job, or a new one. A running
    one with another quota is an error (two jobs with one name would share a budget). It is
    placed on the driver's node: it needs no CPU, a local `state_path` (beside a local
    output) is on that node's disk, and the job ends with that node anyway (a soft affinity
    was seen to put it on another node of an idle two-node cluster). A URL `state_path`
    (beside a remote output) is reached with `storage` from wherever it runs."""
    import ray  # heavy; only jobs that run on Ray start actors
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # heavy: Ray

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = _ledger_actor_class().options(
        name=ledger_name(job), namespace=namespace, get_if_exists=True,
        max_concurrency=1,  # one method at a time: reserve/commit never interleave
        scheduling_strategy=here,
    ).remote(quota, state_path, unit=unit, work=work, storage=storage)
    running = tuple(ray.get([actor.get.remote("quota"), actor.get.remote("unit")]))
    if running != (int(quota), unit):
        raise ValueError(f"ledger {ledger_name(job)!r} is running with quota {running[0]} "
                         f"{running[1]}, not {quota} {unit}")
    return actor


@functools.cache
def _ledger_actor_class():
    """`Ledger` as a Ray actor class, made once per process."""
    import ray  # heavy; see ledger_actor

    return ray.remote(num_cpus=0)(_LedgerActor)


class _LedgerActor(Ledger):
    """A Ledger whose attributes are reachable as actor methods."""

    def get(self, name: str):
        return getattr(self, name)

    def ping(self) -> bool:
        return True


def _close_ledger(actor) -> dict | None:
    """The ledger's totals, its state saved; the actor lives as long as the job."""
    if actor is None:
        return None
    import ray  # heavy; see ledger_actor

    ray.get(actor.save.remote())
    totals = ray.get(actor.totals.remote())
    ray.kill(actor)
    return totals


# ------------------------------------------------------------------------- the pacer actor

def pacer_actor(budget: Budget, ledger, job: str):
    """The job's pacer: re-plans the rows left of this run on the ledger's spend."""
    args = budget.args
    estimate = {t.task: t.rows for t in budget.plan.tasks}  # per group with quota.by=kind
    fps = args.quota().flops_per_second if args.measured else None
    return pacer_actor_class().options(name=f"mqt-pacer-{job}").remote(
        budget.curves, ledger_quota(args)[0], estimate, ledger, budget.weights,
        args.pacing_every, tail=0.0, flops_per_second=fps)  # the rows are counted


def pacer_actor_class():
    """`Pacer` as a Ray actor class whose `spent` asks the job's ledger actor."""
    import ray  # heavy; see ledger_actor

    @ray.remote(num_cpus=0)
    class PacerActor:
        """One job's Pacer; `spent` asks the job's ledger actor."""

        def __init__(self, curves, quota_flops, estimate, ledger, weights=None, every=0,
                     error=0.0, tail=0.1, flops_per_second=None):
            def spent() -> int:
                t = ray.get(ledger.totals.remote())
                return int(t["spent"] + t["reserved"])

            def time_left() -> tuple[int, float]:
                return measured_left(ray.get(ledger.totals.remote()), flops_per_second)

            # a resumed job's ledger starts with the earlier runs' spend (started before
            # any engine, so nothing of this run is in it yet)
            base = time_left()[0] if flops_per_second else spent()
            self.pacer = Pacer(curves, quota_flops, estimate, spent, weights, every, error,
                               tail, time_left=time_left if flops_per_second else None,
                               base=base)

        def choose(self, tasks, questions):
            return self.pacer.choose(tasks, questions)

        def skipped(self, tasks):
            self.pacer.skipped(tasks)

        def stats(self) -> dict:
            return {"plans": self.pacer.plans, "seen": dict(self.pacer.seen),
                    "rows_left": self.pacer.rows_left()}

    return PacerActor


@dataclass
class RemotePacer(TokenPolicy):
    """What an engine holds: the job's pacer actor behind the TokenPolicy methods."""

    actor: object

    def check(self, num_queries: int) -> None:
        pass  # the curves' m were checked when the job was planned

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        import ray  # heavy; see ledger_actor

        return ray.get(self.actor.choose.remote(list(tasks), list(questions)))

    def skipped(self, tasks: Sequence[str], questions: Sequence[str | None] = ()) -> None:
        import ray  # heavy; see ledger_actor

        ray.get(self.actor.skipped.remote(list(tasks)))
