"""Describe alignment: visual tokens trained to read like a short description of the image.

SmolLM2-135M does not find "the shape in row 2, column 3" among visual tokens that hold
every cell (docs/pilots-mosaic.md: p3-p8 flat in m), and barely in plain text either; but
a few hundred text examples teach its adapters the lookup when each cell's content stands
right after its position. So this stage gives the visual tokens that form: token i must
equal the LM's input embedding of token i of a fixed-length description, in reading order:

- a mosaic: per cell, row-major, five tokens ``row col colour shape ;`` (a digit cell:
  ``row col digit <word> ;``, the digit as a number word), so a 2x2 mosaic takes 20
  tokens and a 3x3 one 45. Positions are digit tokens, as the questions write them ("row 2,
  column 3"); a cell's digit is a word (" seven") so that it never shares a token with a
  position (with "7" for both, digit answers were mostly "1" or "3"; with words they are
  no more often right: docs/default-model.md);
- a single easy-vqa shape: ``colour shape .`` (3 tokens);
- the rest up to M: a filler token.

Matryoshka follows from the order: the first m tokens carry the first m/5 cells, so a 3x3
mosaic needs m >= 45 for its last cell, a single shape m >= 2. `mimic_loss` trains the
query transformer to produce the description (no LM pass); `description_loss` is the LM's
answer loss with the description's own embeddings in place of the visual tokens, which
teaches the adapters the lookup before they see an image. Images whose content is not
known (easy-vqa images whose questions do not fix both colour and shape) get no target.

`run_describe` and `run_align` are the two stages of `mqt train` before the LM steps that
train these targets: the adapters on descriptions, then the query transformer towards them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mqt.data import Example
from mqt.data.easyvqa import COLORS, SHAPES, captioned_images
from mqt.train.config import TrainArgs
from mqt.train.steps import FeatureCache, append_csv, batches, image_key, loss_on, lr_at

FILLER = " "
CELL_TOKENS = 5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class DescriptionVocab:
    """Token ids of the words a description uses: one token per word, a word of several
    tokens by its first (SmolLM2: 'teal' is ' te' + 'al'); the ids must be distinct.
    Positions are digit tokens ("2"), a digit cell's content a number word (" two")."""

    def __init__(self, tokenizer):
        def one(text: str) -> int:
            return tokenizer(text, add_special_tokens=False)["input_ids"][0]

        self._words = {w: one(" " + w) for w in (*COLORS, *SHAPES, "digit")}
        self._digits = {d: one(str(d)) for d in range(10)}
        self._numbers = {d: one(" " + w) for d, w in enumerate(NUMBER_WORDS)}
        self.sep, self.end, self.filler = one(";"), one("."), one(FILLER)
        self.digit_word = self._words["digit"]
        ids = [*self._words.values(), *self._digits.values(), *self._numbers.values(),
               self.sep, self.end, self.filler]
        if len(set(ids)) != len(ids):
            raise ValueError("this tokenizer cannot write descriptions: some of the words "
                             f"{[*self._words, *range(10), *NUMBER_WORDS, ';', '.']} share "
                             "their first token (the describe stage needs a subword "
                             "tokenizer such as SmolLM2's)")

    def word(self, w: str) -> int:
        return self._words[w]

    def digit(self, d: int) -> int:
        """A position (row or column number) as the questions write it."""
        return self._digits[int(d)]

    def number(self, d: int) -> int:
        """A digit cell's content, as a word."""
        return self._numbers[int(d)]

    def cell(self, c) -> list[int]:
        what = ([self.word(c.color), self.word(c.shape)] if c.kind == "shape"
                else [self.digit_word, self.number(c.digit)])
        return [self.digit(c.row), self.digit(c.col), *what, self.sep]


@lru_cache(maxsize=4)
def _easyvqa_facts(split: str) -> dict[str, tuple[str, str]]:
    return {f"{split}/{i}": cs for i, cs in captioned_images(split).items()}


def description(ex: Example, vocab: DescriptionVocab) -> list[int] | None:
    """The description's token ids of an example's image, None when its content is unknown."""
    meta = ex.meta
    if meta.get("source") == "mosaic":
        return [t for c in meta["cells"] for t in vocab.cell(c)]
    if meta.get("source") == "easy-vqa":
        split = str(meta["image_id"]).split("/", 1)[0]
        facts = _easyvqa_facts(split).get(str(meta["image_id"]))
        if facts is None:
            return None
        return [vocab.word(facts[0]), vocab.word(facts[1]), vocab.end]
    return None


def targets(model, examples: Sequence[Example], vocab: DescriptionVocab
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, H) target embeddings (the description, then filler) and (B,) which rows have one."""
    M = model.num_queries
    ids, known = [], []
    for ex in examples:
        d = description(ex, vocab)
        known.append(d is not None)
        d = (d or [])[:M]
        ids.append(d + [vocab.filler] * (M - len(d)))
    emb = model.lm.get_input_embeddings()
    with torch.no_grad():
        out = emb(torch.tensor(ids, device=emb.weight.device))
    return out, torch.tensor(known, device=out.device)


def mimic_loss(model, feats: torch.Tensor, examples: Sequence[Example],
               vocab: DescriptionVocab, m: int | None = None) -> torch.Tensor:
    """Squared error of the first m visual tokens (default M) against the description's
    embeddings, relative to the targets' mean squared norm; rows without a target skipped."""
    m = m or model.num_queries
    want, known = targets(model, examples, vocab)
    if not bool(known.any()):
        return feats.new_zeros(())
    got = model.encode_features(feats[known], m)
    want = want[known, :m]
    return F.mse_loss(got, want, reduction="sum") / want.pow(2).sum().clamp(min=1e-8)


def description_loss(model, examples: Sequence[Example], vocab: DescriptionVocab, m: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """The LM's answer loss with the first m tokens of each image's description in place of
    its visual tokens (rows without a description are dropped): the lookup, taught in text."""
    want, known = targets(model, examples, vocab)
    rows = [ex for ex, k in zip(examples, known.tolist(), strict=True) if k]
    if not rows:
        return want.new_zeros(())
    anchor = torch.empty(0, device=device)
    return loss_on(model, rows, anchor, m, image_embeds=want[known, :m].to(device))[0]


# ----------------------------------------------------------------- the stages


def describe_vocab(cfg: TrainArgs, model, weight: str) -> DescriptionVocab | None:
    """The description's token ids when describe.<weight> > 0 (else None)."""
    return DescriptionVocab(model.tokenizer) if getattr(cfg.describe, weight) else None


def run_describe(cfg: TrainArgs, model, train: Sequence[Example], main: bool = True) -> None:
    """The LM's adapters (all its trainable parameters) learn to answer from the image's
    description in place of its visual tokens; no image is read. Like the alignment stage,
    every rank runs all of it, deterministically."""
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


def run_align(cfg: TrainArgs, model, train: Sequence[Example], cache: FeatureCache,
              main: bool = True) -> None:
    """Stage 0 on the query transformer alone: its M outputs learn the description's
    embeddings (`mimic_loss`); deterministic, so a rerun repeats it. Every rank runs all of
    it (minutes against hours of LM steps); DDP then starts all ranks from rank 0's
    weights."""
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
