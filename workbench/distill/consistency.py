"""Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2), with
LCM-style skipping (Luo et al. 2023, "Latent Consistency Models", Sec. 4.3: the teacher
ODE step spans ``k`` grid intervals) and multi-segment / phased targets (Wang et al. 2024,
"Phased Consistency Models"; Ding et al. 2025, "Efficient-vDiT": the time axis is split into
segments and the consistency function of a segment maps onto the segment's lower end).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs, randn
from .base import PARAMETERIZATIONS, consistency_output, student_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["ConsistencyDistillation"]

SOLVERS = ("ddim",)
LOSSES = ("l2", "pseudo_huber")


class ConsistencyDistillation:
    """Consistency distillation objective ``(nets, batch, generator) -> loss [B]``.

    Grid: ``t_i = t_max * i / num_scales``, ``i = 0..num_scales`` (``t_max`` default
    ``process.t_max_finite``); it is split into ``segments`` equal segments (``num_scales``
    must be a multiple of ``segments``) with edges ``t_{j num_scales / segments}``.

    One training sample: draw ``m`` uniformly in ``{1..num_scales}``; with ``lo`` the index of
    the lower edge of ``m``'s segment, ``n = max(m - skip, lo)``. Then

    * ``x_{t_m} = alpha_m x0 + sigma_m eps`` from the data ``x0`` (``batch.x``);
    * one teacher ODE step (DDIM, i.e. the first-order exponential integrator, in
      ``no_grad``) from ``t_m`` to ``t_n``: ``x^_{t_n} = alpha_n x0_T + sigma_n eps_T`` with
      the teacher's ``(x0_T, eps_T)`` at ``(x_{t_m}, t_m)``;
    * loss ``d(f_student(x_{t_m}, t_m), stopgrad f_target(x^_{t_n}, t_n))`` where ``f``
      maps onto the segment's lower edge (:func:`~workbench.distill.base.consistency_output`;
      ``f(x, t_lo) = x``, so at ``n = lo`` the target is ``x^_{t_lo}`` itself) and ``d`` is
      the squared error (``l2``) or the pseudo-Huber metric (``pseudo_huber``, Song & Dhariwal
      2023, ``c = 0.00054 sqrt(d)``), averaged over real elements (mask).

    ``nets``: ``{"student", "teacher"}`` and optionally ``"target"`` (an EMA copy of the
    student, updated with :meth:`update_target`; without it the student itself in
    ``no_grad`` is the target, as in improved consistency training).

    Args:
        process: the Gaussian process of teacher and student.
        teacher_prediction: the teacher's parameterization (``None``: ``teacher.prediction``).
        segments: number of segments (1 = plain consistency distillation).
        skip: LCM skipping interval ``k`` (grid intervals per teacher step).
        num_scales: number of grid intervals ``N``.
        solver: teacher ODE solver; ``"ddim"``.
        loss: ``"l2"`` or ``"pseudo_huber"``.
        parameterization: ``"x0"`` or ``"edm"`` (Song et al. eq. 7 with ``sigma_data``).
        t_max: top of the grid (default ``process.t_max_finite``).
    """

    def __init__(self, process: GaussianProcess, teacher_prediction: Optional[str] = None, *, segments: int = 1, skip: int = 1,
                 num_scales: int = 50, solver: str = "ddim", loss: str = "l2", parameterization: str = "x0",
                 sigma_data: float = 0.5, t_max: Optional[float] = None, huber_c: Optional[float] = None,
                 target_decay: float = 0.95):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
        segments, skip, num_scales = int(segments), int(skip), int(num_scales)
        if segments < 1 or skip < 1 or num_scales < 1:
            raise ValueError("segments, skip and num_scales must be positive")
        if num_scales % segments:
            raise ValueError(f"num_scales={num_scales} must be a multiple of segments={segments}")
        self.process = process
        self.teacher_prediction = None if teacher_prediction is None else canonical_prediction(teacher_prediction)
        self.segments, self.skip, self.num_scales = segments, skip, num_scales
        self.solver, self.loss, self.parameterization = solver, loss, parameterization
        self.sigma_data = float(sigma_data)
        self.t_max = float(t_max if t_max is not None else getattr(process, "t_max_finite", 1.0))
        self.huber_c = huber_c
        self.target_decay = float(target_decay)
        #: the float64 grid ``[num_scales + 1]``, increasing from 0 to ``t_max``
        self.grid = torch.linspace(0.0, self.t_max, num_scales + 1, dtype=torch.float64)

    # -- grid helpers ------------------------------------------------------------------------
    @property
    def boundaries(self) -> Tensor:
        """Segment edges ``[segments + 1]`` (float64, increasing from 0 to ``t_max``)."""
        return self.grid[:: self.num_scales // self.segments].clone()

    def segment_low(self, t: Tensor) -> Tensor:
        """Lower edge of the segment containing each ``t`` ``[B]`` (a ``t`` on an edge belongs to
        the segment below it, so ``segment_low(edge) < edge`` except at 0)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        b = self.boundaries.to(t.device)
        idx = (torch.searchsorted(b, t, right=False) - 1).clamp(0, self.segments - 1)
        return b[idx]

    def sample_indices(self, B: int, generator: Generator = None, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """``(m, n, lo)`` grid indices ``[B]``: student time, teacher-step target time and the
        lower segment edge (``lo <= n < m``)."""
        g = first_generator(generator)
        m = torch.randint(1, self.num_scales + 1, (B,), generator=g, device=g.device if g is not None else None)
        per = self.num_scales // self.segments
        lo = ((m - 1) // per) * per
        n = torch.maximum(m - self.skip, lo)
        return m.to(device), n.to(device), lo.to(device)

    # -- the consistency function --------------------------------------------------------------
    def consistency_fn(self, net, x: Tensor, t: Tensor, t_low: Tensor, *, mask=None, cond=None, prediction=None) -> Tensor:
        """``f_net(x [B, ...], t [B]) -> x_{t_low}`` ``[B, ...]`` with ``f(x, t_low) = x``."""
        x0 = student_x0(net, self.process, x, t, prediction=prediction, mask=mask, cond=cond)
        out = consistency_output(self.process, x, x0, t, t_low, parameterization=self.parameterization, sigma_data=self.sigma_data)
        return self.process.project(out, mask)

    def _distance(self, a: Tensor, b: Tensor, mask) -> Tensor:
        sq = (a - b) ** 2
        if self.loss == "l2":
            return masked_mean(sq, mask)
        # pseudo-Huber on the whole (real part of the) sample: sqrt(||a-b||^2 + c^2) - c
        if mask is None:
            d = sq[0].numel()
            ss = sq.flatten(1).sum(1)
        else:
            m = append_dims(mask.to(sq.dtype), sq.ndim).expand_as(sq)
            ss = (sq * m).flatten(1).sum(1)
            d = m.flatten(1).sum(1).clamp_min(1.0)
        c = self.huber_c if self.huber_c is not None else 0.00054 * (torch.as_tensor(d, dtype=sq.dtype) ** 0.5)
        return torch.sqrt(ss + c**2) - c

    # -- the objective ------------------------------------------------------------------------
    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        student, teacher = nets["student"], nets["teacher"]
        target = nets.get("target") if hasattr(nets, "get") else None
        x0, mask, cond = batch.x, batch.mask, batch.cond
        B = x0.shape[0]
        p = self.process
        m, n, lo = self.sample_indices(B, generator, x0.device)
        grid = self.grid.to(x0.device)
        t_m, t_n, t_lo = grid[m], grid[n], grid[lo]
        eps = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
        x_m = p.add_noise(x0, t_m, eps, mask)
        with torch.no_grad():
            kw = model_kwargs(mask, cond)
            out = teacher(x_m, t_m.to(x0.dtype), **kw)
            tp = self.teacher_prediction or canonical_prediction(getattr(teacher, "prediction", "epsilon"))
            x0_T, eps_T = p.to_x0_eps(out, tp, x_m, t_m)
            a_n = append_dims(p.alpha(t_n).to(x0.dtype), x0.ndim)
            s_n = append_dims(p.sigma(t_n).to(x0.dtype), x0.ndim)
            x_n = p.project(a_n * x0_T + s_n * eps_T, mask)
            tnet = target if target is not None else student
            f_tgt = self.consistency_fn(tnet, x_n, t_n, t_lo, mask=mask, cond=cond)
        f_st = self.consistency_fn(student, x_m, t_m, t_lo, mask=mask, cond=cond)
        return self._distance(f_st, f_tgt.detach(), mask)

    @property
    def ema_targets(self) -> dict:
        """For the shared training loop: keep ``nets["target"]`` an EMA of ``nets["student"]``
        with ``target_decay`` (used when a ``"target"`` net is given)."""
        return {"target": ("student", self.target_decay)}

    @torch.no_grad()
    def update_target(self, nets, decay: float = 0.95) -> None:
        """EMA update of ``nets["target"]`` towards ``nets["student"]`` (Song et al. 2023,
        ``theta^- <- mu theta^- + (1 - mu) theta``); a no-op without a target net. Use it as
        ``train(..., on_step=lambda step, logs: cd.update_target(nets))``."""
        target = nets.get("target") if hasattr(nets, "get") else None
        if target is None:
            return
        for pt, ps in zip(target.parameters(), nets["student"].parameters()):
            pt.lerp_(ps.detach(), 1.0 - float(decay))
        for bt, bs in zip(target.buffers(), nets["student"].buffers()):
            bt.copy_(bs)

    def __repr__(self) -> str:
        return (f"ConsistencyDistillation(segments={self.segments}, skip={self.skip}, num_scales={self.num_scales}, "
                f"solver={self.solver!r}, loss={self.loss!r}, parameterization={self.parameterization!r})")


# -- recipe ----------------------------------------------------------------------------------------


@dataclass
class ConsistencyOptions(MethodOptions):
    """Options of method ``consistency`` (``distill.KEY=VALUE``, documented in :func:`consistency_recipe`)."""

    segments: int = 1
    skip: int = 1
    num_scales: int = 50
    loss: str = "l2"
    parameterization: str = "x0"
    sigma_data: float = 0.5
    target_decay: float = 0.95
    huber_c: Optional[float] = None
    init_sigma: Optional[float] = 2.5


@register_method("consistency", options=ConsistencyOptions, kind="consistency", paper="Song et al. 2023; Luo et al. 2023 (LCM); Wang et al. 2024 (PCM)",
                 description="consistency distillation, single or multi-segment, LCM-style skipping")
def consistency_recipe(ctx: RecipeContext, opts: ConsistencyOptions) -> DistillSetup:
    """Consistency distillation of the domain teacher; the student starts from the teacher,
    the target network is an EMA of the student (``target_decay``). ``init_sigma`` sets the
    top of the grid ``t_max`` where ``sigma / alpha = init_sigma`` (default 2.5 as SiD's
    ``sigma_init``; ``None``: the process's top, ill-conditioned for epsilon students, see
    docs/design.md); the generator then samples on ``student_steps`` uniform steps from ``t_max``."""
    import copy

    from .base import FewStepGenerator
    from .generators import default_grid, t_of_init_sigma

    t_max = t_of_init_sigma(ctx.process, opts.init_sigma) if opts.init_sigma is not None else None
    obj = ConsistencyDistillation(ctx.process, ctx.prediction, segments=opts.segments, skip=opts.skip, num_scales=opts.num_scales, loss=opts.loss,
                                  parameterization=opts.parameterization, sigma_data=opts.sigma_data, target_decay=opts.target_decay, huber_c=opts.huber_c,
                                  t_max=t_max)
    grid = default_grid(ctx.process, ctx.student_steps, t_start=obj.t_max) if opts.init_sigma is not None else None
    sspec = student_spec(ctx.teacher, ctx.domain)
    student = make_student(ctx, sspec)
    nets = {"student": student, "teacher": ctx.teacher, "target": copy.deepcopy(student).requires_grad_(False)}

    def make_generator(n):
        return FewStepGenerator(n["student"], ctx.process, parameterization=opts.parameterization, sigma_data=opts.sigma_data, timesteps=grid)

    return DistillSetup(obj, nets, ["student"], ["student"], make_generator, train_defaults={"lr": 1e-4, "ema_decay": 0.99})
