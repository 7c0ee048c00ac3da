"""The two E(3)-equivariant backbones of the ``molecules`` domain (issue 18).

State convention (EDM, Hoogeboom et al. 2022, "Equivariant Diffusion for Molecule Generation in
3D", ICML; github.com/ehoogeboom/e3_diffusion_for_molecules): one padded tensor
``x [B, N, 3 + F]`` per batch, channels ``0:3`` the positions (Angstrom, zero centre of mass over
the real atoms), channels ``3:`` the atom features (EDM's continuous, scaled one-hot of
``H C N O F`` and the charge feature: ``F = 6`` with charges, as EDM's ``include_charges``), and
``mask [B, N]`` (1 real atom, 0 padding).

Both networks are called as ``net(x_t [B, N, 3 + F], t [B], mask=[B, N]) -> out [B, N, 3 + F]``,
``t`` the process time in ``[0, 1]`` (0 data, 1 noise; EDM conditions on ``t = s / T`` in the
same range), and ``out`` is what the ``prediction`` attribute says (``"epsilon"``, the default as
in EDM, or ``"x0"``). Coordinates of ``out`` have zero centre of mass over the real atoms (EDM's
``remove_mean_with_mask`` on the network output, ``egnn/models.py::EGNN_dynamics_QM9._forward``)
and padding rows are exactly 0. For ``"epsilon"`` the coordinate output is the equivariant
displacement (EDM's ``vel = x_final - x``); for ``"x0"`` it is ``x_t + displacement`` (the
updated positions), both centred.

* :class:`EGNN`: the E(n)-equivariant graph network of Satorras, Hoogeboom & Welling 2021
  ("E(n) Equivariant Graph Neural Networks", ICML) in EDM's ``EGNN_dynamics_QM9`` form
  (``egnn/models.py``, ``egnn/egnn_new.py``), written with torch-geometric ``MessagePassing``.
* :class:`E3NNBackbone`: a small NequIP-like interaction network (Batzner et al. 2022,
  "E(3)-equivariant graph neural networks for data-efficient and accurate interatomic
  potentials", Nat. Commun.) built from e3nn (Geiger & Smidt 2022, "e3nn: Euclidean Neural
  Networks", arXiv:2207.09453) tensor products of node irreps with spherical harmonics of the
  edge vectors, weighted by a radial MLP.

Both are E(3)-equivariant: rotations *and* reflections of the input positions act on the
coordinate output and leave the feature output unchanged. That is EDM's choice (its EGNN only
sees distances and difference vectors, so it has no chirality preference and a generated
molecule and its mirror image are equally likely), although QM9 molecules are chiral in
general; the e3nn variant keeps it by using parity-odd vectors (``1o``) with the parity-aware
spherical harmonics (``l`` has parity ``(-1)^l``), which makes it O(3)- rather than only
SO(3)-equivariant. Both are translation invariant (only relative vectors enter) and
permutation equivariant.

Graphs: ``graph="full"`` connects every pair of distinct real atoms of a molecule (EDM's
``get_adj_matrix`` with its ``edge_mask``: no self-loops, no padding, no cross-molecule edges);
``graph="radius"`` keeps the pairs closer than ``radius`` Angstrom and multiplies every message
by a cosine envelope ``(cos(pi d / radius) + 1) / 2`` so that messages vanish continuously at
the cut-off (EDM has no radius variant; the envelope is this project's). The graphs are built
by :func:`fully_connected_graph` / :func:`radius_graph` here (pure torch: pyg-lib and
torch-cluster are not used). Edge indices follow torch-geometric's ``source_to_target`` flow:
``edge_index[0]`` the source ``j``, ``edge_index[1]`` the target ``i`` that aggregates, both
indices into the flattened ``B * N`` nodes.

Extras:
    ``pip install torch-geometric e3nn`` (the ``molecules`` extra). Importing this module needs
    both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from workbench.model import sinusoidal_embedding

PREDICTIONS = ("x0", "epsilon")
GRAPHS = ("full", "radius")
#: EDM's QM9 features with hydrogens: 5 one-hot atom types (H C N O F) + 1 charge channel
DEFAULT_NUM_FEATURES = 6


# -- graphs -------------------------------------------------------------------------------------
def _pair_mask(mask: Tensor) -> Tensor:
    """``[B, N]`` -> ``[B, N, N]`` bool: both atoms real and distinct."""
    m = mask.bool()
    eye = torch.eye(m.shape[1], dtype=torch.bool, device=m.device)
    return m[:, :, None] & m[:, None, :] & ~eye


def _edges_from_adjacency(adj: Tensor) -> Tensor:
    """Boolean ``adj [B, N, N]`` (``adj[b, i, j]``: ``j -> i``) -> ``edge_index [2, E]`` over
    the flattened ``B * N`` nodes, rows ``(source j, target i)``, sorted by target."""
    b, i, j = adj.nonzero(as_tuple=True)
    n = adj.shape[1]
    return torch.stack([b * n + j, b * n + i])


def fully_connected_graph(mask: Tensor) -> Tensor:
    """Every ordered pair of distinct real atoms of the same molecule.

    Args:
        mask: ``[B, N]`` (1 real atom, 0 padding; any dtype).
    Returns:
        ``edge_index [2, E]`` (long), ``E = sum_b n_b (n_b - 1)``; row 0 the source ``j``,
        row 1 the target ``i`` (flattened indices ``b * N + atom``). No self-loops, no
        padding, no cross-molecule edges.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [B, N], got {tuple(mask.shape)}")
    return _edges_from_adjacency(_pair_mask(mask))


