"""Why multiple choice trails free text: rules for scoring an option, compared on a
validation split carved from the TRAIN data (never the test split).

    .venv/bin/python -m bench.mc_scoring [questions_per_kind] [mosaics]
    .venv/bin/python -m bench.mc_scoring report    # the tables again from mc_scoring.json

Validation questions: a seeded sample of easy-vqa train questions, the same number of each
kind (colour, shape, yes/no), and the four questions of train mosaics drawn with a seed
the training recipe never used (`SEED`); each is asked both ways. None is a test image,
but the shipped weights were trained on every easy-vqa train image (and on some of these
very questions): free text is near its ceiling here, and what counts is how far each rule
falls below it. At every m of `MS` the shipped default answers the free-text question
(task "vqa", greedy) and scores every option under each prompt of `PROMPTS`, twice: the
option's tokens alone, and followed by the template's end-of-turn marker (what every
training answer ends with). From those two sums come the rules of `RULES` (sum or
per-token mean, with or without the marker). Prints a table per source and kind (accuracy
in %) and the wrong picks per prompt, and writes docs/bench/mc_scoring.md and .json. Its
numbers are the same on the code before the fix and after it (`bare_options`).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from mqt.data import Example, easyvqa_examples, mosaic_examples
from mqt.data.corpus import sample
from mqt.data.easyvqa import COLORS, SHAPES, YES_NO, stable_rng, to_mc
from mqt.load import ModelArgs, load_model
from mqt.tasks import get_task

OUT = Path(__file__).resolve().parents[1] / "docs/bench"
SEED = 101  # the validation sample's seed (training drew its mosaics with seed 0)
MS = (4, 16, 64)
PROMPTS = {  # how the question is put when its options are scored
    "mc": "{question} Choose one: {options}.",  # the mc task's prompt before this study
    "vqa": "{question} Answer in one word.",  # the trained VQA prompt, no options
    "mc+vqa": "{question} Choose one: {options}. Answer in one word.",
}
RULES = ("sum", "mean", "sum+end", "mean+end")


def validation(per_kind: int, mosaics: int) -> list[tuple[Example, Example]]:
    """(vqa, mc) pairs: easy-vqa train questions, `per_kind` of each kind, and train
    mosaics of seed SEED."""
    vqa = easyvqa_examples("train", tasks=("vqa",))
    spaces = {"color": COLORS, "shape": SHAPES, "yesno": YES_NO}
    pairs = []
    for kind, space in spaces.items():
        picked = sample([e for e in vqa if e.meta["kind"] == kind], per_kind, SEED)
        pairs += [(e, to_mc(e, space, stable_rng("mc-val", e.id))) for e in picked]
    ms = mosaic_examples("train", mosaics, seed=SEED, tasks=("vqa", "mc"))
    half = len(ms) // 2
    return pairs + list(zip(ms[:half], ms[half:], strict=True))


@torch.no_grad()
def measure(model, pairs, ms, batch: int = 16) -> list[dict]:
    """Per question and m: free text right or not, and each option's two sums per prompt."""
    suffix = model.template.answer_suffix
    rows = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i: i + batch]
        pv = model.preprocess([v.load_image() for v, _ in chunk])
        feats = model.vision(pv)  # (b, N, D)
        for m in ms:
            embeds = model.encode_features(feats, m)  # (b, m, H)
            gens = model.generate([get_task("vqa").format(v.question) for v, _ in chunk], m,
                                  image_embeds=embeds, max_new_tokens=8)
            scores = {}
            for name, template in PROMPTS.items():
                qs = [template.format(question=c.question, options=", ".join(c.options[:-1])
                                      + " or " + c.options[-1]) for _, c in chunk]
                opts = [list(c.options) + [o + suffix for o in c.options] for _, c in chunk]
                with bare_options(model):
                    scores[name] = model.option_logprobs(qs, opts, m, image_embeds=embeds)
            with bare_options(model):
                tokens = [model.option_token_counts(c.options) for _, c in chunk]
            for j, (v, c) in enumerate(chunk):
                rows.append({
                    "id": v.id, "source": v.meta["source"], "kind": v.meta["kind"], "m": m,
                    "answer": v.answer, "options": list(c.options), "free": gens[j].text,
                    "free_right": get_task("vqa").is_correct(gens[j].text, v.answer),
                    "tokens": tokens[j],
                    "scores": {n: [round(x, 5) for x in s[j]] for n, s in scores.items()}})
    return rows


