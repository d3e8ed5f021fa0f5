"""`mqt train`: two-stage Matryoshka training of the query transformer, one process.

Stage 1 trains at m = M; stage 2 draws m per step from a schedule (see mqt.matryoshka).
The vision encoder is frozen and its features are cached on disk. Progress bar with loss,
m and samples/s; a CSV of metrics; periodic evaluation; checkpoints every
`checkpoint_every` steps; running the same command again resumes from the last one. The
trained parts are exported as a checkpoint folder (`<output>/model`) that `mqt generate
checkpoint=...` and the other jobs load.
"""

from __future__ import annotations

import csv
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from jobs.common import ModelArgs, load_model, log, model_config, save_config, validate_model
from jobs.trainloop import FeatureCache, accuracy, batches, image_key, loss_on, lr_at
from mqt.checkpoint import load_part, save_checkpoint
from mqt.data import easyvqa_examples, mosaic_examples
from mqt.matryoshka import MSchedule


@dataclass
class DataArgs:
    easyvqa_images: int = 0  # easy-vqa train images to use (with all their questions); 0 = all
    mosaic_images: int = 0  # training mosaics; 0 = none
    tasks: list[str] = field(default_factory=lambda: ["vqa", "caption"])
    # easy-vqa is 74% yes/no questions; keeping a fraction of them balances the kinds
    yesno_keep: float = 1.0
    eval_examples: int = 128  # held out from easy-vqa test (and mosaic test) for progress
    seed: int = 0


@dataclass
class StageArgs:
    steps: int = 0
    lr: float = 1e-3
    warmup: int = 10
    schedule: MSchedule = field(default_factory=MSchedule)


@dataclass
class AlignArgs:
    """Stage 0, without the LM: the mean visual token, read through the LM's output
    embeddings, must name the image's colours, shapes and digits (jobs.trainloop)."""

    steps: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    schedule: MSchedule = field(default_factory=lambda: MSchedule(kind="log_uniform"))


@dataclass
class Config(ModelArgs):
    checkpoint: str = "none"  # train from scratch; a folder fine-tunes those weights
    data: DataArgs = field(default_factory=DataArgs)
    align: AlignArgs = field(default_factory=AlignArgs)
    stage1: StageArgs = field(default_factory=lambda: StageArgs(
        steps=50, schedule=MSchedule(kind="fixed")))  # m = M
    stage2: StageArgs = field(default_factory=lambda: StageArgs(steps=150))
    batch_size: int = 16
    grad_clip: float = 1.0
    eval_every: int = 0  # steps; 0 = only at the end
    eval_ms: list[int] = field(default_factory=list)  # empty: 1, 4 and M
    checkpoint_every: int = 50
    output: str = "runs/train"
    feature_cache: str = ""  # file of cached grid features; "" = <output>/features.pt
    threads: int = 0  # torch threads; 0 = torch's default


def validate(cfg: Config) -> None:
    validate_model(cfg)
    vlm = model_config(cfg)
    M = vlm.query.num_queries
    cfg.align.schedule.validate(M)
    cfg.stage1.schedule.validate(M)
    cfg.stage2.schedule.validate(M)
    if not vlm.vision.frozen:
        raise ValueError("model.vision.frozen must be true: training uses cached features")
    if cfg.stage1.steps + cfg.stage2.steps < 1 or cfg.batch_size < 1:
        raise ValueError("stage1.steps + stage2.steps and batch_size must be >= 1")
    bad = [m for m in cfg.eval_ms if not 1 <= m <= M]
    if bad:
        raise ValueError(f"eval_ms: {bad[0]} is outside 1..{M}")


