"""A small Proteina-like transformer over CA coordinates (Geffner et al. 2025, "Proteina:
Scaling Flow-based Protein Structure Generative Models", ICLR; Sec. 3.2 and Fig. 3).

Design (after the paper's non-equivariant transformer, at a CPU-friendly size):

* **Per-residue tokens** ``[B, N, dim]``: a linear embedding of the (centred) noisy
  coordinates ``x_t`` plus a linear embedding of the self-conditioning coordinates ``x_sc``
  (the previous x0 estimate, zeros when absent) plus a sinusoidal embedding of the residue's
  position in the chain.
* **Conditioning** ``c`` ``[B, N, dim_cond]``: a sinusoidal embedding of the flow time passed
  through two transitions (Proteina's ``cond_factory`` + ``transition_c``), broadcast to all
  residues. It modulates every block through adaptive layer norm (AdaLN: ``LN(h) *
  sigmoid(W_s c) + W_b c``) and an adaptive output scale (``sigmoid(W_o c + b_o)``, ``b_o =
  -2`` at init, AF3 Algorithm 26 / adaLN-zero-like), as Proteina's
  ``MultiHeadBiasedAttentionADALN`` and ``TransitionADALN``.
* **Pair representation** ``[B, N, N, dim_pair]``: one-hot relative sequence separation
  (clipped to ``+-max_rel``), one-hot binned pairwise distances of ``x_t`` and of ``x_sc``
  (``dist_bins`` bins from ``dist_min`` to ``dist_max`` nm), a linear map and a layer norm.
  It is not updated (Proteina's smaller models use a fixed pair representation; the
  triangle updates are optional there), so every block's per-head bias is one linear map of
  it, computed once.
* **Blocks**: ``depth`` x [pair-biased multi-head self-attention (bias per head = linear
  projection of the pair representation; padding keys masked), SwiGLU transition], each
  with AdaLN in and adaptive scale out and a residual connection.
* **Read-out**: ``LayerNorm`` + linear to 3 coordinates (Proteina's ``coors_3d_decoder``),
  masked; with ``coord_head="relative"`` plus :class:`RelativeCoordHead`, an E(n)-GNN-style
  update along difference vectors of sequence neighbours (an addition of this project, not
  Proteina's; on in :data:`DEFAULT_NET` and the shipped teacher).

The network is *not* rotation-equivariant (Proteina isn't either; the data sampler applies
random rotations). It is exactly translation invariant (inputs are centred on the masked
centre of mass) and padding-invariant: padding rows never reach real residues (masked keys,
position index = rank among real residues, outputs zeroed at padding).

Shapes: ``x [B, N, 3]`` in nm, ``t_in [B]`` (the process time ``t`` in ``[0, 1]``, t=0 data),
``mask [B, N]`` float (1 real), output ``[B, N, 3]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from domains.proteins.layers import AdaLN
from workbench.model import sinusoidal_embedding

#: the domain's default network, that of the shipped teacher: the Proteina-like trunk with the
#: relative (E(n)-GNN-style) coordinate head (see :class:`RelativeCoordHead` for the measured gain)
DEFAULT_NET = {"dim": 128, "depth": 4, "heads": 4, "dim_pair": 32, "dim_cond": 64, "coord_head": "relative", "chiral": True}
#: the size used by tests
TINY_NET = {"dim": 32, "depth": 1, "heads": 2, "dim_pair": 8, "dim_cond": 16}
PREDICTIONS = ("x0", "velocity")
COORD_HEADS = ("linear", "relative")
#: length scale (nm) of the chiral features and frame-head output: one CA-CA virtual bond
CHIRAL_LENGTH = 0.38
#: sequence offsets whose frame-local displacements feed the chiral per-residue features
NEIGHBOUR_OFFSETS = (-3, -2, -1, 1, 2, 3)


def centre(x: Tensor, mask: Tensor) -> Tensor:
    """``x [B, N, 3]`` minus its masked centre of mass, padding zeroed."""
    m = mask[..., None]
    com = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return (x - com) * m


def position_index(mask: Tensor) -> Tensor:
    """Rank of each residue among the real ones ``[B, N]`` long (padding: clamped rank)."""
    real = (mask > 0.5).long()
    return (torch.cumsum(real, dim=1) - 1).clamp_min(0)


def local_frames(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Right-handed orthonormal frame of every residue from its CA neighbours ``[B, N, 3, 3]``
    (rows ``e1, e2, e3``): with ``u`` and ``v`` the unit vectors of the bonds ``i -> i+1`` and
    ``i-1 -> i``, ``e2 = (u + v)/|u + v|`` (along the chain), ``e1 = (u - v)/|u - v|`` (the
    bend, orthogonal to ``e2``) and ``e3 = e1 x e2``. Terminal residues take the frame of their
    one interior neighbour; padding and chains shorter than 3 get zero frames. Real residues
    are assumed contiguous in the row (the masks of this domain are prefixes).

    Under a rotation ``R`` the frame rotates (``e_a -> R e_a``); under a reflection ``x -> -x``
    ``e1, e2`` flip but the pseudo-vector ``e3`` does not: coordinates expressed in these frames
    tell a structure from its mirror image, which distances and E(n)-style updates cannot."""
    m = mask > 0.5
    nxt = torch.roll(x, -1, dims=1)
    prv = torch.roll(x, 1, dims=1)
    m_n = torch.roll(m, -1, dims=1)
    m_p = torch.roll(m, 1, dims=1)
    m_n[:, -1] = False
    m_p[:, 0] = False
    interior = m & m_n & m_p
    u = nxt - x
    v = x - prv
    u = u / (u.norm(dim=-1, keepdim=True) + eps)
    v = v / (v.norm(dim=-1, keepdim=True) + eps)
    e2 = u + v
    e2 = e2 / (e2.norm(dim=-1, keepdim=True) + eps)
    e1 = u - v
    e1 = e1 / (e1.norm(dim=-1, keepdim=True) + eps)
    e3 = torch.cross(e1, e2, dim=-1)
    f = torch.stack([e1, e2, e3], dim=-2) * interior[..., None, None].to(x.dtype)  # [B, N, 3, 3]
    # termini: the frame of the interior neighbour
    f_next = torch.roll(f, -1, dims=1)
    f_prev = torch.roll(f, 1, dims=1)
    i_next = torch.roll(interior, -1, dims=1)
    i_next[:, -1] = False
    i_prev = torch.roll(interior, 1, dims=1)
    i_prev[:, 0] = False
    use_next = (m & ~interior & i_next)[..., None, None]
    use_prev = (m & ~interior & ~i_next & i_prev)[..., None, None]
    return torch.where(use_next, f_next, torch.where(use_prev, f_prev, f))


