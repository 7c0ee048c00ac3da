"""The teacher's training objective: conditional flow matching on CA coordinates with
self-conditioning (Geffner et al. 2025, "Proteina", Sec. 3.1-3.2 and App. of training
details; self-conditioning after Chen et al. 2023, "Analog Bits", Sec. 3.2).

Time convention of this codebase: ``t = 0`` data, ``t = 1`` noise, ``x_t = (1 - t) x0 + t
eps`` (:class:`~workbench.processes.RectifiedFlow`, zero centre of mass); the flow velocity is
``v = eps - x0``. Proteina's time runs the other way (``tau = 1 - t``, data at ``tau = 1``).

Loss (per sample, mean over real residues and the 3 coordinates)::

    loss_space="velocity":  || v_hat - v ||^2          (Proteina's flow-matching loss: for an
                                                        x0 network ||x0_hat - x0||^2 / t^2, eq. 3
                                                        with the 1/(1-tau)^2 weight of their code;
                                                        t is clamped at ``t_clip``)
    loss_space="x0":        || x0_hat - x0 ||^2

Times (``time_sampler``): ``"proteina"`` draws ``tau ~ 0.02 U(0, 1) + 0.98 Beta(1.9, 1.0)``
(Proteina, App. training details), i.e. ``t = 1 - tau`` (more mass near the data end);
``"uniform"`` draws ``t ~ U(t_eps, 1)``; ``"logit_normal"`` ``t = sigmoid(N(0, 1))``.

Auxiliary local-distance loss (``local_distance_weight`` > 0; default 0, off): FrameDiff's
pairwise-distance loss (Yim et al. 2023, "SE(3) diffusion model with application to protein
backbone generation", Sec. 4.2, the ``L_2D`` term) on CA atoms::

    L_2D = sum_{i != j} 1[d_ij < c] (d_ij - d_hat_ij)^2 / sum_{i != j} 1[d_ij < c]

with ``d`` the true and ``d_hat`` the predicted (x0-estimate) CA-CA distances (nm), ``c =
local_distance_cutoff`` (0.6 nm, FrameDiff's 6 A), applied only for ``t < local_distance_t_max``
(FrameDiff: 0.25) and added as ``local_distance_weight * L_2D``. Deviation from FrameDiff
(named here, an option of this objective, not a method under FrameDiff's name): the term is
scaled by ``1 / max(t, t_clip)^2`` like the velocity loss (``||x0_hat - x0||^2 / t^2``), so the
two stay commensurate at every time; FrameDiff's ``L_bb`` backbone-atom term has no CA-only
counterpart here. Within 6 A the term covers the CA-CA bonds and the i, i+2 / i+3 / i+4
distances of helices and strands: the local geometry the samples get wrong most.

Self-conditioning: with probability ``p_self_cond`` per batch the network first runs with no
self-conditioning input (no gradient) and its x0 estimate is fed back as ``cond["x_sc"]``
for the graded pass; otherwise ``x_sc = 0``. Sampling feeds the previous evaluation's x0
estimate through :class:`~domains.protein_backbone.nets.SelfCondState` (the backbone's
``prepare_cond`` hook).
"""
from __future__ import annotations

import torch
from torch import Tensor

from workbench.losses import Batch, masked_mean
from workbench.processes import GaussianProcess, append_dims
from workbench.utils import Generator, first_generator, randn

TIME_SAMPLERS = ("proteina", "uniform", "logit_normal")
LOSS_SPACES = ("velocity", "x0")


def sample_times(n: int, kind: str, generator: Generator = None, *, t_eps: float = 1e-3) -> Tensor:
    """``[n]`` float64 training times in ``[t_eps, 1]`` (``t = 0`` data); see the module docstring."""
    g = first_generator(generator)
    if kind == "uniform":
        u = torch.rand(n, generator=g, dtype=torch.float64)
        return t_eps + (1 - t_eps) * u
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64)).clamp(t_eps, 1.0)
    if kind == "proteina":
        # Beta(1.9, 1) by inverse CDF: F(x) = x^1.9 -> x = u^(1 / 1.9); mixed with 2% uniform
        u = torch.rand(n, generator=g, dtype=torch.float64)
        pick = torch.rand(n, generator=g, dtype=torch.float64) < 0.02
        uni = torch.rand(n, generator=g, dtype=torch.float64)
        tau = torch.where(pick, uni, u ** (1.0 / 1.9))
        return (1.0 - tau).clamp(t_eps, 1.0)
    raise ValueError(f"unknown time sampler {kind!r}; valid: {', '.join(TIME_SAMPLERS)}")


