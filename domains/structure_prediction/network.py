"""The structure predictor's networks: a small AlphaFold 3-style trunk (single + pair
representations from the sequence, recycled) and an AF3-style diffusion module over CA atoms
(one token = one residue), wrapped so that the trunk runs once per sampling call.

Shapes: ``B`` batch, ``N`` residues (padded), ``c_s`` single channels, ``c_z`` pair channels,
``H`` heads. Coordinates are CA positions in Angstrom (the domain's state ``[B, N, 3]``).

What is kept from AlphaFold 3 (Abramson et al. 2024, Supplementary Information) and what is
simplified for a CPU-sized model:

* input embedding: a switchable per-residue sequence encoder (``onehot``, the project's small
  protein language model ``plm``, or ``esm``; :func:`domains.proteins.plm.get_sequence_encoder`)
  projected to ``s_inputs`` ``[B, N, c_s]``; pair init ``z_ij = relpos_ij + a_i + b_j``
  with AF3's relative position encoding (Alg. 3, one chain: clipped offsets ``|i - j| <= 32``,
  one-hot, linear);
* trunk (AF3 Alg. 1 with Alg. 17 "Pairformer" blocks simplified): single attention with pair
  bias (Alg. 24 without AdaLN), SwiGLU transitions (Alg. 11), and a pair update from the single
  representation by an outer product (AF2's outer-product-mean with a single sequence). No
  triangle updates / triangle attention (O(N^3), too slow on CPU): the pair representation
  only mixes information through the single track. Recycling (Alg. 1 lines 8-12):
  ``s = s_init + Linear(LN(s_prev))``, ``z = z_init + Linear(LN(z_prev))`` for ``recycles + 1``
  cycles, gradients through the last cycle only;
* diffusion module (Alg. 20, token level only: no atom encoder/decoder since a token is one CA):
  conditioning (Alg. 21) ``s_cond = Linear(LN([s_trunk, s_inputs])) + Linear(LN(fourier(c_noise)))``
  (AF3's fixed random Fourier features of ``c_noise = log(sigma) / 4``) plus two transitions, ``z_cond = Linear(LN([z_trunk, relpos]))`` plus one transition (AF3: two); token
  activations ``a = Linear(c_in x) + Linear(LN(s_cond))``; a diffusion transformer (Alg. 23) of
  AdaLN attention with pair bias (Alg. 24, 26) and conditioned transitions (Alg. 25); output
  ``Linear(LN(a))`` (zero-initialised) is EDM's ``F``. EDM preconditioning (``c_in, c_skip,
  c_out, c_noise``, AF3 Alg. 20 lines 1-4 with ``sigma_data = 16``) lives in
  :class:`workbench.model.Denoiser`.

Everything that does not depend on the noisy coordinates (the trunk, ``s_cond`` before the
noise embedding, the pair-bias logits of every diffusion block) is computed by
:meth:`StructureBackbone.condition` and cached in ``cond`` by :meth:`StructureBackbone.prepare_cond`,
which the core samplers call once per sampling call; one network evaluation is then only the
diffusion transformer (``O(N^2 H)`` for the bias add, ``O(N c_s^2)`` otherwise).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.proteins.layers import AdaLN

#: default architecture (the shipped checkpoint's); ``net={...}`` in the domain config overrides
ARCH = dict(c_s=64, c_z=16, heads=4, trunk_depth=2, diffusion_depth=3, c_opm=8, relpos_max=32, transition=2, fourier_dim=32)


def _masked_logits(logits: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mask keys ``j`` of ``logits`` ``[B, H, N, N]`` with ``mask`` ``[B, N]``."""
    if mask is None:
        return logits
    return logits.masked_fill((mask <= 0)[:, None, None, :], -1e9)


