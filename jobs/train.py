"""`mqt train`: two-stage Matryoshka training of the query transformer.

Stage 1 trains at m = M; stage 2 draws m per step from a schedule (see mqt.matryoshka).
The vision encoder is frozen and its features are cached on disk. Progress bar with loss,
m and samples/s; a CSV of metrics; periodic evaluation; checkpoints every
`checkpoint_every` steps; running the same command again resumes from the last one. The
trained parts are exported as a checkpoint folder (`<output>/model`) that `mqt generate
checkpoint=...` and the other jobs load.

`backend=local` trains in this process; `backend=ddp` runs the same `fit` on
`scaling.workers` Ray Train workers with DistributedDataParallel, `backend=deepspeed` with
DeepSpeed ZeRO-2 or ZeRO-3 (jobs.train_ray, jobs.train_deepspeed). What differs is the
*session* (the process's ranks, where checkpoints go, how the run ends) and the *training*
(`TorchTraining` or `DeepSpeedTraining`: how a step updates the weights, what a checkpoint
holds).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from jobs.common import log, save_config
from jobs.describe import mimic_loss
from jobs.trainloop import (
    FeatureCache,
    Ranks,
    accuracy,
    batches,
    image_key,
    loss_on,
    lr_at,
    unwrap,
)
from mqt.checkpoint import load_part, save_checkpoint
from mqt.configtree import ConfigError
from mqt.data import easyvqa_examples, mosaic_examples
from mqt.load import ModelArgs, load_model, model_config, validate_model
from mqt.matryoshka import MSchedule
from pipeline.storage import StorageArgs, scheme_of

BACKENDS = ("local", "ddp", "deepspeed")
NEGATION = re.compile(r"\b(not|no)\b")  # easy-vqa's negated yes/no questions


@dataclass
class DataArgs:
    easyvqa_images: int = 0  # easy-vqa train images to use (with all their questions); 0 = all
    mosaic_images: int = 0  # training mosaics; 0 = none
    tasks: list[str] = field(default_factory=lambda: ["vqa", "caption"])
    # easy-vqa is 74% yes/no questions; keeping a fraction of them balances the kinds
    yesno_keep: float = 1.0
    # keep yes/no questions so that each (negated or not, yes or no) class is a quarter of
    # those kept: easy-vqa's negated questions are 82% "yes", its plain ones 82% "no", so a
    # model can score well by reading "not" and never the image (docs/default-model.md)
    yesno_balance: bool = False
    eval_examples: int = 128  # held out from easy-vqa test (and mosaic test) for progress
    seed: int = 0
    manifest: str = ""  # more training rows {id, image, task, question, answer}: JSONL or
    # Parquet, or a folder of images with <name>.txt captions; local or s3://
    # (jobs.traindata); read with the job's `storage` settings


@dataclass
class StageArgs:
    steps: int = 0
    lr: float = 1e-3
    warmup: int = 10
    schedule: MSchedule = field(default_factory=MSchedule)
    # start the stage with a fresh AdamW (what the paper's separate stage runs do); a
    # change of ZeRO stage at the boundary always starts one
    new_optimizer: bool = False
    zero: int = 0  # backend=deepspeed: this stage's ZeRO stage; 0 = deepspeed.stage


@dataclass
class AlignArgs:
    """Stage 0, without the LM: the query transformer learns to output the image's
    description (`describe.align_weight`, jobs.describe)."""

    steps: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    # the m shown on the progress bar; the description target covers all M tokens
    schedule: MSchedule = field(default_factory=lambda: MSchedule(kind="log_uniform"))


@dataclass
class DescribeArgs:
    """Describe alignment (jobs.describe): the visual tokens learn to read like a fixed-length
    description of the image (a mosaic cell by cell in reading order), and before that the
    LM's adapters learn to answer from such descriptions. Needs a tokenizer that writes each
    description word as one token (mqt-smol's)."""

    # steps of the adapters alone, on the description's embeddings in place of the visual
    # tokens (LM passes, no image); run before the alignment stage
    steps: int = 0
    lr: float = 2e-3
    batch_size: int = 16
    schedule: MSchedule = field(default_factory=lambda: MSchedule(kind="uniform_even"))
    align_weight: float = 0.0  # the description target in the alignment stage; > 0 with it
    lm_weight: float = 0.0  # > 0: the description target beside the answer loss, stages 1-2


@dataclass
class ScalingArgs:
    """Ray Train workers (backend ddp): one training process per worker."""

    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0  # worker failures survived, each by a restart from the last checkpoint


@dataclass
class DeepSpeedArgs:
    """backend=deepspeed: the ZeRO stage and precision (jobs.train_deepspeed.ds_config
    turns the whole train config into DeepSpeed's)."""

    stage: int = 2  # 2: optimizer state and gradients sharded; 3: the trainable weights too
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or fp32, bf16
    # ZeRO-3 keeps parameters of at most this many elements whole on every rank (DeepSpeed's
    # default); 0 shards every one
    persistence_threshold: int = 100_000


@dataclass
class Config(ModelArgs):
    checkpoint: str = "none"  # train from scratch; a folder fine-tunes those weights
    data: DataArgs = field(default_factory=DataArgs)
    align: AlignArgs = field(default_factory=AlignArgs)
    describe: DescribeArgs = field(default_factory=DescribeArgs)
    stage1: StageArgs = field(default_factory=lambda: StageArgs(
        steps=50, schedule=MSchedule(kind="fixed")))  # m = M
    stage2: StageArgs = field(default_factory=lambda: StageArgs(steps=150))
    batch_size: int = 16  # the global batch: with ddp, each worker takes batch_size / workers
    grad_clip: float = 1.0
    eval_every: int = 0  # steps; 0 = only at the end
    eval_ms: list[int] = field(default_factory=list)  # empty: 1, 4 and M
    checkpoint_every: int = 50
    # Ray backends: every rank calls ray.train.report(metrics) every this many steps (a
    # barrier); the controller appends each report to <output>/reports.jsonl. 0 = only with
    # checkpoints. metrics.csv has every step either way.
    report_every: int = 0
    output: str = "runs/train"
    feature_cache: str = ""  # file of cached grid features; "" = <output>/features.pt
    threads: int = 0  # torch threads; 0 = torch's default
    backend: str = "local"  # local: this process; ddp, deepspeed: Ray Train workers
    scaling: ScalingArgs = field(default_factory=ScalingArgs)
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    # Ray Train checkpoints: a folder all workers see, or s3://bucket/prefix; "" = <output>/ray
    storage_path: str = ""
    storage: StorageArgs = field(default_factory=StorageArgs)  # how to reach s3:// storage
    name: str = ""  # the Ray Train run; the same name resumes it; "" = the output folder's name


def validate(cfg: Config) -> None:
    validate_model(cfg)
    vlm = model_config(cfg)
    M = vlm.query.num_queries
    cfg.align.schedule.validate(M)
    validate_describe(cfg, vlm)
    cfg.stage1.schedule.validate(M)
    cfg.stage2.schedule.validate(M)
    if not vlm.vision.frozen:
        raise ValueError("model.vision.frozen must be true: training uses cached features")
    if cfg.data.manifest:  # a bad manifest or row fails here, before any model work
        from jobs.traindata import manifest_examples

        manifest_examples(cfg.data.manifest, cfg.storage)
    if cfg.report_every < 0 or cfg.checkpoint_every < 0 or cfg.eval_every < 0:
        raise ConfigError("report_every, checkpoint_every and eval_every must be >= 0")
    if cfg.stage1.steps + cfg.stage2.steps < 1 or cfg.batch_size < 1:
        raise ValueError("stage1.steps + stage2.steps and batch_size must be >= 1")
    bad = [m for m in cfg.eval_ms if not 1 <= m <= M]
    if bad:
        raise ValueError(f"eval_ms: {bad[0]} is outside 1..{M}")
    validate_backend(cfg)


def validate_describe(cfg: Config, vlm) -> None:
    d = cfg.describe
    if d.steps < 0 or d.align_weight < 0 or d.lm_weight < 0 or d.batch_size < 1:
        raise ConfigError("describe.steps, describe.align_weight and describe.lm_weight must "
                          "be >= 0 and describe.batch_size >= 1")
    if cfg.align.steps and not d.align_weight:
        raise ConfigError(f"align.steps={cfg.align.steps} needs describe.align_weight > 0: the "
                          "alignment stage trains the description target")
    if not (d.steps or d.align_weight or d.lm_weight):
        return
    d.schedule.validate(vlm.query.num_queries)
    if d.align_weight and not cfg.align.steps:
        raise ConfigError("describe.align_weight needs an alignment stage (align.steps > 0)")
    if d.lm_weight and cfg.backend == "deepspeed":
        raise ConfigError("describe.lm_weight: the auxiliary loss runs with backend local or "
                          "ddp (under ZeRO the query transformer is sharded outside its step)")
    if vlm.tokenizer == "byte":
        raise ConfigError("describe: the byte tokenizer cannot write descriptions (one token "
                          "per word); use a subword tokenizer (preset mqt-smol)")


def validate_backend(cfg: Config) -> None:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend={cfg.backend!r} is not one of {BACKENDS}")
    if scheme_of(cfg.storage_path) not in ("", "file", "s3"):
        raise ConfigError(f"storage_path={cfg.storage_path!r}: a folder every worker sees "
                          "(local or mounted) or s3://bucket/prefix")
    w = cfg.scaling.workers
    if cfg.backend != "local" and (w < 1 or cfg.batch_size % w):
        raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be a multiple "
                          f"of scaling.workers={w}")
    if cfg.backend == "deepspeed":
        validate_deepspeed(cfg.deepspeed)
    for name in ("stage1", "stage2"):
        zero = getattr(cfg, name).zero
        if zero and cfg.backend != "deepspeed":
            raise ConfigError(f"{name}.zero={zero} needs backend=deepspeed "
                              f"(backend={cfg.backend})")
        if zero:
            validate_deepspeed(dataclasses.replace(cfg.deepspeed, stage=zero), f"{name}.zero")


