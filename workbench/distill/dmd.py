"""DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image
Synthesis").

A few-step generator ``G`` (an x0 student sampled by multistep consistency sampling on a
``K``-step grid) is trained so that its output distribution matches the teacher's: at a noisy
generator sample ``x_t = alpha x0_g + sigma eps`` the teacher ("real score") and an auxiliary
"fake score" trained by denoising on generator samples give x0 predictions ``mu_real`` and
``mu_fake``; the generator follows ``-(mu_fake - mu_real)`` (the gradient of
``KL(p_fake || p_real)``, DMD eq. 7) through :func:`~.score_distill.dmd_loss`.

DMD2's additions, all here: no regression loss; two time-scale updates (the fake score makes
``generator_every`` updates per generator update, Sec. 4.2); an optional GAN head on noisy
samples (non-saturating loss, Sec. 4.3; the discriminator is built from the domain's backbone,
:class:`~.score_distill.Discriminator`); backward simulation for multi-step generators (the
training inputs at step ``k`` come from running the generator itself, Sec. 4.5).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import Batch
from ..utils import Generator, model_kwargs
from .score_distill import Discriminator, dmd_loss, fake_score_loss, frozen, noise_like, rollout, sample_t, teacher_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["DMD2"]


class DMD2:
    """DMD2 objective with phases ``fake`` (fake score and discriminator, every step) and
    ``generator`` (every ``generator_every`` steps).

    ``nets``: ``student`` (x0 generator), ``teacher`` (frozen), ``fake_score`` (initialised from
    the teacher), optional ``disc`` (:class:`~.score_distill.Discriminator`, when
    ``gan_weight > 0``).

    Args:
        process: the Gaussian process of teacher and student.
        grid: ``[K + 1]`` the generator's sampling grid (decreasing to 0).
        t_min, t_max: range of the distribution-matching / fake-score times.
        gan_weight: weight of the generator's GAN loss (0 = no GAN head); the discriminator
            loss has weight 1 in the fake phase.
        backward_simulation: multi-step inputs from the generator itself (else noised data).
        generator_every: two time-scale ratio (fake-score updates per generator update).
    """

    def __init__(self, process, grid, *, teacher_prediction: Optional[str] = None, t_min: float = 0.02, t_max: float = 0.98,
                 gan_weight: float = 0.0, backward_simulation: bool = True, generator_every: int = 5):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if int(generator_every) < 1:
            raise ValueError(f"generator_every must be a positive integer, got {generator_every}")
        if gan_weight < 0:
            raise ValueError(f"gan_weight must be >= 0, got {gan_weight}")
        self.process = process
        self.grid = torch.as_tensor(grid, dtype=torch.float64)
        self.teacher_prediction = teacher_prediction
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.gan_weight = float(gan_weight)
        self.backward_simulation = bool(backward_simulation)
        self.generator_every = int(generator_every)
        fake_nets = ["fake_score"] + (["disc"] if self.gan_weight > 0 else [])
        self.phases = [("fake", fake_nets, 1), ("generator", ["student"], self.generator_every)]

    def _generate(self, nets, batch: Batch, generator: Generator):
        return rollout(nets["student"], self.process, self.grid, batch, generator, backward_simulation=self.backward_simulation)

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                x0_g, _, _ = self._generate(nets, batch, generator)
            loss = fake_score_loss(nets["fake_score"], p, x0_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
            if self.gan_weight > 0:
                t = sample_t(len(batch), generator, batch.x.device, self.t_min, self.t_max)
                real_t = p.add_noise(batch.x, t, noise_like(p, batch.x, mask, generator), mask)
                fake_t = p.add_noise(x0_g, t, noise_like(p, x0_g, mask, generator), mask)
                d = nets["disc"]
                loss = loss + F.softplus(-d(real_t, t.to(real_t.dtype), **model_kwargs(mask, cond))) \
                    + F.softplus(d(fake_t, t.to(fake_t.dtype), **model_kwargs(mask, cond)))
            return loss
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        x0_g, _, _ = self._generate(nets, batch, generator)
        t = sample_t(len(batch), generator, x0_g.device, self.t_min, self.t_max)
        eps = noise_like(p, x0_g, mask, generator)
        x_t = p.add_noise(x0_g.detach(), t, eps, mask)
        mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        mu_fake = teacher_x0(nets["fake_score"], p, x_t, t, mask, cond)
        loss = dmd_loss(x0_g, mu_real, mu_fake, mask)
        if self.gan_weight > 0:
            with frozen(nets["disc"]):
                xg_t = p.add_noise(x0_g, t, eps, mask)
                loss = loss + self.gan_weight * F.softplus(-nets["disc"](xg_t, t.to(xg_t.dtype), **model_kwargs(mask, cond)))
        return loss

    def __repr__(self) -> str:
        return (f"DMD2(steps={len(self.grid) - 1}, t=[{self.t_min}, {self.t_max}], gan_weight={self.gan_weight}, "
                f"backward_simulation={self.backward_simulation}, generator_every={self.generator_every})")


@dataclass
class DMD2Options(MethodOptions):
    """Options of method ``dmd2`` (``distill.KEY=VALUE``, documented in :func:`dmd2_recipe`)."""

    t_min: float = 0.02
    t_max: float = 0.98
    gan_weight: float = 0.0
    backward_simulation: bool = True
    generator_every: int = 5
    student: Optional[dict] = None
    init_sigma: Optional[float] = 2.5


@register_method("dmd2", options=DMD2Options, kind="consistency", paper="Yin et al. 2024 (DMD2)",
                 description="distribution matching with a fake score, two time-scale updates, optional GAN head, backward simulation")
def dmd2_recipe(ctx: RecipeContext, opts: DMD2Options) -> DistillSetup:
    """DMD2 on the domain's teacher: the student (x0 generator on a ``student_steps`` grid
    uniform in ``t`` from ``t(init_sigma)`` to 0, see
    :func:`~workbench.distill.generators.t_of_init_sigma`; ``None`` starts at ``t = 1``) and
    the fake score start from the teacher; the discriminator (``gan_weight > 0``) from the
    teacher's architecture. ``student``: backbone kwargs for a smaller student."""
    from .base import FewStepGenerator
    from .generators import default_grid, t_of_init_sigma

    grid = default_grid(ctx.process, ctx.student_steps, t_start=t_of_init_sigma(ctx.process, opts.init_sigma))
    obj = DMD2(ctx.process, grid, teacher_prediction=ctx.prediction, t_min=opts.t_min, t_max=opts.t_max, gan_weight=opts.gan_weight,
               backward_simulation=opts.backward_simulation, generator_every=opts.generator_every)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.student)
    nets = {"student": make_student(ctx, sspec), "teacher": ctx.teacher,
            "fake_score": make_student(ctx, student_spec(ctx.teacher, ctx.domain))}
    trainable = ["student", "fake_score"]
    if opts.gan_weight > 0:
        nets["disc"] = Discriminator(copy.deepcopy(nets["fake_score"]))
        trainable.append("disc")

    def make_generator(n):
        return FewStepGenerator(n["student"], ctx.process, parameterization="x0", timesteps=grid)

    return DistillSetup(obj, nets, trainable, ["student"], make_generator, train_defaults={"lr": 1e-3, "ema_decay": 0.99})
