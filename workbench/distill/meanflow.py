"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling") on any Gaussian
process, through the linear view of the process.

On the linear interpolant ``z_u = (1 - u) x0 + u eps`` (``u = 0`` data, ``u = 1`` noise) with
instantaneous velocity ``v = dz_u/du``, the *average velocity* over ``[r, t]`` is
``u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds``, so one step ``z_r = z_t - (t - r) u(z_t, r, t)``
is exact. Differentiating ``(t - r) u = int_r^t v`` in ``t`` gives the MeanFlow identity (eq. 6)

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),
    d/dt u = v . grad_z u + partial_t u   (a JVP along the tangent (v, 0, 1), eq. 8),

and the loss ``|| u_theta - stopgrad(v - (t - r) d/dt u_theta) ||^2`` (eq. 9-10).

Any Gaussian path ``x_t = alpha(t) x0 + sigma(t) eps`` *is* this interpolant after the change
of variables ``z = x / (alpha + sigma)``, ``u = sigma / (alpha + sigma)``
(:func:`~workbench.distill.generators.linear_view`); :class:`~workbench.processes.RectifiedFlow`
is the identity view. So the student ``u(z, r, t)`` lives in the linear view (its times are
linear-view times, e.g. :class:`~workbench.model.TwoTimeDenoiser`) and
:class:`~workbench.distill.generators.TwoTimeGenerator` samples it on any process. ``v`` is

* from data: the conditional velocity ``eps - x0``;
* from a teacher (distillation): the teacher's velocity in the linear view,
  ``eps^ - x0^`` of its prediction at the process state ``x = (alpha + sigma) z`` and the
  process time ``t_p`` with ``sigma / (alpha + sigma) = u`` (:func:`teacher_velocity`).

Students (:func:`two_time_spec`): ``domain.build_two_time_backbone()`` (the teacher's
architecture plus an embedding of ``t - r``, teacher tensors copied by name). The recipes read
the backbone output as ``v`` (well conditioned at both ends of the path, where ``epsilon``
and ``x0`` divide by ``1 - t`` and ``t``) and feed both times linearly (``time_scale = 1``,
``gap_scale = 1``): the MeanFlow target ``v - (t - r) du/dt`` multiplies a time feature of
frequency ``w`` by ``w (t - r)``. Measured on the toy GMM (exact teacher, SW at 1 / 2 / 4
steps; the 2000-sample floor is 0.048): the teacher's epsilon output and DDPM timestep input
diverge (loss 3e4 after 300 steps) and reach 1.9 / 0.34 / 0.11 after 2000 steps with the
adaptive weight ``p = 1``; ``v`` output with the DDPM timestep input 1.4 / 0.92 / 0.31 (800
steps, ``p = 1``, lr 5e-4); linear times with ``x0`` output 0.108 / 0.096 / 0.082 and with ``v``
output 0.060 / 0.063 / 0.063 (800 steps), 0.051 / 0.051 / 0.051 after 2000 steps.

SplitMeanFlow (:mod:`workbench.distill.splitmeanflow`) shares the time sampling, the velocity
sources and the recipe machinery defined here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..model import linear_view_time, sinusoidal_embedding
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs, randn
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["MeanFlow", "TwoTimeMLP", "meanflow_generate", "linear_time_range", "teacher_velocity", "sample_linear_times",
           "TIME_SAMPLERS", "SOURCES"]

TIME_SAMPLERS = ("uniform", "logit_normal")
#: where the instantaneous velocity ``v`` comes from: ``auto`` = the teacher when ``nets`` has one
SOURCES = ("auto", "teacher", "data")


def _check_choice(name: str, value: str, valid) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


def linear_time_range(process: GaussianProcess) -> tuple[float, float]:
    """``(u_lo, u_hi)``: the linear-view times of ``process.t_min`` and of ``t = 1``
    (``sigma / (alpha + sigma)``; ``(1e-3, 1)`` for rectified flow, ``(0.0099, 0.9937)`` for
    the DDPM linear schedule). Training times ``t`` lie in ``[u_lo, u_hi]``; ``u_hi`` is where
    :class:`~workbench.distill.generators.TwoTimeGenerator` starts."""
    u = process.u_of_t(torch.tensor([float(process.t_min), 1.0], dtype=torch.float64))
    return float(u[0]), float(u[1])