def radius_graph(pos: Tensor, r: float, mask: Optional[Tensor] = None, *, batch: Optional[Tensor] = None) -> Tensor:
    """Pairs of distinct atoms of the same molecule at distance ``<= r`` (pure torch,
    ``torch.cdist``; a stand-in for torch-cluster's ``radius_graph``, which is not used here).

    Two layouts:

    * padded: ``pos [B, N, 3]`` with ``mask [B, N]`` (``None``: all real); indices are the
      flattened ``b * N + atom``.
    * flat (torch-geometric's): ``pos [M, 3]`` with ``batch [M]`` (the molecule of each atom;
      ``None``: one molecule); indices are rows of ``pos``.

    Returns:
        ``edge_index [2, E]`` (long), row 0 the source ``j``, row 1 the target ``i``; no
        self-loops. Computed without gradient (it is an index set).
    """
    r = float(r)
    if not r > 0:
        raise ValueError(f"radius must be > 0, got {r}")
    with torch.no_grad():
        if pos.ndim == 3:
            if batch is not None:
                raise ValueError("radius_graph: pass `batch` only with flat positions [M, 3]")
            if mask is None:
                mask = torch.ones(pos.shape[:2], device=pos.device)
            if mask.shape != pos.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match positions {tuple(pos.shape)}")
            adj = _pair_mask(mask) & (torch.cdist(pos, pos) <= r)
            return _edges_from_adjacency(adj)
        if pos.ndim == 2:
            if mask is not None:
                raise ValueError("radius_graph: pass `mask` only with padded positions [B, N, 3]")
            if batch is None:
                batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
            same = batch[:, None] == batch[None, :]
            eye = torch.eye(pos.shape[0], dtype=torch.bool, device=pos.device)
            adj = same & ~eye & (torch.cdist(pos, pos) <= r)
            i, j = adj.nonzero(as_tuple=True)
            return torch.stack([j, i])
    raise ValueError(f"positions must be [B, N, 3] or [M, 3], got {tuple(pos.shape)}")


def cosine_envelope(d: Tensor, r: float) -> Tensor:
    """``(cos(pi d / r) + 1) / 2`` for ``d < r``, 0 beyond: ``[E] -> [E]``."""
    return torch.where(d < r, 0.5 * (torch.cos(math.pi * d / r) + 1.0), torch.zeros_like(d))


