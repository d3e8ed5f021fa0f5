"""How many engine actors a job runs, and the threads, CPUs and GPUs each gets.

A setting of 0 is chosen here from the Ray cluster's free resources when the job starts;
any other value is kept as given.
- A cluster with GPUs, `actors` and `gpus_per_actor` unset: one actor per GPU, one GPU
  each, and a few threads for what stays on the CPU.
- A CPU cluster of C CPUs: threads t = max(1, C // 8) per actor and C // t actors (with
  `actors` given, t = C // actors: the actors share the CPUs). Several
  one-thread models beat one model on every core: on the 2-core test machine
  (`python -m bench.sizing`, docs/bench/sizing.md) two one-thread actors answer ~1.6x the
  rows/s of one actor, and ~1.2x one actor with two threads: each actor's Python work
  (collating, prompts, the generation loop) overlaps the other's matmuls. Larger machines
  get two-thread (or wider) actors so that the number of model copies, each one the
  model's memory, stays near eight.
- `cpus_per_actor` (Ray's logical CPUs, what scheduling counts): half the actor's threads,
  so the decode tasks always have CPUs to be scheduled on; an actor holding whole CPUs
  for every thread starves them (measured on 2 cores: the job stalls on decode).
An autoscaling cluster may have no GPU node yet when the job starts: give `actors` and
`gpus_per_actor` there (the RayJob manifests in cluster/ do). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_THREADS_PER_GPU_ACTOR = 4


@dataclass(frozen=True)
class Sizing:
    actors: int
    threads: int
    cpus_per_actor: float
    gpus_per_actor: float

    def describe(self, cpus: float, gpus: float) -> str:
        on = f"{self.gpus_per_actor:g} GPU, " if self.gpus_per_actor else ""
        return (f"{self.actors} engine actor{'s' * (self.actors != 1)} x ({on}"
                f"{self.threads} thread{'s' * (self.threads != 1)}, {self.cpus_per_actor:g} "
                f"CPU) for the {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
                + " free on the cluster")


def size(cpus: float, gpus: float, actors: int = 0, threads: int = 0,
         cpus_per_actor: float = 0.0, gpus_per_actor: float = 0.0) -> Sizing:
    """The job's actors from the `cpus` and `gpus` free on the cluster; 0 = choose."""
    cpus = max(1, int(cpus))
    if gpus >= 1 and not actors and not gpus_per_actor:
        actors, gpus_per_actor = int(gpus), 1.0
    if gpus_per_actor:
        per = max(1, cpus // max(1, actors or int(gpus // gpus_per_actor) or 1))
        threads = threads or max(1, min(MAX_THREADS_PER_GPU_ACTOR, per // 2))
        actors = actors or max(1, int(gpus // gpus_per_actor))
        return Sizing(actors, threads, cpus_per_actor or 1.0, gpus_per_actor)
    threads = threads or max(1, cpus // actors if actors else cpus // 8)
    actors = actors or max(1, cpus // threads)
    return Sizing(actors, threads, cpus_per_actor or threads / 2, 0.0)
