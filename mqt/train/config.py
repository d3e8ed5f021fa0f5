"""The training config: every field the training loop reads, and its validation.

`DataArgs`, `StageArgs`, `AlignArgs`, `DescribeArgs` and `DeepSpeedArgs` are its sections;
`TrainArgs` composes them with the model's fields (`ModelArgs`). `validate_train` checks
what needs neither Ray nor the data: the job adds the rest (a readable manifest, where Ray
keeps checkpoints, the number of workers). The functions at the end read the stage plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mqt.config import VLMConfig, check_ms
from mqt.configtree import ConfigError
from mqt.load import ModelArgs, model_config, validate_model
from mqt.matryoshka import MSchedule

BACKENDS = ("local", "ddp", "deepspeed")
STAGES = (2, 3)  # ZeRO stages
PRECISIONS = ("auto", "fp32", "bf16")


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
    # (pipeline.train.data); read with the job's `storage` settings


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
    description (`describe.align_weight`, mqt.train.describe)."""

    steps: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    # the m shown on the progress bar; the description target covers all M tokens
    schedule: MSchedule = field(default_factory=lambda: MSchedule(kind="log_uniform"))


@dataclass
class DescribeArgs:
    """Describe alignment (mqt.train.describe): the visual tokens learn to read like a
    fixed-length description of the image (a mosaic cell by cell in reading order), and
    before that the LM's adapters learn to answer from such descriptions. Needs a tokenizer
    that writes each description word as one token (mqt-smol's)."""

    # steps of the adapters alone, on the description's embeddings in place of the visual
    # tokens (LM passes, no image); run before the alignment stage
    steps: int = 0
    lr: float = 2e-3
    batch_size: int = 16
    schedule: MSchedule = field(default_factory=lambda: MSchedule(kind="uniform_even"))
    align_weight: float = 0.0  # the description target in the alignment stage; > 0 with it
    lm_weight: float = 0.0  # > 0: the description target beside the answer loss, stages 1-2


@dataclass
class DeepSpeedArgs:
    """backend=deepspeed: the ZeRO stage and precision (mqt.train.deepspeed.ds_config
    turns the whole train config into DeepSpeed's)."""

    stage: int = 2  # 2: optimizer state and gradients sharded; 3: the trainable weights too
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or fp32, bf16
    # ZeRO-3 keeps parameters of at most this many elements whole on every rank (DeepSpeed's
    # default); 0 shards every one
    persistence_threshold: int = 100_000


@dataclass
class TrainArgs(ModelArgs):
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
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)


def validate_train(cfg: TrainArgs) -> None:
    """A ConfigError or ValueError naming the field, before any model work."""
    validate_model(cfg)
    vlm = model_config(cfg)
    M = vlm.query.num_queries
    cfg.align.schedule.validate(M)
    validate_describe(cfg, vlm)
    cfg.stage1.schedule.validate(M)
    cfg.stage2.schedule.validate(M)
    if not vlm.vision.frozen:
        raise ValueError("model.vision.frozen must be true: training uses cached features")
    if cfg.report_every < 0 or cfg.checkpoint_every < 0 or cfg.eval_every < 0:
        raise ConfigError("report_every, checkpoint_every and eval_every must be >= 0")
    if cfg.stage1.steps + cfg.stage2.steps < 1 or cfg.batch_size < 1:
        raise ValueError("stage1.steps + stage2.steps and batch_size must be >= 1")
    check_ms("eval_ms", cfg.eval_ms, M)
    validate_backend(cfg)


def validate_describe(cfg: TrainArgs, vlm: VLMConfig) -> None:
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


def validate_backend(cfg: TrainArgs) -> None:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend={cfg.backend!r} is not one of {BACKENDS}")
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
    if ds.stage not in STAGES:
        raise ConfigError(f"{field_name}={ds.stage}: ZeRO stage 2 or 3")
    if ds.precision not in PRECISIONS:
        raise ConfigError(f"deepspeed.precision={ds.precision!r} is not one of {PRECISIONS}")


def stage_at(cfg: TrainArgs, step: int) -> tuple[StageArgs, int]:
    """The stage of a global step and the step within it."""
    if step < cfg.stage1.steps:
        return cfg.stage1, step
    return cfg.stage2, step - cfg.stage1.steps


def first_stage(cfg: TrainArgs) -> StageArgs:
    return cfg.stage1 if cfg.stage1.steps else cfg.stage2


def zero_of(cfg: TrainArgs, stage: StageArgs) -> int:
    """The ZeRO stage a training stage runs under (backend=deepspeed)."""
    return stage.zero or cfg.deepspeed.stage


def restarts_at(cfg: TrainArgs, step: int) -> bool:
    """Whether `step` is the first of stage 2 and stage 2 starts with a fresh optimizer
    (asked, or because the ZeRO stage changes there)."""
    if step != cfg.stage1.steps or not cfg.stage1.steps or not cfg.stage2.steps:
        return False
    return cfg.stage2.new_optimizer or (cfg.backend == "deepspeed"
                                        and zero_of(cfg, cfg.stage1) != zero_of(cfg, cfg.stage2))
