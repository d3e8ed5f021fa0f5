"""Describe pilot: adapters learn the lookup on descriptions, the MQT learns to write them.

usage: python describe_pilot.py NAME [key=value ...]
  text_steps=150     LM steps on description embeddings in place of visual tokens (adapters)
  mimic_steps=2000   MQT steps towards the description's embeddings (no LM), batch 64 images
  lm_steps=150       LM steps on visual tokens (MQT + adapters), plus mimic_weight x mimic loss
  mimic_weight=1.0
  depth=2            query transformer depth (causal self-attention lets later queries know
                     what earlier ones read, e.g. the grid size)
  lora=8:q_proj,k_proj,v_proj,o_proj
  init=              a checkpoint folder (query + lm_lora) to start from instead of fresh
  eval_mosaics=60  eval_easyvqa=150  eval_ms=1,2,4,8,16,32,48,64
  text_eval=1        also score with the descriptions themselves as visual tokens (the ceiling)

Batches as pilot.py's: 16 rows, 12 mosaic questions (10 cell with colour questions only on
two-colour mosaics, 2 counts) and 4 easy-vqa; m uniform over even m in [2, M] (+ M itself).
Outputs in runs/pilots-mosaic/NAME/ (model after each stage, result.json).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench.research.pilots_mosaic.common import HERE, multi, test_cache
from mqt.checkpoint import load_part, save_checkpoint
from mqt.data import easyvqa_examples, mosaic_examples
from mqt.load import ModelArgs, load_model
from mqt.tasks import get_task
from mqt.train.describe import DescriptionVocab, description_loss, mimic_loss, targets
from mqt.train.steps import (
    FeatureCache,
    image_key,
    loss_on,
    lr_at,
    task_question,
)


def opts(argv):
    o = dict(text_steps=150, mimic_steps=2000, lm_steps=150, mimic_weight=1.0, depth=2,
             lora="8:q_proj,k_proj,v_proj,o_proj", init="", eval_mosaics=60, eval_easyvqa=150,
             eval_ms="1,2,4,8,16,32,48,64", text_eval=1, lr=2e-3, mimic_lr=3e-3, threads=2,
             seed=0)
    for a in argv:
        k, v = a.split("=", 1)
        o[k] = type(o[k])(v) if not isinstance(o[k], str) else v
    return o


def sample_m(g: torch.Generator, M: int) -> int:
    """Uniform over even m in [2, M]."""
    return 2 * int(torch.randint(1, M // 2 + 1, (1,), generator=g))


def main():
    name, o = sys.argv[1], opts(sys.argv[2:])
    torch.set_num_threads(o["threads"])
    torch.manual_seed(o["seed"])
    out = HERE / name
    out.mkdir(parents=True, exist_ok=True)
    rank, tgt = o["lora"].split(":")
    fresh = {"query": {"proj_init_std": 0.17, "depth": o["depth"]},
             "lm": {"lora_rank": int(rank), "lora_targets": tgt.split(",")}}
    model = load_model(ModelArgs(preset="mqt-smol", checkpoint="none", model=fresh)).train()
    if o["init"]:
        load_part(model, "query", Path(o["init"]) / "query.safetensors")
        load_part(model, "lm_lora", Path(o["init"]) / "lm_lora.safetensors")
    model.vision.eval()
    vocab = DescriptionVocab(model.tokenizer)
    cache = FeatureCache(model, "runs/train-mqt-smol/features.pt")
    mos = mosaic_examples("train", 3000, seed=0)
    evq = [ex for ex in easyvqa_examples("train", tasks=("vqa", "caption"))
           if ex.meta.get("kind") != "yesno" or hash(ex.id) % 10 < 3]
    evq = [ex for ex in evq if image_key(ex) in cache.index]
    cellq = [ex for ex in mos if ex.meta["kind"] != "count"
             and (ex.meta["kind"] != "cell_color" or multi(ex))]
    countq = [ex for ex in mos if ex.meta["kind"] == "count"]
    M = model.num_queries
    log = {"opts": o}

    def lm_batch(g):
        b = [cellq[i] for i in torch.randint(len(cellq), (10,), generator=g)]
        b += [countq[i] for i in torch.randint(len(countq), (2,), generator=g)]
        return b + [evq[i] for i in torch.randint(len(evq), (4,), generator=g)]

    def run(stage, steps, params, lr, step_loss):
        if not steps:
            return
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(hash(stage) % 1000 + o["seed"])
        t0, losses = time.time(), []
        for step in range(steps):
            for gr in opt.param_groups:
                gr["lr"] = lr_at(step, steps, lr, 10)
            loss = step_loss(g, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 25 == 0 or step == steps - 1:
                print(f"{stage} {step} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} "
                      f"{time.time() - t0:.0f}s", flush=True)
        log[f"{stage}_s"] = round(time.time() - t0, 1)
        log[f"{stage}_final_loss"] = round(sum(losses[-25:]) / len(losses[-25:]), 4)
        save_checkpoint(model, out / stage, parts=("query", "lm_lora"))

    lora = [p for n, p in model.lm.named_parameters() if p.requires_grad]
    query = list(model.query.parameters())
    run("text", o["text_steps"], lora, o["lr"],
        lambda g, s: description_loss(model, lm_batch(g), vocab,
                                      M if s % 4 == 0 else sample_m(g, M)))
    images = list({ex.id.rsplit("/", 1)[0]: ex for ex in mos}.values())
    images += list({ex.meta["image_id"]: ex for ex in evq}.values())

    def mimic_step(g, s):
        chunk = [images[i] for i in torch.randint(len(images), (64,), generator=g)]
        return mimic_loss(model, cache.get(chunk), chunk, vocab)

    run("mimic", o["mimic_steps"], query, o["mimic_lr"], mimic_step)

    def lm_step(g, s):
        b = lm_batch(g)
        m = M if s % 4 == 0 else sample_m(g, M)
        f = cache.get(b)
        loss = loss_on(model, b, f, m)[0]
        return loss + o["mimic_weight"] * mimic_loss(model, f, b, vocab) if o["mimic_weight"] \
            else loss

    run("lm", o["lm_steps"], query + lora, o["lr"], lm_step)
    model.eval()
    log["eval"] = evaluate(model, vocab, o)
    (out / "result.json").write_text(json.dumps(log, indent=1))


@torch.no_grad()
def evaluate(model, vocab, o) -> dict:
    mos = [ex for ex in mosaic_examples("test", o["eval_mosaics"], seed=0)]
    evq = easyvqa_examples("test", tasks=("vqa",))[: o["eval_easyvqa"]]
    tcache = test_cache(model, max(o["eval_mosaics"], 400))
    ecache = FeatureCache(model, HERE / "test-easyvqa-features.pt")
    ecache.add(evq)
    exs = mos + evq
    feats = torch.cat([tcache.get(mos), ecache.get(evq)])
    modes = {"image": model.encode_features(feats, model.num_queries)}
    if o["text_eval"]:
        modes["text"] = targets(model, exs, vocab)[0]
    res = {}
    for mode, embeds in modes.items():
        for m in [int(x) for x in o["eval_ms"].split(",")]:
            by: dict[str, list[bool]] = {}
            for i in range(0, len(exs), 32):
                chunk = exs[i: i + 32]
                gens = model.generate([task_question(ex) for ex in chunk], m,
                                      image_embeds=embeds[i: i + 32, :m], max_new_tokens=8)
                for ex, gen in zip(chunk, gens, strict=True):
                    k = ex.meta["kind"]
                    if k == "cell_color":
                        k += "/multi" if multi(ex) else "/single"
                    if ex.meta["source"] == "easy-vqa":
                        k = "easyvqa/" + k
                    ok = get_task(ex.task).is_correct(gen.text, ex.answer)
                    for key in {k, "all cell" if k.startswith("cell") else "easyvqa"
                                if k.startswith("easyvqa") else "count"}:
                        by.setdefault(key, []).append(ok)
            res[f"{mode} m={m}"] = {k: round(100 * sum(v) / len(v), 1)
                                    for k, v in sorted(by.items())}
            print(mode, m, res[f"{mode} m={m}"], flush=True)
    return res


if __name__ == "__main__":
    main()
