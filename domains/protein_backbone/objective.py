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
        t_clip: lower clamp of ``t`` in the velocity-space weight ``1 / t^2`` of an x0 network.
    ``__call__(nets, batch, generator) -> [B]``.
    """

    def __init__(self, process: GaussianProcess, prediction: str = "x0", *, loss_space: str = "velocity",
                 time_sampler: str = "proteina", p_self_cond: float = 0.5, t_clip: float = 0.05, t_eps: float = 1e-3):
        if prediction not in ("x0", "velocity"):
            raise ValueError(f"unknown prediction {prediction!r}; valid: x0, velocity")
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"unknown loss_space {loss_space!r}; valid: {', '.join(LOSS_SPACES)}")
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if not 0.0 <= float(p_self_cond) <= 1.0:
            raise ValueError(f"p_self_cond must be in [0, 1], got {p_self_cond}")
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
        if self.loss_space == "x0":
            return masked_mean((self.x0_of(out, x_t, t, pred) - x0) ** 2, mask)
        v = eps - x0
        if pred == "velocity":
            return masked_mean((out - v) ** 2, mask)
        # x0 network: v_hat - v = (x0 - x0_hat) / t  (x_t = (1 - t) x0 + t eps)
        w = 1.0 / t.clamp_min(self.t_clip) ** 2
        return append_dims(w.to(x0.dtype), 1) * masked_mean((out - x0) ** 2, mask)

    def __repr__(self) -> str:
        return (f"SelfCondFlowLoss(prediction={self.prediction!r}, loss_space={self.loss_space!r}, "
                f"time_sampler={self.time_sampler!r}, p_self_cond={self.p_self_cond}, t_clip={self.t_clip})")
