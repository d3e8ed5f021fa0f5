"""Answering held-out questions at many m, and the tables `mqt eval` builds from the rows.

`EvalArgs` says which questions and which m; `eval_examples` draws the questions (easy-vqa
VQA and captions, test mosaics, their multiple choice); `answer_all` answers each at every
m, greedily (caption, vqa: exact match after the task's normalisation) or by likelihood
(multiple choice), one row per question and m with whether it was right, its confidence
and its FLOPs from the cost model. `calibration` turns rows into what other jobs read:
accuracy and mean FLOPs per task and per question kind at each m, and the oracle (per
question the smallest m that answers it right). `merged_rows` joins several runs' rows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mqt.config import check_ms
from mqt.cost import scored_flops, total_flops
from mqt.data import Example, easyvqa_examples, mosaic_examples
from mqt.data.corpus import sample
from mqt.evaluation.results import rows_by_question
from mqt.load import ModelArgs, model_config, validate_model
from mqt.tasks import get_task
from mqt.train.steps import task_question


@dataclass
class EvalArgs(ModelArgs):
    preset: str = "mqt-smol"
    ms: list[int] = field(default_factory=list)  # empty: 1, 2, 4, 8, 16, 32, M (those <= M)
    unseen_ms: list[int] = field(default_factory=list)  # m never drawn in training
    easyvqa_questions: int = 600  # from easy-vqa test, a seeded sample
    captions: int = 100
    mosaic_images: int = 150  # test mosaics; 4 questions each, plus their multiple choice
    multiple_choice: bool = True
    batch_size: int = 32
    seed: int = 0
    output: str = "runs/eval"
    docs: str = ""  # also write eval.md and the plots here (e.g. docs/eval)
    feature_cache: str = ""
    threads: int = 0
    # no model run: rebuild calibration.json, results.parquet, eval.md and the plots from
    # these `mqt eval` results.parquet files of one model (a question in several files is
    # taken from the first); ms / unseen_ms default to the first file's calibration.json
    merge: list[str] = field(default_factory=list)


def validate_eval(cfg: EvalArgs) -> None:
    if cfg.merge:
        missing = [p for p in cfg.merge if not Path(p).is_file()]
        if missing:
            raise ValueError(f"merge: no such file {missing[0]!r}")
        if not cfg.ms and not Path(cfg.merge[0]).with_name("calibration.json").is_file():
            raise ValueError(f"merge: no calibration.json beside {cfg.merge[0]!r} to read "
                             "the trained m from; give ms")
        return
    validate_model(cfg)
    M = model_config(cfg).query.num_queries
    check_ms("ms/unseen_ms", cfg.ms + cfg.unseen_ms, M)


def default_ms(M: int) -> list[int]:
    return sorted({m for m in (1, 2, 4, 8, 16, 32) if m <= M} | {M})


def eval_examples(cfg: EvalArgs) -> list[Example]:
    tasks = ("vqa", "caption", "mc") if cfg.multiple_choice else ("vqa", "caption")
    ev = easyvqa_examples("test", tasks=tasks)
    out = sample([e for e in ev if e.task == "vqa"], cfg.easyvqa_questions, cfg.seed)
    out += sample([e for e in ev if e.task == "caption"], cfg.captions, cfg.seed)
    if cfg.mosaic_images:
        mtasks = ("vqa", "mc") if cfg.multiple_choice else ("vqa",)
        out += mosaic_examples("test", cfg.mosaic_images, seed=cfg.seed, tasks=mtasks)
    return out


def kind_of(ex: Example) -> str:
    src = "mosaic" if ex.meta.get("source") == "mosaic" else "easy-vqa"
    return f"{src}/{ex.meta.get('kind', ex.task)}"


@torch.no_grad()
def answer_all(model, examples: list[Example], feats: torch.Tensor, ms: list[int],
               batch_size: int) -> list[dict]:
    """Rows of every example at every m of `ms`; `feats` (N, grid, D) are their features."""
    rows = []
    for m in tqdm(ms, desc="eval m", unit="m"):
        rows += run_m(model, examples, feats, m, batch_size)
    return rows


def run_m(model, examples, feats, m: int, batch_size: int) -> list[dict]:
    """One row per example at m visual tokens."""
    rows = []
    for i in range(0, len(examples), batch_size):
        chunk, f = examples[i: i + batch_size], feats[i: i + batch_size]
        embeds = model.encode_features(f, m)  # (b, m, H)
        rows += _generated(model, chunk, embeds, m) + _scored(model, chunk, embeds, m)
    return rows


def _generated(model, chunk, embeds, m: int) -> list[dict]:
    idx = [j for j, ex in enumerate(chunk) if get_task(ex.task).scoring == "exact"]
    if not idx:
        return []
    gens = model.generate([task_question(chunk[j]) for j in idx], m, image_embeds=embeds[idx],
                          max_new_tokens=max(get_task(chunk[j].task).max_new_tokens for j in idx))
    return [_row(model, chunk[j], m, get_task(chunk[j].task).is_correct(g.text, chunk[j].answer),
                 g.mean_logprob, g.text, total_flops(model.cfg, m, g.prompt_tokens,
                                                     max(1, g.new_tokens)).total)
            for j, g in zip(idx, gens, strict=True)]


def _scored(model, chunk, embeds, m: int) -> list[dict]:
    idx = [j for j, ex in enumerate(chunk) if get_task(ex.task).scoring == "loglik"]
    if not idx:
        return []
    qs = [task_question(chunk[j]) for j in idx]
    scores = model.option_logprobs(qs, [chunk[j].options for j in idx], m,
                                   image_embeds=embeds[idx])
    rows = []
    for j, q, s in zip(idx, qs, scores, strict=True):
        ex, best = chunk[j], max(range(len(s)), key=s.__getitem__)
        probs = torch.softmax(torch.tensor(s), 0)
        rows.append(_row(model, ex, m, ex.options[best] == ex.answer,
                         math.log(float(probs[best])), ex.options[best],
                         scored_flops(model.cfg, m, model.prompt_text_tokens(q),
                                      model.option_token_counts(ex.options))))
        # ^ priced as the engine charges
    return rows


def _row(model, ex, m, correct, confidence, output, flops) -> dict:
    return {"id": ex.id, "task": ex.task, "kind": kind_of(ex), "m": m, "correct": bool(correct),
            "confidence": round(float(confidence), 5), "output": output,
            "answer": ex.answer, "flops": float(flops), "question": ex.question}


def oracle(rows: list[dict], ms: list[int]) -> dict:
    """Per question the smallest m that is right (else the smallest m): accuracy and cost."""
    by_id = defaultdict(dict)
    for r in rows:
        if r["m"] in ms:
            by_id[r["id"]][r["m"]] = r
    picks = []
    for per_m in by_id.values():
        right = [m for m in sorted(per_m) if per_m[m]["correct"]]
        picks.append(per_m[right[0]] if right else per_m[min(per_m)])
    return summarize(picks)


def summarize(rows: list[dict]) -> dict:
    n = max(1, len(rows))
    return {"accuracy": sum(r["correct"] for r in rows) / n,
            "mean_flops": sum(r["flops"] for r in rows) / n, "n": len(rows)}


def table(rows: list[dict], key: str) -> dict:
    """{group: {m: summary}} for group = task or kind."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r[key]][r["m"]].append(r)
    return {g: {m: summarize(rs) for m, rs in sorted(per.items())} for g, per in groups.items()}


