"""MDT-dist (Zhou et al. 2025, "Few-step Flow for 3D Generation via Marginal-Data Transport
Distillation"): a flow student whose velocity at ``(z_u, u)`` carries ``z_u`` straight to the
end of the teacher's ODE trajectory through it (the *marginal-data transport*), trained with
Velocity Matching (VM) plus Velocity Distillation (VD). The defaults are the authors' objective:
``FlowMDTTrainer`` in ``Zanue/MDT-dist`` ``src/trellis/trainers/flow_matching/flow_matching_mdt.py``
with its defaults ``distill_type="discrete"``, ``distill_interval=0.01``, ``d_norm=True`` (the
constant 0.1), ``lambda_vm = lambda_vd = 1``, ``t_schedule = logitNormal(1, 1)``; the VM target
and the VD gradient below match that code (checked in ``tests/test_distill_mdt.py``).

Everything happens in the linear view of the domain's process
(:func:`~workbench.distill.generators.linear_view`): ``z_u = (1 - u) x0 + u eps``,
``u = sigma / (alpha + sigma)``, velocity ``v = dz/du`` (the authors' rectified flow,
``sigma_min = 1e-5`` dropped). A denoiser ``F`` with data prediction ``x0_F(z_u, u)`` has the
velocity ``v_F = (z_u - x0_F) / u``; one Euler step of ``v_F`` from ``u`` to ``u'`` is the DDIM
step of ``F`` from ``t`` to ``t'``, so the student is sampled by the core's ``euler`` sampler
(generator kind ``flow``; the authors also sample their student with few Euler steps).
Tensor shapes: states ``[B, ...]``, times ``[B]`` (float64).

Marginal-data transport: the student should satisfy ``z_u - w v_S(z_u, u) = Phi_{u -> u_lo}(z_u)``
with ``w = u - u_lo``, the teacher ODE's solution at ``u_lo``; the authors' objective transports
to the data, ``u_lo = 0``, ``w = u``. Instead of integrating the teacher, the paper
differentiates this transport along the teacher's flow: ``d/du (z_u - w v_S) = 0`` on teacher
trajectories, i.e. ``v_S = v_T - w dv_S/du`` with ``dv_S/du`` the total derivative along the
teacher velocity ``v_T``. The velocity is then the *average* velocity to the data: a perfect
student is a one-step model (an Euler step of it to ``u' > 0`` is not on the teacher's
trajectory).

VM (velocity matching; a fixed-point iteration: the target holds the student's own derivative
in stop-gradient), official ``get_v_pred_tgt(distill_type="discrete")``::

    z'   = z_u - Delta v_T(z_u, u)                     (teacher Euler step to u' = u - Delta)
    D    = (v_S(z_u, u) - v_S(z', u')) / Delta         (finite-difference dv_S/du, no grad)
    (v_S: the online student, as the authors' training_models['denoiser'], not its EMA)
    D   <- D / (||D|| + c)                             (the authors' d_norm, c = tangent_norm = 0.1)
    tgt  = v_T(z_u, u) - w D                           (form="explicit", the authors')
    L_VM = || v_S(z_u, u) - stopgrad(tgt) ||^2

on states ``z_u`` of the data (``batch.x``), ``u = u_min + Delta + (u(1) - u_min - Delta) s``
(``u_min = u(process.t_min)``, the authors' ``sigma_min``) with ``s = sigmoid(N(1, 1))`` (the
authors' logit-normal schedule) or ``s ~ U(0, 1)``.

VD (velocity distillation; "probability density distillation with the learned velocity
fields", no auxiliary network): the student's one-step sample from fresh prior noise,
``x_f = x0_S(x_1, t = 1)`` (the authors' ``x_fake = noise - v_fake``), is noised to the same
``u`` with the same ``eps`` and the VM residual there, ``r = v_S(z_f, u) - tgt(z_f, u)``, is
pushed into the generator (the authors' ``|| v_pred - v_tgt + v_fake - stopgrad(v_fake) ||^2``,
whose gradient on ``x_fake`` is ``-2 r``)::

    L_VD = || x_f - stopgrad(x_f + r) ||^2          (value ||r||^2, gradient -2 r on x_f)

``L = lambda_vm L_VM + lambda_vd L_VD`` per sample (mean over real elements; the authors' mean
over all elements). Classifier-free guidance of the teacher (the authors' ``cfg_teacher_vm=40``,
``cfg_teacher_vd=100``) is the domain's teacher setting here (e.g. ``images`` ``guidance=``).

Project variants (named options, not the authors' objective):

* ``form="implicit"``: ``tgt = (Delta v_T + w v_S(z', u')) / (w + Delta)``, the explicit target
  solved for the ``v_S`` at the same state: the same fixed point without the explicit form's
  self-feedback gain ``w / Delta`` (up to 100), the same gradient direction per sample, scaled
  by ``Delta / (w + Delta)``;
* ``tangent_norm=None``: no ``d_norm`` (then the fixed point of VM is exactly the transport;
  ``d_norm`` moves it by up to ``w`` per state);
* ``multiphase=K``: a ``K``-phase transport, ``u_lo = u(t_lo)`` the lower edge of the state's
  phase of the uniform grid ``t_k = k / K`` (the ``K``-step Euler grid), so the ``K``-step
  Euler sampler is exact for a perfect student. The authors' ``multiphase`` only sets target
  times in their consistency variant (``distill_type="cm"``), never in the VM/VD target;
* ``vd_steps=K``: the VD sample is the student's ``K``-step Euler (DDIM) sample with the gradient
  through its last step (the authors': one step).

Student initialisation (deviation forced by the domain): the authors' student is a copy of their
velocity-predicting teacher (``finetune_ckpt`` of both nets = the same TRELLIS checkpoint). The
recipe's ``init="teacher"`` loads the teacher's weights, but the default student
parameterization ``v`` differs from an epsilon teacher's (the toy's, the images'), so the
loaded network's output is read as ``v`` and the student does **not** start as the teacher
(toy GMM: the initial student's 50-step Euler SW is 0.386, the teacher's 0.076).
``prediction=None`` (the teacher's parameterization) starts exactly at the teacher, but its
one-step ``x0`` at ``t = 1`` divides by ``alpha(1)`` (1 / 160 for the DDPM schedule): on the
toy it diverged (1-step SW 1.2e10).

Measured on the toy GMM (exact teacher, 2000 steps, SW of 2000 samples at the design step
count; ``workbench bench distill domain=toy domain.teacher=exact ... train.steps=2000``): these
defaults (the authors') give 0.396 / 0.386 / 0.105 at 1 / 2 / 4 steps. One option changed at a time (1 step,
from 0.396): ``form="implicit"`` 0.435, ``tangent_norm=None`` 0.247, ``time_sampler="uniform"``
diverged (SW 2e7: uniform times put VD at small ``u``, where the residual ``r`` of a one-step
sample off the data is ``O(|x0_S - x0_T| / u)``), ``lambda_vd=0`` 0.782 (VM alone reaches its
``d_norm`` fixed point below, 0.78; VD pulls the one-step sample part of the way back). The
project variant ``form="implicit", tangent_norm=None, time_sampler="uniform", lambda_vd=0,
multiphase=student_steps`` gave 0.050 / 0.054 / 0.051 at 1 / 2 / 4 steps (no single option
recovers them; the full set does). The main cause is ``d_norm``, not an implementation error (the
VM target and VD gradient equal the official code to float precision, ``tests/test_distill_mdt.py``): at the
fixed point of the explicit VM target with ``d_norm`` the student's velocity ``v`` along a
teacher trajectory obeys ``v_T - v = u D / (||D|| + c)``, i.e. ``||v_T - v|| < u`` per sample and
``dv/du = c (v_T - v) / (u - ||v_T - v||)`` instead of the transport's ``(v_T - v) / u``. Solved
along exact-teacher Euler trajectories (``Delta = 0.01``), that fixed-point field's 1 / 2-step
Euler samples have SW 0.78 / 0.46 (``c = 0.1``; 0.94 / 0.55 at ``c = 1``), against 0.117 / 0.171
without ``d_norm`` (the endpoint of the teacher's own 100-step Euler trajectory). In the
authors' 32k-dimensional latents the same bound ``||v_T - v|| < u`` is ``u / 181`` per element:
VM there holds the student at the teacher's velocity (the paper's "stably match the velocity
fields") and the transport is learned through VD; in 2-D the bound leaves the fixed point an
O(1)-biased field. The authors also train with AdamW at lr 4e-8 (sparse structure; 1e-8 for
SLat), EMA 0.9999 and adaptive gradient clipping, which a 2000-step toy run cannot reproduce.
The reference is the dense ``FlowMDTTrainer``: the released ``SparseFlowMDTTrainer``'s discrete
branch never computes ``dv_dt`` (it would raise), and the released SLat config names the plain
``ImageConditionedSparseFlowMatchingCFGTrainer``. The authors' ``sigma_min = 1e-5`` is replaced by the process's first step
(``u_min = u(t_min)``, 0.0099 on the DDPM schedule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, randn
from .base import student_x0
from .generators import from_linear_view
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["MDTDistillation", "TIME_SAMPLERS", "FORMS"]

TIME_SAMPLERS = ("logit_normal", "uniform")
FORMS = ("explicit", "implicit")


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
        tangent_norm: ``c`` of ``D / (||D|| + c)`` (the authors' ``d_norm``: 0.1); ``None`` keeps
            ``D`` as it is (then the fixed point of VM is exactly the marginal-data transport).
        form: ``"explicit"`` (the authors' target) or ``"implicit"`` (project variant: same
            fixed point, no self-feedback; module docstring).
        multiphase: ``1`` (the authors': transport to the data) or ``K`` (project variant: a
            state's transport goes to the lower edge ``t_lo`` of its phase of the uniform grid
            ``t_k = k / K``).
        time_sampler: ``"logit_normal"`` (``sigmoid(N(logit_mean, logit_std^2))``, the
            authors' with mean 1, std 1) or ``"uniform"``.
        vd_steps: Euler steps of the VD sample (``1``: the authors' one-step ``x_fake``; more:
            project variant, the generator's own ``K``-step sample).
    """

    def __init__(self, process: GaussianProcess, teacher_prediction: Optional[str] = None, *, lambda_vm: float = 1.0,
                 lambda_vd: float = 1.0, interval: float = 0.01, tangent_norm: Optional[float] = 0.1, form: str = "explicit",
                 multiphase: int = 1, time_sampler: str = "logit_normal", logit_mean: float = 1.0, logit_std: float = 1.0,
                 vd_steps: int = 1):
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if float(lambda_vm) < 0 or float(lambda_vd) < 0 or float(lambda_vm) + float(lambda_vd) == 0:
            raise ValueError(f"lambda_vm and lambda_vd must be >= 0 and not both 0, got {lambda_vm}, {lambda_vd}")
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
        if tangent_norm is not None and float(tangent_norm) <= 0:
            raise ValueError(f"tangent_norm must be positive or None, got {tangent_norm}")
        if float(logit_std) <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        if isinstance(multiphase, bool) or int(multiphase) != multiphase or int(multiphase) < 1:
            raise ValueError(f"multiphase must be a positive integer, got {multiphase!r}")
        if isinstance(vd_steps, bool) or int(vd_steps) != vd_steps or int(vd_steps) < 1:
            raise ValueError(f"vd_steps must be a positive integer, got {vd_steps!r}")
        self.process = process
        self.teacher_prediction = None if teacher_prediction is None else canonical_prediction(teacher_prediction)
        self.lambda_vm, self.lambda_vd = float(lambda_vm), float(lambda_vd)
        self.tangent_norm = None if tangent_norm is None else float(tangent_norm)
        self.form = form
        self.time_sampler, self.logit_mean, self.logit_std = time_sampler, float(logit_mean), float(logit_std)
        self.multiphase = int(multiphase)
        self.vd_steps = int(vd_steps)
        #: phase edges in ``t`` (increasing from 0 to 1) and in ``u``
        self.edges_t = torch.linspace(0.0, 1.0, self.multiphase + 1, dtype=torch.float64)
        self.edges_u = torch.tensor([0.0] + [float(process.u_of_t(float(e))) for e in self.edges_t[1:]], dtype=torch.float64)
        self.u_hi = float(self.edges_u[-1])
        self.u_min = float(process.u_of_t(getattr(process, "t_min", 1e-3)))
        self.interval = float(interval)
        if not 0.0 < self.interval < self.u_hi - self.u_min:
            raise ValueError(f"interval must lie in (0, {self.u_hi - self.u_min:.4g}) (the linear-view time range), got {interval}")

    # -- pieces -------------------------------------------------------------------------------
    def sample_u(self, B: int, generator: Generator = None, device=None) -> Tensor:
        """Linear-view times ``u`` ``[B]`` (float64) in ``[u(t_min) + Delta, u(1)]``."""
        g = first_generator(generator)
        gd = g.device if g is not None else None
        if self.time_sampler == "uniform":
            s = torch.rand(B, generator=g, device=gd, dtype=torch.float64)
        else:
            s = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(B, generator=g, device=gd, dtype=torch.float64))
        u = self.u_min + self.interval + (self.u_hi - self.u_min - self.interval) * s
        return u.to(device)

    def target_u(self, u: Tensor) -> Tensor:
        """``u(t_lo)`` ``[B]``: the lower phase edge of the teacher step's end ``u - Delta`` (an
        edge belongs to the phase below it, as on the sampling grid); 0 with one phase."""
        e = self.edges_u.to(u.device)
        idx = (torch.searchsorted(e, u - self.interval, right=False) - 1).clamp(0, self.multiphase - 1)
        return e[idx]

    def velocity(self, net, z: Tensor, u: Tensor, *, prediction: Optional[str] = None, mask=None, cond=None) -> Tensor:
        """Linear-view velocity ``(z - x0_net(x_t, t)) / u`` ``[B, ...]`` of a denoiser at
        ``(z [B, ...], u [B])``: the direction of its Euler (DDIM) step."""
        x, t = from_linear_view(self.process, z, u)
        x0 = student_x0(net, self.process, x, t, prediction=prediction, mask=mask, cond=cond)
        return self.process.project((z - x0) / append_dims(u.to(z.dtype), z.ndim), mask)

    def vm_target(self, student, teacher, z: Tensor, u: Tensor, v_s: Tensor, *, mask=None, cond=None) -> Tensor:
        """The VM target ``[B, ...]`` (no grad) at ``(z [B, ...], u [B])`` given the student's
        velocity there ``v_s``: ``v_T - (u - u_lo) D`` (``form="explicit"``) or its implicit
        rearrangement (module docstring)."""
        with torch.no_grad():
            tp = self.teacher_prediction or canonical_prediction(getattr(teacher, "prediction", "epsilon"))
            v_t = self.velocity(teacher, z, u, prediction=tp, mask=mask, cond=cond)
            u2 = u - self.interval
            z2 = self.process.project(z - self.interval * v_t, mask)
            v_s2 = self.velocity(student, z2, u2, mask=mask, cond=cond)
            d = (v_s.detach() - v_s2) / self.interval
            if self.tangent_norm is not None:  # the authors' d_norm
                d = d / append_dims(self._norm(d, mask) + self.tangent_norm, d.ndim)
            w = append_dims((u - self.target_u(u)).to(z.dtype), z.ndim)
            target = v_t - w * d
            if self.form == "implicit":  # the same fixed point without the self-feedback gain w / Delta
                target = v_s.detach() - self.interval / (w + self.interval) * (v_s.detach() - target)
            return target

    @staticmethod
    def _norm(v: Tensor, mask) -> Tensor:
        m = torch.ones_like(v) if mask is None else append_dims(mask.to(v.dtype), v.ndim).expand_as(v)
        return (v * v * m).flatten(1).sum(1).sqrt()

    def vm_loss(self, nets, x0: Tensor, eps: Tensor, u: Tensor, *, mask=None, cond=None) -> Tensor:
        """``L_VM`` ``[B]`` on the states ``z_u = (1 - u) x0 + u eps``."""
        ue = append_dims(u.to(x0.dtype), x0.ndim)
        z = self.process.project((1 - ue) * x0 + ue * eps, mask)
        v_s = self.velocity(nets["student"], z, u, mask=mask, cond=cond)
        tgt = self.vm_target(nets["student"], nets["teacher"], z, u, v_s, mask=mask, cond=cond)
        return masked_mean((v_s - tgt) ** 2, mask)

    def fake_sample(self, student, x_T: Tensor, *, mask=None, cond=None) -> Tensor:
        """The VD sample ``[B, ...]`` from prior noise ``x_T`` ``[B, ...]``: the one-step sample
        ``x0_S(x_T, t = 1)`` (the authors' ``x_fake = noise - v_fake``) or, for ``vd_steps = K >
        1``, the ``K``-step Euler (DDIM) sample on the uniform grid with the gradient through
        its last step only."""
        p = self.process
        B = x_T.shape[0]
        ts = torch.linspace(1.0, 0.0, self.vd_steps + 1, dtype=torch.float64, device=x_T.device)
        x = p.project(x_T, mask)
        with torch.no_grad():
            for k in range(self.vd_steps - 1):
                t, tn = ts[k].expand(B), ts[k + 1].expand(B)
                x0 = student_x0(student, p, x, t, mask=mask, cond=cond)
                eps = (x - append_dims(p.alpha(t).to(x.dtype), x.ndim) * x0) / append_dims(p.sigma(t).to(x.dtype), x.ndim)
                a_n, s_n = append_dims(p.alpha(tn).to(x.dtype), x.ndim), append_dims(p.sigma(tn).to(x.dtype), x.ndim)
                x = p.project(a_n * x0 + s_n * eps, mask)
        return student_x0(student, p, x, ts[self.vd_steps - 1].expand(B), mask=mask, cond=cond)

    def vd_loss(self, nets, x_T: Tensor, eps: Tensor, u: Tensor, *, mask=None, cond=None) -> Tensor:
        """``L_VD`` ``[B]``: the generator's sample from ``x_T`` (:meth:`fake_sample`), noised to
        ``u`` with ``eps``; value ``||r||^2``, gradient ``-2 r`` on the sample."""
        student = nets["student"]
        x_f = self.fake_sample(student, x_T, mask=mask, cond=cond)
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
                f"tangent_norm={self.tangent_norm}, form={self.form!r}, multiphase={self.multiphase}, "
                f"time_sampler={self.time_sampler!r}, vd_steps={self.vd_steps})")


