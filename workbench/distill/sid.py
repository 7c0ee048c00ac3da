"""SiD: Score identity Distillation (Zhou et al. 2024, "Score identity Distillation:
Exponentially Fast Distillation of Pretrained Diffusion Models for One-Step Generation"),
with multistep generation and noise modulation as in Proteina-SiD (Xie et al. 2025,
"Distilled Protein Backbone Generation").

Data-free. A generator ``G`` (an x0 student sampled by multistep consistency sampling on a
``K``-step grid, :class:`~.base.FewStepGenerator`) produces ``x_g``; at
``x_t = alpha_t x_g + sigma_t eps`` the teacher ("real score", ``f_r``) and an auxiliary
fake score (``f_f``, trained by denoising on generator samples,
:func:`~.score_distill.fake_score_loss`) give x0 predictions, and the generator minimises,
per sample (the paper's alpha-weighted generator loss, Sec. 4 / Algorithm 1, in the form and with
the per-sample normaliser of the authors' ``training/sid_loss.py``; ``alpha`` the SiD
coefficient)::

    L = mean_elements[(f_r - f_f) * ((f_r - x_g) - alpha (f_r - f_f))] / w,
    w = stopgrad(mean_elements |x_g - f_r|)

**Where the gradient flows.** SiD differentiates ``L`` through ``x_g`` *and* through
``x_t = alpha_t x_g + sigma_t eps`` into both score networks (their weights frozen, their
inputs not): the score identity turns the Fisher divergence into an expectation whose
reparameterised gradient needs ``d f(x_t) / d x_t`` (the authors' code builds ``x_t`` from the
generator output with gradients and calls both nets on it). This is what separates SiD from
DMD: with the score outputs treated as constants (``score_grad=False``) the gradient of ``L``
in ``x_g`` is ``(f_f - f_r) / w`` per element, exactly the DMD gradient, and ``alpha`` has no
effect (a test checks this identity).

Multistep: ``x_{t_k}`` for a training step ``k`` comes from backward simulation
(:func:`~.score_distill.rollout`: the generator itself from noise, re-noising with
``train_noise_scale`` times fresh noise); at inference ``FewStepGenerator.generate(...,
noise_scale=s)`` scales the re-injected noise (inference-time noise modulation; Proteina-SiD
needs 8-16 steps with ``s < 1`` on protein backbones).

Time convention: ``t = 0`` data, ``t = 1`` noise; ``x_t = alpha(t) x0 + sigma(t) eps``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess
from ..utils import Generator
from .base import student_x0
from .recipes import DistillSetup, RecipeContext, make_student, register_method, student_spec
from .score_distill import _gen, fake_score_loss, frozen, noise_like, rollout, sample_t, teacher_x0

__all__ = ["SiD", "sid_loss", "karras_times", "T_SAMPLINGS", "generator_grid"]

#: how the generator loss draws its noise levels (see :meth:`SiD.sample_times`)
T_SAMPLINGS = ("uniform", "karras")


def sid_loss(x_g: Tensor, f_real: Tensor, f_fake: Tensor, alpha: float = 1.2, mask: Optional[Tensor] = None,
             eps: float = 1e-5) -> Tensor:
    """SiD generator loss ``[B]`` (Zhou et al. 2024, Sec. 4 / Algorithm 1; the form and the
    per-sample normaliser of the authors' code).

    Args:
        x_g: ``[B, ...]`` generator samples (with gradients).
        f_real, f_fake: ``[B, ...]`` teacher and fake-score x0 predictions at
            ``x_t = alpha_t x_g + sigma_t eps`` (with gradients through ``x_t`` when the caller
            wants SiD's full gradient, detached for the DMD-equivalent one).
        alpha: the SiD coefficient (1.2 for images in the paper, 1.0 for protein backbones).
        mask: ``[B, N]`` validity mask for set states (padding ignored in the means).
    Returns:
        ``mean[(f_r - f_f) ((f_r - x_g) - alpha (f_r - f_f))] / stopgrad(mean |x_g - f_r|)``
        per sample (means over real elements).
    """
    with torch.no_grad():
        w = masked_mean((x_g - f_real).abs(), mask).clamp_min(eps)
    d = f_real - f_fake
    return masked_mean(d * ((f_real - x_g) - float(alpha) * d), mask) / w


def karras_times(process: GaussianProcess, B: int, generator: Generator, device, *, t_frac: float = 0.8,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """SiD's noise levels for the generator loss (the authors' code): ``u ~ U[0, t_frac]``,
    ``sigma~ = (sigma_max^(1/rho) + (1 - u) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    (the EDM / Karras rho-schedule, ``u = 0`` at ``sigma_min``; ``t_frac = tmax / 1000``), mapped
    to process time through ``lambda = -log sigma~`` (``sigma~ = sigma / alpha``). Returns ``[B]``
    float64 times."""
    g = _gen(generator)
    u = t_frac * torch.rand(B, generator=g, device=g.device if g is not None else None, dtype=torch.float64).to(device)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + (1.0 - u) * (lo - hi)) ** rho
    return process.t_of_lambda(-torch.log(sig)).to(torch.float64)


def generator_grid(process: GaussianProcess, steps: int, init_sigma: Optional[float] = 2.5) -> Tensor:
    """The generator's ``[steps + 1]`` float64 grid, uniform in ``t`` from ``t(init_sigma)`` to 0,
    where ``sigma / alpha = init_sigma`` (SiD's ``init_sigma = 2.5``: the generator reads scaled
    pure noise at a moderate noise level, where an epsilon-parameterised student's x0 is well
    conditioned; ``None`` starts at ``t = 1``), see
    :func:`~workbench.distill.generators.t_of_init_sigma`."""
    from .generators import default_grid, t_of_init_sigma

    return default_grid(process, int(steps), t_start=t_of_init_sigma(process, init_sigma))


class SiD:
    """SiD objective with phases ``fake`` (fake-score denoising on generator samples) and
    ``generator`` (every ``generator_every`` steps; SiD alternates 1:1).

    ``nets``: ``student`` (x0 generator), ``teacher`` (frozen), ``fake_score`` (initialised from
    the teacher).

    Args:
        process: the Gaussian process of teacher and student.
        grid: ``[K + 1]`` the generator's sampling grid (decreasing to 0).
        teacher_prediction: the teacher's parameterization (``None``: ``teacher.prediction``).
        alpha: the SiD coefficient of :func:`sid_loss`.
        t_min, t_max: time range of the fake-score loss and of ``t_sampling="uniform"``
            (also the clamp of ``"karras"`` times).
        t_sampling: ``"karras"`` (SiD's rho-schedule, :func:`karras_times`, clamped to
            ``[t_min, t_max]``) or ``"uniform"`` (``t ~ U[t_min, t_max]``, as DMD2).
        score_grad: differentiate through ``x_t`` into the teacher and fake score (SiD); ``False``
            treats their outputs as constants (then the update equals DMD's).
        backward_simulation: multistep inputs from the generator itself (else noised data).
        generator_every: fake-score updates per generator update.
        train_noise_scale: scale of the fresh noise re-injected between steps during backward
            simulation (1 = the consistency sampler; match the inference ``noise_scale`` to
            train for noise-modulated sampling).
    """

    def __init__(self, process: GaussianProcess, grid, *, teacher_prediction: Optional[str] = None, alpha: float = 1.2,
                 t_min: float = 0.02, t_max: float = 0.98, t_sampling: str = "karras", score_grad: bool = True,
                 backward_simulation: bool = True, generator_every: int = 1, train_noise_scale: float = 1.0):
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}")
        if int(generator_every) != generator_every or int(generator_every) < 1:
            raise ValueError(f"generator_every must be a positive integer, got {generator_every}")
        if not float(train_noise_scale) >= 0.0:
            raise ValueError(f"train_noise_scale must be >= 0, got {train_noise_scale}")
        self.process = process
        self.grid = torch.as_tensor(grid, dtype=torch.float64)
        self.teacher_prediction = teacher_prediction
        self.alpha = float(alpha)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.t_sampling = t_sampling
        self.score_grad = bool(score_grad)
        self.backward_simulation = bool(backward_simulation)
        self.generator_every = int(generator_every)
        self.train_noise_scale = float(train_noise_scale)
        self.phases = [("fake", ["fake_score"], 1), ("generator", ["student"], self.generator_every)]

    def generator_sample(self, nets, batch: Batch, generator: Generator, step: Optional[int] = None):
        """``(x_g [B, ...] with grad, x_tk, t_k [B])`` at a random (or given) step of the grid."""
        return rollout(nets["student"], self.process, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                       step=step, noise_scale=self.train_noise_scale)

    def sample_times(self, B: int, generator: Generator, device) -> Tensor:
        """``[B]`` float64 noise levels of the generator loss."""
        if self.t_sampling == "uniform":
            return sample_t(B, generator, device, self.t_min, self.t_max)
        return karras_times(self.process, B, generator, device).clamp(self.t_min, self.t_max)

    def generator_loss(self, nets, x_g: Tensor, t: Tensor, eps: Tensor, mask=None, cond=None) -> Tensor:
        """:func:`sid_loss` ``[B]`` at ``x_t = alpha_t x_g + sigma_t eps`` (``t`` ``[B]``,
        ``eps`` ``[B, ...]``); gradients reach ``x_g`` only (the score nets are frozen)."""
        p = self.process
        teacher, fake = nets["teacher"], nets["fake_score"]
        if self.score_grad:
            x_t = p.add_noise(x_g, t, eps, mask)
            with frozen(teacher, fake):
                f_r = student_x0(teacher, p, x_t, t, prediction=self.teacher_prediction, mask=mask, cond=cond)
                f_f = student_x0(fake, p, x_t, t, mask=mask, cond=cond)
        else:
            x_t = p.add_noise(x_g.detach(), t, eps, mask)
            f_r = teacher_x0(teacher, p, x_t, t, mask, cond, self.teacher_prediction)
            f_f = teacher_x0(fake, p, x_t, t, mask, cond)
        return sid_loss(x_g, f_r, f_f, self.alpha, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                x_g, _, _ = self.generator_sample(nets, batch, generator)
            return fake_score_loss(nets["fake_score"], p, x_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        x_g, _, _ = self.generator_sample(nets, batch, generator)
        t = self.sample_times(len(batch), generator, x_g.device)
        eps = noise_like(p, x_g, mask, generator)
        return self.generator_loss(nets, x_g, t, eps, mask, cond)

    def __repr__(self) -> str:
        return (f"SiD(steps={len(self.grid) - 1}, alpha={self.alpha}, t=[{self.t_min}, {self.t_max}], t_sampling={self.t_sampling!r}, "
                f"score_grad={self.score_grad}, generator_every={self.generator_every}, train_noise_scale={self.train_noise_scale})")


@register_method("sid", kind="consistency", paper="Zhou et al. 2024 (SiD); Xie et al. 2025 (Proteina-SiD multistep)",
                 description="score identity distillation: data-free, fake score, loss through x_t, multistep with noise modulation")
def sid_recipe(ctx: RecipeContext, *, alpha: float = 1.2, t_min: float = 0.02, t_max: float = 0.98, t_sampling: str = "karras",
               init_sigma: Optional[float] = 2.5, score_grad: bool = True, backward_simulation: bool = True, generator_every: int = 1,
               train_noise_scale: float = 1.0, student: Optional[dict] = None) -> DistillSetup:
    """SiD on the domain's teacher: the student (x0 generator on a uniform ``student_steps``
    grid from ``t(init_sigma)`` to 0, :func:`generator_grid`) and the fake score start from the teacher. ``student``: backbone
    kwargs for a smaller student. Only the shapes, masks and conditions of the training batches
    are used (data-free)."""
    from .base import FewStepGenerator

    grid = generator_grid(ctx.process, ctx.student_steps, init_sigma)
    obj = SiD(ctx.process, grid, teacher_prediction=ctx.prediction, alpha=alpha, t_min=t_min, t_max=t_max, t_sampling=t_sampling,
              score_grad=score_grad, backward_simulation=backward_simulation, generator_every=generator_every,
              train_noise_scale=train_noise_scale)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=student)
    nets = {"student": make_student(ctx, sspec), "teacher": ctx.teacher,
            "fake_score": make_student(ctx, student_spec(ctx.teacher, ctx.domain))}
    spec = {"kind": "consistency", "student": sspec, "parameterization": "x0", "sigma_data": 0.5,
            "timesteps": [float(t) for t in grid], "noise_scale": float(train_noise_scale)}

    def make_generator(n):  # samples by default with the noise scale it was trained with
        return FewStepGenerator(n["student"], ctx.process, parameterization="x0", timesteps=grid, noise_scale=train_noise_scale)

    # Adam without momentum (beta1 = 0) for both nets, as the authors' code
    return DistillSetup(obj, nets, ["student", "fake_score"], ["student"], spec, make_generator,
                        train_defaults={"lr": 3e-4, "betas": (0.0, 0.999), "ema_decay": 0.99})
