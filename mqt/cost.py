"""Pure cost model of the MQT vision-language model: FLOPs and KV-cache bytes per image.

Every function is a closed form of a `VLMConfig` and three integers: m (visual tokens asked
for), T (text tokens of the prompt) and K (new tokens generated), or for multiple choice the
options' token counts. Nothing here builds a model or imports torch, so the scheduler, the
ledger and the benchmarks can price work.

Conventions (those of `torch.utils.flop_counter.FlopCounterMode`):
- FLOPs = 2 x the multiply-accumulates of matmuls and convolutions; biases, norms, softmax,
  activations, rotary embeddings and embedding lookups are not counted.
- Attention scores (Q K^T) and the value product (A V) are counted in full, 4 n_q n_k d
  FLOPs with d = heads x head_dim, with no halving for a causal mask (as FlopCounterMode
  counts SDPA). On CPU, FlopCounterMode only sees attention when SDPA runs its math backend
  (`torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`); its fused CPU kernel counts zero.
- Prefill runs the LM over m + T tokens and the LM head on the last position only (as
  `generate` does with `logits_to_keep=1`); it yields the first new token. Each of the
  K - 1 decode steps feeds one token that attends to the whole KV cache, plus the head.
- Under `projector="mlp2x_gelu"` (LLaVA-1.5, priced only) every grid token enters the LM:
  the LM sees N visual tokens whatever m is.

Prompt-length assumption for the paper (MQT-LLaVA, arXiv 2405.19315, TFLOPs per
image-question): `PAPER_PROMPT_TOKENS = 60`, `PAPER_NEW_TOKENS = 1`. The 60 are LLaMA
tokens of a LLaVA-1.5 VQA prompt: 35 before the image (BOS, the Vicuna v1 system message of
mqt.text and " USER:"; FastV-style pruning code takes 35 as LLaVA-1.5's default system
length), about 7 for the newline and " ASSISTANT:", and about 18 for a short VQAv2
question (~7) plus LLaVA-1.5's "Answer the question using a single word or phrase." (~11).
One new token because the paper prices one forward pass (prefill). The same T also follows
from the authors' own fit 1.13 + 0.0132 m: its intercept minus vision and MQT is ~59 LM
tokens. With it every plotted point is within 4% except m = 144, which is 7% above the
plot; the plotted 2.83 lies 6.6% below the authors' own fit (3.03) there, see docs/cost.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mqt.config import VLMConfig, check_m

PAPER_PROMPT_TOKENS = 60
PAPER_NEW_TOKENS = 1
# MQT-LLaVA-7B, TFLOPs per image-question read off the paper's plot (m -> TFLOPs).
PAPER_TFLOPS = {8: 1.24, 16: 1.34, 36: 1.56, 64: 1.98, 144: 2.83, 256: 4.52}
# Reference values per preset name; LLaVA-1.5 (MLP projector, 576 tokens) from the same plot.
PAPER_REFERENCE = {"llava-7b": PAPER_TFLOPS, "llava-1.5-7b": {576: 8.8}}
PAPER_MS = (2, 4, 8, 16, 36, 64, 144, 256)  # the m values the paper evaluates


@dataclass(frozen=True)
class CostBreakdown:
    """FLOPs of one image-question by part, and the final KV-cache size in bytes."""

    vision: int
    query: int
    prefill: int
    decode: int
    total: int
    kv_bytes: int


def _linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def _attention(n_q: int, n_k: int, width: int) -> int:
    """Q K^T and A V over all heads, width = heads x head_dim; no causal halving."""
    return 4 * n_q * n_k * width


def lm_visual_tokens(cfg: VLMConfig, m: int) -> int:
    """Visual tokens that enter the LM: m for the MQT, all N grid tokens for the MLP."""
    mlp = cfg.projector == "mlp2x_gelu"  # every grid token enters the LM, whatever m asks
    m = check_m("m", m, math.inf if mlp else cfg.query.num_queries)
    return cfg.vision.num_patches if mlp else m


# MobileNetV2's inverted-residual stages (its paper's table 2): expansion t, channels c,
# repeats n, stride of the first repeat s; then a 1x1 conv to 1280 channels. mqt/mobilenet.py
# builds the network from the same facts.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_LAST = 1280


def _conv(h: int, w: int, c_in: int, c_out: int, k: int = 1, groups: int = 1) -> int:
    return 2 * h * w * (c_in // groups) * c_out * k * k  # per output pixel, no bias


def mobilenet_flops(image_size: int, stride: int) -> int:
    """MobileNetV2 up to the end of the last stage at `stride` (the grid encoder's cut);
    stride 32 includes the final 1x1 conv to 1280 channels."""
    size, c_in = image_size // 2, 32
    flops = _conv(size, size, 3, 32, k=3)  # stem, stride 2
    for t, c, n, s in MOBILENET_V2:
        if (image_size // size) * s > stride:
            return flops
        for i in range(n):
            out = size // (s if i == 0 else 1)
            hidden = c_in * t
            flops += (_conv(size, size, c_in, hidden) if t != 1 else 0)  # expand
            flops += _conv(out, out, hidden, hidden, k=3, groups=hidden)  # depthwise
            flops += _conv(out, out, hidden, c)  # project
            size, c_in = out, c
    return flops + _conv(size, size, c_in, MOBILENET_V2_LAST)  # stride 32: the final 1x1 conv


def vision_flops(cfg: VLMConfig) -> int:
    """Per image: CLIP patch conv, then the layers run over N + 1 tokens (CLS included)."""
    v = cfg.vision
    if v.kind == "mobilenet_v2":
        return mobilenet_flops(v.image_size, v.patch_size)
    N, D, S = v.num_patches, v.hidden_size, v.num_patches + 1
    conv = 2 * N * 3 * v.patch_size**2 * D  # a P x P x 3 -> D matmul per patch, no bias
    layer = (4 * _linear(S, D, D) + _attention(S, S, D)
             + _linear(S, D, v.intermediate_size) + _linear(S, v.intermediate_size, D))
    return conv + v.layers_run() * layer


def query_flops(cfg: VLMConfig, m: int) -> int:
    """Query transformer at m queries over N grid features (mqt/query.py), or the MLP."""
    m = lm_visual_tokens(cfg, m)
    N, D, H = cfg.vision.num_patches, cfg.vision.hidden_size, cfg.lm.hidden_size
    if cfg.projector == "mlp2x_gelu":  # D -> H -> H on every grid token
        return _linear(N, D, H) + _linear(N, H, H)
    # key projection of N rows, value of N rows, query and out_proj of m rows, attention
    cross = 2 * _linear(N, D, D) + 2 * _linear(m, D, D) + _attention(m, N, D)
    ffn = 2 * _linear(m, D, cfg.query.ffn_mult * D)
    block = 4 * _linear(m, D, D) + _attention(m, m, D) + cross + ffn  # depth > 1 only
    return cross + (cfg.query.depth - 1) * block + _linear(m, D, H)  # last: x @ proj


def _lm_linear_per_token(cfg: VLMConfig) -> int:
    """q, k, v, o (GQA: k, v to num_kv_heads x head_dim) and SwiGLU, summed over layers."""
    lm = cfg.lm
    H, kv = lm.hidden_size, lm.num_kv_heads * lm.head_dim
    mlp = 3 * _linear(1, H, lm.intermediate_size)  # gate, up, down
    per_layer = 2 * _linear(1, H, H) + 2 * _linear(1, H, kv) + mlp
    return lm.num_layers * (per_layer + _lora_per_token(cfg))


def _lora_per_token(cfg: VLMConfig) -> int:
    """Low-rank adapters: x A^T (in -> r) then B^T (r -> out) per wrapped projection."""
    lm = cfg.lm
    if not lm.lora_rank:
        return 0
    H, kv = lm.hidden_size, lm.num_kv_heads * lm.head_dim
    out = {"q_proj": H, "k_proj": kv, "v_proj": kv, "o_proj": H}
    return sum(_linear(1, H, lm.lora_rank) + _linear(1, lm.lora_rank, out.get(t, H))
               for t in lm.lora_targets)


def _lm_head(cfg: VLMConfig) -> int:
    return _linear(1, cfg.lm.hidden_size, cfg.lm.vocab_size)


def prefill_flops(cfg: VLMConfig, m: int, T: int, cached: int = 0) -> int:
    """LM over the m + T prompt tokens (full attention), head on the last position only.
    `cached`: the first positions are already in the KV cache (an escalation continuing
    from the prompt prefix of an answer at a smaller m): only the n - cached others run,
    attending over all n."""
    n = lm_visual_tokens(cfg, m) + T
    if not 0 <= cached < n:
        raise ValueError(f"cached={cached} must be in 0..{n - 1} (the prompt has {n} tokens)")
    width = cfg.lm.num_heads * cfg.lm.head_dim
    attention = cfg.lm.num_layers * _attention(n - cached, n, width)
    return (n - cached) * _lm_linear_per_token(cfg) + attention + _lm_head(cfg)


def lm_prefix_flops(cfg: VLMConfig, tokens: int) -> int:
    """The LM work on the first `tokens` prompt positions that an answer continuing from
    their cache does not repeat: their layers, and at least their attention over each
    other (over the later positions too, which depends on the prompt: not counted)."""
    width = cfg.lm.num_heads * cfg.lm.head_dim
    return tokens * _lm_linear_per_token(cfg) + cfg.lm.num_layers * _attention(tokens, tokens,
                                                                                width)


def decode_flops(cfg: VLMConfig, m: int, T: int, K: int) -> int:
    """The K - 1 steps after prefill; step j feeds one token over a cache of n + j tokens."""
    n, steps = lm_visual_tokens(cfg, m) + T, max(K - 1, 0)
    width = cfg.lm.num_heads * cfg.lm.head_dim
    keys_seen = steps * n + steps * (steps + 1) // 2  # sum over j = 1..K-1 of (n + j)
    attention = cfg.lm.num_layers * _attention(1, keys_seen, width)
    return steps * (_lm_linear_per_token(cfg) + _lm_head(cfg)) + attention


def kv_cache_bytes(cfg: VLMConfig, m: int, T: int, K: int, bytes_per_value: int = 2) -> int:
    """KV cache after generating K tokens: n + K - 1 positions (the last token is not fed)."""
    lm = cfg.lm
    positions = lm_visual_tokens(cfg, m) + T + max(K - 1, 0)
    return 2 * lm.num_layers * lm.num_kv_heads * lm.head_dim * positions * bytes_per_value


def total_flops(cfg: VLMConfig, m: int, T: int, K: int, cached: int = 0) -> CostBreakdown:
    """All parts for one image-question with m visual tokens, T text tokens, K new tokens
    (`cached`: prompt positions already in the KV cache, see `prefill_flops`)."""
    parts = dict(vision=vision_flops(cfg), query=query_flops(cfg, m),
                 prefill=prefill_flops(cfg, m, T, cached), decode=decode_flops(cfg, m, T, K))
    return CostBreakdown(**parts, total=sum(parts.values()),
                         kv_bytes=kv_cache_bytes(cfg, m, T, K))


def scored_flops(cfg: VLMConfig, m: int, T: int, option_tokens: Sequence[int],
                 cached: int = 0) -> int:
    """Multiple choice by likelihood (T prompt text tokens; option i is scored as
    option_tokens[i] tokens: `VisionLanguageModel.option_token_counts`, its own and the
    end-of-turn marker), as `VisionLanguageModel.option_logprobs` computes it: the image is
    encoded and queried once and the prompt (n = m + T tokens) prefilled once; the
    prefill's last logits score every option's first token. An option of k >= 2 tokens then
    runs its first k - 1 tokens over the cached prompt (their logits score its tokens
    2..k): through the layers and the head, attending over n + k - 1 positions (no causal
    halving, as in prefill). A one-token option costs nothing beyond the prefill.
    `cached`: prompt positions already in the KV cache (see `prefill_flops`)."""
    n = lm_visual_tokens(cfg, m) + T
    width = cfg.lm.num_heads * cfg.lm.head_dim
    per_token = _lm_linear_per_token(cfg) + _lm_head(cfg)
    options = sum((k - 1) * per_token + cfg.lm.num_layers * _attention(k - 1, n + k - 1, width)
                  for k in option_tokens if k > 1)
    return (vision_flops(cfg) + query_flops(cfg, m) + prefill_flops(cfg, m, T, cached)
            + options)


def default_ms(cfg: VLMConfig) -> list[int]:
    """The paper's m values that fit under M, plus M; N alone for the MLP projector."""
    if cfg.projector == "mlp2x_gelu":
        return [cfg.vision.num_patches]
    M = cfg.query.num_queries
    return sorted({m for m in PAPER_MS if m <= M} | {M})


def cost_table(cfg: VLMConfig, ms, T: int = PAPER_PROMPT_TOKENS,
               K: int = PAPER_NEW_TOKENS) -> list[dict]:
    """One row per m: m (LM visual tokens), TFLOPs of vision, query, prefill, decode, total,
    kv_mib, and where the paper has a value for this preset: paper (TFLOPs), error (%)."""
    reference = PAPER_REFERENCE.get(cfg.name, {})
    rows = []
    for m in sorted({lm_visual_tokens(cfg, m) for m in ms}):  # the MLP collapses to N
        cost = asdict(total_flops(cfg, m, T, K))
        row = {"m": m, **{k: v / 1e12 for k, v in cost.items() if k != "kv_bytes"}}
        row["kv_mib"] = cost["kv_bytes"] / 2**20
        paper = reference.get(m)
        row["paper"] = paper
        row["error"] = None if paper is None else 100 * (row["total"] / paper - 1)
        rows.append(row)
    return rows