def validate_deepspeed(ds: DeepSpeedArgs, field_name: str = "deepspeed.stage") -> None:
    from jobs.train_deepspeed import PRECISIONS, STAGES  # no deepspeed import: a pure module

    if ds.stage not in STAGES:
        raise ConfigError(f"{field_name}={ds.stage}: ZeRO stage 2 or 3")
    if ds.precision not in PRECISIONS:
        raise ConfigError(f"deepspeed.precision={ds.precision!r} is not one of {PRECISIONS}")


def load_data(cfg: DataArgs, storage: StorageArgs | None = None) -> tuple[list, list]:
    train = easyvqa_examples("train", tasks=tuple(cfg.tasks), limit=cfg.easyvqa_images or None)
    if cfg.manifest:
        from jobs.traindata import manifest_examples

        train += manifest_examples(cfg.manifest, storage)
    test = easyvqa_examples("test", tasks=tuple(t for t in cfg.tasks if t != "mc"))
    if cfg.mosaic_images:
        train += mosaic_examples("train", cfg.mosaic_images, seed=cfg.seed, tasks=("vqa",))
        test += mosaic_examples("test", max(8, cfg.eval_examples // 8), seed=cfg.seed)
    train = [ex for ex in train if ex.task != "mc"]  # multiple choice is scored, not generated
    train = yesno_kept(train, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(test), generator=g)[: cfg.eval_examples].tolist()
    return train, [test[i] for i in pick]


def yesno_kept(train: list, cfg: DataArgs) -> list:
    """All other rows, and of the yes/no questions a share `yesno_keep`: the same share of
    each, or with `yesno_balance` the share that makes the four (negated, answer) classes
    equal (each at most whole)."""
    sizes = Counter(yesno_class(ex) for ex in train if ex.meta.get("kind") == "yesno")
    total = sum(sizes.values())

    def share(c: tuple) -> float:
        if not cfg.yesno_balance:
            return cfg.yesno_keep
        return min(1.0, cfg.yesno_keep * total / (len(sizes) * sizes[c]))

    return [ex for ex in train if ex.meta.get("kind") != "yesno"
            or keep(ex, cfg, share(yesno_class(ex)))]


def yesno_class(ex) -> tuple[bool, str]:
    """(the question is negated, the answer): "is no circle present?" -> (True, "no")."""
    return bool(NEGATION.search(ex.question)), ex.answer


def keep(ex, cfg: DataArgs, share: float) -> bool:
    """A seeded, per-example coin: the same examples are kept on every run and rank."""
    g = torch.Generator().manual_seed(cfg.seed * 7919 + zlib.crc32(ex.id.encode()))
    return float(torch.rand((), generator=g)) < share


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


class TorchTraining:
    """The training state of `local` and `ddp`: AdamW over the trainable parameters,
    gradient clipping; on several ranks the model is DDP-wrapped. A checkpoint's `state.pt`
    (rank 0) holds the optimizer and the step."""

    backend = "torch"
    dtype = torch.float32

    def __init__(self, cfg: Config, model, ranks: Ranks):
        self.inner, self.ranks, self.clip = model, ranks, cfg.grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.stage1.lr, weight_decay=0.0)
        self.model = ranks.wrap(model)  # what loss_on calls

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()

    def full_weights(self):
        return contextlib.nullcontext()  # every rank holds the whole model

    def restart(self, cfg: Config, stage: StageArgs, rebuild) -> TorchTraining:
        """The next stage with a fresh AdamW over the same (DDP-wrapped) model."""
        self.opt = torch.optim.AdamW(self.params, lr=stage.lr, weight_decay=0.0)
        return self

    def save(self, folder: Path, step: int) -> None:
        if self.ranks.main:
            torch.save({"backend": self.backend, "optimizer": self.opt.state_dict(),
                        "step": step}, folder / "state.pt")

    def load(self, folder: Path) -> int:
        state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        if state.get("backend", self.backend) != self.backend:
            raise RuntimeError(f"{folder}: the checkpoint was written by backend="
                               f"{state['backend']}; resume it with that backend")
        for part in trainable_parts(self.inner):
            load_part(self.inner, part, folder / f"{part}.safetensors")
        self.opt.load_state_dict(state["optimizer"])
        return int(state["step"])


def make_training(cfg: Config, model, ranks: Ranks, stage: StageArgs | None = None):
    """`TorchTraining`, or `DeepSpeedTraining` for backend=deepspeed (imported only then)
    with the ZeRO stage of training stage `stage` (default: the first)."""
    if cfg.backend == "deepspeed":
        from jobs.train_deepspeed import DeepSpeedTraining

        return DeepSpeedTraining(cfg, model, ranks, zero_of(cfg, stage or first_stage(cfg)))
    return TorchTraining(cfg, model, ranks)


def first_stage(cfg: Config) -> StageArgs:
    return cfg.stage1 if cfg.stage1.steps else cfg.stage2


def zero_of(cfg: Config, stage: StageArgs) -> int:
    """The ZeRO stage a training stage runs under (backend=deepspeed)."""
    return stage.zero or cfg.deepspeed.stage


def restarts_at(cfg: Config, step: int) -> bool:
    """Whether `step` is the first of stage 2 and stage 2 starts with a fresh optimizer
    (asked, or because the ZeRO stage changes there)."""
    if step != cfg.stage1.steps or not cfg.stage1.steps or not cfg.stage2.steps:
        return False
    return cfg.stage2.new_optimizer or (cfg.backend == "deepspeed"
                                        and zero_of(cfg, cfg.stage1) != zero_of(cfg, cfg.stage2))


def write_state(folder: Path, training, step: int, ranks: Ranks) -> None:
    """A resumable checkpoint. Rank 0 writes the trainable parts (mqt.checkpoint's folder,
    so the checkpoint loads as a model); the training writes its state (optimizer, step:
    the learning rate is a function of the step); every rank writes its own RNG state."""
    folder.mkdir(parents=True, exist_ok=True)
    with training.full_weights():  # ZeRO-3: every rank takes part in gathering the weights
        if ranks.main:
            save_checkpoint(training.inner, folder, parts=trainable_parts(training.inner))
    training.save(folder, step)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, folder / f"rng-{ranks.rank}.pt")