def sample_linear_times(B: int, process: GaussianProcess, *, time_sampler: str = "uniform", logit_mean: float = -0.4,
                        logit_std: float = 1.0, ratio_r_neq_t: float = 1.0, generator: Generator = None,
                        device=None) -> tuple[Tensor, Tensor]:
    """Linear-view times ``(r, t)`` ``[B]`` float64 with ``0 <= r <= t``, ``u_lo <= t <= u_hi``
    (:func:`linear_time_range`): two draws ``a`` from ``time_sampler`` on ``[0, 1]``
    (``uniform``, or ``logit_normal`` = ``sigmoid(N(logit_mean, logit_std^2))``, Geng et al.
    Sec. 4.3) scaled by ``u_hi``, sorted to ``r <= t``; ``t`` is clamped to ``u_lo``; a fraction
    ``1 - ratio_r_neq_t`` of the pairs gets ``r = t`` (the boundary condition, plain flow
    matching)."""
    g = first_generator(generator)
    gd = g.device if g is not None else None
    _check_choice("time sampler", time_sampler, TIME_SAMPLERS)
    if time_sampler == "uniform":
        a = torch.rand(2, B, generator=g, device=gd, dtype=torch.float64)
    else:
        a = torch.sigmoid(logit_mean + logit_std * torch.randn(2, B, generator=g, device=gd, dtype=torch.float64))
    u_lo, u_hi = linear_time_range(process)
    t, r = u_hi * a.max(0).values, u_hi * a.min(0).values
    t = t.clamp_min(u_lo)
    keep = torch.rand(B, generator=g, device=gd, dtype=torch.float64) < ratio_r_neq_t
    r = torch.where(keep, torch.minimum(r, t), t)
    return r.to(device), t.to(device)


@torch.no_grad()
def teacher_velocity(teacher: nn.Module, process: GaussianProcess, z: Tensor, u: Tensor, *, mask: Optional[Tensor] = None,
                     cond: Any = None, prediction: Optional[str] = None) -> Tensor:
    """The teacher's instantaneous velocity in the linear view, ``v = eps^ - x0^`` ``[B, ...]``.

    Args:
        teacher: ``teacher(x_t [B, ...], t [B], mask=, cond=)`` in ``process`` predicting
            ``prediction`` (default ``teacher.prediction``).
        z: ``[B, ...]`` linear-view states; u: ``[B]`` linear-view times in ``(0, u_hi]``.
    """
    tp = linear_view_time(process, u.to(torch.float64).to(z.device))
    la, ls = process.log_alpha_sigma(tp)
    x = process.project(z * append_dims((la.exp() + ls.exp()).to(z.dtype), z.ndim), mask)
    pred = canonical_prediction(prediction or getattr(teacher, "prediction", "epsilon"))
    out = teacher(x, tp.to(z.dtype), **model_kwargs(mask, cond))
    x0, eps = process.to_x0_eps(out.to(z.dtype), pred, x, tp)
    return process.project(eps - x0, mask)


def _nets(nets) -> tuple[nn.Module, Optional[nn.Module]]:
    if isinstance(nets, (dict, nn.ModuleDict)):
        return nets["student"], nets.get("teacher")
    return nets, None