def remove_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``x [B, N, 3]`` minus its mean over the real atoms, padding rows 0 (EDM's
    ``equivariant_diffusion/utils.py::remove_mean_with_mask``)."""
    m = mask.to(x.dtype)[..., None]
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    return (x - (x * m).sum(1, keepdim=True) / n) * m


# -- shared input handling ----------------------------------------------------------------------
def _check_common(name: str, cfg: Any) -> None:
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"unknown {name} prediction {cfg.prediction!r}; valid: {', '.join(PREDICTIONS)}")
    if cfg.graph not in GRAPHS:
        raise ValueError(f"unknown {name} graph {cfg.graph!r}; valid: {', '.join(GRAPHS)}")
    if not cfg.radius > 0:
        raise ValueError(f"{name} radius must be > 0, got {cfg.radius}")
    if cfg.in_features < 0 or cfg.time_embedding < 0:
        raise ValueError(f"{name} in_features and time_embedding must be >= 0")


def _make_config(cls, name: str, kwargs: dict):
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; valid: {', '.join(valid)}")
    return cls(**kwargs)


def _prepare(x: Tensor, t: Tensor, mask: Optional[Tensor], in_features: int, time_embedding: int):
    """Validate ``x [B, N, 3 + F]``, ``t`` (``[B]`` or scalar), ``mask [B, N]``; return the
    masked positions ``[B, N, 3]``, node scalars ``[B * N, F + 1 + T]`` (features, raw ``t`` as
    EDM, ``T`` sinusoidal time features) and the mask in ``x``'s dtype."""
    if x.ndim != 3 or x.shape[-1] != 3 + in_features:
        raise ValueError(f"x must have shape [B, N, 3 + {in_features}], got {tuple(x.shape)}")
    B, N, _ = x.shape
    if mask is None:
        mask = torch.ones(B, N, dtype=x.dtype, device=x.device)
    if mask.shape != (B, N):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape)} (expected [B, N] = {(B, N)})")
    mask = mask.to(x.dtype)
    t = torch.as_tensor(t, device=x.device).to(x.dtype)
    t = t.expand(B) if t.ndim == 0 else t
    if t.shape != (B,):
        raise ValueError(f"t must have shape [B] = [{B}], got {tuple(t.shape)}")
    x = x * mask[..., None]  # as EDM: whatever sits in the padding never enters
    pos = x[..., :3]
    tf = [t[:, None]]
    if time_embedding:
        tf.append(sinusoidal_embedding(t, time_embedding).to(x.dtype))
    tf = torch.cat(tf, -1)[:, None, :].expand(B, N, -1)
    scal = torch.cat([x[..., 3:], tf], -1).reshape(B * N, -1)
    return pos, scal, mask


def _graph(cfg: Any, pos: Tensor, mask: Tensor) -> Tensor:
    return fully_connected_graph(mask) if cfg.graph == "full" else radius_graph(pos, cfg.radius, mask)


def _output(cfg: Any, pos: Tensor, delta: Tensor, feats: Tensor, mask: Tensor) -> Tensor:
    """Coordinates (``delta`` for epsilon, ``pos + delta`` for x0), centred, and features,
    padding rows 0: ``[B, N, 3 + F]``."""
    coords = delta if cfg.prediction == "epsilon" else pos + delta
    coords = remove_mean(coords, mask)
    return torch.cat([coords, feats * mask[..., None]], -1)


# -- EGNN (Satorras et al. 2021, EDM's version) -------------------------------------------------
@dataclass
class EGNNConfig:
    """:class:`EGNN` options (EDM's ``main_qm9.py`` names in brackets).

    ``hidden`` [nf] and ``n_layers`` [n_layers] default to EDM's ``main_qm9.py`` defaults (128, 6;
    the paper's QM9 model: 256, 9); ``inv_sublayers`` (1), ``attention`` (True), ``tanh`` (True),
    ``norm_constant`` (1) as there; ``coords_range`` (15) per block as ``EquivariantBlock``
    receives it; ``normalization_factor`` 100 as the ``EGNN_dynamics_QM9`` / ``EGNN``
    signature (``main_qm9.py``'s command-line default is 1)."""

    in_features: int = DEFAULT_NUM_FEATURES
    hidden: int = 128
    n_layers: int = 6
    inv_sublayers: int = 1
    attention: bool = True
    tanh: bool = True
    coords_range: float = 15.0
    norm_constant: float = 1.0
    normalization_factor: float = 100.0
    time_embedding: int = 0
    graph: str = "full"
    radius: float = 5.0
    prediction: str = "epsilon"


