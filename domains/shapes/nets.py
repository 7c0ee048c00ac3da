"""The backbone of the ``shapes`` domain: a permutation-equivariant point-cloud transformer.

:class:`PointTransformer` maps a cloud ``x [B, N, 3]``, the backbone time ``t [B]`` and class
labels ``cond [B]`` to one 3-vector per point (the rectified-flow velocity) ``[B, N, 3]``:

* **no positional encoding over the point index**: each point is embedded from its own ``xyz`` by
  a per-point MLP, so the network is a function of the *set*: permuting the input points permutes
  the output rows the same way (permutation equivariance; exact up to the round-off of the
  attention sums, see ``tests/test_shapes_domain.py``);
* ``depth`` pre-norm transformer blocks (full self-attention over the points, then a per-point
  MLP), each conditioned by adaLN-Zero (Peebles & Xie 2023, "Scalable Diffusion Models with
  Transformers", DiT): the conditioning vector ``c`` gives per-channel shift / scale of both
  LayerNorms and the gates of both residual branches;
* ``c = MLP(sinusoidal(time_scale * t)) + embedding(label)``: class-conditional on the shape
  family, with one extra **null label** (index ``num_classes``) for unconditional generation and
  classifier-free-guidance label dropout; ``cond=None`` means the null label for every row;
* ``guidance`` ``w`` (classifier-free guidance, Ho & Salimans 2022): ``out_u + w (out_c -
  out_u)`` on the rows with a real label (``w = 1``: plain conditional, one pass; ``w != 1``
  costs a second pass on those rows).

A two-stage coarse-then-detail design (e.g. LION's latent points) is not implemented.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.model import sinusoidal_embedding

#: CPU-sized defaults of :class:`PointTransformer`
DEFAULT_NET = {"width": 128, "depth": 4, "heads": 4, "mlp_ratio": 4.0}


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Block(nn.Module):
    """Pre-norm self-attention + MLP block with adaLN-Zero conditioning (DiT)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, h: Tensor, c: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        B, N, W = h.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(h), sh1, sc1)).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        h = h + g1[:, None, :] * self.proj(att.transpose(1, 2).reshape(B, N, W))
        return h + g2[:, None, :] * self.mlp(_modulate(self.norm2(h), sh2, sc2))


class PointTransformer(nn.Module):
    """``forward(x [B, N, 3], t [B], cond=labels [B] or None, mask=None) -> [B, N, 3]``.

    Args:
        num_classes: the number of shape families; labels are ``0..num_classes - 1`` and
            ``num_classes`` is the null (unconditional) label.
        width, depth, heads, mlp_ratio: transformer sizes (defaults :data:`DEFAULT_NET`).
        time_scale: the sinusoidal embedding sees ``time_scale * t`` (``t`` in ``[0, 1]``).
        guidance: classifier-free guidance weight ``w`` (1: plain conditional).
        zero_init: adaLN-Zero initialisation (the gates and the output layer start at zero, so
            the untrained network outputs 0); ``False`` keeps PyTorch's default initialisation.
    """

    def __init__(self, num_classes: int, width: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 time_scale: float = 1000.0, guidance: float = 1.0, zero_init: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.width = int(num_classes), int(width)
        self.time_scale, self.guidance = float(time_scale), float(guidance)
        self.embed = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.label_emb = nn.Embedding(self.num_classes + 1, width)  # the last row: the null label
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, 3)
        nn.init.normal_(self.label_emb.weight, std=0.02)
        if zero_init:
            for b in self.blocks:
                nn.init.zeros_(b.ada[-1].weight)
                nn.init.zeros_(b.ada[-1].bias)
            for m in (self.ada_out[-1], self.out):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def labels(self, cond: Any, batch: int, device) -> Tensor:
        """``cond`` -> labels ``[batch]`` (``None``: the null label; one label: every row)."""
        if cond is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        y = torch.as_tensor(cond, device=device).long().reshape(-1)
        if y.numel() == 1 and batch != 1:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"cond must be class labels of shape [B] = [{batch}], got {tuple(y.shape)}")
        if bool(((y < 0) | (y > self.null_label)).any()):
            raise ValueError(f"class labels must be in 0..{self.null_label} ({self.null_label} = unconditional)")
        return y

    def _run(self, x: Tensor, t: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
        c = self.time_mlp(sinusoidal_embedding(self.time_scale * t.to(x.dtype), self.width).to(x.dtype)) + self.label_emb(y).to(x.dtype)
        key_mask = None
        if mask is not None:  # padded points are never attended to
            key_mask = (mask > 0.5)[:, None, None, :]
        h = self.embed(x)
        for b in self.blocks:
            h = b(h, c, key_mask)
        sh, sc = self.ada_out(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm_out(h), sh, sc))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, mask: Optional[Tensor] = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"x must be point clouds [B, N, 3], got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        y = self.labels(cond, x.shape[0], x.device)
        out = self._run(x, t, y, mask)
        w = self.guidance
        if w != 1.0:
            rows = y != self.null_label
            if bool(rows.any()):
                out_u = self._run(x[rows], t[rows], torch.full_like(y[rows], self.null_label), None if mask is None else mask[rows])
                out = out.clone()
                out[rows] = out_u + w * (out[rows] - out_u)
        return out

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, width={self.width}, time_scale={self.time_scale}, guidance={self.guidance}"
