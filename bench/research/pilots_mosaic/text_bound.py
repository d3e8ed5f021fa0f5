"""Can SmolLM2 itself find a cell? The mosaic's cells written out as text, no image at all.

usage: python text_bound.py [MOSAICS=60]

For the cell questions of test mosaics 0..MOSAICS-1 (seed 0, the same as the pilots' eval),
the prompt lists every cell in words ("top-left cell: the digit 8. ...") and then asks the
question; the frozen SmolLM2-135M-Instruct (chat template, no adapters) answers by
likelihood: the assistant's reply "The answer is <word>." scored for every candidate word of
the question's kind (digits, colours or shapes), the most likely one taken (free generation
answers in sentences: "The digit in the top-right cell is ...").
If it localises in text, the pilots' LM-side failure is about reading positions from visual
tokens; if not, the 135M LM cannot do the lookup even when handed the facts.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mqt.data import mosaic_answers, mosaic_examples
from mqt.data.mosaic import position
from mqt.smollm import smollm2_path

KINDS = {"cell_digit": [str(d) for d in range(10)],
         "cell_color": [w for w in mosaic_answers() if w not in "0123456789"
                        and w not in ("circle", "rectangle", "triangle")],
         "cell_shape": ["circle", "rectangle", "triangle"]}


def score(tok, lm, prompt_ids: torch.Tensor, word: str) -> float:
    """log p("The answer is <word>.") after the prompt, summed over the reply's tokens."""
    reply = tok(f"The answer is {word}.", add_special_tokens=False, return_tensors="pt")
    ids = torch.cat([prompt_ids, reply["input_ids"]], dim=1)
    with torch.no_grad():
        logp = lm(ids).logits[0, :-1].log_softmax(-1)
    n = reply["input_ids"].shape[1]
    target = ids[0, -n:]
    return logp[-n:].gather(1, target[:, None]).sum().item()


def describe(ex) -> str:
    g = ex.meta["grid"]
    parts = []
    for c in ex.meta["cells"]:
        what = f"the digit {c.digit}" if c.kind == "digit" else f"a {c.color} {c.shape}"
        parts.append(f"{position(c.row, c.col, g)}: {what}")
    return f"The image is a {g}x{g} grid of cells. " + "; ".join(parts) + "."


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    torch.set_num_threads(1)
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    exs = [ex for ex in mosaic_examples("test", n, seed=0) if ex.meta["kind"] != "count"]
    by: dict[str, list[bool]] = {}
    for ex in exs:
        msgs = [{"role": "user", "content": f"{describe(ex)}\n{ex.question} "
                                            "Answer with one word."}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        words = KINDS[ex.meta["kind"]]
        said = max(words, key=lambda w: score(tok, lm, ids, w))
        ok = said == ex.answer
        kind = f"{ex.meta['kind']} {ex.meta['grid']}x{ex.meta['grid']}"
        by.setdefault(kind, []).append(ok)
        by.setdefault("all cell", []).append(ok)
    for k, v in sorted(by.items()):
        print(f"{k}: {100 * sum(v) / len(v):.1f}% of {len(v)}")


if __name__ == "__main__":
    main()