def load_state(path: Path, training, ranks: Ranks) -> int:
    """The step a checkpoint folder resumes at (0 if there is none), with its state loaded."""
    if not (path / "state.pt").exists():
        return 0
    step = training.load(path)
    if (path / f"rng-{ranks.rank}.pt").exists():  # absent if the world grew since
        rng = torch.load(path / f"rng-{ranks.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return step


def saved_step(folder: str | Path, fs=None) -> int:
    """The step a checkpoint folder was written at, 0 if there is none; only its state.pt
    is read (`fs`: the pyarrow filesystem it is on, default local)."""
    import io

    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    try:
        with fs.open_input_file(f"{folder}/state.pt") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    return int(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")["step"])


def save_state(path: Path, training, step: int, ranks: Ranks) -> None:
    """`write_state` into a temp folder renamed into place: a crash never leaves half."""
    tmp = path.with_name(path.name + ".tmp")
    write_state(tmp, training, step, ranks)
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        import shutil

        shutil.rmtree(old)


def stage_at(cfg: Config, step: int) -> tuple[StageArgs, int]:
    """The stage of a global step and the step within it."""
    if step < cfg.stage1.steps:
        return cfg.stage1, step
    return cfg.stage2, step - cfg.stage1.steps


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

    training: TorchTraining  # or jobs.train_deepspeed.DeepSpeedTraining: the same methods
    train: list
    held_out: list
    cache: FeatureCache
    session: object
    rebuild: object = None  # () -> a fresh model like the first (before any training)
    vocab: object = None  # jobs.describe.DescriptionVocab when describe.lm_weight > 0


def main(cfg: Config) -> dict:
    if cfg.backend != "local":
        from jobs.train_ray import run  # Ray is imported only when it is used

        return run(cfg)
    out = Path(cfg.output)
    save_config(cfg, out)
    return fit(cfg, LocalSession(out))


def fit(cfg: Config, session) -> dict:
    """One training process, the same for `local` and for each rank of a Ray Train job."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks = session.ranks
    model, train, held_out, cache = ranks.local_first(
        lambda: prepare(cfg, session.out, ranks.main))
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


def fresh_model(cfg: Config):
    """The model before any training (the weights of `checkpoint`), in training mode but
    for the frozen vision encoder."""
    model = load_model(cfg).train()
    model.vision.eval()
    return model


def prepare(cfg: Config, out: Path, main: bool) -> tuple:
    """The model, the data, and the grid features of every image (computed once, cached)."""
    model = fresh_model(cfg)
    train, held_out = load_data(cfg.data, cfg.storage)
    cache = FeatureCache(model, cfg.feature_cache or out / "features.pt")
    with tqdm(total=len({image_key(ex) for ex in train + held_out}), desc="features",
              unit="img", leave=False, disable=not main) as bar:
        cache.add(train + held_out, progress=bar)
    return model, train, held_out, cache


def run_align(cfg: Config, model, train, cache, main: bool = True) -> None:
    """Stage 0 on the query transformer alone: its M outputs learn the description's
    embeddings (jobs.describe.mimic_loss); deterministic, so a rerun repeats it. Every
    rank runs all of it (minutes against hours of LM steps); DDP then starts all ranks
    from rank 0's weights."""
    from jobs.describe import DescriptionVocab

    images = list({image_key(ex): ex for ex in train}.values())
    dev = model.query.proj.device
    vocab = DescriptionVocab(model.tokenizer)
    opt = torch.optim.AdamW(model.query.parameters(), lr=cfg.align.lr, weight_decay=0.0)
    order = batches(len(images), cfg.align.batch_size, cfg.data.seed + 1, 0)
    bar = tqdm(range(cfg.align.steps), desc="align", unit="step", disable=not main)
    for step in bar:
        chunk = [images[i] for i in next(order)]
        m = cfg.align.schedule.sample(step, model.num_queries, cfg.data.seed + 1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.align.steps, cfg.align.lr, 10)
        feats = cache.get(chunk).to(dev)
        loss = cfg.describe.align_weight * mimic_loss(model, feats, chunk, vocab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=round(loss.item(), 4), m=m)
    if main:
        append_csv(Path(cfg.output) / "align.csv", {"steps": cfg.align.steps,
                                                     "final_loss": round(loss.item(), 4)})


def describe_vocab(cfg: Config, model, weight: str):
    """The description's token ids when describe.<weight> > 0 (else None)."""
    if not getattr(cfg.describe, weight):
        return None
    from jobs.describe import DescriptionVocab

    return DescriptionVocab(model.tokenizer)


def run_describe(cfg: Config, model, train, main: bool = True) -> None:
    """The LM's adapters (all its trainable parameters) learn to answer from the image's
    description in place of its visual tokens (jobs.describe); no image is read. Like the
    alignment stage, every rank runs all of it, deterministically."""
    from jobs.describe import DescriptionVocab, description, description_loss

    d, vocab = cfg.describe, DescriptionVocab(model.tokenizer)
    rows = [ex for ex in train if description(ex, vocab) is not None]
    if not rows:
        raise ValueError("describe.steps: no training example has a description "
                         "(mosaics, or easy-vqa images whose colour and shape are known)")
    params = [p for p in model.lm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("describe.steps trains the LM's adapters: set model.lm.lora_rank")
    opt = torch.optim.AdamW(params, lr=d.lr, weight_decay=0.0)
    order = batches(len(rows), d.batch_size, cfg.data.seed + 2, 0)
    dev = model.query.proj.device
    bar = tqdm(range(d.steps), desc="describe", unit="step", disable=not main)
    for step in bar:
        chunk = [rows[i] for i in next(order)]
        m = d.schedule.sample(step, model.num_queries, cfg.data.seed + 2)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, d.steps, d.lr, 10)
        loss = description_loss(model, chunk, vocab, m, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        bar.set_postfix(loss=round(loss.item(), 4), m=m)
    if main:
        append_csv(Path(cfg.output) / "describe.csv", {"steps": d.steps,
                                                        "final_loss": round(loss.item(), 4)})


def run_steps(cfg: Config, loop: Loop, start: int, total: int) -> dict:
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


def evaluate(cfg: Config, model, held_out, cache) -> dict:
    model.eval()
    ms = cfg.eval_ms or sorted({1, min(4, model.num_queries), model.num_queries})
    feats = cache.get(held_out).to(model.query.proj.device, model.query.proj.dtype)
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