class SelfCondFlowLoss:
    """Flow matching with self-conditioning (see the module docstring).

    Args:
        process: the :class:`~workbench.processes.RectifiedFlow` (zero CoM) of the domain.
        prediction: the network's output, ``"x0"`` or ``"velocity"`` (the ``Denoiser``'s).
        loss_space: ``"velocity"`` (Proteina) or ``"x0"``.
        time_sampler: one of :data:`TIME_SAMPLERS`.
        p_self_cond: probability of a self-conditioned pass per batch (0 disables it).
        t_clip: lower clamp of ``t`` in the velocity-space weight ``1 / t^2`` of an x0 network
            (and of the local-distance term).
        local_distance_weight, local_distance_cutoff, local_distance_t_max: the auxiliary
            local-distance loss (module docstring; weight 0 disables it).
    ``__call__(nets, batch, generator) -> [B]``.
    """

    def __init__(self, process: GaussianProcess, prediction: str = "x0", *, loss_space: str = "velocity",
                 time_sampler: str = "proteina", p_self_cond: float = 0.5, t_clip: float = 0.05, t_eps: float = 1e-3,
                 local_distance_weight: float = 0.0, local_distance_cutoff: float = 0.6, local_distance_t_max: float = 0.25):
        if prediction not in ("x0", "velocity"):
            raise ValueError(f"unknown prediction {prediction!r}; valid: x0, velocity")
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"unknown loss_space {loss_space!r}; valid: {', '.join(LOSS_SPACES)}")
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if not 0.0 <= float(p_self_cond) <= 1.0:
            raise ValueError(f"p_self_cond must be in [0, 1], got {p_self_cond}")
        if float(local_distance_weight) < 0 or float(local_distance_cutoff) <= 0:
            raise ValueError("local_distance_weight must be >= 0 and local_distance_cutoff > 0")
        self.local_distance_weight = float(local_distance_weight)
        self.local_distance_cutoff = float(local_distance_cutoff)
        self.local_distance_t_max = float(local_distance_t_max)
        self.process = process
        self.prediction = prediction
        self.loss_space = loss_space
        self.time_sampler = time_sampler
        self.p_self_cond = float(p_self_cond)
        self.t_clip = float(t_clip)
        self.t_eps = float(t_eps)

    def x0_of(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
        return self.process.convert(out, prediction, "x0", x_t, t)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        net = nets["model"] if isinstance(nets, (dict, torch.nn.ModuleDict)) else nets
        p, x0, mask = self.process, batch.x, batch.mask
        B = x0.shape[0]
        t = sample_times(B, self.time_sampler, generator, t_eps=self.t_eps).to(x0.device)
        eps = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
        x_t = p.add_noise(x0, t, eps, mask)
        tf = t.to(x0.dtype)
        cond = dict(batch.cond) if isinstance(batch.cond, dict) else {}
        pred = getattr(net, "prediction", self.prediction)
        use_sc = self.p_self_cond > 0 and bool(torch.rand((), generator=first_generator(generator), dtype=torch.float64) < self.p_self_cond)
        if use_sc:
            with torch.no_grad():
                first = net(x_t, tf, mask=mask, cond=cond)
                cond["x_sc"] = self.x0_of(first, x_t, t, pred).detach()
        out = net(x_t, tf, mask=mask, cond=cond)
        loss = self.main_loss(out, x0, x_t, eps, t, mask, pred)
        if self.local_distance_weight > 0:
            loss = loss + self.local_distance_weight * self.local_distance_loss(self.x0_of(out, x_t, t, pred), x0, t, mask)
        return loss

    def main_loss(self, out: Tensor, x0: Tensor, x_t: Tensor, eps: Tensor, t: Tensor, mask: Tensor, pred: str) -> Tensor:
        """The flow-matching term ``[B]`` (module docstring)."""
        if self.loss_space == "x0":
            return masked_mean((self.x0_of(out, x_t, t, pred) - x0) ** 2, mask)
        v = eps - x0
        if pred == "velocity":
            return masked_mean((out - v) ** 2, mask)
        # x0 network: v_hat - v = (x0 - x0_hat) / t  (x_t = (1 - t) x0 + t eps)
        w = 1.0 / t.clamp_min(self.t_clip) ** 2
        return append_dims(w.to(x0.dtype), 1) * masked_mean((out - x0) ** 2, mask)

    def local_distance_loss(self, x0_hat: Tensor, x0: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        """FrameDiff's ``L_2D`` on CA atoms, gated to ``t < local_distance_t_max`` and scaled by
        ``1 / max(t, t_clip)^2`` (module docstring). ``x0_hat, x0 [B, N, 3]``, ``t [B]``,
        ``mask [B, N]`` -> ``[B]``."""
        d = torch.cdist(x0, x0)
        d_hat = torch.cdist(x0_hat, x0_hat)
        m = mask.to(x0.dtype)
        eye = torch.eye(x0.shape[1], dtype=x0.dtype, device=x0.device)
        pair = m[:, :, None] * m[:, None, :] * (1.0 - eye) * (d < self.local_distance_cutoff).to(x0.dtype)
        l2d = ((d_hat - d) ** 2 * pair).flatten(1).sum(1) / pair.flatten(1).sum(1).clamp_min(1.0)
        w = (t < self.local_distance_t_max).to(x0.dtype) / t.clamp_min(self.t_clip).to(x0.dtype) ** 2
        return w * l2d

    def __repr__(self) -> str:
        return (f"SelfCondFlowLoss(prediction={self.prediction!r}, loss_space={self.loss_space!r}, "
                f"time_sampler={self.time_sampler!r}, p_self_cond={self.p_self_cond}, t_clip={self.t_clip}, "
                f"local_distance_weight={self.local_distance_weight})")
