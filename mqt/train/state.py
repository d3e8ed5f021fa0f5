"""What a training step updates and what a checkpoint holds.

`TorchTraining` is the training state of `local` and `ddp` (AdamW, gradient clipping, the
model DDP-wrapped on several ranks); `make_training` picks it or
`mqt.train.deepspeed.DeepSpeedTraining`, which has the same methods. A checkpoint folder
(`write_state`, `save_state`) holds the trainable parts in mqt.checkpoint's format (so it
loads as a model), the training's `state.pt` and every rank's RNG state; `load_state`
resumes from one, `saved_step` reads its step alone.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import torch

from mqt.checkpoint import load_part, save_checkpoint
from mqt.train.config import StageArgs, TrainArgs, first_stage, zero_of
from mqt.train.deepspeed import DeepSpeedTraining
from mqt.train.steps import Ranks


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

    def __init__(self, cfg: TrainArgs, model, ranks: Ranks):
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

    def restart(self, cfg: TrainArgs, stage: StageArgs, rebuild) -> TorchTraining:
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


def make_training(cfg: TrainArgs, model, ranks: Ranks, stage: StageArgs | None = None):
    """`TorchTraining`, or `DeepSpeedTraining` for backend=deepspeed with the ZeRO stage
    of training stage `stage` (default: the first)."""
    if cfg.backend == "deepspeed":
        return DeepSpeedTraining(cfg, model, ranks, zero_of(cfg, stage or first_stage(cfg)))
    return TorchTraining(cfg, model, ranks)


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


def saved_step(folder: str | Path, fs: pafs.FileSystem | None = None) -> int:
    """The step a checkpoint folder was written at, 0 if there is none; only its state.pt
    is read (`fs`: the pyarrow filesystem it is on, default local)."""
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
        shutil.rmtree(old)
