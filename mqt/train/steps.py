"""The pieces of MQT training that do not depend on how processes are launched.

Plain PyTorch: the single-process `mqt train` and the Ray Train workers use the same
functions. The vision encoder is frozen, so its grid features are computed once per image
and cached (`FeatureCache`); a training step then costs the MQT and the LM only. `Ranks`
is a process's place among data-parallel ranks (torch.distributed); `Ranks()` is one
process alone, and every collective is then skipped. `log` and `append_csv` are how the
loop reports: a line on stderr, a row of a CSV file.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mqt.data import Example
from mqt.model import VisionLanguageModel
from mqt.tasks import get_task
from mqt.text import IGNORE_INDEX, build_batch


def image_key(ex: Example) -> str:
    """Examples that share an image share this key (one feature row per image)."""
    src, img = ex.meta.get("source", ""), ex.meta.get("image_id")
    return f"{src}:{img}" if img is not None else ex.id.rsplit("/", 1)[0]


class FeatureCache:
    """Grid features (N, D) per image key, computed once with the frozen vision encoder."""

    def __init__(self, model: VisionLanguageModel, path: str | Path | None = None,
                 batch_size: int = 32, dtype: torch.dtype = torch.float16):
        self.model, self.batch_size, self.dtype = model, batch_size, dtype
        self.path = Path(path) if path else None
        self.index: dict[str, int] = {}
        self.rows: list[torch.Tensor] = []
        if self.path and self.path.exists():
            saved = torch.load(self.path, weights_only=True)
            self.index, self.rows = saved["index"], list(saved["features"])

    def add(self, examples: Sequence[Example], progress=None) -> None:
        todo = {}
        for ex in examples:
            key = image_key(ex)
            if key not in self.index and key not in todo:
                todo[key] = ex
        items = list(todo.items())
        for i in range(0, len(items), self.batch_size):
            self._encode(items[i: i + self.batch_size])
            if progress is not None:
                progress.update(len(items[i: i + self.batch_size]))
        if todo and self.path:
            self.save()

    @torch.no_grad()
    def _encode(self, items: list[tuple[str, Example]]) -> None:
        pv = self.model.preprocess([ex.load_image() for _, ex in items])
        feats = self.model.vision(pv).to(self.dtype)  # (B, N, D)
        for (key, _), f in zip(items, feats, strict=True):
            self.index[key] = len(self.rows)
            self.rows.append(f)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one temp name per process: on a shared folder several nodes may save at once
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"index": self.index, "features": torch.stack(self.rows)}, tmp)
        tmp.replace(self.path)

    def get(self, examples: Sequence[Example]) -> torch.Tensor:
        return torch.stack([self.rows[self.index[image_key(ex)]] for ex in examples]).float()


def task_question(ex: Example) -> str:
    """The question as the task's prompt template words it."""
    return get_task(ex.task).format(ex.question, ex.options)


