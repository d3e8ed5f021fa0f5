"""The training loop: the describe and alignment stages, then stage 1 and stage 2.

Stage 1 trains at m = M; stage 2 draws m per step from a schedule (mqt.matryoshka). The
vision encoder is frozen and its features are cached on disk. Progress bar with loss, m and
samples/s; a CSV of metrics; periodic evaluation; checkpoints every `checkpoint_every`
steps, from which the same run resumes.

`fit` is one training process, the same for `mqt train backend=local` and for each rank of
a Ray Train job. What differs is the *session* (the process's ranks, where checkpoints go,
how the run ends: `LocalSession` here, `RaySession` in pipeline.train.ray_train) and the
*training* (mqt.train.state: how a step updates the weights, what a checkpoint holds).
The rows of the training set beyond the bundled ones come from the caller (`more_examples`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mqt.checkpoint import save_checkpoint
from mqt.data import Example
from mqt.load import load_model
from mqt.train.config import TrainArgs, restarts_at, stage_at
from mqt.train.data import load_data
from mqt.train.describe import describe_vocab, mimic_loss, run_align, run_describe
from mqt.train.state import (
    TorchTraining,
    load_state,
    make_training,
    save_state,
    saved_step,
    trainable_parts,
)
from mqt.train.steps import (
    FeatureCache,
    Ranks,
    accuracy,
    append_csv,
    batches,
    image_key,
    log,
    loss_on,
    lr_at,
    unwrap,
)


class LocalSession:
    """One process alone: checkpoints in <output>/checkpoint, the model in <output>/model."""

    def __init__(self, out: Path):
        self.out, self.ranks = out, Ranks()

    def resuming(self) -> bool:
        return (self.out / "checkpoint" / "state.pt").exists()

    def checkpoint_step(self) -> int:
        return saved_step(self.out / "checkpoint")

    def restore(self, training) -> int:
        step = load_state(self.out / "checkpoint", training, self.ranks)
        if step:
            log(f"resuming from step {step} ({self.out / 'checkpoint'})")
        return step

    def checkpoint_due(self, step: int, total: int, every: int) -> bool:
        return bool(every) and (step % every == 0 or step == total)

    def save(self, training, step: int, metrics: dict) -> None:
        save_state(self.out / "checkpoint", training, step, self.ranks)

    def report(self, step: int, every: int, metrics: dict) -> None:
        """Nothing to report to: metrics.csv has every step."""

    def finish(self, training, step: int, metrics: dict, trained: bool) -> None:
        model = training.inner
        save_checkpoint(model, self.out / "model", parts=trainable_parts(model))


@dataclass
class Loop:
    """What the training steps work on: the training (the model as `loss_on` calls it,
    DDP-wrapped or a DeepSpeed engine; how a step updates it), the data and the session
    (ranks, checkpoints, output folder)."""

    training: TorchTraining  # or mqt.train.deepspeed.DeepSpeedTraining: the same methods
    train: list
    held_out: list
    cache: FeatureCache
    session: object
    rebuild: object = None  # () -> a fresh model like the first (before any training)
    vocab: object = None  # mqt.train.describe.DescriptionVocab when describe.lm_weight > 0


def fit(cfg: TrainArgs, session,
        more_examples: Callable[[], Sequence[Example]] | None = None) -> dict:
    """Train as `cfg` says in `session`; `more_examples()` (called on every rank) gives
    training rows beyond the bundled ones. Returns the final evaluation and the last row."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks = session.ranks
    model, train, held_out, cache = ranks.local_first(
        lambda: prepare(cfg, session.out, ranks.main, more_examples))
    model.to(ranks.device)
    # before the training takes the weights (ZeRO keeps its own fp32 copy); a resumed run
    # has the aligned weights in its checkpoint
    if not session.resuming():
        if cfg.describe.steps:
            run_describe(cfg, model, train, ranks.main)
        if cfg.align.steps:
            run_align(cfg, model, train, cache, ranks.main)
    # the training of the stage the checkpoint was written in (a checkpoint at the end of
    # stage 1 loads into stage 1's; run_steps then moves on to stage 2's)
    saved = session.checkpoint_step()
    training = make_training(cfg, model, ranks, stage_at(cfg, max(saved - 1, 0))[0])
    start = session.restore(training)
    total = cfg.stage1.steps + cfg.stage2.steps
    loop = Loop(training, train, held_out, cache, session,
                rebuild=lambda: fresh_model(cfg).to(ranks.device),
                vocab=describe_vocab(cfg, model, "lm_weight"))
    row = run_steps(cfg, loop, start, total)
    training = loop.training  # a new one if a stage started with a new optimizer or ZeRO stage
    with training.full_weights():
        final = evaluate(cfg, training.inner, held_out, cache) if ranks.main else {}
    session.finish(training, total, {**row, **final}, trained=start < total)
    if ranks.main:
        log(f"trained {total} steps; eval {final}")
    return {"eval": final, "last": row}


