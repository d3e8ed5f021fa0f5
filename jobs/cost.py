"""`mqt cost`: FLOPs per image-question for each number of visual tokens m.

    mqt cost --preset llava-7b        # paper column beside ours
    mqt cost preset=tiny ms=[1,4,16] prompt_tokens=20 new_tokens=8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mqt.config import check_ms
from mqt.configtree import save_config
from mqt.console import log
from mqt.cost import PAPER_NEW_TOKENS, PAPER_PROMPT_TOKENS, cost_table, default_ms
from mqt.load import ModelArgs, model_config, validate_model


@dataclass
class Config(ModelArgs):
    preset: str = "llava-7b"
    ms: list[int] = field(default_factory=list)  # empty: the paper's m values up to M
    prompt_tokens: int = PAPER_PROMPT_TOKENS  # text tokens of the prompt (T)
    new_tokens: int = PAPER_NEW_TOKENS  # generated tokens (K)
    baseline: bool = True  # add LLaVA-1.5 (MLP projector, all grid tokens) for llava-7b
    output: str = ""  # folder for cost.md and config.yaml


def validate(cfg: Config) -> None:
    validate_model(cfg)
    M = model_config(cfg).query.num_queries
    check_ms("ms", cfg.ms, M)
    if cfg.prompt_tokens < 0 or cfg.new_tokens < 1:
        raise ValueError("prompt_tokens must be >= 0 and new_tokens >= 1")


def main(cfg: Config) -> list[dict]:
    vlm = model_config(cfg)
    rows = [dict(r, model=vlm.name) for r in cost_table(
        vlm, cfg.ms or default_ms(vlm), cfg.prompt_tokens, cfg.new_tokens)]
    if cfg.baseline and cfg.preset == "llava-7b" and not cfg.model:
        base = model_config(ModelArgs(preset="llava-1.5-7b"))
        rows += [dict(r, model=base.name) for r in cost_table(
            base, default_ms(base), cfg.prompt_tokens, cfg.new_tokens)]
    text = markdown(rows, cfg)
    print(text)
    if cfg.output:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output) / "cost.md").write_text(text + "\n")
        save_config(cfg, cfg.output)
        log(f"wrote {Path(cfg.output) / 'cost.md'}")
    return rows


def markdown(rows: list[dict], cfg: Config) -> str:
    head = (f"TFLOPs per image and question, T = {cfg.prompt_tokens} prompt text tokens, "
            f"K = {cfg.new_tokens} new tokens\n\n"
            "| model | m | vision | query | prefill | decode | total | KV MiB | paper | error |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        paper = "" if r["paper"] is None else f"{r['paper']:.2f}"
        err = "" if r["error"] is None else f"{r['error']:+.1f}%"
        lines.append(f"| {r['model']} | {r['m']} | {_f(r['vision'])} | {_f(r['query'])} | "
                     f"{_f(r['prefill'])} | {_f(r['decode'])} | {_f(r['total'])} | "
                     f"{r['kv_mib']:.1f} | {paper} | {err} |")
    return "\n".join(lines)


def _f(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"