def calibration(name: str, checkpoint: str, rows: list[dict], ms: list[int],
                unseen: list[int]) -> dict:
    """What calibration.json holds: the tables per task and per kind, the oracles."""
    return {"model": name, "checkpoint": checkpoint, "ms": ms, "unseen_ms": unseen,
            "by_task": table(rows, "task"), "by_kind": table(rows, "kind"),
            "oracle": {t: oracle([r for r in rows if r["task"] == t], ms)
                       for t in sorted({r["task"] for r in rows})},
            "oracle_all": oracle(rows, ms)}


def calibration_beside(results: str | Path) -> dict:
    """The calibration.json next to an `mqt eval` results.parquet ({} if there is none)."""
    path = Path(results).with_name("calibration.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def merged_rows(paths: list[str], ms: list[int], unseen: list[int]) -> tuple[list, list]:
    """Rows of the questions answered at every m of `ms`, each question from the first file
    that has it (`rows_by_question`); the unseen m every such question has. Returns (rows,
    unseen m kept)."""
    per = rows_by_question(paths, ms)
    kept = [m for m in sorted(set(unseen)) if all(m in by_m for by_m in per.values())]
    want = set(ms) | set(kept)
    return [by_m[m] for by_m in per.values() for m in sorted(by_m) if m in want], kept
