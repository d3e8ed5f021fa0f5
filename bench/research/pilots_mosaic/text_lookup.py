"""Can adapters teach SmolLM2 the cell lookup in text? Train LoRA on mosaics written as text.

usage: python text_lookup.py [STEPS=400] [EVAL_MOSAICS=60] [TARGETS=q_proj,k_proj,v_proj,o_proj]
       (torch threads: $THREADS, default 2; rows per step: $BATCH, default 16)

Training rows: the cell questions of the 3000 train mosaics (seed 0, the recipe's), each
mosaic described in words as in text_bound.py, the reply "The answer is <word>." (loss on
the reply only); $BATCH rows per step, rank-8 LoRA on TARGETS, AdamW lr 2e-3 with 10
warm-up steps, the LM frozen. Scored after training as text_bound.py scores the frozen LM
(test mosaics, likelihood over the candidates of the question's kind). The adapters are
saved to runs/pilots-mosaic/text-lookup/lm_lora.safetensors (mqt.lora's keys), for a
visual stage to start from.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.research.pilots_mosaic.text_bound import KINDS, describe, score
from mqt.data import mosaic_examples
from mqt.lora import add_lora
from mqt.smollm import smollm2_path
from mqt.train.steps import lr_at


def prompt_ids(tok, ex) -> torch.Tensor:
    msgs = [{"role": "user", "content": f"{describe(ex)}\n{ex.question} Answer with one word."}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                   return_dict=True)["input_ids"][0]


def batch(tok, exs) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for ex in exs:
        p = prompt_ids(tok, ex)
        r = tok(f"The answer is {ex.answer}.<|im_end|>", add_special_tokens=False,
                return_tensors="pt")["input_ids"][0]
        rows.append(torch.cat([p, r]))
        labels.append(torch.cat([torch.full_like(p, -100), r]))
    n = max(len(x) for x in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.stack([torch.cat([x, torch.full((n - len(x),), pad)]) for x in rows])
    lab = torch.stack([torch.cat([x, torch.full((n - len(x),), -100)]) for x in labels])
    return ids, lab


def evaluate(tok, lm, exs) -> dict:
    by: dict[str, list[bool]] = {}
    lm.eval()
    for ex in exs:
        ids = prompt_ids(tok, ex)[None]
        said = max(KINDS[ex.meta["kind"]], key=lambda w: score(tok, lm, ids, w))
        kind = f"{ex.meta['kind']} {ex.meta['grid']}x{ex.meta['grid']}"
        for k in (kind, "all cell"):
            by.setdefault(k, []).append(said == ex.answer)
    lm.train()
    return {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by.items())}


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    n_eval = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    targets = (sys.argv[3] if len(sys.argv) > 3 else "q_proj,k_proj,v_proj,o_proj").split(",")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path)
    for p in lm.parameters():
        p.requires_grad_(False)
    add_lora(lm, targets, 8, 16.0)
    params = [p for p in lm.parameters() if p.requires_grad]
    train = [ex for ex in mosaic_examples("train", 3000, seed=0) if ex.meta["kind"] in KINDS]
    test = [ex for ex in mosaic_examples("test", n_eval, seed=0) if ex.meta["kind"] in KINDS]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    t0, losses = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(train), (int(os.environ.get("BATCH", "16")),),
                            generator=g).tolist()
        ids, lab = batch(tok, [train[i] for i in idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 2e-3, 10)
        loss = lm(input_ids=ids, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step} loss {sum(losses[-25:]) / len(losses[-25:]):.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    from pathlib import Path

    from safetensors.torch import save_file

    from mqt.lora import lora_state

    out = Path("runs/pilots-mosaic/text-lookup")
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(lm), str(out / "lm_lora.safetensors"))
    print("after:", evaluate(tok, lm, test), flush=True)


if __name__ == "__main__":
    main()
