"""Re-price the multiple-choice rows of stored `mqt eval` results as mqt eval now prices them.

Until this script's commit `mqt eval` charged a multiple-choice row the vision encoder and
the query transformer once per option (`options x total_flops(m, T + 2, 1)`), while the
model encodes the image once and `mqt annotate`'s predictor charges it once
(`mqt.cost.scored_flops`). Correctness, confidence and output do not change, only `flops`:
each mc row is re-derived from its question (the same examples `mqt eval` drew, rebuilt
from the eval's settings), the old price is checked to be what the old formula gives for
that question, and the row gets `scored_flops`. Then calibration.json, eval.md and the
plots are rebuilt from the rows, as `mqt eval` writes them:

    .venv/bin/python docs/eval/reprice_mc.py

re-prices docs/eval (the shipped calibration, copied into mqt/weights/mqt-smol) and
docs/eval-s1. Running it again changes nothing (already re-priced rows are recognised).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from jobs.common import load_model
from jobs.evaluate import Config, eval_examples, write_outputs
from jobs.trainloop import task_question
from mqt.cost import scored_flops, total_flops
from mqt.text import encode_prompt

# each results file and the eval settings that drew its questions (docs/default-model.md)
RUNS = {
    "docs/eval": dict(easyvqa_questions=300, captions=50, mosaic_images=60, seed=0),
    "docs/eval-s1": dict(easyvqa_questions=600, captions=0, mosaic_images=120, seed=1),
}
SHIPPED = Path("mqt/weights/mqt-smol")  # a copy of docs/eval's calibration and results


def reprice(folder: Path, settings: dict, model) -> tuple[int, int]:
    """(rows re-priced, rows already right) in folder/results.parquet; the outputs rebuilt."""
    cal = json.loads((folder / "calibration.json").read_text())
    rows = pq.read_table(folder / "results.parquet").to_pylist()
    examples = {e.id: e for e in eval_examples(Config(**settings))}
    changed = same = 0
    for r in rows:
        if r["task"] != "mc":
            continue
        ex = examples[r["id"]]
        assert ex.question == r["question"] and ex.answer == r["answer"], r["id"]
        prompt = model.format_prompts([task_question(ex)])[0]
        T = len(encode_prompt(model.tokenizer, prompt, r["m"])) - r["m"]
        new = float(scored_flops(model.cfg, r["m"], T, len(ex.options)))
        old = float(len(ex.options) * total_flops(model.cfg, r["m"], T + 2, 1).total)
        if r["flops"] == new:
            same += 1
            continue
        assert r["flops"] == old, (r["id"], r["m"], r["flops"], old)
        r["flops"], changed = new, changed + 1
    write_outputs(Config(output=str(folder)), cal["model"], cal["checkpoint"], rows,
                  cal["ms"], cal["unseen_ms"])
    return changed, same


def main() -> None:
    model = load_model(Config()).eval()
    for folder, settings in RUNS.items():
        changed, same = reprice(Path(folder), settings, model)
        print(f"{folder}: {changed} multiple-choice rows re-priced, {same} already right")
    for name in ("calibration.json", "results.parquet"):
        shutil.copyfile(Path("docs/eval") / name, SHIPPED / name)


if __name__ == "__main__":
    main()