# -- recipe ----------------------------------------------------------------------------------------


@dataclass
class MDTDistOptions(MethodOptions):
    """Options of method ``mdt_dist`` (``distill.KEY=VALUE``, documented in :func:`mdt_dist_recipe`)."""

    lambda_vm: float = 1.0
    lambda_vd: float = 1.0
    interval: float = 0.01
    tangent_norm: Optional[float] = 0.1
    form: str = "explicit"
    multiphase: int = 1
    vd_steps: int = 1
    time_sampler: str = "logit_normal"
    logit_mean: float = 1.0
    logit_std: float = 1.0
    prediction: Optional[str] = "v"
    backbone: Optional[dict] = None
    init: str = "teacher"

    def __post_init__(self):
        super().__post_init__()
        if self.backbone is not None and not isinstance(self.backbone, dict):
            raise ValueError(f"backbone must be a dict of domain.build_backbone kwargs or None, got {self.backbone!r}")


@register_method("mdt_dist", options=MDTDistOptions, kind="flow", paper="Zhou et al. 2025 (MDT-dist)",
                 description="marginal-data transport distillation: velocity matching + velocity distillation, "
                             "flow student sampled with a few Euler (DDIM) steps")
def mdt_dist_recipe(ctx: RecipeContext, opts: MDTDistOptions) -> DistillSetup:
    """MDT-dist of the domain teacher into a flow student (the teacher's architecture unless
    ``backbone`` kwargs are given; ``init="teacher"`` loads the teacher's weights, which is the
    teacher itself only when ``prediction`` is the teacher's: with the default ``v`` and an
    epsilon teacher it is not, see the module docstring). The defaults are the authors'
    (``distill_type="discrete"``, explicit target, ``d_norm`` 0.1, ``lambda_vm = lambda_vd = 1``,
    logit-normal(1, 1) times, transport to the data, one-step VD sample); ``multiphase``,
    ``vd_steps``, ``form="implicit"``, ``tangent_norm=None`` are the project variants of
    :class:`MDTDistillation`. ``prediction``: the student's parameterization (default ``v``: its x0
    ``alpha x - sigma v`` is well conditioned at ``t = 1``, where an epsilon student's
    ``(x - sigma eps) / alpha`` amplifies errors by ``1 / alpha(1)``, about 160 for the DDPM
    schedule; ``None`` = the teacher's; the authors' student predicts the velocity)."""
    from .generators import FlowGenerator

    if opts.prediction is not None:
        canonical_prediction(opts.prediction)  # validates the name
    obj = MDTDistillation(ctx.process, ctx.prediction, lambda_vm=opts.lambda_vm, lambda_vd=opts.lambda_vd, interval=opts.interval,
                          tangent_norm=opts.tangent_norm, form=opts.form, multiphase=opts.multiphase, time_sampler=opts.time_sampler, logit_mean=opts.logit_mean,
                          logit_std=opts.logit_std, vd_steps=opts.vd_steps)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.backbone, prediction=opts.prediction)
    student = make_student(ctx, sspec, init=opts.init)
    nets = {"student": student, "teacher": ctx.teacher}
    proc = ctx.process

    def make_generator(n):
        return FlowGenerator(n["student"], proc, sampler="euler", prediction=sspec["prediction"])

    info = {"student_params": sum(p.numel() for p in student.parameters())}
    return DistillSetup(obj, nets, ["student"], ["student"], make_generator, info=info)