class RelPos(nn.Module):
    """AF3 relative position encoding (Suppl. Alg. 3), single chain: one-hot of
    ``clip(r_i - r_j, -r_max, r_max)`` (``2 r_max + 1`` bins) -> ``[B, N, N, c_z]``."""

    def __init__(self, c_z: int, r_max: int = 32):
        super().__init__()
        self.r_max = int(r_max)
        self.proj = nn.Embedding(2 * self.r_max + 1, c_z)  # = a bias-free Linear of the one-hot, as a lookup

    def forward(self, residue_index: Tensor) -> Tensor:
        d = (residue_index[:, :, None] - residue_index[:, None, :]).clamp(-self.r_max, self.r_max) + self.r_max
        return self.proj(d.long())


class Transition(nn.Module):
    """SwiGLU transition (AF3 Suppl. Alg. 11): ``Linear(silu(Linear_a(LN x)) * Linear_b(LN x))``;
    with ``c_cond`` the conditioned version (Alg. 25: AdaLN and a sigmoid output gate from
    ``s``, gate bias initialised to -2 as AF3's adaLN-Zero)."""

    def __init__(self, c: int, n: int = 2, c_cond: Optional[int] = None):
        super().__init__()
        self.norm = AdaLN(c, c_cond) if c_cond else nn.LayerNorm(c)
        self.ab = nn.Linear(c, 2 * n * c, bias=False)
        self.out = nn.Linear(n * c, c, bias=False)
        self.gate = None
        if c_cond:
            self.gate = nn.Linear(c_cond, c)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, -2.0)

    def forward(self, x: Tensor, s: Optional[Tensor] = None) -> Tensor:
        h = self.norm(x, s) if self.gate is not None else self.norm(x)
        a, b = self.ab(h).chunk(2, dim=-1)
        out = self.out(F.silu(a) * b)
        return torch.sigmoid(self.gate(s)) * out if self.gate is not None else out


