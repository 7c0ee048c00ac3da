"""SplitMeanFlow (Guo et al. 2025, "SplitMeanFlow: Interval Splitting Consistency in Few-Step
Generative Modeling") on any Gaussian process, through the linear view of the process (see
:mod:`workbench.distill.meanflow`).

The average velocity ``u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds`` is additive over
intervals: for ``r <= s <= t`` (eq. 8-11, "interval splitting consistency")

    (t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t),
    z_s = z_t - (t - s) u(z_t, s, t),

with the boundary condition ``u(z_t, t, t) = v(z_t, t)``. With ``s = (1 - lam) t + lam r``
the right-hand side divided by ``t - r`` is ``(1 - lam) u(z_s, r, s) + lam u(z_t, s, t)``.
The objective (Algorithm 1) regresses ``u_theta(z_t, r, t)`` on that combination computed
with the same network under stop-gradient (both evaluations ``u(z_t, s, t)``,
``u(z_s, r, s)`` and the state ``z_s``), and a fraction of each batch on the boundary
condition (flow matching on ``v``: the teacher's velocity in distillation, ``eps - x0``
from data). No Jacobian-vector product: three forward passes, one backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims
from ..utils import Generator, first_generator, model_kwargs
from .meanflow import AverageVelocityOptions, _LinearViewObjective, _nets, sample_linear_times, two_time_setup, two_time_spec
from .api import DistillSetup, RecipeContext, register_method

__all__ = ["SplitMeanFlow"]


class SplitMeanFlow(_LinearViewObjective):
    """SplitMeanFlow objective ``(nets, batch, generator) -> loss [B]`` (Guo et al. 2025,
    Algorithm 1) in the linear view of ``process``.

    ``nets["student"]``: ``u(z [B, ...], r [B], t [B], mask=None, cond=None) -> [B, ...]``
    with linear-view times; optional ``nets["teacher"]``: a denoiser of ``process``.

    One sample: linear-view times ``r <= t`` (:func:`~workbench.distill.meanflow.sample_linear_times`),
    ``lam ~ U(0, 1)``, ``s = (1 - lam) t + lam r``, ``z_t = (1 - t) x0 + t eps``;

    * with probability ``boundary_ratio``: ``r = t`` and the target is ``v`` (boundary
      condition ``u(z_t, t, t) = v``);
    * otherwise the target is ``stopgrad((1 - lam) u(z_s, r, s) + lam u(z_t, s, t))`` with
      ``z_s = z_t - (t - s) u(z_t, s, t)`` (interval splitting consistency);

    loss ``|| u_theta(z_t, r, t) - target ||^2`` per sample (mean over real elements).

    Args:
        process: any Gaussian process.
        boundary_ratio: fraction of samples trained on the boundary condition (Guo et al. train
            part of each batch with plain flow matching; 0.75 as MeanFlow's 75 % ``r = t``.
            Measured on the toy GMM with the exact teacher, 2000 steps, SW at 1 / 2 / 4 steps,
            mean of 2 seeds: 0.75 -> 0.054 / 0.051 / 0.049, 0.5 -> 0.056 / 0.054 / 0.049;
            one seed, 0.25 -> 0.058 / 0.059 / 0.057).
        time_sampler, logit_mean, logit_std: the distribution of the two draws behind ``(r, t)``.
        adaptive_p, adaptive_c: optional adaptive weight ``1 / (err + c)^p`` (stop-gradient),
            as in MeanFlow; ``0`` (default) is the plain squared error of Algorithm 1.
        source: ``auto`` (the teacher when ``nets`` has one), ``teacher`` or ``data``: where
            the boundary velocity ``v`` comes from.
    """

    def __init__(self, process: GaussianProcess, *, boundary_ratio: float = 0.75, time_sampler: str = "uniform",
                 logit_mean: float = -0.4, logit_std: float = 1.0, adaptive_p: float = 0.0, adaptive_c: float = 1e-3,
                 teacher_prediction: Optional[str] = None, source: str = "auto"):
        if not 0.0 <= boundary_ratio <= 1.0:
            raise ValueError(f"boundary_ratio must lie in [0, 1], got {boundary_ratio}")
        super().__init__(process, time_sampler=time_sampler, logit_mean=logit_mean, logit_std=logit_std, adaptive_p=adaptive_p,
                         adaptive_c=adaptive_c, source=source, teacher_prediction=teacher_prediction)
        self.boundary_ratio = float(boundary_ratio)

    def sample_times(self, B: int, generator: Generator = None, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """``(r, s, t)`` ``[B]`` float64 linear-view times, ``r <= s <= t``; ``r = s = t`` on the
        boundary rows."""
        g = first_generator(generator)
        r, t = sample_linear_times(B, self.process, time_sampler=self.time_sampler, logit_mean=self.logit_mean,
                                   logit_std=self.logit_std, ratio_r_neq_t=1.0 - self.boundary_ratio, generator=g)
        lam = torch.rand(B, generator=g, device=g.device if g is not None else None, dtype=torch.float64)
        s = torch.minimum(torch.maximum((1 - lam) * t + lam * r, r), t)  # r <= s <= t also after round-off
        return r.to(device), s.to(device), t.to(device)

    @torch.no_grad()
    def split_target(self, student, z: Tensor, r: Tensor, s: Tensor, t: Tensor, *, mask=None, cond=None) -> Tensor:
        """``((s - r) u(z_s, r, s) + (t - s) u(z_t, s, t)) / (t - r)`` ``[B, ...]`` with
        ``z_s = z_t - (t - s) u(z_t, s, t)``, no gradient (rows with ``t = r`` give
        ``u(z_t, t, t)``). ``r, s, t`` ``[B]`` in ``z.dtype``."""
        kw, p = model_kwargs(mask, cond), self.process
        u2 = p.project(student(z, s, t, **kw), mask)
        z_s = p.project(z - append_dims(t - s, z.ndim) * u2, mask)
        u1 = p.project(student(z_s, r, s, **kw), mask)
        span = t - r
        lam = torch.where(span > 0, (t - s) / span.clamp_min(1e-12), torch.ones_like(span))
        lam = append_dims(lam, z.ndim)
        return (1 - lam) * u1 + lam * u2

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        student, teacher = _nets(nets)
        teacher = self._teacher(teacher)
        x0, mask, cond, p = batch.x, batch.mask, batch.cond, self.process
        r, s, t = self.sample_times(x0.shape[0], generator, x0.device)
        z, eps = self._state(batch, t, generator)
        boundary = r >= t
        rr, ss, tt = r.to(x0.dtype), s.to(x0.dtype), t.to(x0.dtype)
        target = torch.zeros_like(x0)
        if bool(boundary.any()):
            target = torch.where(append_dims(boundary, x0.ndim), self._velocity(teacher, batch, z, t, eps), target)
        if not bool(boundary.all()):
            split = self.split_target(student, z, rr, ss, tt, mask=mask, cond=cond)
            target = torch.where(append_dims(boundary, x0.ndim), target, split)
        u = p.project(student(z, rr, tt, **model_kwargs(mask, cond)), mask)
        return self._reduce(masked_mean((u - target.detach()) ** 2, mask))

    def __repr__(self) -> str:
        return (f"SplitMeanFlow(boundary_ratio={self.boundary_ratio}, time_sampler={self.time_sampler!r}, adaptive_p={self.adaptive_p}, "
                f"source={self.source!r})")


@dataclass
class SplitMeanFlowOptions(AverageVelocityOptions):
    """Options of method ``splitmeanflow`` (``distill.KEY=VALUE``, documented in :func:`splitmeanflow_recipe`)."""

    boundary_ratio: float = 0.75


@register_method("splitmeanflow", options=SplitMeanFlowOptions, kind="meanflow", requires=("build_two_time_backbone",), paper="Guo et al. 2025, SplitMeanFlow: Interval Splitting Consistency",
                 description="average-velocity student u(z, r, t) trained with interval splitting consistency (no JVP), "
                             "boundary condition from the teacher or data")
def splitmeanflow_recipe(ctx: RecipeContext, opts: SplitMeanFlowOptions) -> DistillSetup:
    """SplitMeanFlow on the domain's process (linear view): ``source="teacher"`` takes the
    boundary velocity from the teacher (distillation), ``"data"`` from the data. The student
    is ``domain.build_two_time_backbone(**backbone)`` with the ``TwoTimeDenoiser``
    options ``student_prediction`` / ``time_scale`` / ``gap_scale``
    (:func:`~workbench.distill.meanflow.two_time_spec`), initialised from the teacher's
    matching tensors (``init="teacher"``), exported as a ``meanflow`` generator."""
    obj = SplitMeanFlow(ctx.process, boundary_ratio=opts.boundary_ratio, time_sampler=opts.time_sampler, logit_mean=opts.logit_mean,
                        logit_std=opts.logit_std, adaptive_p=opts.adaptive_p, adaptive_c=opts.adaptive_c, source=opts.source)
    sspec = two_time_spec(ctx, backbone=opts.backbone, student_prediction=opts.student_prediction, time_scale=opts.time_scale, gap_scale=opts.gap_scale)
    return two_time_setup(ctx, obj, sspec, init=opts.init, use_teacher=opts.source == "teacher")