class _LinearViewObjective:
    """Shared parts of MeanFlow and SplitMeanFlow: options, the noisy linear-view state and
    the instantaneous velocity ``v`` from data or from the teacher."""

    def __init__(self, process: GaussianProcess, *, time_sampler: str, logit_mean: float, logit_std: float, adaptive_p: float,
                 adaptive_c: float, source: str, teacher_prediction: Optional[str]):
        _check_choice("time sampler", time_sampler, TIME_SAMPLERS)
        _check_choice("velocity source", source, SOURCES)
        if adaptive_p < 0:
            raise ValueError(f"adaptive_p must be >= 0, got {adaptive_p}")
        if adaptive_c <= 0:
            raise ValueError(f"adaptive_c must be > 0, got {adaptive_c}")
        self.process = process
        self.time_sampler, self.source = time_sampler, source
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.adaptive_p, self.adaptive_c = float(adaptive_p), float(adaptive_c)
        self.teacher_prediction = None if teacher_prediction is None else canonical_prediction(teacher_prediction)

    def _teacher(self, teacher: Optional[nn.Module]) -> Optional[nn.Module]:
        if self.source == "data":
            return None
        if self.source == "teacher" and teacher is None:
            raise ValueError("source='teacher' needs nets['teacher']; use source='data' to train from data")
        return teacher

    def _state(self, batch: Batch, t: Tensor, generator: Generator) -> tuple[Tensor, Tensor]:
        """``(z_t, eps)``: ``z_t = (1 - t) x0 + t eps`` ``[B, ...]`` (projected), ``eps ~ N(0, I)``."""
        x0, mask, p = batch.x, batch.mask, self.process
        eps = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
        te = append_dims(t.to(x0.dtype), x0.ndim)
        return p.project((1 - te) * x0 + te * eps, mask), eps

    def _velocity(self, teacher: Optional[nn.Module], batch: Batch, z: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        p = self.process
        if teacher is None:
            return p.project(eps - batch.x, batch.mask)
        return teacher_velocity(teacher, p, z, t, mask=batch.mask, cond=batch.cond, prediction=self.teacher_prediction)

    def _reduce(self, err: Tensor) -> Tensor:
        """Per-sample loss ``[B]``; with ``adaptive_p > 0`` the adaptive weight
        ``1 / (err + c)^p`` in stop-gradient (Geng et al. Sec. 4.3)."""
        if self.adaptive_p:
            err = err / (err.detach() + self.adaptive_c) ** self.adaptive_p
        return err


class MeanFlow(_LinearViewObjective):
    """MeanFlow objective ``(nets, batch, generator) -> loss [B]`` (Geng et al. 2025, eq. 9-10)
    in the linear view of ``process``.

    ``nets["student"]``: ``u(z [B, ...], r [B], t [B], mask=None, cond=None) -> [B, ...]`` with
    linear-view times (:class:`~workbench.model.TwoTimeDenoiser`; for rectified flow any
    two-time net); optional ``nets["teacher"]``: a denoiser ``teacher(x_t, t, mask=, cond=)``
    of ``process`` predicting ``teacher_prediction`` (default ``teacher.prediction``).

    One sample: ``(r, t)`` from :func:`sample_linear_times`, ``z_t = (1 - t) x0 + t eps``,
    ``v`` (``source``: ``data`` = ``eps - x0``; ``teacher`` = :func:`teacher_velocity`;
    ``auto`` = the teacher when ``nets`` has one), ``(u, du/dt) = jvp(u_theta, (z_t, r, t),
    (v, 0, 1))`` (``torch.func.jvp``), loss ``|| u - stopgrad(v - (t - r) du/dt) ||^2`` per
    sample (mean over real elements).

    Args:
        process: any Gaussian process (the identity view for :class:`RectifiedFlow`).
        ratio_r_neq_t: fraction of samples with ``r != t`` (Geng et al.: 25 %); the rest is
            the boundary condition ``u(z, t, t) = v`` (flow matching).
        time_sampler: ``uniform`` or ``logit_normal`` (``sigmoid(N(logit_mean, logit_std^2))``,
            Geng et al.'s ``(-0.4, 1.0)``), on the linear-view time.
        adaptive_p, adaptive_c: adaptive loss weight ``1 / (||Delta||^2 + c)^p`` in
            stop-gradient, ``||Delta||^2`` the per-sample mean squared error (Geng et al.
            Sec. 4.3 use ``p = 1``); ``p = 0`` is the plain squared error.
        source: ``auto``, ``teacher`` or ``data`` (see above).
    """

    def __init__(self, process: GaussianProcess, *, ratio_r_neq_t: float = 0.25, time_sampler: str = "uniform",
                 logit_mean: float = -0.4, logit_std: float = 1.0, adaptive_p: float = 0.0, adaptive_c: float = 1e-3,
                 teacher_prediction: Optional[str] = None, source: str = "auto"):
        if not 0.0 <= ratio_r_neq_t <= 1.0:
            raise ValueError(f"ratio_r_neq_t must lie in [0, 1], got {ratio_r_neq_t}")
        super().__init__(process, time_sampler=time_sampler, logit_mean=logit_mean, logit_std=logit_std, adaptive_p=adaptive_p,
                         adaptive_c=adaptive_c, source=source, teacher_prediction=teacher_prediction)
        self.ratio_r_neq_t = float(ratio_r_neq_t)

    def sample_times(self, B: int, generator: Generator = None, device=None) -> tuple[Tensor, Tensor]:
        """``(r, t)`` ``[B]`` float64 linear-view times with ``0 <= r <= t <= u_hi``."""
        return sample_linear_times(B, self.process, time_sampler=self.time_sampler, logit_mean=self.logit_mean,
                                   logit_std=self.logit_std, ratio_r_neq_t=self.ratio_r_neq_t, generator=generator, device=device)

    def target(self, student: nn.Module, z: Tensor, r: Tensor, t: Tensor, v: Tensor, *, mask: Optional[Tensor] = None,
               cond: Any = None) -> tuple[Tensor, Tensor]:
        """``(u, u_tgt)`` ``[B, ...]``: the student's ``u(z, r, t)`` (with graph) and the
        detached MeanFlow target ``v - (t - r) (v . grad_z u + partial_t u)`` (eq. 8-10); ``r``,
        ``t`` ``[B]`` in ``z.dtype``."""
        kw = model_kwargs(mask, cond)
        u, dudt = torch.func.jvp(lambda z_, r_, t_: student(z_, r_, t_, **kw), (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        u_tgt = v - append_dims(t - r, z.ndim) * dudt
        return u, self.process.project(u_tgt, mask).detach()

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        student, teacher = _nets(nets)
        teacher = self._teacher(teacher)
        x0, mask, p = batch.x, batch.mask, self.process
        r, t = self.sample_times(x0.shape[0], generator, x0.device)
        z, eps = self._state(batch, t, generator)
        v = self._velocity(teacher, batch, z, t, eps)
        u, u_tgt = self.target(student, z, r.to(x0.dtype), t.to(x0.dtype), v, mask=mask, cond=batch.cond)
        return self._reduce(masked_mean((p.project(u, mask) - u_tgt) ** 2, mask))

    def __repr__(self) -> str:
        return (f"MeanFlow(ratio_r_neq_t={self.ratio_r_neq_t}, time_sampler={self.time_sampler!r}, adaptive_p={self.adaptive_p}, "
                f"source={self.source!r})")


# -- small helpers kept for flat toy experiments -------------------------------------------------
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


def meanflow_generate(student, x_T: Tensor, steps: int = 1, *, timesteps=None, process: Optional[GaussianProcess] = None,
                      mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
    """Few-step sampling of an average-velocity net whose times are the linear interpolant's:
    ``z_r = z_t - (t - r) u(z_t, r, t)`` along ``timesteps`` (default
    ``linspace(1, 0, steps + 1)``; ``steps`` network evaluations). For a student of another
    process use :class:`~workbench.distill.generators.TwoTimeGenerator` (linear view).

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
    kw = model_kwargs(mask, cond)
    for k in range(len(ts) - 1):
        t = torch.full((B,), float(ts[k]), device=z.device, dtype=z.dtype)
        r = torch.full((B,), float(ts[k + 1]), device=z.device, dtype=z.dtype)
        u = student(z, r, t, **kw)
        z = proj(z - (float(ts[k]) - float(ts[k + 1])) * u)
    return z


# -- recipe --------------------------------------------------------------------------------------

STUDENT_INITS = ("teacher", "scratch")
#: parameterisations of a two-time student's backbone output ("teacher": the teacher's own)
STUDENT_PREDICTIONS = ("v", "x0", "epsilon", "teacher")


def two_time_spec(ctx: RecipeContext, *, backbone: Optional[dict] = None, student_prediction: str = "v",
                  time_scale: Optional[float] = 1.0, gap_scale: float = 1.0) -> dict:
    """The student spec of an average-velocity method: ``student_spec(..., two_time=True)``
    with the :class:`~workbench.model.TwoTimeDenoiser` keywords in ``backbone`` (``prediction``,
    ``time_scale``, ``gap_scale``; see its docstring for why the defaults ``v``, ``1``, ``1``:
    a well-conditioned output and time features smooth in the linear-view time)."""
    _check_choice("student prediction", student_prediction, STUDENT_PREDICTIONS)
    base = student_spec(ctx.teacher, ctx.domain, two_time=True)
    pred = base["prediction"] if student_prediction == "teacher" else student_prediction
    bb = {**dict(backbone or {}), "prediction": pred, "gap_scale": float(gap_scale)}
    if time_scale is not None:
        bb["time_scale"] = float(time_scale)
    return student_spec(ctx.teacher, ctx.domain, backbone=bb, prediction=pred, two_time=True)


def two_time_setup(ctx: RecipeContext, objective, sspec: dict, *, init: str, use_teacher: bool,
                   info: Optional[dict] = None, train_defaults: Optional[dict] = None) -> DistillSetup:
    """The :class:`DistillSetup` of an average-velocity method: the two-time student of
    ``sspec`` (:func:`two_time_spec`; teacher tensors copied by name with ``init="teacher"``),
    an EMA of it, the frozen teacher in ``nets`` when ``use_teacher``, and the ``meanflow``
    generator spec (:class:`~workbench.distill.generators.TwoTimeGenerator`)."""
    from .generators import TwoTimeGenerator

    _check_choice("student init", init, STUDENT_INITS)
    student = make_student(ctx, sspec, init=init)
    nets = {"student": student}
    if use_teacher:
        nets["teacher"] = ctx.teacher
    proc = ctx.process

    def make_generator(n):
        return TwoTimeGenerator(n["student"], proc)

    n_params = sum(q.numel() for q in student.parameters())
    return DistillSetup(objective, nets, ["student"], ["student"], make_generator, train_defaults=dict(train_defaults or {}),
                        info={"student_parameters": int(n_params), **(info or {})})


@dataclass
class AverageVelocityOptions(MethodOptions):
    """Options shared by the average-velocity methods (``meanflow``, ``splitmeanflow``): where the
    velocity comes from, the time law, the adaptive weight, the student's parameterisation."""

    source: str = "teacher"
    time_sampler: str = "uniform"
    logit_mean: float = -0.4
    logit_std: float = 1.0
    adaptive_p: float = 0.0
    adaptive_c: float = 1e-3
    student_prediction: str = "v"
    time_scale: Optional[float] = 1.0
    gap_scale: float = 1.0
    backbone: Optional[dict] = None
    init: str = "teacher"

    def __post_init__(self):
        super().__post_init__()
        _check_choice("velocity source", self.source, ("teacher", "data"))


@dataclass
class MeanFlowOptions(AverageVelocityOptions):
    """Options of method ``meanflow`` (``distill.KEY=VALUE``, documented in :func:`meanflow_recipe`)."""

    ratio_r_neq_t: float = 0.25


@register_method("meanflow", options=MeanFlowOptions, kind="meanflow", requires=("build_two_time_backbone",), paper="Geng et al. 2025, Mean Flows for One-step Generative Modeling",
                 description="average-velocity student u(z, r, t) trained with the MeanFlow identity (JVP), from the teacher or data")
def meanflow_recipe(ctx: RecipeContext, opts: MeanFlowOptions) -> DistillSetup:
    """MeanFlow on the domain's process (linear view): ``source="teacher"`` distils the
    teacher's velocity, ``"data"`` trains from the data's conditional velocity. The student is
    ``domain.build_two_time_backbone(**backbone)`` with the ``TwoTimeDenoiser`` options
    ``student_prediction`` / ``time_scale`` / ``gap_scale`` (:func:`two_time_spec`),
    initialised from the teacher's matching tensors (``init="teacher"``), exported as a
    ``meanflow`` generator."""
    obj = MeanFlow(ctx.process, ratio_r_neq_t=opts.ratio_r_neq_t, time_sampler=opts.time_sampler, logit_mean=opts.logit_mean, logit_std=opts.logit_std,
                   adaptive_p=opts.adaptive_p, adaptive_c=opts.adaptive_c, source=opts.source)
    sspec = two_time_spec(ctx, backbone=opts.backbone, student_prediction=opts.student_prediction, time_scale=opts.time_scale, gap_scale=opts.gap_scale)
    return two_time_setup(ctx, obj, sspec, init=opts.init, use_teacher=opts.source == "teacher")
