"""The diffusion backbone of the ``sequences`` domain: a small bidirectional transformer with
time conditioning by adaptive LayerNorm (adaLN-Zero, Peebles & Xie 2023, "DiT"; the MDLM /
SEDD backbones are the same design, Sahoo et al. 2024, Lou et al. 2024).

``SequenceTransformer(vocab_size, n_states=vocab_size + 1)``: tokens ``x_t`` ``[B, N]`` with
ids in ``0..n_states-1`` (for a masked process the mask token is ``vocab_size``; for a
uniform process ``n_states == vocab_size``) and time ``t`` ``[B]`` in ``[0, 1]`` (the package's
convention: 0 data, 1 noise) -> logits ``[B, N, vocab_size]`` over the clean tokens. Padding
(``mask == 0``) is excluded from attention as keys, so outputs at real positions do not depend on
padded tokens; outputs at padded positions are meaningless. Positions: fixed sinusoidal
encodings added to the token embeddings (``positions="sinusoidal"``, the default) or rotary
embeddings of queries and keys (``positions="rope"``, Su et al. 2021, "RoFormer", eq. 34; what
MDLM's and SEDD's DiT backbones use: attention scores then depend on relative positions only).
Optional class conditioning: ``num_classes`` adds a label embedding to
the time embedding (``cond`` ``LongTensor [B]``; ``num_classes`` is the null label).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``t`` ``[B]`` (scaled by 1000, as DDPM / DiT) -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sinusoidal_positions(n: int, dim: int, device=None) -> Tensor:
    """``[n, dim]`` fixed sinusoidal position encodings (Vaswani et al. 2017)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    return F.pad(torch.cat([torch.sin(pos * freqs), torch.cos(pos * freqs)], dim=-1), (0, dim % 2))


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale[:, None]) + shift[:, None]


#: position encodings of :class:`SequenceTransformer`
POSITIONS = ("sinusoidal", "rope")


def rope_tables(n: int, head_dim: int, device=None) -> tuple:
    """``(cos, sin)`` ``[n, head_dim // 2]`` of rotary embeddings (base 10000; RoFormer eq. 15)."""
    half = head_dim // 2
    inv = 1.0 / (10000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[B, H, N, Dh]`` pairwise (first half, second half) by the position angles."""
    h = cos.shape[-1]
    x1, x2 = x[..., :h], x[..., h:2 * h]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([out, x[..., 2 * h:]], dim=-1) if x.shape[-1] > 2 * h else out


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose LayerNorms are shifted/scaled and whose residual
    branches are gated by the conditioning vector ``c`` ``[B, d]`` (zero-initialised: each block
    starts as the identity)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model, elementwise_affine=False)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d_model))
        self.ada = nn.Linear(d_model, 6 * d_model)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, c: Tensor, attn_mask: Optional[Tensor], rope: Optional[tuple] = None) -> Tensor:
        B, N, C = h.shape
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(modulate(self.ln1(h), s1, sc1)).view(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + g1[:, None] * self.drop(self.proj(a.transpose(1, 2).reshape(B, N, C)))
        return h + g2[:, None] * self.drop(self.mlp(modulate(self.ln2(h), s2, sc2)))


class SequenceTransformer(nn.Module):
    """Bidirectional transformer denoiser over discrete tokens (see the module docstring).

    Args:
        vocab_size: number of clean token ids (the output classes).
        n_states: number of input token ids (default ``vocab_size + 1``: the clean tokens plus
            the mask / absorbing token ``vocab_size``).
        d_model, n_layers, n_heads, mlp_ratio, dropout: transformer size.
        num_classes: optional class conditioning (``cond`` ``[B]`` in ``0..num_classes``, the
            last id being "no class").
        positions: ``sinusoidal`` (added to the embeddings) or ``rope`` (rotary, in attention).
    """

    def __init__(self, vocab_size: int, n_states: Optional[int] = None, d_model: int = 128, n_layers: int = 4,
                 n_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0, num_classes: Optional[int] = None,
                 positions: str = "sinusoidal"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; valid: {', '.join(POSITIONS)}")
        self.positions, self.n_heads = positions, n_heads
        n_states = vocab_size + 1 if n_states is None else n_states
        if n_states < vocab_size:
            raise ValueError(f"n_states ({n_states}) must be at least vocab_size ({vocab_size})")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.config = dict(vocab_size=vocab_size, n_states=n_states, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                           mlp_ratio=mlp_ratio, dropout=dropout, num_classes=num_classes, positions=positions)
        self.vocab_size, self.n_states, self.d_model = vocab_size, n_states, d_model
        self.embed = nn.Embedding(n_states, d_model)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.label = nn.Embedding(num_classes + 1, d_model) if num_classes else None
        self.blocks = nn.ModuleList([AdaLNBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)])
        self.ln_out = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ada_out = nn.Linear(d_model, 2 * d_model)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, x_t: Tensor, t: Tensor, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        """``x_t`` ``LongTensor [B, N]`` (ids ``0..n_states-1``), ``t`` ``[B]`` (or a scalar),
        ``mask`` ``[B, N]`` (1 real, 0 padding; ``None``: all real), ``cond`` ``[B]`` labels
        -> logits ``[B, N, vocab_size]``."""
        if x_t.dtype.is_floating_point or x_t.ndim != 2:
            raise ValueError(f"x_t must be integer token ids [B, N], got {tuple(x_t.shape)} {x_t.dtype}")
        B, N = x_t.shape
        if x_t.numel() and (int(x_t.min()) < 0 or int(x_t.max()) >= self.n_states):
            raise ValueError(f"token ids must lie in 0..{self.n_states - 1}; got {int(x_t.min())}..{int(x_t.max())}")
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or [B]=[{B}], got {tuple(t.shape)}")
        c = self.time_mlp(timestep_embedding(t, self.d_model))
        if self.label is not None:
            labels = torch.full((B,), self.label.num_embeddings - 1, dtype=torch.long, device=x_t.device) if cond is None else cond
            c = c + self.label(torch.as_tensor(labels, device=x_t.device).long())
        h = self.embed(x_t)
        rope = rope_tables(N, self.d_model // self.n_heads, x_t.device) if self.positions == "rope" else None
        if rope is None:
            h = h + sinusoidal_positions(N, self.d_model, x_t.device)[None]
        attn_mask = None
        if mask is not None:
            if mask.shape != (B, N):
                raise ValueError(f"mask must be [B, N]=[{B}, {N}], got {tuple(mask.shape)}")
            keep = mask > 0
            keep = keep | ~keep.any(1, keepdim=True)  # an all-padding row attends everywhere (no NaN)
            attn_mask = keep[:, None, None, :]  # [B, 1, 1, N]: real keys only
        for blk in self.blocks:
            h = blk(h, c, attn_mask, rope)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        return self.head(modulate(self.ln_out(h), shift, scale))
