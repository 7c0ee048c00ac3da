"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling").

On the linear interpolant ``z_t = (1 - t) x0 + t eps`` (:class:`~workbench.processes.RectifiedFlow`,
``t = 0`` data, ``t = 1`` noise) with instantaneous velocity ``v = dz_t/dt = eps - x0``, the
*average velocity* over ``[r, t]`` is ``u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds``, so
one step ``z_r = z_t - (t - r) u(z_t, r, t)`` is exact. Differentiating
``(t - r) u = int_r^t v`` in ``t`` gives the MeanFlow identity (eq. 6)

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
    d/dt u = v . grad_z u + partial_t u   (a JVP along the tangent (v, 0, 1)),

and the loss ``|| u_theta - stopgrad(v - (t - r) d/dt u_theta) ||^2`` (eq. 9). ``v`` is the
conditional velocity ``eps - x0`` (training from data) or a teacher's velocity
(distillation), when ``nets`` holds a ``"teacher"``.
"""
from __future__ import annotations


from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..model import sinusoidal_embedding
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, model_kwargs, randn

__all__ = ["MeanFlow", "TwoTimeMLP", "meanflow_generate"]

TIME_SAMPLERS = ("uniform", "logit_normal")


def _check_linear(process: GaussianProcess) -> None:
    t = torch.tensor([0.1, 0.37, 0.8], dtype=torch.float64)
    a, s = process.alpha(t), process.sigma(t)
    if not (torch.allclose(a, 1 - t, atol=1e-9) and torch.allclose(s, t, atol=1e-9)):
        raise ValueError(f"MeanFlow needs the linear interpolant x_t = (1 - t) x0 + t eps (RectifiedFlow), got {process!r}")


def _call(net, z: Tensor, r: Tensor, t: Tensor, mask, cond) -> Tensor:
    kw = model_kwargs(mask, cond)
    return net(z, r, t, **kw)


class TwoTimeMLP(nn.Module):
    """A small MLP average-velocity net for flat states: ``forward(z [B, D], r [B], t [B],
    mask=None, cond=None) -> u [B, D]``; times enter as sinusoidal embeddings of ``t`` and
    ``t - r`` (Geng et al. 2025 condition on ``(t, t - r)``)."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, freq_dim: int = 32):
        super().__init__()
        self.dim, self.freq_dim = dim, freq_dim
        layers: list[nn.Module] = [nn.Linear(dim + 2 * freq_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        e = torch.cat([sinusoidal_embedding(100.0 * t, self.freq_dim), sinusoidal_embedding(100.0 * (t - r), self.freq_dim)], dim=-1)
        return self.net(torch.cat([z.flatten(1), e.to(z.dtype)], dim=-1)).reshape(z.shape)


class MeanFlow:
    """MeanFlow objective ``(nets, batch, generator) -> loss [B]``.

    ``nets["student"]``: ``u(z [B, ...], r [B], t [B], mask=None, cond=None) -> [B, ...]``
    (e.g. :class:`TwoTimeMLP`); optional ``nets["teacher"]``: a velocity field
    ``teacher(z, t, mask=, cond=)`` in the parameterization ``teacher_prediction`` (default
    ``teacher.prediction``), converted to the velocity.

    Time sampling: two draws from ``time_sampler`` sorted to ``r <= t``; a fraction
    ``1 - ratio_r_neq_t`` of the pairs gets ``r = t`` (plain flow matching; Geng et al. use
    25 % with ``r != t``).

    Args:
        process: the linear interpolant (checked).
        ratio_r_neq_t: fraction of samples with ``r != t``.
        time_sampler: ``"uniform"`` or ``"logit_normal"`` (``sigmoid(N(mu, s^2))``).
        adaptive_p: adaptive loss weight ``1 / (||Delta||^2 + c)^p`` in stop-gradient
            (Geng et al. Sec. 4.3); ``0`` is the plain squared error.
    """

    def __init__(self, process: GaussianProcess, *, ratio_r_neq_t: float = 0.25, time_sampler: str = "uniform",
                 logit_mean: float = -0.4, logit_std: float = 1.0, adaptive_p: float = 0.0, adaptive_c: float = 1e-3,
                 teacher_prediction: Optional[str] = None):
        _check_linear(process)
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if not 0.0 <= ratio_r_neq_t <= 1.0:
            raise ValueError("ratio_r_neq_t must lie in [0, 1]")
        self.process = process
        self.ratio_r_neq_t = float(ratio_r_neq_t)
        self.time_sampler = time_sampler
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.adaptive_p, self.adaptive_c = float(adaptive_p), float(adaptive_c)
        self.teacher_prediction = None if teacher_prediction is None else canonical_prediction(teacher_prediction)

    def sample_times(self, B: int, generator: Generator = None, device=None) -> tuple[Tensor, Tensor]:
        """``(r, t)`` ``[B]`` float64 with ``0 <= r <= t <= 1``."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        gd = g.device if g is not None else None
        if self.time_sampler == "uniform":
            a = torch.rand(2, B, generator=g, device=gd, dtype=torch.float64)
        else:
            a = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(2, B, generator=g, device=gd, dtype=torch.float64))
        t, r = a.max(0).values, a.min(0).values
        keep = torch.rand(B, generator=g, device=gd, dtype=torch.float64) < self.ratio_r_neq_t
        r = torch.where(keep, r, t)
        return r.to(device), t.to(device)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        student = nets["student"] if isinstance(nets, (dict, nn.ModuleDict)) else nets
        teacher = nets.get("teacher") if isinstance(nets, (dict, nn.ModuleDict)) else None
        x0, mask, cond = batch.x, batch.mask, batch.cond
        p = self.process
        B = x0.shape[0]
        r, t = self.sample_times(B, generator, x0.device)
        eps = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
        te = append_dims(t.to(x0.dtype), x0.ndim)
        z = p.project((1 - te) * x0 + te * eps, mask)
        if teacher is None:
            v = p.project(eps - x0, mask)
        else:
            with torch.no_grad():
                kw = model_kwargs(mask, cond)
                out = teacher(z, t.to(x0.dtype), **kw)
                tp = self.teacher_prediction or canonical_prediction(getattr(teacher, "prediction", "velocity"))
                v = p.project(p.convert(out, tp, "velocity", z, t).to(x0.dtype), mask)
        rr, tt = r.to(x0.dtype), t.to(x0.dtype)

        def fn(z_, r_, t_):
            return _call(student, z_, r_, t_, mask, cond)

        u, dudt = torch.func.jvp(fn, (z, rr, tt), (v, torch.zeros_like(rr), torch.ones_like(tt)))
        u_tgt = (v - append_dims(tt - rr, x0.ndim) * dudt).detach()
        err = masked_mean((p.project(u, mask) - p.project(u_tgt, mask)) ** 2, mask)
        if self.adaptive_p:
            err = err / (err.detach() + self.adaptive_c) ** self.adaptive_p
        return err

    def __repr__(self) -> str:
        return f"MeanFlow(ratio_r_neq_t={self.ratio_r_neq_t}, time_sampler={self.time_sampler!r}, adaptive_p={self.adaptive_p})"


def meanflow_generate(student, x_T: Tensor, steps: int = 1, *, timesteps=None, process: Optional[GaussianProcess] = None,
                      mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
    """Few-step MeanFlow sampling: ``z_r = z_t - (t - r) u(z_t, r, t)`` along ``timesteps``
    (default ``linspace(1, 0, steps + 1)``; ``steps`` network evaluations).

    Args:
        student: ``u(z, r, t, mask=, cond=)``.
        x_T: ``[B, ...]`` noise at ``timesteps[0]``.
        process: if given, every state is projected with ``process.project(x, mask)``.
    Returns:
        ``[B, ...]`` the sample at ``timesteps[-1]``.
    """
    ts = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64) if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing with at least 2 points")
    proj = (lambda x: process.project(x, mask)) if process is not None else (lambda x: x)
    z = proj(x_T)
    B = z.shape[0]
    for k in range(len(ts) - 1):
        t = torch.full((B,), float(ts[k]), device=z.device, dtype=z.dtype)
        r = torch.full((B,), float(ts[k + 1]), device=z.device, dtype=z.dtype)
        u = _call(student, z, r, t, mask, cond)
        z = proj(z - (float(ts[k]) - float(ts[k + 1])) * u)
    return z
