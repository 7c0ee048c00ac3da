"""MDT-dist (Zhou et al. 2025, "Few-step Flow for 3D Generation via Marginal-Data Transport
Distillation"): a flow student whose velocity at ``(z_u, u)`` carries ``z_u`` straight to
the end of the teacher's ODE trajectory through it, trained with Velocity Matching (VM)
plus Velocity Distillation (VD). Written from the paper's abstract and the authors'
training code (``FlowMDTTrainer``, ``distill_type="discrete"``, their default).

Everything happens in the linear view of the domain's process
(:func:`~workbench.distill.generators.linear_view`): ``z_u = (1 - u) x0 + u eps``,
``u = sigma / (alpha + sigma)``, velocity ``dz/du``. A denoiser ``F`` with data prediction
``x0_F(z_u, u)`` has the velocity ``v_F = (z_u - x0_F) / u``; one Euler step of ``v_F`` from
``u`` to ``u'`` is the DDIM step of ``F`` from ``t`` to ``t'``, so the student is sampled by
the core's ``euler`` sampler (generator kind ``flow``).

Marginal-data transport: the student should satisfy ``z_u - u v_S(z_u, u) = Phi_{u->0}(z_u)``,
the teacher ODE's endpoint, for every ``u``. Instead of integrating the teacher, the paper
differentiates the transport along the teacher's flow: ``d/du (z_u - u v_S) = 0`` on teacher
trajectories, i.e. ``v_S = v_T - u dv_S/du`` with ``dv_S/du`` the total derivative along the
teacher velocity ``v_T``.

VM (velocity matching; "stable but biased": the target holds the student's own derivative
in stop-gradient, so it is a fixed-point iteration rather than an unbiased gradient)::

    z'   = z_u - Delta v_T(z_u, u)                     (teacher Euler step to u' = u - Delta)
    D    = (v_S(z_u, u) - v_S(z', u')) / Delta         (finite-difference dv_S/du, no grad)
    D   <- D / (||D|| + c)                             (optional tangent normalisation, c = 0.1)
    L_VM = || v_S(z_u, u) - stopgrad(v_T(z_u, u) - u D) ||^2

on states ``z_u`` of the data (``batch.x``) with ``u = u_lo + Delta + (u_hi - u_lo - Delta) s``,
``s = sigmoid(N(1, 1))`` (the authors' logit-normal schedule, biased to the noisy end).

VD (velocity distillation; the distribution-level term, "probability density distillation
with the learned velocity fields", no auxiliary network): the student's one-step sample
``x_f = x0_S(x_1, t = 1)`` from fresh prior noise is noised to the same ``u`` and the VM
residual there, ``r = v_S(z_f, u) - (v_T(z_f, u) - u D)``, is pushed into the generator
(the authors' ``|| v_pred - v_tgt + v_fake - stopgrad(v_fake) ||^2`` with ``x_fake = noise -
v_fake``)::

    L_VD = || x_f - stopgrad(x_f + r) ||^2          (value ||r||^2, gradient -2 r on x_f)

Like the DMD / VSD gradient ``(x0_fake - x0_real) / u`` of a score difference, ``r`` compares
the student's velocity field (the generator's own flow) with the teacher's on the
generator's noised samples, so descent moves ``x_f`` where the teacher's field points.

``L = lambda_vm L_VM + lambda_vd L_VD`` per sample (mean over real elements). Classifier-free
guidance of the teacher (the authors' ``cfg_teacher_vm/vd``) is the domain's teacher setting
here (e.g. ``images`` ``guidance=``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, randn
from .base import student_x0
from .generators import from_linear_view

__all__ = ["MDTDistillation", "TIME_SAMPLERS"]

TIME_SAMPLERS = ("logit_normal", "uniform")


def _u_of_t(process: GaussianProcess, t: float) -> float:
    tt = torch.tensor(float(t), dtype=torch.float64)
    a, s = process.alpha(tt), process.sigma(tt)
    return float(s / (a + s))


class MDTDistillation:
    """MDT-dist objective ``(nets, batch, generator) -> loss [B]`` (module docstring).

    ``nets``: ``"student"`` (a denoiser in any parameterization, see
    :func:`~workbench.distill.base.student_x0`) and the frozen ``"teacher"`` (parameterization
    ``teacher_prediction``, default ``teacher.prediction``). ``batch.x`` ``[B, ...]``: data
    (with ``mask`` ``[B, N]`` / ``cond``).

    Args:
        process: the Gaussian process of teacher and student.
        lambda_vm, lambda_vd: weights of VM and VD (``>= 0``, not both 0).
        interval: ``Delta``, the finite-difference step in linear-view time ``u``.
        tangent_norm: ``c`` of ``D / (||D|| + c)``; ``None`` keeps ``D`` as it is (then the
            fixed point of VM is exactly the marginal-data transport).
        time_sampler: ``"logit_normal"`` (``sigmoid(N(logit_mean, logit_std^2))``) or ``"uniform"``.
        t_top: time of the generator's first step (the one-step sample of VD).
    """

    def __init__(self, process: GaussianProcess, teacher_prediction: Optional[str] = None, *, lambda_vm: float = 1.0,
                 lambda_vd: float = 1.0, interval: float = 0.01, tangent_norm: Optional[float] = 0.1,
                 time_sampler: str = "logit_normal", logit_mean: float = 1.0, logit_std: float = 1.0, t_top: float = 1.0):
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if float(lambda_vm) < 0 or float(lambda_vd) < 0 or float(lambda_vm) + float(lambda_vd) == 0:
            raise ValueError(f"lambda_vm and lambda_vd must be >= 0 and not both 0, got {lambda_vm}, {lambda_vd}")
        if tangent_norm is not None and float(tangent_norm) <= 0:
            raise ValueError(f"tangent_norm must be positive or None, got {tangent_norm}")
        if float(logit_std) <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        if not 0.0 < float(t_top) <= 1.0:
            raise ValueError(f"t_top must lie in (0, 1], got {t_top}")
        self.process = process
        self.teacher_prediction = None if teacher_prediction is None else canonical_prediction(teacher_prediction)
        self.lambda_vm, self.lambda_vd = float(lambda_vm), float(lambda_vd)
        self.tangent_norm = None if tangent_norm is None else float(tangent_norm)
        self.time_sampler, self.logit_mean, self.logit_std = time_sampler, float(logit_mean), float(logit_std)
        self.t_top = float(t_top)
        self.u_hi = _u_of_t(process, self.t_top)
        self.u_lo = _u_of_t(process, getattr(process, "t_min", 1e-3))
        self.interval = float(interval)
        if not 0.0 < self.interval < self.u_hi - self.u_lo:
            raise ValueError(f"interval must lie in (0, {self.u_hi - self.u_lo:.4g}) (the linear-view time range), got {interval}")

    # -- pieces -------------------------------------------------------------------------------
    def sample_u(self, B: int, generator: Generator = None, device=None) -> Tensor:
        """Linear-view times ``u`` ``[B]`` (float64) in ``[u_lo + Delta, u_hi]``."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        gd = g.device if g is not None else None
        if self.time_sampler == "uniform":
            s = torch.rand(B, generator=g, device=gd, dtype=torch.float64)
        else:
            s = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(B, generator=g, device=gd, dtype=torch.float64))
        u = self.u_lo + self.interval + (self.u_hi - self.u_lo - self.interval) * s
        return u.to(device)

    def velocity(self, net, z: Tensor, u: Tensor, *, prediction: Optional[str] = None, mask=None, cond=None) -> Tensor:
        """Linear-view velocity ``(z - x0_net(x_t, t)) / u`` ``[B, ...]`` of a denoiser at
        ``(z [B, ...], u [B])``."""
        x, t = from_linear_view(self.process, z, u)
        x0 = student_x0(net, self.process, x, t, prediction=prediction, mask=mask, cond=cond)
        return self.process.project((z - x0) / append_dims(u.to(z.dtype), z.ndim), mask)

    def vm_target(self, student, teacher, z: Tensor, u: Tensor, v_s: Tensor, *, mask=None, cond=None) -> Tensor:
        """``v_T - u D`` ``[B, ...]`` (no grad) at ``(z, u)`` given the student's velocity there
        ``v_s``: the VM target of the module docstring."""
        with torch.no_grad():
            tp = self.teacher_prediction or canonical_prediction(getattr(teacher, "prediction", "epsilon"))
            v_t = self.velocity(teacher, z, u, prediction=tp, mask=mask, cond=cond)
            u2 = u - self.interval
            z2 = self.process.project(z - self.interval * v_t, mask)
            v_s2 = self.velocity(student, z2, u2, mask=mask, cond=cond)
            d = (v_s.detach() - v_s2) / self.interval
            if self.tangent_norm is not None:
                m = torch.ones_like(d) if mask is None else append_dims(mask.to(d.dtype), d.ndim).expand_as(d)
                norm = (d * d * m).flatten(1).sum(1).sqrt()
                d = d / append_dims(norm + self.tangent_norm, d.ndim)
            return v_t - append_dims(u.to(z.dtype), z.ndim) * d

    def vm_loss(self, nets, x0: Tensor, eps: Tensor, u: Tensor, *, mask=None, cond=None) -> Tensor:
        """``L_VM`` ``[B]`` on the states ``z_u = (1 - u) x0 + u eps``."""
        ue = append_dims(u.to(x0.dtype), x0.ndim)
        z = self.process.project((1 - ue) * x0 + ue * eps, mask)
        v_s = self.velocity(nets["student"], z, u, mask=mask, cond=cond)
        tgt = self.vm_target(nets["student"], nets["teacher"], z, u, v_s, mask=mask, cond=cond)
        return masked_mean((v_s - tgt) ** 2, mask)

    def vd_loss(self, nets, x_T: Tensor, eps: Tensor, u: Tensor, *, mask=None, cond=None) -> Tensor:
        """``L_VD`` ``[B]``: the student's one-step sample from ``x_T`` (at ``t_top``), noised to
        ``u`` with ``eps``; gradient ``-2 r`` on the sample."""
        student = nets["student"]
        B = x_T.shape[0]
        x_f = student_x0(student, self.process, x_T, torch.full((B,), self.t_top, dtype=torch.float64, device=x_T.device),
                         mask=mask, cond=cond)
        with torch.no_grad():
            ue = append_dims(u.to(x_T.dtype), x_T.ndim)
            z = self.process.project((1 - ue) * x_f.detach() + ue * eps, mask)
            v_s = self.velocity(student, z, u, mask=mask, cond=cond)
            r = v_s - self.vm_target(student, nets["teacher"], z, u, v_s, mask=mask, cond=cond)
        return masked_mean((x_f - (x_f.detach() + r)) ** 2, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        x0, mask, cond = batch.x, batch.mask, batch.cond
        B = x0.shape[0]
        p = self.process
        u = self.sample_u(B, generator, x0.device)
        eps = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask)
        loss = x0.new_zeros(B)
        if self.lambda_vm > 0:
            loss = loss + self.lambda_vm * self.vm_loss(nets, x0, eps, u, mask=mask, cond=cond)
        if self.lambda_vd > 0:
            x_T = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * p.prior_std(), mask)
            loss = loss + self.lambda_vd * self.vd_loss(nets, x_T, eps, u, mask=mask, cond=cond)
        return loss

    def __repr__(self) -> str:
        return (f"MDTDistillation(lambda_vm={self.lambda_vm}, lambda_vd={self.lambda_vd}, interval={self.interval}, "
                f"tangent_norm={self.tangent_norm}, time_sampler={self.time_sampler!r})")