def _mlp(d_in: int, d_hidden: int, d_out: int, *, last_act: bool) -> nn.Sequential:
    layers = [nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out)]
    if last_act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _split_first_linear(lin: nn.Linear, h: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """The first layer of an edge MLP on ``[h_i, h_j, e_ij]``, split by blocks of its weight so
    the node parts are computed once per node (``[M, H]`` each) instead of once per edge; the
    edge part is added in ``message``. Same parameters and result as the concatenation."""
    w = lin.weight
    return h @ w[:, :hidden].T + lin.bias, h @ w[:, hidden:2 * hidden].T


def _edge_part(lin: nn.Linear, e: Tensor, hidden: int) -> Tensor:
    return e @ lin.weight[:, 2 * hidden:].T


class EGNNLayer(MessagePassing):
    """One invariant message-passing layer (EDM ``egnn_new.py::GCL``).

    ``m_ij = phi_e([h_i, h_j, e_ij])`` (two SiLU layers), with ``attention`` times
    ``sigmoid(w . m_ij)``, times the envelope ``w_ij``; ``h_i <- h_i + phi_h([h_i, sum_j m_ij /
    normalization_factor])``. Shapes: ``h [M, H]``, ``edge_index [2, E]``, ``e [E, D_e]``,
    ``w [E, 1]`` -> ``[M, H]``."""

    def __init__(self, hidden: int, edge_dim: int, normalization_factor: float, attention: bool):
        super().__init__(aggr="sum")
        self.normalization_factor = float(normalization_factor)
        self.edge_mlp = _mlp(2 * hidden + edge_dim, hidden, hidden, last_act=True)
        self.node_mlp = _mlp(2 * hidden, hidden, hidden, last_act=False)
        self.att = nn.Linear(hidden, 1) if attention else None

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor, w: Tensor) -> Tensor:
        a, b = _split_first_linear(self.edge_mlp[0], h, h.shape[1])
        agg = self.propagate(edge_index, a=a, b=b, e=_edge_part(self.edge_mlp[0], e, h.shape[1]), w=w,
                             size=(h.shape[0], h.shape[0])) / self.normalization_factor
        return h + self.node_mlp(torch.cat([h, agg], -1))

    def message(self, a_i: Tensor, b_j: Tensor, e: Tensor, w: Tensor) -> Tensor:
        m = self.edge_mlp[1:](a_i + b_j + e)  # = edge_mlp([h_i, h_j, e_ij])
        if self.att is not None:
            m = m * torch.sigmoid(self.att(m))
        return m * w


class EGNNCoordUpdate(MessagePassing):
    """The equivariant position update (EDM ``egnn_new.py::EquivariantUpdate``).

    ``x_i <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + norm_constant) * c_ij / normalization_factor``
    with ``c_ij = coords_range * tanh(phi_x([h_i, h_j, e_ij]))`` (``tanh=True``; else the raw
    ``phi_x``) times the envelope; the last layer of ``phi_x`` has no bias and starts near zero
    (Xavier gain 0.001, as EDM). Shapes: ``h [M, H]``, ``x [M, 3]``, ``diff [E, 3]`` (the
    normalised differences), ``e [E, D_e]``, ``w [E, 1]`` -> ``[M, 3]``."""

    def __init__(self, hidden: int, edge_dim: int, normalization_factor: float, tanh: bool, coords_range: float):
        super().__init__(aggr="sum")
        self.normalization_factor = float(normalization_factor)
        self.tanh, self.coords_range = bool(tanh), float(coords_range)
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_dim, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden), nn.SiLU(), last)

    def forward(self, h: Tensor, x: Tensor, edge_index: Tensor, diff: Tensor, e: Tensor, w: Tensor) -> Tensor:
        a, b = _split_first_linear(self.coord_mlp[0], h, h.shape[1])
        upd = self.propagate(edge_index, a=a, b=b, diff=diff, e=_edge_part(self.coord_mlp[0], e, h.shape[1]), w=w,
                             size=(x.shape[0], x.shape[0]))
        return x + upd / self.normalization_factor

    def message(self, a_i: Tensor, b_j: Tensor, diff: Tensor, e: Tensor, w: Tensor) -> Tensor:
        c = self.coord_mlp[1:](a_i + b_j + e)  # = coord_mlp([h_i, h_j, e_ij])
        if self.tanh:
            c = torch.tanh(c) * self.coords_range
        return diff * c * w