def neighbour_geometry(x: Tensor, frames: Tensor, mask: Tensor, offsets=(-3, -2, -1, 1, 2, 3)) -> Tensor:
    """Chiral local geometry ``[B, N, 3 * len(offsets)]``: the displacement ``x_{i+k} - x_i`` of
    each sequence neighbour expressed in residue ``i``'s frame (:func:`local_frames`), zero where
    ``i + k`` is not a real residue. Rotation invariant; the ``e3`` components change sign under
    a reflection (with the CA virtual angles and torsions, this is the local shape of the chain
    including its handedness)."""
    m = mask > 0.5
    B, N, _ = x.shape
    feats = []
    for k in offsets:
        y = torch.roll(x, -k, dims=1)
        ok = torch.roll(m, -k, dims=1) & m
        idx = torch.arange(N, device=x.device)
        ok = ok & ((idx + k >= 0) & (idx + k < N))[None, :]
        d = torch.einsum("bnac,bnc->bna", frames, y - x)
        feats.append(d * ok[..., None].to(x.dtype))
    return torch.cat(feats, dim=-1)


def pair_directions(x: Tensor, frames: Tensor, eps: float = 1e-6) -> Tensor:
    """Unit direction of ``x_j - x_i`` in residue ``i``'s frame ``[B, N, N, 3]`` (zero on the
    diagonal and at padding frames); its ``e3`` component is reflection-odd."""
    diff = x[:, None, :, :] - x[:, :, None, :]  # [B, i, j, 3] = x_j - x_i
    unit = diff / (diff.norm(dim=-1, keepdim=True) + eps)
    return torch.einsum("biac,bijc->bija", frames, unit)