def fresh_model(cfg: TrainArgs):
    """The model before any training (the weights of `checkpoint`), in training mode but
    for the frozen vision encoder."""
    model = load_model(cfg).train()
    model.vision.eval()
    return model


def prepare(cfg: TrainArgs, out: Path, main: bool,
            more_examples: Callable[[], Sequence[Example]] | None = None) -> tuple:
    """The model, the data, and the grid features of every image (computed once, cached)."""
    model = fresh_model(cfg)
    train, held_out = load_data(cfg.data, more_examples() if more_examples else ())
    cache = FeatureCache(model, cfg.feature_cache or out / "features.pt")
    with tqdm(total=len({image_key(ex) for ex in train + held_out}), desc="features",
              unit="img", leave=False, disable=not main) as bar:
        cache.add(train + held_out, progress=bar)
    return model, train, held_out, cache


def run_steps(cfg: TrainArgs, loop: Loop, start: int, total: int) -> dict:
    """Steps start..total-1. Every rank draws the same global batch and m, trains on its
    slice of the batch; rank 0 shows the progress bar and writes metrics.csv."""
    ranks, session, training, row = loop.session.ranks, loop.session, loop.training, {}
    inner = unwrap(training.model)
    order = batches(len(loop.train), cfg.batch_size, cfg.data.seed, start)
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="step",
               disable=not ranks.main)
    t0 = time.perf_counter()
    for step in bar:
        stage, local = stage_at(cfg, step)
        if restarts_at(cfg, step):
            training = loop.training = training.restart(cfg, stage, loop.rebuild)
            inner = unwrap(training.model)
            if ranks.main:
                bar.write(f"step {step + 1}: stage 2 starts with a new optimizer"
                          + (f" under ZeRO-{training.stage}" if cfg.backend == "deepspeed"
                             else ""))
        m = stage.schedule.sample(step, inner.num_queries, cfg.data.seed)
        ranks.check_same("m", m, step)  # a pure function of (seed, step): cheap to prove
        for g in training.param_groups:
            g["lr"] = lr_at(local, stage.steps, stage.lr, stage.warmup)
        idx = next(order)
        mine = [loop.train[i] for i in ranks.shard(idx)]
        feats = loop.cache.get(mine).to(ranks.device, training.dtype)
        loss, tokens = loss_on(training.model, mine, feats, m, ranks.denominator)
        if loop.vocab:
            loss = loss + cfg.describe.lm_weight * mimic_loss(inner, feats, mine, loop.vocab)
        training.step(loss)
        dt, t0 = time.perf_counter() - t0, time.perf_counter()
        row = {"step": step + 1, "stage": 1 if stage is cfg.stage1 else 2, "m": m,
               "loss": round(ranks.mean(loss), 4), "lr": training.param_groups[0]["lr"],
               "samples_per_s": round(len(idx) / dt, 2),
               "tokens_per_s": round(ranks.total(tokens) / dt, 1)}
        if ranks.main:
            bar.set_postfix(loss=row["loss"], m=m, sps=row["samples_per_s"])
            append_csv(session.out / "metrics.csv", row)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < total:
            with training.full_weights():  # every rank: ZeRO-3 gathers the weights
                if ranks.main:
                    ev = evaluate(cfg, inner, loop.held_out, loop.cache)
                    append_csv(session.out / "eval.csv", {"step": step + 1, **ev})
                    bar.write(f"step {step + 1}: {ev}")
        if session.checkpoint_due(step + 1, total, cfg.checkpoint_every):
            session.save(training, step + 1, row)
        elif step + 1 < total:  # the last step reports with the final checkpoint
            session.report(step + 1, cfg.report_every, row)
    return row


def evaluate(cfg: TrainArgs, model, held_out, cache: FeatureCache) -> dict:
    """Accuracy on the held-out examples at each of `eval_ms` (default 1, 4 and M)."""
    model.eval()
    ms = cfg.eval_ms or sorted({1, min(4, model.num_queries), model.num_queries})
    feats = cache.get(held_out).to(model.query.proj.device, model.query.proj.dtype)
    result = {f"acc@{m}": round(accuracy(model, held_out, feats, m)[0], 4) for m in ms}
    model.train()
    model.vision.eval()
    return result