def batches(n: int, batch_size: int, seed: int, start_step: int) -> Iterator[list[int]]:
    """Indices of each step's batch: a seeded permutation per epoch, resumable at any step."""
    per_epoch = max(1, n // batch_size)
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        yield perm[k * batch_size: (k + 1) * batch_size].tolist()
        step += 1


def unwrap(model) -> VisionLanguageModel:
    """The model inside a DistributedDataParallel wrapper or a DeepSpeed engine (both keep
    it in `.module`; the engine's is a TrainableParts holding the model as `.vlm`)."""
    while not isinstance(model, VisionLanguageModel):
        model = model.vlm if hasattr(model, "vlm") else model.module
    return model


def loss_on(model, examples: Sequence[Example], feats: torch.Tensor, m: int,
            denominator: Callable[[torch.Tensor], torch.Tensor] | None = None,
            image_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Cross-entropy of the answer tokens with m visual tokens: summed, then divided by
    `denominator(n)` for this batch's n answer tokens (default n: the mean). `model` may be
    DDP-wrapped or a DeepSpeed engine; `feats` (B, N, D) sit on the model's device. Also
    returns the tokens the LM read (visual + text, padding left out). `image_embeds`
    (B, >= m, H), when given, stand in for the visual tokens (`feats` then only names the
    device)."""
    inner = unwrap(model)
    prompts = inner.format_prompts([task_question(ex) for ex in examples])
    answers = [ex.answer + inner.template.answer_suffix for ex in examples]
    batch = build_batch(inner.tokenizer, prompts, m, answers=answers, padding_side="right")
    batch = {k: v.to(feats.device) for k, v in batch.items()}
    image = {"grid_features": feats} if image_embeds is None else {"image_embeds": image_embeds}
    logits = model(batch["input_ids"], batch["attention_mask"], m, **image).logits
    target = batch["labels"][:, 1:]  # logits at t predict the token at t + 1
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    n = (target != IGNORE_INDEX).sum()
    return total / (denominator(n) if denominator else n), int(batch["attention_mask"].sum())


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def accuracy(model: VisionLanguageModel, examples: Sequence[Example], feats: torch.Tensor,
             m: int, batch_size: int = 32) -> tuple[float, list[bool]]:
    """Exact match after the task's normalisation; greedy answers with m visual tokens."""
    right = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        gens = model.generate([task_question(ex) for ex in chunk], m,
                              grid_features=feats[i: i + batch_size],
                              max_new_tokens=max(get_task(ex.task).max_new_tokens
                                                 for ex in chunk))
        right += [get_task(ex.task).is_correct(g.text, ex.answer)
                  for ex, g in zip(chunk, gens, strict=True)]
    return sum(right) / max(1, len(right)), right


# ----------------------------------------------------------------- data-parallel ranks


@dataclass
class Ranks:
    """This process among `world` data-parallel ranks of a torch.distributed group.

    Each step's global batch (the same seeded indices on every rank) is cut into `world`
    contiguous slices; rank r trains on slice r. Collectives run on `device` (CPU for
    gloo, the rank's GPU for NCCL)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: list[int]) -> list[int]:
        """Rank r's rows [r*b, (r+1)*b) of a global batch of world*b indices."""
        b = len(idx) // self.world
        return idx[self.rank * b: (self.rank + 1) * b]

    def denominator(self, n: torch.Tensor) -> torch.Tensor:
        """Divide each rank's summed loss by (global answer tokens / world): DDP averages
        the gradients over ranks, so the result is the gradient of the token mean over the
        whole global batch, as one process computes it (ranks' batches differ in tokens)."""
        if self.world == 1:
            return n
        total = n.detach().to(self.device, torch.float64)
        dist.all_reduce(total)
        return (total / self.world).to(n.device)

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar (with `denominator`: the global batch's loss)."""
        if self.world == 1:
            return float(value.detach())
        t = value.detach().to(self.device, torch.float64).reshape(1)
        dist.all_reduce(t)
        return float(t) / self.world

    def total(self, value: float) -> float:
        """The sum over ranks of a number (e.g. the tokens each rank's slice held)."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t)

    def check_same(self, what: str, value: int, step: int) -> None:
        """Fail loudly unless every rank holds the same integer (e.g. the step's m)."""
        if self.world == 1:
            return
        got = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(got, torch.tensor([value], device=self.device))
        values = [int(t) for t in got]
        if len(set(values)) > 1:
            raise RuntimeError(f"step {step}: ranks disagree on {what}: {values} (by rank)")

    def local_first(self, fn: Callable):
        """fn() on each node's local rank 0, then on the node's other ranks: what fn caches
        on disk (grid features, converted weights) is written once and read by the rest."""
        out = fn() if self.local_rank == 0 else None
        if self.world > 1:
            dist.barrier()
        return fn() if self.local_rank != 0 else out

    def wrap(self, model: VisionLanguageModel):
        """DDP over the trainable parameters. Frozen parameters (the vision encoder, a
        frozen LM) and buffers (position tables, rotary frequencies, frozen norm statistics)
        are the same on every rank and never change: DDP neither broadcasts nor syncs them."""
        if self.world == 1:
            return model
        fixed = [n for n, p in model.named_parameters() if not p.requires_grad]
        fixed += [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, fixed)
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------- reporting


def log(msg: str) -> None:
    """A line on stderr that leaves a progress bar intact."""
    tqdm.write(msg, file=sys.stderr)


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