def load_data(cfg: DataArgs) -> tuple[list, list]:
    train = easyvqa_examples("train", tasks=tuple(cfg.tasks), limit=cfg.easyvqa_images or None)
    test = easyvqa_examples("test", tasks=tuple(t for t in cfg.tasks if t != "mc"))
    if cfg.mosaic_images:
        train += mosaic_examples("train", cfg.mosaic_images, seed=cfg.seed, tasks=("vqa",))
        test += mosaic_examples("test", max(8, cfg.eval_examples // 8), seed=cfg.seed)
    train = [ex for ex in train if ex.task != "mc"]  # multiple choice is scored, not generated
    train = [ex for ex in train if ex.meta.get("kind") != "yesno" or keep(ex, cfg)]
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(test), generator=g)[: cfg.eval_examples].tolist()
    return train, [test[i] for i in pick]


def keep(ex, cfg: DataArgs) -> bool:
    """A seeded, per-example coin: the same examples are kept on every run and rank."""
    g = torch.Generator().manual_seed(cfg.seed * 7919 + zlib.crc32(ex.id.encode()))
    return float(torch.rand((), generator=g)) < cfg.yesno_keep


def trainable_parts(model) -> tuple[str, ...]:
    """Parts with trainable parameters; a frozen LM with adapters saves only the adapters."""
    parts = [p for p in ("vision", "query") if any(q.requires_grad for q in
                                                   getattr(model, p).parameters())]
    lm_trainable = {n for n, q in model.lm.named_parameters() if q.requires_grad}
    if lm_trainable and all(".lora_" in n for n in lm_trainable):
        parts.append("lm_lora")
    elif lm_trainable:
        parts.append("lm")
    return tuple(parts)


def save_state(path: Path, model, opt, step: int) -> None:
    """Trainable parts + optimizer + step, written to a temp folder and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    save_checkpoint(model, tmp, parts=trainable_parts(model))
    torch.save({"optimizer": opt.state_dict(), "step": step}, tmp / "state.pt")
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        import shutil

        shutil.rmtree(old)


def load_state(path: Path, model, opt) -> int:
    if not (path / "state.pt").exists():
        return 0
    for part in trainable_parts(model):
        load_part(model, part, path / f"{part}.safetensors")
    state = torch.load(path / "state.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def stage_at(cfg: Config, step: int) -> tuple[StageArgs, int]:
    """The stage of a global step and the step within it."""
    if step < cfg.stage1.steps:
        return cfg.stage1, step
    return cfg.stage2, step - cfg.stage1.steps


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output)
    save_config(cfg, out)
    model = load_model(cfg).train()
    model.vision.eval()
    train, held_out = load_data(cfg.data)
    cache = FeatureCache(model, cfg.feature_cache or out / "features.pt")
    with tqdm(total=len({image_key(ex) for ex in train + held_out}), desc="features",
              unit="img", leave=False) as bar:
        cache.add(train + held_out, progress=bar)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.stage1.lr, weight_decay=0.0)
    start = load_state(out / "checkpoint", model, opt)
    if start:
        log(f"resuming from step {start} ({out / 'checkpoint'})")
    elif cfg.align.steps:
        run_align(cfg, model, train, cache)
    total = cfg.stage1.steps + cfg.stage2.steps
    metrics = run_steps(cfg, model, opt, params, (train, held_out), cache, start, total, out)
    final = evaluate(cfg, model, held_out, cache)
    save_checkpoint(model, out / "model", parts=trainable_parts(model))
    log(f"trained {total} steps; eval {final}; model in {out / 'model'}")
    return {"eval": final, "last": metrics}


def run_align(cfg: Config, model, train, cache) -> None:
    """Stage 0 on the query transformer alone; deterministic, so a rerun repeats it."""
    from jobs.trainloop import WordTargets, align_loss
    from mqt.data import easyvqa_answers, mosaic_answers

    words = WordTargets(model.tokenizer, [w for w in easyvqa_answers() + mosaic_answers()
                                          if w not in ("yes", "no")])
    images = list({image_key(ex): ex for ex in train}.values())
    opt = torch.optim.AdamW(model.query.parameters(), lr=cfg.align.lr, weight_decay=0.0)
    order = batches(len(images), cfg.align.batch_size, cfg.data.seed + 1, 0)
    bar = tqdm(range(cfg.align.steps), desc="align", unit="step")
    for step in bar:
        chunk = [images[i] for i in next(order)]
        m = cfg.align.schedule.sample(step, model.num_queries, cfg.data.seed + 1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.align.steps, cfg.align.lr, 10)
        loss = align_loss(model, cache.get(chunk), words.distribution(chunk), words.token_ids, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=round(loss.item(), 4), m=m)
    append_csv(Path(cfg.output) / "align.csv", {"steps": cfg.align.steps,
                                                 "final_loss": round(loss.item(), 4)})


def run_steps(cfg, model, opt, params, data, cache, start, total, out: Path) -> dict:
    (train, held_out), M, row = data, model.num_queries, {}
    order = batches(len(train), cfg.batch_size, cfg.data.seed, start)
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="step")
    t0 = time.perf_counter()
    for step in bar:
        stage, local = stage_at(cfg, step)
        m = stage.schedule.sample(step, M, cfg.data.seed)
        for g in opt.param_groups:
            g["lr"] = lr_at(local, stage.steps, stage.lr, stage.warmup)
        idx = next(order)
        loss = loss_on(model, [train[i] for i in idx], cache.get([train[i] for i in idx]), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        dt, t0 = time.perf_counter() - t0, time.perf_counter()
        row = {"step": step + 1, "stage": 1 if stage is cfg.stage1 else 2, "m": m,
               "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"],
               "samples_per_s": round(len(idx) / dt, 2)}
        bar.set_postfix(loss=row["loss"], m=m, sps=row["samples_per_s"])
        append_csv(out / "metrics.csv", row)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < total:
            ev = evaluate(cfg, model, held_out, cache)
            append_csv(out / "eval.csv", {"step": step + 1, **ev})
            bar.write(f"step {step + 1}: {ev}")
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            save_state(out / "checkpoint", model, opt, step + 1)
    return row


def evaluate(cfg: Config, model, held_out, cache) -> dict:
    model.eval()
    ms = cfg.eval_ms or sorted({1, min(4, model.num_queries), model.num_queries})
    feats = cache.get(held_out)
    result = {f"acc@{m}": round(accuracy(model, held_out, feats, m)[0], 4) for m in ms}
    model.train()
    model.vision.eval()
    return result


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
