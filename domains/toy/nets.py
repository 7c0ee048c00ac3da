"""Backbones of the toy domain: a residual MLP for 2-D points and a small masked
transformer for variable-size point sets (permutation-equivariant, no positional encoding).

Both take the backbone time input ``t_in`` ``[B]`` produced by
:class:`workbench.model.Denoiser` (``time_map="scaled"``: ``1000 t``) and embed it with
:func:`workbench.model.sinusoidal_embedding`. With ``two_time=True`` they take a second time
input ``dt_in`` ``[B]`` (the interval ``t - r`` of an average-velocity student,
:class:`workbench.model.TwoTimeDenoiser`; Geng et al. 2025 condition on ``(t, t - r)``)
through a second embedding whose last layer starts at zero, so a two-time net with a
teacher's weights starts as the teacher.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from workbench.model import sinusoidal_embedding


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017) of ``t_in`` ``[B]`` followed by a 2-layer MLP -> ``[B, dim]``."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_in: Tensor) -> Tensor:
        # sinusoidal_embedding returns float32; follow the weights so a .double() copy works
        return self.mlp(sinusoidal_embedding(t_in, self.freq_dim).to(self.mlp[0].weight.dtype))


def gap_embedding(dim: int, freq_dim: int) -> TimeEmbedding:
    """The second time embedding of a two-time net (``t - r``), its output layer zeroed."""
    emb = TimeEmbedding(dim, freq_dim)
    nn.init.zeros_(emb.mlp[-1].weight)
    nn.init.zeros_(emb.mlp[-1].bias)
    return emb


def _check_gap(two_time: bool, dt_in: Optional[Tensor]) -> None:
    if two_time and dt_in is None:
        raise ValueError("a two-time net needs dt_in [B] (the embedded interval t - r)")
    if not two_time and dt_in is not None:
        raise ValueError("dt_in given to a one-time net; build it with two_time=True")


class ResidualMLP(nn.Module):
    """``x [B, D], t_in [B] -> [B, D]``: input projection, ``depth`` residual blocks
    ``h + W2 SiLU(W1 LN(h) + emb(t))``, output projection ``W_out SiLU(h) + W_skip x``
    (both zero-initialised). No normalisation sits on the read-out path, so the output can
    grow linearly with ``|x|`` (an epsilon prediction near ``t = 1`` is ``~x``) and noise
    from the prior's tails is not squashed."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, freq_dim: int = 64, two_time: bool = False):
        super().__init__()
        self.dim, self.hidden, self.depth, self.two_time = dim, hidden, depth, bool(two_time)
        self.temb = TimeEmbedding(hidden, freq_dim)
        self.temb2 = gap_embedding(hidden, freq_dim) if two_time else None
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(depth)])
        self.fc1 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.tproj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)
        self.skip = nn.Linear(dim, dim, bias=False)
        for p in (self.out.weight, self.out.bias, self.skip.weight):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, t_in: Tensor, mask: Optional[Tensor] = None, cond: Any = None,
                dt_in: Optional[Tensor] = None) -> Tensor:
        """``x [B, D], t_in [B]`` (and ``dt_in [B]`` when ``two_time``) -> ``[B, D]``."""
        _check_gap(self.two_time, dt_in)
        shape = x.shape
        h = self.inp(x.reshape(shape[0], -1))
        e = self.temb(t_in)
        if self.temb2 is not None:
            e = e + self.temb2(dt_in)
        e = nn.functional.silu(e)
        for ln, f1, tp, f2 in zip(self.norms, self.fc1, self.tproj, self.fc2):
            h = h + f2(nn.functional.silu(f1(ln(h)) + tp(e)))
        return (self.out(nn.functional.silu(h)) + self.skip(x.reshape(shape[0], -1))).reshape(shape)


class SetTransformer(nn.Module):
    """Denoiser for masked point sets ``x [B, N, D]`` with ``mask [B, N]`` (1 = real point):
    per-point embedding plus time, chain-index and set-size embeddings, ``depth`` pre-norm
    transformer encoder layers whose attention ignores padding, a linear read-out plus a
    linear per-point skip from ``x`` (so the output can scale with ``|x|``).

    The toy point sets are *ordered* chains (helix templates indexed by the point's rank
    among the real points, :class:`workbench.analytic.PointSetMixture`), so each point gets
    a learned embedding of its chain index ``j`` (the rank, from ``cumsum(mask)``); with
    ``index_embedding=False`` the network is permutation-equivariant (no positional
    information at all), for unordered sets. Padding rows of the output are zeroed here; the
    :class:`~workbench.model.Denoiser` then removes the centre of mass
    (``process.zero_com``)."""

    def __init__(self, dim: int = 3, hidden: int = 64, depth: int = 3, heads: int = 4, freq_dim: int = 64,
                 n_max: int = 12, index_embedding: bool = True, two_time: bool = False):
        super().__init__()
        self.dim, self.hidden, self.depth, self.heads, self.n_max = dim, hidden, depth, heads, n_max
        self.two_time = bool(two_time)
        self.temb = TimeEmbedding(hidden, freq_dim)
        self.temb2 = gap_embedding(hidden, freq_dim) if two_time else None
        self.inp = nn.Linear(dim, hidden)
        self.index_emb = nn.Embedding(n_max, hidden) if index_embedding else None
        self.size_emb = nn.Embedding(n_max + 1, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        self.skip = nn.Linear(dim, dim, bias=False)
        for p in (self.out.weight, self.out.bias, self.skip.weight):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, t_in: Tensor, mask: Optional[Tensor] = None, cond: Any = None,
                dt_in: Optional[Tensor] = None) -> Tensor:
        """``x [B, N, D], t_in [B]`` (and ``dt_in [B]`` when ``two_time``), ``mask [B, N]`` ->
        ``[B, N, D]`` with zero padding rows."""
        _check_gap(self.two_time, dt_in)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        real = mask > 0.5
        e = self.temb(t_in)
        if self.temb2 is not None:
            e = e + self.temb2(dt_in)
        h = self.inp(x) + e[:, None, :]
        n = real.sum(1).clamp(0, self.n_max)
        h = h + self.size_emb(n)[:, None, :]
        if self.index_emb is not None:
            j = (torch.cumsum(real.long(), dim=1) - 1).clamp(0, self.n_max - 1)
            h = h + self.index_emb(j)
        if self.two_time:  # PyTorch's fused CPU attention has no forward-mode derivative (MeanFlow's JVP)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                h = self.encoder(h, src_key_padding_mask=~real)
        else:
            h = self.encoder(h, src_key_padding_mask=~real)
        out = self.out(self.out_norm(h)) + self.skip(x)  # linear skip: the output can scale with |x|
        return out * real[..., None].to(out.dtype)