# -- recipe ----------------------------------------------------------------------------------------
from .recipes import DistillSetup, RecipeContext, make_student, register_method, student_spec  # noqa: E402


@register_method("mdt_dist", kind="flow", paper="Zhou et al. 2025 (MDT-dist)",
                 description="marginal-data transport distillation: velocity matching + velocity distillation, "
                             "flow student sampled with a few Euler (DDIM) steps")
def mdt_dist_recipe(ctx: RecipeContext, *, lambda_vm: float = 1.0, lambda_vd: float = 1.0, interval: float = 0.01,
                    tangent_norm: Optional[float] = 0.1, time_sampler: str = "logit_normal", logit_mean: float = 1.0,
                    logit_std: float = 1.0, prediction: Optional[str] = "v", backbone: Optional[dict] = None,
                    init: str = "teacher") -> DistillSetup:
    """MDT-dist of the domain teacher into a flow student (the teacher's architecture unless
    ``backbone`` kwargs are given; initialised from the teacher). ``prediction``: the
    student's parameterization (default ``v``: its x0 ``alpha x - sigma v`` is well
    conditioned at ``t = 1``, where the one-step sample is read; ``None`` = the teacher's).
    The other options are those of :class:`MDTDistillation`."""
    from .generators import FlowGenerator

    if backbone is not None and not isinstance(backbone, dict):
        raise ValueError(f"backbone must be a dict of domain.build_backbone kwargs or None, got {backbone!r}")
    obj = MDTDistillation(ctx.process, ctx.prediction, lambda_vm=lambda_vm, lambda_vd=lambda_vd, interval=interval,
                          tangent_norm=tangent_norm, time_sampler=time_sampler, logit_mean=logit_mean, logit_std=logit_std)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=backbone, prediction=prediction)
    student = make_student(ctx, sspec, init=init)
    nets = {"student": student, "teacher": ctx.teacher}
    spec = {"kind": "flow", "student": sspec, "sampler": "euler", "timesteps": None, "options": {}}
    proc = ctx.process

    def make_generator(n):
        return FlowGenerator(n["student"], proc, sampler="euler", prediction=sspec["prediction"])

    info = {"student_params": sum(p.numel() for p in student.parameters())}
    return DistillSetup(obj, nets, ["student"], ["student"], spec, make_generator, info=info)
