"""One mosaic pilot: optional per-cell alignment of the MQT, LM steps, eval at several m.

The word-target and per-cell alignment losses it trains with left `mqt train` (the shipped
recipe does not use them) for bench/research/pilots_mosaic/losses.py.

usage: python -m bench.research.pilots_mosaic.pilot NAME [key=value ...]
  init=mqt/weights/mqt-smol   checkpoint to start from (query + LoRA)
  cell_steps=0                per-cell alignment steps (no LM), batch 64 images
  cell_weight=1.0             weight of the per-cell loss beside the mean-token loss
  lm_steps=150                LM steps, batch 16, m log-uniform (even)
  mosaic_frac=0.75            share of mosaic questions in the LM batches (rest easy-vqa)
  multicolour=1               only cell_color questions whose mosaic has 2 colours
  eval_mosaics=100            test mosaics for the eval (3 cell questions each)
  eval_ms=1,64
  lora=                       e.g. 16:q_proj,k_proj,v_proj,o_proj: fresh adapters of that rank
                              on those layers; only the MQT (query) is taken from init
  lora_init=                  a checkpoint whose adapters start the matching ones of `lora`
                              (same layer and shape); the others start fresh
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.research.pilots_mosaic.common import HERE, test_cache
from bench.research.pilots_mosaic.losses import (
    CellReadout,
    WordTargets,
    cell_align_loss,
)
from mqt.checkpoint import load_part, save_checkpoint
from mqt.data import easyvqa_answers, easyvqa_examples, mosaic_answers, mosaic_examples
from mqt.load import ModelArgs, load_model
from mqt.lora import lora_state
from mqt.matryoshka import MSchedule
from mqt.train.steps import FeatureCache, accuracy, image_key, loss_on, lr_at


def opts(argv):
    o = dict(init="mqt/weights/mqt-smol", cell_steps=0, cell_weight=1.0, lm_steps=150,
             mosaic_frac=0.75, multicolour=1, eval_mosaics=100, eval_ms="1,64", lr=1e-3,
             align_lr=2e-3, seed=0, threads=2, lora="", lora_init="")
    for a in argv:
        k, v = a.split("=", 1)
        o[k] = type(o[k])(v) if not isinstance(o[k], str) else v
    return o


def multi(ex) -> bool:
    return len({c.color for c in ex.meta["cells"] if c.kind == "shape"}) > 1


def main():
    name, o = sys.argv[1], opts(sys.argv[2:])
    torch.set_num_threads(o["threads"])
    out = HERE / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(o["seed"])
    fresh = {"query": {"proj_init_std": 0.17}, "lm": {"lora_rank": 8}}  # the recipe's
    if o["lora"]:
        rank, targets = o["lora"].split(":")
        fresh["lm"] = {"lora_rank": int(rank), "lora_targets": targets.split(",")}
        model = load_model(ModelArgs(preset="mqt-smol", checkpoint="none", model=fresh)).train()
        if o["init"] != "none":
            load_part(model, "query", Path(o["init"]) / "query.safetensors")
        if o["lora_init"]:
            old = load_file(str(Path(o["lora_init"]) / "lm_lora.safetensors"))
            own = model.lm.state_dict()
            same = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
            model.lm.load_state_dict(same, strict=False)
            print(f"lora_init: {len(same)} of {len(own) and len(lora_state(model.lm))} "
                  f"adapter tensors from {o['lora_init']}", flush=True)
    else:
        model = load_model(ModelArgs(preset="mqt-smol", checkpoint=o["init"],
                                     model=fresh if o["init"] == "none" else {})).train()
    model.vision.eval()
    cache = FeatureCache(model, "runs/train-mqt-smol/features.pt")
    mos = mosaic_examples("train", 3000, seed=0)
    evq = [ex for ex in easyvqa_examples("train", tasks=("vqa", "caption"))
           if ex.meta.get("kind") != "yesno" or hash(ex.id) % 10 < 3]
    evq = [ex for ex in evq if image_key(ex) in cache.index]
    log = {"opts": o}
    t0 = time.time()
    if o["cell_steps"]:
        words = WordTargets(model.tokenizer, [w for w in easyvqa_answers() + mosaic_answers()
                                              if w not in ("yes", "no")])
        readout = CellReadout(model.lm.config.hidden_size)
        images = list({ex.id.rsplit("/", 1)[0]: ex for ex in mos}.values())
        images += list({ex.meta["image_id"]: ex for ex in evq}.values())
        params = list(model.query.parameters()) + list(readout.parameters())
        opt = torch.optim.AdamW(params, lr=o["align_lr"], weight_decay=0.0)
        sched = MSchedule(kind="log_uniform")
        g = torch.Generator().manual_seed(1)
        for step in range(o["cell_steps"]):
            idx = torch.randint(len(images), (64,), generator=g).tolist()
            chunk = [images[i] for i in idx]
            m = sched.sample(step, model.num_queries, 1)
            for gr in opt.param_groups:
                gr["lr"] = lr_at(step, o["cell_steps"], o["align_lr"], 10)
            loss, parts = cell_align_loss(model, readout, cache.get(chunk), chunk, words, m,
                                          o["cell_weight"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == o["cell_steps"] - 1:
                print(f"align {step} m={m} {parts}", flush=True)
        log["align_s"] = round(time.time() - t0, 1)
        log["align_final"] = parts
    t1 = time.time()
    cellq = [ex for ex in mos if ex.meta["kind"] != "count"]
    if o["multicolour"]:
        cellq = [ex for ex in cellq if ex.meta["kind"] != "cell_color" or multi(ex)]
    countq = [ex for ex in mos if ex.meta["kind"] == "count"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=0.0)
    sched = MSchedule(kind="log_uniform", even_only=True)
    g = torch.Generator().manual_seed(2 + o["seed"])  # seed=1..: other batches than seed=0
    losses = []
    for step in range(o["lm_steps"]):
        n_mos = round(16 * o["mosaic_frac"])
        batch = [cellq[i] for i in torch.randint(len(cellq), (n_mos - 2,), generator=g)]
        batch += [countq[i] for i in torch.randint(len(countq), (2,), generator=g)] if n_mos else []
        batch += [evq[i] for i in torch.randint(len(evq), (16 - len(batch),), generator=g)]
        m = sched.sample(step, model.num_queries, 2)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, o["lm_steps"], o["lr"], 10)
        loss, _ = loss_on(model, batch, cache.get(batch), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == o["lm_steps"] - 1:
            print(f"lm {step} m={m} loss {sum(losses[-25:]) / len(losses[-25:]):.3f} "
                  f"{time.time() - t1:.0f}s", flush=True)
    log["lm_s"] = round(time.time() - t1, 1)
    if o["lm_steps"] or o["cell_steps"]:
        save_checkpoint(model, out / "model", parts=("query", "lm_lora"))
    model.eval()
    log["eval"] = evaluate(model, o) if o["eval_ms"] else {}
    print(json.dumps(log["eval"], indent=1), flush=True)
    (out / "result.json").write_text(json.dumps(log, indent=1))


def evaluate(model, o) -> dict:
    tcache = test_cache(model, max(o["eval_mosaics"], 400))
    exs = [ex for ex in mosaic_examples("test", o["eval_mosaics"], seed=0)
           if ex.meta["kind"] != "count"]
    feats = tcache.get(exs)
    res = {}
    for m in [int(x) for x in o["eval_ms"].split(",")]:
        _, right = accuracy(model, exs, feats, m)
        by = {}
        for ex, r in zip(exs, right, strict=True):
            k = ex.meta["kind"]
            if k == "cell_color":
                k += "/multi" if multi(ex) else "/single"
            by.setdefault(k, []).append(r)
            by.setdefault("all cell", []).append(r)
        res[m] = {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by.items())}
        print(m, res[m], flush=True)
    return res


if __name__ == "__main__":
    main()
