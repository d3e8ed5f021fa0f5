"""Text side of the VLM: conversation templates, tokenizers and batch building.

A prompt holds one `<image>` placeholder. `build_batch` expands it to m image tokens for a
batch that uses m visual tokens, tokenizes, pads and (for training) masks labels so that
only answer tokens are learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Template:
    prompt: str  # holds {question}; the image placeholder sits where the image goes
    answer_suffix: str  # appended to training answers: the end-of-turn marker

    def format(self, question: str) -> str:
        return self.prompt.format(question=question)


VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
TEMPLATES = {
    "plain": Template(IMAGE_TOKEN + "{question}\n", "</s>"),
    "vicuna_v1": Template(VICUNA_SYSTEM + " USER: " + IMAGE_TOKEN + "\n{question} ASSISTANT:",
                          "</s>"),
    "chatml": Template("<|im_start|>user\n" + IMAGE_TOKEN + "\n{question}<|im_end|>\n"
                       "<|im_start|>assistant\n", "<|im_end|>"),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"template={name!r} is not one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def byte_tokenizer():
    """A byte-level tokenizer with no merges (vocab 260), built on the spot: no files needed."""
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=[IMAGE_TOKEN],
    )


def load_tokenizer(path: str | Path):
    """A tokenizer folder; `<image>` is added as one special token if it is missing."""
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def encode_prompt(tokenizer, prompt: str, m: int) -> list[int]:
    """Token ids of a prompt whose single `<image>` becomes m image tokens."""
    if prompt.count(IMAGE_TOKEN) != 1:
        raise ValueError(f"a prompt needs exactly one {IMAGE_TOKEN}, got: {prompt!r}")
    return tokenizer(prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * m))["input_ids"]


def encode_answer(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def build_batch(tokenizer, prompts: list[str], m: int, answers: list[str] | None = None,
                padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Pad a batch; with answers, labels are the answer tokens and IGNORE_INDEX elsewhere."""
    rows, labels = [], []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(tokenizer, prompt, m)
        ans = encode_answer(tokenizer, answers[i]) if answers is not None else []
        rows.append(ids + ans)
        labels.append([IGNORE_INDEX] * len(ids) + ans)
    batch = _pad(rows, tokenizer.pad_token_id, padding_side)
    if answers is not None:
        batch["labels"] = _pad(labels, IGNORE_INDEX, padding_side)["input_ids"]
    return batch


def build_continuation(tokenizer, prompts: list[str], m: int,
                       start: int) -> dict[str, torch.Tensor]:
    """Each prompt's tokens at m image tokens from position `start` on (what follows a cached
    prefix of `start` tokens), left-padded."""
    rows = [encode_prompt(tokenizer, p, m)[start:] for p in prompts]
    if not all(rows):
        raise ValueError(f"a prompt of at most {start} tokens has nothing after its prefix")
    return _pad(rows, tokenizer.pad_token_id, "left")


def _pad(rows: list[list[int]], pad: int, side: str) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.tensor(r, dtype=torch.long), 1
    return {"input_ids": ids, "attention_mask": mask}