@contextmanager
def bare_options(model):
    """The scorer as it was before the fix, an option's own tokens alone: it now appends
    the template's end-of-turn marker (`option_ids`), so blank the marker meanwhile."""
    template = model.template
    model.template = replace(template, answer_suffix="")
    try:
        yield
    finally:
        model.template = template


def pick(row: dict, prompt: str, rule: str) -> str:
    """The option a rule picks from a row's stored sums."""
    k = len(row["options"])
    plain, ended = row["scores"][prompt][:k], row["scores"][prompt][k:]
    base = ended if rule.endswith("+end") else plain
    n = [t + rule.endswith("+end") for t in row["tokens"]]
    value = [s / t for s, t in zip(base, n, strict=True)] if rule.startswith("mean") else base
    return row["options"][max(range(k), key=value.__getitem__)]


def accuracy(rows: list[dict]) -> dict:
    """{(source, m): {column: %}} with the free-text column and one per (prompt, rule)."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for group in (r["source"], f"{r['source']}/{r['kind']}"):
            cell = acc[group, r["m"]]
            cell["free text"].append(r["free_right"])
            for p in PROMPTS:
                for rule in RULES:
                    cell[f"{p} {rule}"].append(pick(r, p, rule) == r["answer"])
    return {k: {c: 100 * sum(v) / len(v) for c, v in cols.items()} | {"n": len(cols["free text"])}
            for k, cols in acc.items()}


def report(acc: dict) -> str:
    cols = ["free text"] + [f"{p} {r}" for p in PROMPTS for r in RULES]
    lines = ["| group | m | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for (group, m), a in sorted(acc.items()):
        lines.append(f"| {group} | {m} | {a['n']} | "
                     + " | ".join(f"{a[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def wrong_picks(rows: list[dict], rule: str = "sum") -> str:
    """Per prompt and easy-vqa kind (all m together): how many picks are wrong, the options
    most often picked wrongly, and how many of those questions free text got right."""
    lines = ["| prompt | kind | wrong | wrong picks, most frequent | free text right on them |",
             "|---|---|--:|---|--:|"]
    for p in PROMPTS:
        for kind in ("color", "shape", "yesno"):
            bad = [r for r in rows if r["kind"] == kind and pick(r, p, rule) != r["answer"]]
            top = Counter(pick(r, p, rule) for r in bad).most_common(2)
            lines.append(f"| {p} | {kind} | {len(bad)} | "
                         + ", ".join(f"{o} {n}" for o, n in top)
                         + f" | {sum(r['free_right'] for r in bad)} |")
    return "\n".join(lines)


def write_report(run: dict) -> None:
    """docs/bench/mc_scoring.md from a run's rows, printed too."""
    table, picks = report(accuracy(run["rows"])), wrong_picks(run["rows"])
    print(table, picks, sep="\n\n")
    (OUT / "mc_scoring.md").write_text(
        f"# Scoring multiple-choice options: rules compared on validation questions\n\n"
        f"`{run['command']}` ({run['questions']} questions from the train split, each at m = "
        f"{', '.join(map(str, MS))}; {run['seconds']} s on 2 shared cores). Accuracy in %; "
        f"columns: the prompt the options are scored under and the rule "
        f"(bench/mc_scoring.py). Raw rows: mc_scoring.json.\n\n{table}\n\n"
        f"Wrong picks on the easy-vqa questions (rule `sum`, m = 4, 16 and 64 together):\n\n"
        f"{picks}\n")


def main(per_kind: int = 80, mosaics: int = 40) -> None:
    torch.manual_seed(0)
    model = load_model(ModelArgs(preset="mqt-smol")).eval()
    pairs = validation(per_kind, mosaics)
    t0 = time.time()
    rows = measure(model, pairs, MS)
    run = {"command": f".venv/bin/python -m bench.mc_scoring {per_kind} {mosaics}",
           "questions": len(pairs), "seconds": round(time.time() - t0), "rows": rows}
    (OUT / "mc_scoring.json").write_text(json.dumps(run))
    write_report(run)


if __name__ == "__main__":
    if sys.argv[1:] == ["report"]:  # the tables again from the stored rows
        write_report(json.loads((OUT / "mc_scoring.json").read_text()))
    else:
        main(*(int(a) for a in sys.argv[1:]))