class EGNN(nn.Module):
    """EDM's QM9 denoiser (``egnn/models.py::EGNN_dynamics_QM9`` with ``egnn_new.py::EGNN``):
    an E(n)-equivariant graph network (Satorras et al. 2021) on the fully connected (or radius)
    graph of each molecule.

    * Node input: the atom features ``x[..., 3:]`` and ``t`` (EDM concatenates the raw time; with
      ``time_embedding > 0`` that many sinusoidal features of ``t`` are appended), one linear
      embedding to ``hidden``.
    * Edge input: the squared distance of the current positions and that of the input
      positions (EDM's ``edge_attr = [radial, distances]``).
    * ``n_layers`` blocks (``EquivariantBlock``): ``inv_sublayers`` :class:`EGNNLayer` then one
      :class:`EGNNCoordUpdate`; distances and normalised difference vectors are recomputed from
      the current positions at the start of every block.
    * Read-out: a linear map of ``h`` to the ``F`` feature channels; the coordinate output is
      the total displacement (epsilon) or the final positions (x0), centred over the real atoms.

    ``forward(x [B, N, 3 + F], t [B], mask=None [B, N], cond=None) -> [B, N, 3 + F]``; ``cond``
    is accepted for the workbench's ``Denoiser`` and ignored (unconditional generation).
    Constructor: keyword options of :class:`EGNNConfig` (a ValueError names unknown ones).
    Differences from EDM: no NaN-to-zero reset of the output, no context conditioning; the
    ``x0`` parameterisation, the sinusoidal time features and the radius graph are additions.
    """

    def __init__(self, **kwargs):
        super().__init__()
        cfg = _make_config(EGNNConfig, "EGNN", kwargs)
        _check_common("EGNN", cfg)
        if cfg.hidden < 1 or cfg.n_layers < 1 or cfg.inv_sublayers < 1:
            raise ValueError("EGNN hidden, n_layers and inv_sublayers must be >= 1")
        self.cfg = cfg
        H, edge_dim = cfg.hidden, 2
        self.embedding = nn.Linear(cfg.in_features + 1 + cfg.time_embedding, H)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.n_layers):
            blk = nn.Module()
            blk.gcl = nn.ModuleList([EGNNLayer(H, edge_dim, cfg.normalization_factor, cfg.attention)
                                     for _ in range(cfg.inv_sublayers)])
            blk.update = EGNNCoordUpdate(H, edge_dim, cfg.normalization_factor, cfg.tanh, cfg.coords_range)
            self.blocks.append(blk)
        self.embedding_out = nn.Linear(H, cfg.in_features)

    @property
    def prediction(self) -> str:
        return self.cfg.prediction

    def config(self) -> dict:
        return asdict(self.cfg)

    def _edge_geometry(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """EDM's ``coord2diff``: squared distances ``[E, 1]`` and the differences ``x_i - x_j``
        divided by ``sqrt(d^2 + 1e-8) + norm_constant`` ``[E, 3]``."""
        src, dst = edge_index
        diff = x[dst] - x[src]
        d2 = (diff ** 2).sum(-1, keepdim=True)
        return d2, diff / (torch.sqrt(d2 + 1e-8) + self.cfg.norm_constant)

    def forward(self, x: Tensor, t: Tensor, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        cfg = self.cfg
        B, N, _ = x.shape if x.ndim == 3 else (0, 0, 0)
        pos, scal, mask = _prepare(x, t, mask, cfg.in_features, cfg.time_embedding)
        node_mask = mask.reshape(B * N, 1)
        edge_index = _graph(cfg, pos, mask)
        xf = pos.reshape(B * N, 3)
        d2_in, _ = self._edge_geometry(xf, edge_index)
        if cfg.graph == "radius":
            w = cosine_envelope(torch.sqrt(d2_in[:, 0] + 1e-12), cfg.radius)[:, None]
        else:
            w = torch.ones_like(d2_in)
        h = self.embedding(scal) * node_mask
        xc = xf
        for blk in self.blocks:
            d2, diff = self._edge_geometry(xc, edge_index)
            e = torch.cat([d2, d2_in], -1)
            for gcl in blk.gcl:
                h = gcl(h, edge_index, e, w) * node_mask
            xc = blk.update(h, xc, edge_index, diff, e, w) * node_mask
        feats = self.embedding_out(h).reshape(B, N, -1)
        return _output(cfg, pos, (xc - xf).reshape(B, N, 3), feats, mask)


# -- e3nn backbone (NequIP-like) ----------------------------------------------------------------
@dataclass
class E3NNConfig:
    """:class:`E3NNBackbone` options.

    ``hidden_irreps``: node irreps (must hold ``0e`` scalars and ``1o`` vectors; ``l > 0``
    irreps are gated); ``lmax``: degree of the edge spherical harmonics; ``n_basis`` Gaussian
    radial functions on ``[0, max_radius]`` Angstrom feed a radial MLP (``radial_hidden``) that
    weights each tensor-product path per edge; aggregated messages are divided by
    ``sqrt(num_neighbors)`` (NequIP's ``avg_num_neighbors``; a QM9 molecule has 18 atoms on
    average)."""

    in_features: int = DEFAULT_NUM_FEATURES
    hidden_irreps: str = "32x0e + 8x1o"
    n_layers: int = 4
    lmax: int = 2
    n_basis: int = 16
    max_radius: float = 10.0
    radial_hidden: int = 64
    num_neighbors: float = 17.0
    time_embedding: int = 0
    graph: str = "full"
    radius: float = 5.0
    prediction: str = "epsilon"


class E3NNConv(nn.Module):
    """One NequIP-like interaction block (Batzner et al. 2022, Fig. 1; e3nn
    ``o3.TensorProduct`` with ``"uvu"`` paths).

    ``h_i <- h_i + Gate(L2(sum_j TP(L1(h_j), Y(r_ij); R(|r_ij|)) / sqrt(num_neighbors)))``
    with ``Y`` the spherical harmonics (``lmax``) of ``r_ij = x_j - x_i``, ``R`` a radial MLP of
    the distance basis giving one weight per channel and path, ``L1``, ``L2`` equivariant
    linear maps (the residual connection plays the part of NequIP's self-interaction) and ``Gate`` e3nn's gated nonlinearity (SiLU on scalars, sigmoid
    gates on the ``l > 0`` irreps). Shapes: ``h [M, dim(hidden)]``, ``edge_index [2, E]``,
    ``sh [E, dim(Y)]``, ``radial [E, n_basis]`` -> ``[M, dim(hidden)]``."""

    def __init__(self, irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, n_basis: int, radial_hidden: int, num_neighbors: float):
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
                         gates, [torch.sigmoid] * len(gates), gated)
        wanted = {ir for _, ir in self.gate.irreps_in}
        mid, instructions = [], []
        for i1, (mul, ir1) in enumerate(irreps_hidden):
            for i2, (_, ir2) in enumerate(irreps_sh):
                for ir_out in ir1 * ir2:
                    if ir_out in wanted:
                        instructions.append((i1, i2, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i1, i2, perm[k], mode, train) for i1, i2, k, mode, train in instructions]
        self.lin1 = o3.Linear(irreps_hidden, irreps_hidden)
        self.tp = o3.TensorProduct(irreps_hidden, irreps_sh, irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.lin2 = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.norm = 1.0 / math.sqrt(float(num_neighbors))

    def forward(self, h: Tensor, edge_index: Tensor, sh: Tensor, radial: Tensor) -> Tensor:
        src, dst = edge_index
        msg = self.tp(self.lin1(h)[src], sh, self.radial(radial))
        agg = torch.zeros(h.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device).index_add_(0, dst, msg)
        return h + self.gate(self.lin2(agg * self.norm))


class E3NNBackbone(nn.Module):
    """An e3nn tensor-product denoiser with EDM's interface (see the module docstring).

    * Node input: atom features, raw ``t`` (and ``time_embedding`` sinusoidal time features) as
      scalars ``(F + 1 + T)x0e``, one equivariant linear map to ``hidden_irreps`` (the vector
      channels start at zero).
    * Edges: spherical harmonics ``Y^{0..lmax}`` of ``r_ij = x_j - x_i`` (normalised,
      ``component`` normalisation) and a Gaussian basis of ``|r_ij|`` (times the cosine
      envelope with ``graph="radius"``); positions are not updated between layers.
    * ``n_layers`` :class:`E3NNConv` blocks with residual connections.
    * Read-out: one equivariant linear map to ``Fx0e + 1x1o``: the scalars are the feature
      output, the parity-odd vector the displacement (epsilon) or ``x_t`` plus it (x0),
      centred over the real atoms.

    ``forward(x [B, N, 3 + F], t [B], mask=None [B, N], cond=None) -> [B, N, 3 + F]``; ``cond``
    ignored. Constructor: keyword options of :class:`E3NNConfig`.

    Precision: e3nn computes its constants (Clebsch-Gordan coefficients, spherical-harmonic
    factors) in the default dtype when the network is built, so for float64 work build it under
    ``torch.set_default_dtype(torch.float64)``; ``.double()`` on a float32-built network is
    equivariant only to float32 accuracy (~1e-7 relative).
    """

    def __init__(self, **kwargs):
        super().__init__()
        cfg = _make_config(E3NNConfig, "E3NNBackbone", kwargs)
        _check_common("E3NNBackbone", cfg)
        try:
            hidden = o3.Irreps(cfg.hidden_irreps).sort().irreps.simplify()
        except (ValueError, AssertionError) as err:
            raise ValueError(f"E3NNBackbone hidden_irreps {cfg.hidden_irreps!r} is not an irreps string: {err}") from None
        if o3.Irrep("0e") not in hidden or o3.Irrep("1o") not in hidden:
            raise ValueError(f"E3NNBackbone hidden_irreps must contain 0e and 1o, got {str(hidden)!r}")
        if cfg.n_layers < 1 or cfg.lmax < 1 or cfg.n_basis < 2 or cfg.radial_hidden < 1 or not cfg.max_radius > 0:
            raise ValueError("E3NNBackbone needs n_layers >= 1, lmax >= 1, n_basis >= 2, radial_hidden >= 1, max_radius > 0")
        self.cfg = cfg
        self.irreps_hidden = hidden
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.lmax)
        irreps_in = o3.Irreps(f"{cfg.in_features + 1 + cfg.time_embedding}x0e")
        self.embedding = o3.Linear(irreps_in, hidden, biases=True)
        self.layers = nn.ModuleList([E3NNConv(hidden, self.irreps_sh, cfg.n_basis, cfg.radial_hidden, cfg.num_neighbors)
                                     for _ in range(cfg.n_layers)])
        out = o3.Irreps(f"{cfg.in_features}x0e + 1x1o") if cfg.in_features else o3.Irreps("1x1o")
        self.readout = o3.Linear(hidden, out, biases=True)

    @property
    def prediction(self) -> str:
        return self.cfg.prediction

    def config(self) -> dict:
        return asdict(self.cfg)

    def forward(self, x: Tensor, t: Tensor, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        cfg = self.cfg
        B, N, _ = x.shape if x.ndim == 3 else (0, 0, 0)
        pos, scal, mask = _prepare(x, t, mask, cfg.in_features, cfg.time_embedding)
        edge_index = _graph(cfg, pos, mask)
        xf = pos.reshape(B * N, 3)
        src, dst = edge_index
        vec = xf[src] - xf[dst]
        d = vec.norm(dim=-1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        radial = soft_one_hot_linspace(d, 0.0, cfg.max_radius, cfg.n_basis, basis="gaussian", cutoff=False)
        radial = radial * math.sqrt(cfg.n_basis)
        if cfg.graph == "radius":
            radial = radial * cosine_envelope(d, cfg.radius)[:, None]
        h = self.embedding(scal)
        for layer in self.layers:
            h = layer(h, edge_index, sh, radial)
        out = self.readout(h).reshape(B, N, -1)
        F = cfg.in_features
        return _output(cfg, pos, out[..., F:F + 3], out[..., :F], mask)


# -- registry -----------------------------------------------------------------------------------
BACKBONES = {"egnn": EGNN, "e3nn": E3NNBackbone}


def build_backbone(name: str, **config) -> nn.Module:
    """``BACKBONES[name](**config)``; an unknown name gives a one-line ValueError naming the
    valid choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown molecules backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name](**config)
