"""`mqt train backend=deepspeed`: DeepSpeed ZeRO-2 / ZeRO-3 on each rank of a training job.

The DeepSpeed config is generated from the train config (`ds_config`), never written by
hand: the global batch, gradient accumulation 1, gradient clipping, the ZeRO stage, bf16
on GPU. Each rank calls `deepspeed.initialize` on the process group it was started in (Ray
Train's, pipeline.train.ray_train). `deepspeed` is imported only when an engine is built.

Only the trainable parameters go to DeepSpeed: the engine wraps `TrainableParts`, the
smallest modules that hold every trainable parameter (the query transformer, an unfrozen
LM, or each LoRA-wrapped projection), while the frozen vision encoder and the frozen LM
stay plain modules beside it. The optimizer is torch's AdamW (no fused kernel to compile),
the same arithmetic as `local` and `ddp`. ZeRO-3 partitions the trainable parts (and the
frozen base of a LoRA-wrapped projection, which lives in the same module); `full_weights`
gathers them whole for evaluation and for the model files a checkpoint exports.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from mqt.train.config import StageArgs, TrainArgs, zero_of
from mqt.train.steps import Ranks

# The first deepspeed.initialize compiles a C++ extension (80-100 s); a stable folder keeps it
EXTENSIONS = Path.home() / ".cache" / "mqt" / "torch_extensions"


def ds_config(cfg: TrainArgs, world: int, gpu: bool, stage: int | None = None) -> dict:
    """The DeepSpeed config of a train config on `world` ranks, under ZeRO stage `stage`
    (default `deepspeed.stage`)."""
    ds = cfg.deepspeed
    stage = stage or ds.stage
    zero: dict = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.persistence_threshold
    return {
        "train_batch_size": cfg.batch_size,  # the global batch, as for ddp
        "train_micro_batch_size_per_gpu": cfg.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(ds.precision, gpu)},
        "wall_clock_breakdown": False,
    }


def use_bf16(precision: str, gpu: bool) -> bool:
    """auto: bf16 on GPU; on CPU fp32 (bf16 matmuls run at a third of fp32's speed here)."""
    return precision == "bf16" or (precision == "auto" and gpu)


def owners(module: nn.Module) -> list[nn.Module]:
    """The smallest modules that together hold every trainable parameter: a module whose
    parameters all train is taken whole; one with a trainable parameter of its own (a LoRA
    projection: trainable adapters around a frozen base) is taken with its children."""
    params = list(module.parameters())
    if params and all(p.requires_grad for p in params):
        return [module]
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        return [module]
    return [m for child in module.children() for m in owners(child)]


class TrainableParts(nn.Module):
    """What the DeepSpeed engine wraps: the trainable parts as its parameters, the whole
    model (frozen parts included) reached through an attribute that is not a submodule, so
    DeepSpeed neither broadcasts, casts nor partitions the frozen parts."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.parts = nn.ModuleList(owners(vlm))
        object.__setattr__(self, "vlm", vlm)  # not registered: its parameters stay outside

    def forward(self, *args, **kwargs):
        return self.vlm(*args, **kwargs)


class DeepSpeedTraining:
    """The training state of one rank under DeepSpeed: the engine (the model `loss_on`
    calls), its learning rate, a step, and checkpoints (every rank writes its shard)."""

    backend = "deepspeed"

    def __init__(self, cfg: TrainArgs, model: nn.Module, ranks: Ranks,
                 stage: int | None = None, lr: float | None = None):
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS))
        # the device is known: DeepSpeed need not guess it (and warn, on CPUs, that it did)
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if ranks.device.type == "cuda" else "cpu")
        import deepspeed  # optional and heavy: only backend=deepspeed builds an engine

        self.stage = stage or cfg.deepspeed.stage
        config = ds_config(cfg, ranks.world, gpu=ranks.device.type == "cuda", stage=self.stage)
        self.dtype = torch.bfloat16 if config["bf16"]["enabled"] else torch.float32
        cast_parameters(model, self.dtype)  # the frozen parts too: one dtype in the forward
        self.inner, self.ranks = model, ranks
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr or cfg.stage1.lr, weight_decay=0.0)
        self.model, *_ = deepspeed.initialize(model=TrainableParts(model), optimizer=opt,
                                              config=config)

    def restart(self, cfg: TrainArgs, stage: StageArgs, rebuild) -> DeepSpeedTraining:
        """The next training stage under its ZeRO stage with a fresh AdamW: the trainable
        weights are gathered whole (every rank), this engine is destroyed (its hooks and
        buffers released), and a new engine wraps a fresh model (`rebuild`) holding them.
        The optimizer state does not carry over: the paper's stages are separate runs."""
        with self.full_weights():
            weights = {n: p.detach().clone() for n, p in self.inner.named_parameters()
                       if p.requires_grad}
        self.model.destroy()
        self.model = self.inner = None
        model = rebuild()
        own = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)
        return DeepSpeedTraining(cfg, model, self.ranks, zero_of(cfg, stage), lr=stage.lr)

    @property
    def param_groups(self) -> list[dict]:
        return self.model.optimizer.param_groups

    def step(self, loss: torch.Tensor) -> None:
        """Backward (gradients reduced and sharded by ZeRO), clip, AdamW, zero the grads."""
        self.model.backward(loss)
        self.model.step()

    @contextlib.contextmanager
    def full_weights(self):
        """Every rank enters; inside, rank 0 alone may run and save the plain model. ZeRO-3
        gathers the trainable parameters whole and lifts DeepSpeed's module hooks (they
        would gather again, with the other ranks); on leaving the hooks return and the
        parameters are sharded again. Both stages keep parameters as views into one flat
        buffer, which safetensors refuses to save: each gets its own copy meanwhile."""
        params = list(self.model.module.parameters())
        if self.stage != 3:
            with own_storage(params):
                yield
            return
        import deepspeed  # optional and heavy: only a ZeRO-3 engine gets here

        offload = self.model.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(params), own_storage(params):
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield
            finally:
                offload._register_deepspeed_module(offload.module)

    def save(self, folder: Path, step: int) -> None:
        """DeepSpeed's checkpoint in `folder/deepspeed` (every rank its optimizer shard; the
        frozen parameters left out: they never change), the step and world on rank 0."""
        (folder / "deepspeed").mkdir(parents=True, exist_ok=True)
        self.model.save_checkpoint(str(folder / "deepspeed"), tag=f"step_{step:06d}",
                                   exclude_frozen_parameters=True)
        if self.ranks.main:
            torch.save({"backend": self.backend, "step": step, "world": self.ranks.world,
                        "stage": self.stage}, folder / "state.pt")

    def load(self, folder: Path) -> int:
        """The step of a checkpoint, its engine state (weights, optimizer shards) loaded."""
        state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        check_resumable(state, self.ranks.world, self.stage)
        # not strict: the frozen parameters were left out of the checkpoint on purpose
        path, _ = self.model.load_checkpoint(str(folder / "deepspeed"),
                                             load_module_strict=False)
        if path is None:
            raise RuntimeError(f"{folder / 'deepspeed'}: no DeepSpeed checkpoint to resume")
        return int(state["step"])


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Parameters only: buffers (rotary frequencies, position tables) keep fp32, as
    DeepSpeed's own bf16 cast does."""
    for p in model.parameters():
        if p.dtype != dtype:
            p.data = p.data.to(dtype)


@contextlib.contextmanager
def own_storage(params: list[nn.Parameter]):
    """Each parameter that is a view into a larger buffer points at its own copy for the
    duration (read-only use: changes are not written back)."""
    views = {p: p.data for p in params
             if p.data.untyped_storage().nbytes() > p.data.numel() * p.data.element_size()}
    for p, view in views.items():
        p.data = view.clone()
    try:
        yield
    finally:
        for p, view in views.items():
            p.data = view


def check_resumable(state: dict, world: int, stage: int) -> None:
    """A DeepSpeed checkpoint resumes on the same backend, ZeRO stage and number of ranks:
    each rank's file holds that rank's shard of the optimizer state."""
    got = (state.get("backend", "torch"), state.get("stage"), state.get("world"))
    if got != ("deepspeed", stage, world):
        raise RuntimeError(
            f"the checkpoint was written by backend={got[0]}"
            + (f", deepspeed.stage={got[1]}, {got[2]} workers" if got[0] == "deepspeed" else "")
            + f"; this run is backend=deepspeed, deepspeed.stage={stage}, {world} workers. "
            "Resume with the same settings, or start a new run (another name)")