class PairBiasAttention(nn.Module):
    """Gated multi-head self-attention over residues with a pair bias (AF3 Suppl. Alg. 24):
    ``softmax(q k^T / sqrt(d) + b)`` with ``b = Linear(LN(z))`` ``[B, H, N, N]`` (or a
    precomputed ``bias``), keys masked by ``mask``; with ``c_cond`` the input is normalised by
    AdaLN and the output gated by ``sigmoid(Linear(s))`` (bias -2)."""

    def __init__(self, c: int, c_z: int, heads: int, c_cond: Optional[int] = None):
        super().__init__()
        if c % heads:
            raise ValueError(f"channels {c} must be divisible by heads {heads}")
        self.h, self.d = heads, c // heads
        self.norm = AdaLN(c, c_cond) if c_cond else nn.LayerNorm(c)
        self.qkvg = nn.Linear(c, 4 * c, bias=False)
        self.out = nn.Linear(c, c, bias=False)
        self.bias_norm = nn.LayerNorm(c_z)
        self.bias_proj = nn.Linear(c_z, heads, bias=False)
        self.cond_gate = None
        if c_cond:
            self.cond_gate = nn.Linear(c_cond, c)
            nn.init.zeros_(self.cond_gate.weight)
            nn.init.constant_(self.cond_gate.bias, -2.0)

    def pair_bias(self, z: Tensor) -> Tensor:
        """``z`` ``[B, N, N, c_z]`` -> bias logits ``[B, H, N, N]``."""
        return self.bias_proj(self.bias_norm(z)).permute(0, 3, 1, 2)

    def forward(self, a: Tensor, mask: Optional[Tensor], *, z: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                s: Optional[Tensor] = None) -> Tensor:
        B, N, C = a.shape
        h = self.norm(a, s) if self.cond_gate is not None else self.norm(a)
        q, k, v, g = self.qkvg(h).view(B, N, 4, self.h, self.d).permute(2, 0, 3, 1, 4)  # each [B, H, N, d]
        if bias is None:
            bias = self.pair_bias(z)
        if bias.shape[0] != B:  # one cached bias per sequence, several noisy samples per sequence
            bias = bias.repeat_interleave(B // bias.shape[0], dim=0)
        logits = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(self.d) + bias
        att = torch.softmax(_masked_logits(logits, mask), dim=-1)
        o = torch.einsum("bhij,bhjd->bhid", att, v) * torch.sigmoid(g)
        o = self.out(o.permute(0, 2, 1, 3).reshape(B, N, C))
        return torch.sigmoid(self.cond_gate(s)) * o if self.cond_gate is not None else o


class TrunkBlock(nn.Module):
    """One trunk block: ``s += attn(s; z)``, ``s += transition(s)``, ``z += OPM(s)``,
    ``z += transition(z)`` (a Pairformer block without the triangle updates)."""

    def __init__(self, c_s: int, c_z: int, heads: int, c_opm: int, n: int):
        super().__init__()
        self.attn = PairBiasAttention(c_s, c_z, heads)
        self.s_trans = Transition(c_s, n)
        self.opm_norm = nn.LayerNorm(c_s)
        self.opm_ab = nn.Linear(c_s, 2 * c_opm, bias=False)
        self.opm_out = nn.Linear(c_opm * c_opm, c_z)
        self.z_trans = Transition(c_z, n)

    def forward(self, s: Tensor, z: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        s = s + self.attn(s, mask, z=z)
        s = s + self.s_trans(s)
        a, b = self.opm_ab(self.opm_norm(s)).chunk(2, dim=-1)  # [B, N, c_opm] each
        if mask is not None:
            a, b = a * mask[..., None], b * mask[..., None]
        o = torch.einsum("bic,bjd->bijcd", a, b).flatten(-2)
        z = z + self.opm_out(o)
        z = z + self.z_trans(z)
        return s, z


class Trunk(nn.Module):
    """Sequence -> ``(s_inputs [B, N, c_s], s [B, N, c_s], z [B, N, N, c_z], relpos [B, N, N, c_z])``."""

    def __init__(self, encoder: nn.Module, *, c_s: int, c_z: int, heads: int, trunk_depth: int, c_opm: int, relpos_max: int,
                 transition: int, recycles: int):
        super().__init__()
        self.encoder = encoder
        self.recycles = int(recycles)
        self.embed = nn.Linear(int(encoder.dim), c_s)
        self.relpos = RelPos(c_z, relpos_max)
        self.s_init = nn.Linear(c_s, c_s, bias=False)
        self.z_left = nn.Linear(c_s, c_z, bias=False)
        self.z_right = nn.Linear(c_s, c_z, bias=False)
        self.s_recycle = nn.Sequential(nn.LayerNorm(c_s), nn.Linear(c_s, c_s, bias=False))
        self.z_recycle = nn.Sequential(nn.LayerNorm(c_z), nn.Linear(c_z, c_z, bias=False))
        self.blocks = nn.ModuleList([TrunkBlock(c_s, c_z, heads, c_opm, transition) for _ in range(trunk_depth)])

    def forward(self, aatype: Tensor, residue_index: Tensor, mask: Tensor, recycles: Optional[int] = None):
        recycles = self.recycles if recycles is None else int(recycles)
        feats = self.encoder(aatype, mask).to(self.embed.weight.dtype)
        s_inputs = self.embed(feats)
        rel = self.relpos(residue_index)
        s_init = self.s_init(s_inputs)
        z_init = rel + self.z_left(s_inputs)[:, :, None] + self.z_right(s_inputs)[:, None, :]
        s, z = torch.zeros_like(s_init), torch.zeros_like(z_init)
        grad = torch.is_grad_enabled()
        for cycle in range(recycles + 1):
            with torch.set_grad_enabled(grad and cycle == recycles):  # AF3: gradients through the last cycle only
                s = s_init + self.s_recycle(s.detach())
                z = z_init + self.z_recycle(z.detach())
                for blk in self.blocks:
                    s, z = blk(s, z, mask)
        return s_inputs, s, z, rel


class DiffusionModule(nn.Module):
    """AF3-style diffusion module at token (CA) level: ``F(c_in x [B, N, 3], c_noise [B]) -> [B, N, 3]``
    given the cached conditioning of :meth:`StructureBackbone.condition`."""

    def __init__(self, *, c_s: int, c_z: int, heads: int, diffusion_depth: int, transition: int, fourier_dim: int):
        super().__init__()
        self.fourier_dim = int(fourier_dim)
        # AF3 Alg. 22: fixed random Fourier features cos(2 pi (c_noise w + b)), w, b ~ N(0, 1) / U(0, 1)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("fourier_w", torch.randn(self.fourier_dim, generator=g))
        self.register_buffer("fourier_b", torch.rand(self.fourier_dim, generator=g))
        self.s_cond = nn.Sequential(nn.LayerNorm(2 * c_s), nn.Linear(2 * c_s, c_s, bias=False))
        self.noise = nn.Sequential(nn.LayerNorm(self.fourier_dim), nn.Linear(self.fourier_dim, c_s, bias=False))
        self.s_trans = nn.ModuleList([Transition(c_s, transition) for _ in range(2)])
        self.z_cond = nn.Sequential(nn.LayerNorm(2 * c_z), nn.Linear(2 * c_z, c_z, bias=False))
        self.z_trans = nn.ModuleList([Transition(c_z, transition) for _ in range(1)])
        self.x_in = nn.Linear(3, c_s, bias=False)
        self.s_to_a = nn.Sequential(nn.LayerNorm(c_s), nn.Linear(c_s, c_s, bias=False))
        self.attn = nn.ModuleList([PairBiasAttention(c_s, c_z, heads, c_cond=c_s) for _ in range(diffusion_depth)])
        self.trans = nn.ModuleList([Transition(c_s, transition, c_cond=c_s) for _ in range(diffusion_depth)])
        self.out_norm = nn.LayerNorm(c_s)
        self.out = nn.Linear(c_s, 3, bias=False)
        nn.init.zeros_(self.out.weight)

    def condition(self, s_inputs: Tensor, s_trunk: Tensor, z_trunk: Tensor, rel: Tensor) -> dict:
        """Noise-independent conditioning: ``s0`` ``[B, N, c_s]`` and the pair-bias logits of
        every block ``bias`` ``[B, depth, H, N, N]``."""
        s0 = self.s_cond(torch.cat([s_trunk, s_inputs], dim=-1))
        z = self.z_cond(torch.cat([z_trunk, rel], dim=-1))
        for t in self.z_trans:
            z = z + t(z)
        bias = torch.stack([blk.pair_bias(z) for blk in self.attn], dim=1)
        return {"s0": s0, "bias": bias}

    def forward(self, x: Tensor, c_noise: Tensor, mask: Optional[Tensor], cache: dict) -> Tensor:
        B = x.shape[0]
        s0, bias = cache["s0"], cache["bias"]
        if s0.shape[0] != B:
            if B % s0.shape[0]:
                raise ValueError(f"conditioning for {s0.shape[0]} sequences does not divide a batch of {B} states")
            s0 = s0.repeat_interleave(B // s0.shape[0], dim=0)
        emb = torch.cos(2 * math.pi * (c_noise.to(s0.dtype)[:, None] * self.fourier_w + self.fourier_b))  # c_noise = log(sigma) / 4
        s = s0 + self.noise(emb)[:, None, :]
        for t in self.s_trans:
            s = s + t(s)
        a = self.x_in(x) + self.s_to_a(s)
        for i, (att, tr) in enumerate(zip(self.attn, self.trans)):
            a = a + att(a, mask, bias=bias[:, i], s=s)
            a = a + tr(a, s)
        return self.out(self.out_norm(a))


class StructureBackbone(nn.Module):
    """The backbone a :class:`workbench.model.Denoiser` wraps:
    ``forward(x [B, N, 3], c_noise [B], *, mask [B, N], cond) -> F [B, N, 3]``.

    ``cond`` is a dict with ``aatype`` (long ``[B, N]``, 0..19, 20 unknown/padding) and
    ``residue_index`` (long ``[B, N]``). :meth:`prepare_cond` adds the trunk's cached
    conditioning under a key private to this module instance (so several networks, e.g. a
    teacher and its students, can share one ``cond``); :meth:`forward` computes it itself
    when that key is absent (training, where the trunk is trained end to end).
    """

    def __init__(self, encoder: nn.Module, *, recycles: int = 1, **arch):
        super().__init__()
        bad = sorted(set(arch) - set(ARCH))
        if bad:
            raise ValueError(f"unknown structure_prediction network option(s) {bad}; valid: {', '.join(ARCH)}")
        cfg = {**ARCH, **arch}
        self.arch = cfg
        self.trunk = Trunk(encoder, c_s=cfg["c_s"], c_z=cfg["c_z"], heads=cfg["heads"], trunk_depth=cfg["trunk_depth"], c_opm=cfg["c_opm"],
                           relpos_max=cfg["relpos_max"], transition=cfg["transition"], recycles=recycles)
        self.diffusion = DiffusionModule(c_s=cfg["c_s"], c_z=cfg["c_z"], heads=cfg["heads"], diffusion_depth=cfg["diffusion_depth"],
                                         transition=cfg["transition"], fourier_dim=cfg["fourier_dim"])
        #: number of trunk evaluations so far (tests check it runs once per sampling call)
        self.trunk_calls = 0

    @property
    def cond_key(self) -> str:
        return f"_structure_trunk_{id(self)}"

    @staticmethod
    def _inputs(cond: Any, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(cond, Tensor):  # bare aatype (e.g. re-read from samples.npz)
            cond = {"aatype": cond}
        if not isinstance(cond, dict) or "aatype" not in cond:
            raise ValueError("structure_prediction needs cond={'aatype': [B, N] long, 'residue_index': [B, N] long} (the sequences to fold)")
        aatype = cond["aatype"].long()
        ri = cond.get("residue_index")
        ri = torch.arange(aatype.shape[1], device=aatype.device).expand_as(aatype) if ri is None else ri.long()
        m = torch.ones(aatype.shape, device=aatype.device) if mask is None else mask.to(torch.float32)
        return aatype.clamp(0, 20), ri, m

    def condition(self, cond: Any, mask: Optional[Tensor] = None, recycles: Optional[int] = None) -> dict:
        """Run the trunk on the sequences in ``cond`` -> the cached conditioning dict
        (``s0`` ``[B, N, c_s]``, ``bias`` ``[B, depth, H, N, N]``)."""
        aatype, ri, m = self._inputs(cond, mask)
        self.trunk_calls += 1
        s_inputs, s, z, rel = self.trunk(aatype, ri, m, recycles)
        return self.diffusion.condition(s_inputs, s, z, rel)

    def prepare_cond(self, cond: Any, *, mask: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Any:
        """Run the trunk once and return ``cond`` with the cached conditioning added (called once
        per sampling call by :func:`workbench.model.prepare_cond`)."""
        if isinstance(cond, dict) and self.cond_key in cond:
            return cond
        base = {"aatype": cond} if isinstance(cond, Tensor) else dict(cond)
        base[self.cond_key] = self.condition(cond, mask)
        return base

    def forward(self, x: Tensor, c_noise: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        cache = cond.get(self.cond_key) if isinstance(cond, dict) else None
        if cache is None:
            cache = self.condition(cond, mask)
        if mask is None:
            mask = self._inputs(cond, None)[2]
        return self.diffusion(x, c_noise, mask.to(x.dtype), cache)
