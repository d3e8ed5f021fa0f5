"""`mqt generate`: answer one question about some images at one or more m."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mqt.configtree import save_config
from mqt.console import log
from mqt.load import ModelArgs, load_model, validate_model


@dataclass
class Config(ModelArgs):
    images: list[str] = field(default_factory=list)
    question: str = "What is in the image?"
    m: list[int] = field(default_factory=list)  # visual tokens; empty = M
    max_new_tokens: int = 16
    output: str = ""  # folder for answers.jsonl and config.yaml; empty = print only


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if not cfg.images:
        raise ValueError("images: give at least one image path, e.g. images=[a.png]")
    missing = [p for p in cfg.images if not Path(p).is_file()]
    if missing:
        raise ValueError(f"images: no such file: {missing[0]}")
    if cfg.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")


def main(cfg: Config) -> list[dict]:
    model = load_model(cfg)
    ms = cfg.m or [model.num_queries]
    imgs = [Image.open(p).convert("RGB") for p in cfg.images]
    pv = model.preprocess(imgs)
    embeds = model.encode_images(pv, max(ms))  # once per image, sliced for every m
    rows = []
    for m in ms:
        gens = model.generate([cfg.question] * len(imgs), m, image_embeds=embeds,
                              max_new_tokens=cfg.max_new_tokens)
        rows += [{"image": p, "m": m, "answer": g.text, "mean_logprob": round(g.mean_logprob, 4),
                  "new_tokens": g.new_tokens} for p, g in zip(cfg.images, gens, strict=True)]
    print_rows(rows)
    if cfg.output:
        write(cfg, rows)
    return rows


def print_rows(rows: list[dict]) -> None:
    print("| image | m | answer | mean log-prob |\n|---|---:|---|---:|")
    for r in rows:
        print(f"| {Path(r['image']).name} | {r['m']} | {r['answer']!r} | {r['mean_logprob']} |")


def write(cfg: Config, rows: list[dict]) -> None:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_config(cfg, out)
    log(f"wrote {out / 'answers.jsonl'}")
