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
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from mqt.data import Example
from mqt.data.easyvqa import COLORS, SHAPES, captioned_images

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
    from jobs.trainloop import loss_on

    want, known = targets(model, examples, vocab)
    rows = [ex for ex, k in zip(examples, known.tolist(), strict=True) if k]
    if not rows:
        return want.new_zeros(())
    anchor = torch.empty(0, device=device)
    return loss_on(model, rows, anchor, m, image_embeds=want[known, :m].to(device))[0]
