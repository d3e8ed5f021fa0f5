"""The Matryoshka query transformer (MQT): M latent queries read the image grid.

`QueryTransformer(grid_features, num_visual_tokens=m)` returns (B, m, lm_hidden): the first
m of the M learned queries cross-attend to the grid features, then a bias-free matrix maps
them to the language model's width ("attention then projection", as the published code).

Prefix property, in every mode: the output at m equals the first m rows of the output at
M, because each query attends to the image independently of the others (depth 1) or only
to queries before it (causal self-attention, depth > 1). So compute once at M and slice.

Modes:
- official: keys are LayerNorm(position) only, values LayerNorm(features); the image enters
  through the values. Queries get a fixed 2-D sin-cos table (sqrt(M) x sqrt(M)) added;
  keys get the same table bicubically resized to the feature grid.
- content: keys are LayerNorm(features + position), so attention can look at content.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mqt.config import QueryConfig, check_m


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) 2-D sin-cos table; first half of dim encodes the column, second the row.

    Row-major over the grid, as MAE's table that the published MQT uses.
    """
    if dim % 4:
        raise ValueError(f"sin-cos table needs dim divisible by 4, got {dim}")
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                         indexing="ij")
    by_col = _sincos_1d(dim // 2, xs.reshape(-1))  # (grid*grid, dim/2)
    by_row = _sincos_1d(dim // 2, ys.reshape(-1))
    return torch.from_numpy(np.concatenate([by_col, by_row], axis=1)).float()


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos, omega)  # (P, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def resize_pos(table: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a square (S*S, D) table to (H*W, D) for an H x W feature grid."""
    side = math.isqrt(table.shape[0])
    if (side, side) == tuple(grid_hw):
        return table
    img = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=tuple(grid_hw), mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


class QueryBlock(nn.Module):
    """Deeper layers (depth > 1): causal self-attention among queries, cross-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, eps: float):
        super().__init__()
        self.ln_self = nn.LayerNorm(dim, eps=eps)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_cross = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_ffn = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(),
                                 nn.Linear(ffn_mult * dim, dim))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        m = x.shape[1]
        causal = torch.ones(m, m, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        x = x + self.cross_attn(self.ln_cross(x), keys, values, need_weights=False)[0]
        return x + self.ffn(self.ln_ffn(x))


class QueryTransformer(nn.Module):
    """(B, N, D) grid features -> (B, m, out_dim) visual tokens, for any 1 <= m <= M."""

    def __init__(self, cfg: QueryConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.cfg, self.num_queries = cfg, cfg.num_queries
        grid = math.isqrt(cfg.num_queries)
        side = grid if grid * grid == cfg.num_queries else grid + 1  # table covers >= M rows
        self.register_buffer("pos_embed", sincos_2d(in_dim, side), persistent=True)
        self.query = nn.Parameter(torch.empty(cfg.num_queries, in_dim))
        self.attn = nn.MultiheadAttention(in_dim, cfg.num_heads)  # (L, B, D), as published
        self.ln_q = nn.LayerNorm(in_dim, eps=cfg.ln_eps)
        self.ln_k = nn.LayerNorm(in_dim, eps=cfg.ln_eps)
        self.ln_v = nn.LayerNorm(in_dim, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(
            QueryBlock(in_dim, cfg.num_heads, cfg.ffn_mult, cfg.ln_eps)
            for _ in range(cfg.depth - 1)
        )
        self.proj = nn.Parameter(torch.empty(in_dim, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.normal_(self.proj, std=self.cfg.proj_init_std or self.proj.shape[1] ** -0.5)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)

    def forward(self, feats: torch.Tensor, num_visual_tokens: int,
                grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        m = check_num_tokens(num_visual_tokens, self.num_queries)
        B, N, _ = feats.shape
        grid_hw = grid_hw or (math.isqrt(N), math.isqrt(N))
        pos = resize_pos(self.pos_embed, grid_hw).to(feats.dtype)  # (N, D)
        keys = pos.expand(B, N, -1) if self.cfg.mode == "official" else feats + pos
        keys, values = self.ln_k(keys), self.ln_v(feats)  # (B, N, D)
        q = self.ln_q(self.query[:m] + self.pos_embed[:m].to(feats.dtype))  # (m, D)
        x = self.attn(q.unsqueeze(1).expand(m, B, -1), keys.transpose(0, 1),
                      values.transpose(0, 1), need_weights=False)[0].transpose(0, 1)  # (B, m, D)
        for block in self.blocks:
            x = block(x, keys, values)
        return x @ self.proj  # (B, m, out_dim)


def check_num_tokens(m: int, M: int) -> int:
    """m must be an int in 1..M (mqt.config.check_m)."""
    return check_m("num_visual_tokens", m, M)
