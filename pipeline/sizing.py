"""How many engine actors a job runs, and the threads, CPUs and GPUs each gets.

A setting of 0 is chosen here from the Ray cluster's resources when the job starts; any
other value is kept as given. The shape comes from the cluster's totals; chosen actors are
then capped by what is free, with a CPU left for a decode task, so that they all start and
the decode tasks still run (a Serve app's replicas or another job may hold some: actors that
cannot start, or that take the last CPU, stall the job). The job waits up to two seconds for
resources an earlier job on the same Ray is still releasing before it caps.
- A cluster with GPUs, `actors` and `gpus_per_actor` unset: one actor per GPU, one GPU
  each, and a few threads for what stays on the CPU.
- A CPU cluster of C CPUs: threads t = max(1, C // 8) per actor and C // t actors (with
  `actors` given, t = C // actors: the actors share the CPUs). Several one-thread models
  beat one model on every core: on the 2-core test machine (`python -m bench.sizing`,
  docs/bench/sizing.md; two runs) two one-thread actors answer 1.8-2.0x the steady rows/s
  of one one-thread actor (the old default) and 1.3-1.5x one actor with two threads: each actor's
  Python work (collating, prompts, the generation loop) overlaps the other's matmuls.
  Larger machines get two-thread (or wider) actors so that the number of model copies,
  each one the model's memory, stays near eight (a rule not measured beyond 2 cores).
- `cpus_per_actor` (Ray's logical CPUs, what scheduling counts): half the actor's threads,
  so the decode tasks always have CPUs to be scheduled on; an actor holding whole CPUs
  for every thread starves them (measured on 2 cores: the job stalls on decode).
- Memory (Ray's `memory` resource, host memory): each actor asks for `actor_memory`, what
  its process is expected to hold at most with 25% to spare (Ray Data's own rule for the
  request it recommends): the measured runtime (torch, transformers and Ray imported, a
  tokenizer and the tiny model loaded: 510 MiB USS in a plain process on the test machine),
  the model's weights as loaded (counted from its config, `mqt.model.weight_bytes`) and
  one batch's activations at M (logits over the vocabulary and the KV cache for every
  position: an upper bound). Ray then places actors where that memory is, chosen actors are
  capped by the free memory, and Ray Data's high-memory detector has nothing to report.
  Measured over the demo corpus (`memory_per_actor=0.1` makes Ray Data print what its
  actors held): tiny asks 0.68 GB, its actors held at most 370 MiB; mqt-smol at batch 16
  asks 1.97 GB, its actors held at most 854 MiB.
An autoscaling cluster may have no GPU node yet when the job starts: give `actors` and
`gpus_per_actor` there (the RayJob manifests in cluster/ do). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqt.config import VLMConfig
from mqt.cost import kv_cache_bytes, lm_visual_tokens

MAX_THREADS_PER_GPU_ACTOR = 4
DECODE_CPUS = 1.0  # what a decode task asks of Ray (a task's default): left free for them
RUNTIME_BYTES = 512 * 2**20  # an engine process before its model's weights and batches
PROMPT_TOKENS = 64  # text positions assumed beside the M visual ones (a question, a template)


def actor_memory(weights: int, activations: int) -> int:
    """Host memory (bytes) to ask for an engine actor: (runtime + weights + a batch's
    activations, `batch_bytes`) with 25% to spare."""
    return -(-5 * (RUNTIME_BYTES + weights + activations) // 4)


def batch_bytes(cfg: VLMConfig, batch_size: int, bytes_per_value: int = 4) -> int:
    """A batch's logits over the vocabulary and KV cache (`mqt.cost.kv_cache_bytes`) for
    every position at M with PROMPT_TOKENS of text: an upper bound of its activations."""
    M = cfg.query.num_queries
    positions = lm_visual_tokens(cfg, M) + PROMPT_TOKENS
    kv = kv_cache_bytes(cfg, M, PROMPT_TOKENS, 1, bytes_per_value)
    return batch_size * (kv + positions * cfg.lm.vocab_size * bytes_per_value)


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
                f"CPU) on a cluster of {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else ""))


def size(cpus: float, gpus: float, actors: int = 0, threads: int = 0,
         cpus_per_actor: float = 0.0, gpus_per_actor: float = 0.0,
         free: tuple[float, float] | None = None) -> Sizing:
    """The job's actors for a cluster of `cpus` and `gpus`, of which `free` = (CPUs, GPUs)
    are free now (None: all); 0 = choose."""
    s = _shape(cpus, gpus, actors, threads, cpus_per_actor, gpus_per_actor)
    if actors or free is None:
        return s
    fits = (free[0] - DECODE_CPUS) // s.cpus_per_actor
    if s.gpus_per_actor:
        fits = min(fits, free[1] // s.gpus_per_actor)
    return Sizing(max(1, min(s.actors, int(fits))), s.threads, s.cpus_per_actor,
                  s.gpus_per_actor)


def fit_memory(actors: int, memory: float, free: float, total: float,
               chosen: bool = True) -> tuple[int, float]:
    """(actors, memory each) within the cluster's memory (Ray's `memory` resource: `free`
    now of `total`): chosen actors are no more than the free memory holds (one at least);
    a request above the whole cluster's memory shrinks to its share, else no actor could
    ever start. 0 = unknown (a cluster that reports no memory): as given."""
    if chosen and free:
        actors = max(1, min(actors, int(free // memory)))
    if total and memory * actors > total:
        memory = total / actors
    return actors, memory


def needs(s: Sizing) -> tuple[float, float]:
    """(CPUs, GPUs) that must be free for all of `s`'s actors and a decode task to run."""
    return s.actors * s.cpus_per_actor + DECODE_CPUS, s.actors * s.gpus_per_actor


def _shape(cpus: float, gpus: float, actors: int, threads: int, cpus_per_actor: float,
           gpus_per_actor: float) -> Sizing:
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
