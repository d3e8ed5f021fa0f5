"""Re-score and re-price the multiple-choice rows of stored `mqt eval` results as mqt eval
now computes and prices them.

`mqt eval` has priced a multiple-choice row five ways:

1. until commit 10ffbf1, the vision encoder and the query transformer once per option:
   `options x total_flops(m, T + 2, 1)`;
2. then the image once and one full forward of prompt + option per option:
   `vision + query + options x prefill_flops(m, T + 2)`;
3. until 2026-12-07, the prompt prefilled once and its KV cache shared by the options,
   each option charged 2 tokens over it whatever its length (its first token scored there
   too, though the prefill's last logits already score it);
4. until commit fd41c60, exactly as `VisionLanguageModel.option_logprobs` computed it: the
   prompt prefilled once, its last logits scoring every option's first token, and an
   option of k >= 2 tokens running its first k - 1 tokens over the cache
   (`mqt.cost.scored_flops` with the options' token counts);
5. now the same computation on another prompt and other tokens: the question asked as VQA
   asks it (the options no longer listed in it) and each option scored with the
   end-of-turn marker after it (`option_ids`), so every option runs over the cache.

Formulas 1 to 4 priced the prompt that listed the options ("{question} Choose one:
{options}.") and options without the marker; formula 5 prices today's.

Each mc row is re-derived from its question (the same examples `mqt eval` drew, rebuilt
from the eval's settings) and its stored price is checked to be what one of the formulas
gives for that question. Its question is then scored again at the row's m with the current
`option_logprobs` (through `mqt eval`'s own `run_m`, on the same fp16 grid features), and the
row takes the new answer, confidence and correctness, and `scored_flops`; the script prints
how many answers and how far the confidences moved. Then calibration.json, eval.md and the
plots are rebuilt from the rows, as `mqt eval` writes them:

    .venv/bin/python -m bench.eval_reprice_mc

re-scores docs/eval (the shipped calibration, copied into mqt/weights/mqt-smol) and
docs/eval-s1. Running it again changes nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from mqt.cost import prefill_flops, query_flops, scored_flops, total_flops, vision_flops
from mqt.evaluation.report import write_outputs
from mqt.evaluation.run import EvalArgs as Config
from mqt.evaluation.run import eval_examples, run_m
from mqt.load import load_model
from mqt.tasks import format_options
from mqt.text import encode_answer
from mqt.train.steps import FeatureCache, task_question

ROOT = Path(__file__).resolve().parents[1]

# each results file and the eval settings that drew its questions (docs/default-model.md)
RUNS = {
    "docs/eval": dict(easyvqa_questions=300, captions=50, mosaic_images=60, seed=0),
    "docs/eval-s1": dict(easyvqa_questions=600, captions=0, mosaic_images=120, seed=1),
}
SHIPPED = ROOT / "mqt/weights/mqt-smol"  # a copy of docs/eval's calibration and results
OLD_PROMPT = "{question} Choose one: {options}."  # the mc prompt until commit fd41c60


def prices(cfg, m: int, T: int, counts: list[int]) -> tuple[float, ...]:
    """What formulas 1 to 4 of the module docstring charge (T: the prompt's text tokens;
    counts: the options' tokens, as those formulas counted both)."""
    options = len(counts)
    per_option = float(options * total_flops(cfg, m, T + 2, 1).total)
    image_once = float(vision_flops(cfg) + query_flops(cfg, m)
                       + options * prefill_flops(cfg, m, T + 2))
    # formula 3 ran 2 tokens per option over the cache: formula 4's price of 3-token options
    two_each = float(scored_flops(cfg, m, T, [3] * options))
    return per_option, image_once, two_each, float(scored_flops(cfg, m, T, counts))


def rescore(folder: Path, settings: dict, model) -> dict:
    """Counts of what changed in folder/results.parquet; the outputs rebuilt."""
    cal = json.loads((folder / "calibration.json").read_text())
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    examples = {e.id: e for e in eval_examples(Config(**settings)) if e.task == "mc"}
    mc = [r for r in rows if r["task"] == "mc"]
    for r in mc:
        ex = examples[r["id"]]
        assert ex.question == r["question"] and ex.answer == r["answer"], r["id"]
        old_T = model.prompt_text_tokens(OLD_PROMPT.format(question=ex.question,
                                                            options=format_options(ex.options)))
        old_tokens = [len(encode_answer(model.tokenizer, o)) for o in ex.options]
        now = scored_flops(model.cfg, r["m"], model.prompt_text_tokens(task_question(ex)),
                           model.option_token_counts(ex.options))
        assert r["flops"] in (*prices(model.cfg, r["m"], old_T, old_tokens), float(now)), \
            (r["id"], r["m"])
    todo = list(examples.values())
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(model, Path(tmp) / "features.pt")
        cache.add(todo)
        feats = cache.get(todo)
    fresh = {}
    for m in sorted({r["m"] for r in mc}):
        with torch.no_grad():
            fresh |= {(n["id"], m): n for n in run_m(model, todo, feats, m, 32)}
    counts = dict(rows=len(mc), answer=0, correct=0, flops=0, confidence=0.0)
    for r in mc:
        n = fresh[r["id"], r["m"]]
        counts["answer"] += n["output"] != r["output"]
        counts["correct"] += n["correct"] != r["correct"]
        counts["flops"] += n["flops"] != r["flops"]
        counts["confidence"] = max(counts["confidence"], abs(n["confidence"] - r["confidence"]))
        r.update(output=n["output"], correct=n["correct"], confidence=n["confidence"],
                 flops=n["flops"])
    write_outputs(Config(output=str(folder)), cal["model"], cal["checkpoint"], rows,
                  cal["ms"], cal["unseen_ms"])
    return counts


def main() -> None:
    model = load_model(Config()).eval()
    for folder, settings in RUNS.items():
        c = rescore(ROOT / folder, settings, model)
        print(f"{folder}: {c['rows']} multiple-choice rows; {c['answer']} answers and "
              f"{c['correct']} right/wrong changed, confidence moved at most "
              f"{c['confidence']:.5f}; {c['flops']} re-priced")
    for name in ("calibration.json", "results.parquet"):
        shutil.copyfile(ROOT / "docs/eval" / name, SHIPPED / name)


if __name__ == "__main__":
    main()