class SelfCondState:
    """Per-trajectory self-conditioning state attached to ``cond["self_cond"]`` by
    :meth:`ProteinTransformer.prepare_cond`: holds the last x0 estimate ``[B, N, 3]`` of a
    batch of ``batch_size`` trajectories. The network reads it (as ``x_sc``) and overwrites
    it on every call whose batch size matches; calls with another batch size ignore it."""

    def __init__(self, batch_size: Optional[int] = None):
        self.batch_size = batch_size
        self.x0: Optional[Tensor] = None
        self.calls = 0

    def matches(self, x: Tensor) -> bool:
        return self.batch_size is None or x.shape[0] == self.batch_size

    def __repr__(self) -> str:
        return f"SelfCondState(batch_size={self.batch_size}, calls={self.calls}, has_x0={self.x0 is not None})"


class OutputScale(nn.Module):
    """Adaptive output scale ``h * sigmoid(W c + b)`` with ``b = -2`` at init (AF3 / Proteina)."""

    def __init__(self, dim: int, dim_cond: int):
        super().__init__()
        self.lin = nn.Linear(dim_cond, dim)
        nn.init.zeros_(self.lin.weight)
        nn.init.constant_(self.lin.bias, -2.0)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h * torch.sigmoid(self.lin(c))


class PairBiasedAttention(nn.Module):
    """Multi-head self-attention with a per-head bias from the pair representation
    (AlphaFold2 Algorithm 7 without the MSA axis; Proteina's pair-biased MHA), gated.
    ``h [B, N, dim]``, ``bias [B, heads, N, N]`` (the block's linear projection of the pair
    representation), ``key_mask [B, N]`` bool -> ``[B, N, dim]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.dh = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gate = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: Tensor, bias: Tensor, key_mask: Tensor) -> Tensor:
        B, N, D = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, dh]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh) + bias  # [B, H, N, N]
        # finite fill: padding queries stay finite, padding keys get exactly zero weight
        logits = logits.masked_fill(~key_mask[:, None, None, :], -1e9)
        att = torch.softmax(logits, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, N, D)
        return self.out(o * torch.sigmoid(self.gate(h)))


class SwiGLU(nn.Module):
    """Transition ``W_o (SiLU(W_a h) * W_b h)`` (AF3 Algorithm 11)."""

    def __init__(self, dim: int, expansion: int = 2):
        super().__init__()
        self.ab = nn.Linear(dim, 2 * expansion * dim, bias=False)
        self.o = nn.Linear(expansion * dim, dim, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        a, b = self.ab(h).chunk(2, dim=-1)
        return self.o(nn.functional.silu(a) * b)


class Block(nn.Module):
    """AdaLN -> pair-biased attention -> output scale (+ residual), then AdaLN -> SwiGLU ->
    output scale (+ residual); padding rows zeroed (Proteina's ``MultiheadAttnAndTransition``,
    sequential variant)."""

    def __init__(self, dim: int, heads: int, dim_cond: int, expansion: int = 2):
        super().__init__()
        self.ln_att = AdaLN(dim, dim_cond)
        self.att = PairBiasedAttention(dim, heads)
        self.sc_att = OutputScale(dim, dim_cond)
        self.ln_tr = AdaLN(dim, dim_cond)
        self.tr = SwiGLU(dim, expansion)
        self.sc_tr = OutputScale(dim, dim_cond)

    def forward(self, h: Tensor, bias: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        m = mask[..., None]
        h = h + self.sc_att(self.att(self.ln_att(h, c), bias, mask > 0.5), c) * m
        h = h + self.sc_tr(self.tr(self.ln_tr(h, c)), c) * m
        return h


def distance_bins(d: Tensor, lo: float, hi: float, n: int) -> Tensor:
    """Bin index (long, same shape) of distances ``d`` in ``n`` bins: ``n - 1`` edges evenly
    spaced in ``[lo, hi]`` (below the first edge -> bin 0, above the last -> bin ``n - 1``)."""
    edges = torch.linspace(lo, hi, n - 1, device=d.device, dtype=d.dtype)
    return torch.bucketize(d.contiguous(), edges)


class RelativeCoordHead(nn.Module):
    """Coordinate update along inter-residue difference vectors (the E(n)-GNN coordinate
    update, Satorras et al. 2021, eq. 4), added to the linear read-out::

        delta_i = sum_j w_ij (x_i - x_j) / (|x_i - x_j| + 0.1) / n_i
                + sum_j u_ij (s_i - s_j) / (|s_i - s_j| + 0.1) / n_i

    over real residues ``j`` within ``+-window`` in sequence (``n_i`` of them), with ``x`` the
    centred input ``x_t`` and ``s`` the self-conditioning estimate (nm); ``[w_ij, u_ij] =
    MLP(LN(h)_i A + LN(h)_j B + P pair_ij)`` with a zero-initialised last layer (so the head
    starts as the identity of the linear read-out, and a trained ``linear`` network can be
    fine-tuned with it). It gives the read-out direct access to local relative geometry (bond
    lengths, angles) that a linear map of per-residue features has to reconstruct from
    absolute coordinates. ``h [B, N, dim]``, ``pair [B, N, N, dim_pair]``, ``x, s [B, N, 3]``,
    ``mask [B, N]`` -> ``[B, N, 3]``."""

    def __init__(self, dim: int, dim_pair: int, hidden: int = 32, window: int = 8):
        super().__init__()
        self.window = int(window)
        self.norm = nn.LayerNorm(dim)
        self.a = nn.Linear(dim, hidden)
        self.b = nn.Linear(dim, hidden, bias=False)
        self.p = nn.Linear(dim_pair, hidden, bias=False)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, pair: Tensor, x: Tensor, s: Tensor, mask: Tensor) -> Tensor:
        hn = self.norm(h)
        wu = self.out(nn.functional.silu(self.a(hn)[:, :, None] + self.b(hn)[:, None, :] + self.p(pair)))  # [B, N, N, 2]
        pos = position_index(mask)
        sep = (pos[:, :, None] - pos[:, None, :]).abs()
        keep = (mask[:, :, None] * mask[:, None, :]) * ((sep <= self.window) & (sep > 0)).to(mask.dtype)  # [B, N, N]
        n = keep.sum(-1, keepdim=True).clamp_min(1.0)  # [B, N, 1]
        out = torch.zeros_like(x)
        for k, y in enumerate((x, s)):
            diff = y[:, :, None, :] - y[:, None, :, :]  # [B, N, N, 3]
            unit = diff / (diff.norm(dim=-1, keepdim=True) + 0.1)
            out = out + ((wu[..., k] * keep)[..., None] * unit).sum(2) / n
        return out * mask[..., None]


@dataclass
class NetConfig:
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dim_pair: int = 32
    dim_cond: int = 64
    expansion: int = 2
    max_rel: int = 32
    dist_bins: int = 32
    dist_min: float = 0.1
    dist_max: float = 2.0
    freq_dim: int = 64
    self_conditioning: bool = True
    prediction: str = "x0"
    coord_head: str = "linear"
    coord_hidden: int = 32
    chiral: bool = False


class ProteinTransformer(nn.Module):
    """The Proteina-like CA denoiser (see the module docstring).

    ``forward(x [B, N, 3], t_in [B], mask=None [B, N], cond=None) -> [B, N, 3]``: the
    prediction (``x0`` coordinates or the flow ``velocity``, per ``prediction``) with zero
    padding rows. ``t_in`` must be the process time (``Denoiser(time_map="identity")``): it
    converts a velocity output to the x0 estimate stored for self-conditioning
    (``x0 = x_t - t v`` for the rectified flow ``x_t = (1 - t) x0 + t eps``).

    ``cond`` may be ``None`` or a dict; keys read here: ``"x_sc"`` (a tensor ``[B, N, 3]``:
    explicit self-conditioning input, used by the training loss) and ``"self_cond"`` (a
    :class:`SelfCondState` from :meth:`prepare_cond`, used during sampling). Other keys
    (``aatype``, ``residue_index`` of the data sampler) are ignored: generation is
    unconditional and positions are the ranks of real residues.
    """

    def __init__(self, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(NetConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown protein transformer option(s) {unknown}; valid: {', '.join(NetConfig.__dataclass_fields__)}")
        cfg = NetConfig(**kwargs)
        if cfg.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {cfg.prediction!r}; valid: {', '.join(PREDICTIONS)}")
        self.cfg = cfg
        d, dc, dp = cfg.dim, cfg.dim_cond, cfg.dim_pair
        self.embed_x = nn.Linear(3, d, bias=False)
        self.embed_sc = nn.Linear(3, d, bias=False)
        self.embed_pos = nn.Linear(cfg.freq_dim, d)
        self.embed_t = nn.Linear(cfg.freq_dim, dc)
        self.cond_tr = nn.ModuleList([nn.Sequential(nn.LayerNorm(dc), SwiGLU(dc, 2)) for _ in range(2)])
        # pair features: one-hot relative position / binned distances times a linear map, written
        # as the (identical) sum of embedding lookups
        self.pair_rel = nn.Embedding(2 * cfg.max_rel + 1, dp)
        self.pair_dx = nn.Embedding(cfg.dist_bins, dp)
        self.pair_dsc = nn.Embedding(cfg.dist_bins, dp)
        self.pair_norm = nn.LayerNorm(dp)
        # every block's per-head attention bias, one linear map of the (fixed) pair representation
        self.pair_bias = nn.Linear(dp, cfg.depth * cfg.heads, bias=False)
        self.blocks = nn.ModuleList([Block(d, cfg.heads, dc, cfg.expansion) for _ in range(cfg.depth)])
        self.out_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 3, bias=False)
        if cfg.coord_head not in COORD_HEADS:
            raise ValueError(f"unknown coord_head {cfg.coord_head!r}; valid: {', '.join(COORD_HEADS)}")
        self.rel_head = RelativeCoordHead(d, dp, cfg.coord_hidden) if cfg.coord_head == "relative" else None
        if cfg.chiral:
            # signed local geometry in residue frames (see the module docstring); all three maps
            # start at zero, so a non-chiral network fine-tuned with them starts as itself
            n_off = len(NEIGHBOUR_OFFSETS)
            self.embed_local = nn.Linear(2 * 3 * n_off, d)
            self.pair_dir = nn.Linear(6, dp, bias=False)
            self.frame_out = nn.Linear(d, 6, bias=False)
            for lin in (self.embed_local, self.pair_dir, self.frame_out):
                nn.init.zeros_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    @property
    def prediction(self) -> str:
        return self.cfg.prediction

    # -- self-conditioning hook (workbench.model.prepare_cond) ------------------------------
    def prepare_cond(self, cond: Any, *, mask: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Any:
        """Attach a fresh :class:`SelfCondState` for one sampling trajectory:
        returns ``{**cond, "self_cond": state}`` (``cond`` ``None`` or a dict). Identity when
        self-conditioning is off."""
        if not self.cfg.self_conditioning:
            return cond
        if cond is not None and not isinstance(cond, dict):
            raise ValueError(f"protein_backbone cond must be None or a dict, got {type(cond).__name__}")
        return {**(cond or {}), "self_cond": SelfCondState(batch_size)}

    def _self_cond_input(self, x: Tensor, cond: Any, mask: Tensor) -> tuple[Tensor, Optional[SelfCondState]]:
        state = cond.get("self_cond") if isinstance(cond, dict) else None
        if not isinstance(state, SelfCondState) or not state.matches(x):
            state = None
        if not self.cfg.self_conditioning:
            return torch.zeros_like(x), None
        explicit = cond.get("x_sc") if isinstance(cond, dict) else None
        if isinstance(explicit, Tensor):
            return centre(explicit.to(x.dtype), mask), state
        if state is not None and state.x0 is not None and state.x0.shape == x.shape:
            return state.x0.to(x.dtype), state
        return torch.zeros_like(x), state

    def pair_representation(self, x: Tensor, x_sc: Tensor, mask: Tensor, frames: Optional[tuple] = None) -> Tensor:
        """Pair representation ``[B, N, N, dim_pair]``: LayerNorm of embedded relative
        sequence separation + binned CA distances of ``x`` and of ``x_sc`` (nm) + (``chiral``)
        a linear map of the frame-local pair directions of ``x`` and ``x_sc``
        (:func:`pair_directions`, ``frames = (frames of x, frames of x_sc)``)."""
        cfg = self.cfg
        pos = position_index(mask)
        rel = (pos[:, None, :] - pos[:, :, None]).clamp(-cfg.max_rel, cfg.max_rel) + cfg.max_rel
        with torch.no_grad():
            b_x = distance_bins(torch.cdist(x, x), cfg.dist_min, cfg.dist_max, cfg.dist_bins)
            b_sc = distance_bins(torch.cdist(x_sc, x_sc), cfg.dist_min, cfg.dist_max, cfg.dist_bins)
        z = self.pair_rel(rel) + self.pair_dx(b_x) + self.pair_dsc(b_sc)
        if cfg.chiral and frames is not None:
            dirs = torch.cat([pair_directions(x, frames[0]), pair_directions(x_sc, frames[1])], dim=-1)
            z = z + self.pair_dir(dirs)
        return self.pair_norm(z)

    def forward(self, x: Tensor, t_in: Tensor, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        """``x [B, N, 3]`` (nm), ``t_in [B]`` process time, ``mask [B, N]`` -> ``[B, N, 3]``."""
        cfg = self.cfg
        B, N, _ = x.shape
        if mask is None:
            mask = torch.ones(B, N, dtype=x.dtype, device=x.device)
        mask = mask.to(x.dtype)
        m = mask[..., None]
        xc = centre(x, mask)
        x_sc, state = self._self_cond_input(x, cond, mask)
        t_in = torch.as_tensor(t_in, device=x.device).to(x.dtype)
        t_in = t_in.expand(B) if t_in.ndim == 0 else t_in
        pos = position_index(mask)
        w = self.embed_x.weight
        pos_emb = sinusoidal_embedding(pos.reshape(-1).to(w.dtype), cfg.freq_dim).reshape(B, N, -1).to(w.dtype)
        h = self.embed_x(xc) + self.embed_sc(x_sc) + self.embed_pos(pos_emb)
        frames = None
        if cfg.chiral:
            frames = (local_frames(xc, mask), local_frames(x_sc, mask))
            local = torch.cat([neighbour_geometry(xc, frames[0], mask, NEIGHBOUR_OFFSETS),
                               neighbour_geometry(x_sc, frames[1], mask, NEIGHBOUR_OFFSETS)], dim=-1)
            h = h + self.embed_local(local / CHIRAL_LENGTH)
        h = h * m
        c = self.embed_t(sinusoidal_embedding(1000.0 * t_in, cfg.freq_dim).to(w.dtype))[:, None, :].expand(B, N, -1)
        for tr in self.cond_tr:
            c = c + tr(c)
        pair = self.pair_representation(xc, x_sc, mask, frames)
        bias = self.pair_bias(pair).permute(0, 3, 1, 2)  # [B, depth * heads, N, N]
        H = cfg.heads
        for i, blk in enumerate(self.blocks):
            h = blk(h, bias[:, i * H:(i + 1) * H], c, mask)
        out = self.out(self.out_norm(h)) * m
        if self.rel_head is not None:
            out = out + self.rel_head(h, pair, xc, x_sc, mask)
        if cfg.chiral:
            o = self.frame_out(self.out_norm(h))  # [B, N, 6]: components along the frames of x and x_sc
            out = out + (torch.einsum("bna,bnac->bnc", o[..., :3], frames[0])
                         + torch.einsum("bna,bnac->bnc", o[..., 3:], frames[1])) * CHIRAL_LENGTH * m
        if state is not None:
            with torch.no_grad():
                est = out if cfg.prediction == "x0" else xc - t_in[:, None, None] * out
                state.x0 = centre(est.detach(), mask)
                state.calls += 1
        return out
