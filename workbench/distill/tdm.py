"""TDM: Trajectory Distribution Matching (Luo et al. 2025, "Learning Few-Step Diffusion Models
by Trajectory Distribution Matching", ICCV 2025).

The student is a ``K``-step *deterministic* DDIM sampler of its own predictions on the grid
``t_0 > t_1 > ... > t_K = 0`` (``x_{t_{k+1}} = alpha_{k+1} x0_k + sigma_{k+1} eps_k`` with
``(x0_k, eps_k)`` the student's prediction at ``(x_{t_k}, t_k)``), exported as a ``flow``
generator with the ``euler`` (DDIM) sampler on that grid. TDM matches, data-free and at the
distribution level, the student's *intermediate states* to the teacher's marginals:

* step ``k`` (uniform in ``0..K-1`` per sample, its input ``x_{t_k}`` from the student's own
  trajectory without gradients) produces the intermediate state at ``t_m``
  ``x_m = alpha_m x0_g + sigma_m eps_g`` (``t_m = t_{k+1}``, or uniform in
  ``[t_{k+1}, t_k)`` with ``rand_mid``, which regularises towards other schedules);
* ``x_m`` is diffused forward to ``t`` with the exact Gaussian transition of the process,
  ``x_t = (alpha_t / alpha_m) x_m + sqrt(sigma_t^2 - (alpha_t sigma_m / alpha_m)^2) n``
  (:func:`diffuse`), whose marginal is the teacher's ``p_t`` exactly when ``x_m ~ p_{t_m}``;
* **sampling-steps-aware, decoupled targets**: with ``separate=True`` (the authors' suggested
  mode) ``t ~ U[max(t_m, t_floor), t_k]``, so step ``k`` is matched only on its own interval
  of the ``K``-step grid, against the teacher's marginal at its own end ``t_{k+1}`` (not the
  data distribution); ``separate=False`` diffuses up to the top of the grid;
* the generator follows the distribution-matching direction ``mu_fake - mu_real`` of the x0
  predictions of the fake score and the teacher at ``x_t`` (:func:`~.score_distill.dmd_loss`
  on ``x0_g``, or the authors' pseudo-Huber variant);
* the fake score is trained on the same diffused intermediate states to predict the student's
  ``x0_g`` (the authors' code), with min-SNR weights
  ``min(alpha_t^2 / sigma_t^2, snr_clip)`` and the importance weight
  ``exp(-mean(m^2) / 2) / exp(-mean(n^2) / 2)`` that corrects for the non-Gaussian "mixed
  noise" ``m = (x_t - alpha_t x0_g) / sigma_t``.

For the last step with ``t_m = 0`` this is exactly DMD on the final samples. Both nets are
updated 1:1 with Adam without momentum (``betas = (0, 0.999)``; the authors use ``(0, 0.95)``);
on the toy GMM ``beta1 = 0`` and a learning rate of ``1e-4`` (``3e-4`` oscillated at 4 steps)
mattered more than any other setting.

Time convention: ``t = 0`` data, ``t = 1`` noise; ``x_t = alpha(t) x0 + sigma(t) eps``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs
from .score_distill import dmd_loss, noise_like, teacher_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["TDM", "TDMSample", "diffuse", "transition", "student_x0_eps", "ddim_trajectory", "FAKE_WEIGHTS", "LOSSES"]

FAKE_WEIGHTS = ("min_snr", "uniform")
LOSSES = ("l2", "huber")


def _coef(process: GaussianProcess, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    return (append_dims(process.alpha(t).to(x.dtype), x.ndim), append_dims(process.sigma(t).to(x.dtype), x.ndim))


def student_x0_eps(net: nn.Module, process: GaussianProcess, x: Tensor, t: Tensor, *, prediction: Optional[str] = None,
                   mask=None, cond=None) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` ``[B, ...]`` (projected) of ``net`` at ``(x [B, ...], t [B] float64)``, whatever
    its parameterization (``prediction``, default ``net.prediction``)."""
    out = net(x, t.to(x.dtype), **model_kwargs(mask, cond))
    pred = canonical_prediction(prediction or getattr(net, "prediction", "epsilon"))
    x0, eps = process.to_x0_eps(out, pred, x, t)
    return process.project(x0.to(x.dtype), mask), process.project(eps.to(x.dtype), mask)


def ddim_trajectory(student: nn.Module, process: GaussianProcess, grid: Tensor, x_start: Tensor, upto: int, *,
                    prediction: Optional[str] = None, mask=None, cond=None) -> list[Tensor]:
    """The student's deterministic DDIM states ``[x_{t_0}, ..., x_{t_upto}]`` (each ``[B, ...]``)
    from ``x_start`` at ``grid[0]``, without gradients (Song et al. 2021, eq. 12 with the
    student's own ``(x0, eps)``)."""
    B = x_start.shape[0]
    states = [x_start]
    with torch.no_grad():
        x = x_start
        for j in range(upto):
            tj = grid[j].expand(B).to(x.device)
            x0, eps = student_x0_eps(student, process, x, tj, prediction=prediction, mask=mask, cond=cond)
            a, s = _coef(process, grid[j + 1].expand(B).to(x.device), x)
            x = process.project(a * x0 + s * eps, mask)
            states.append(x)
    return states


def transition(process: GaussianProcess, t_m: Tensor, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The exact Gaussian transition of the process from ``t_m`` to ``t >= t_m`` (``[B]`` each):
    ``x_t = r x_{t_m} + beta n`` with ``r = alpha_t / alpha_m`` and
    ``beta^2 = sigma_t^2 - r^2 sigma_m^2``; returns ``(r, beta)`` broadcastable to ``x``."""
    a_m, s_m = _coef(process, t_m, x)
    a_t, s_t = _coef(process, t, x)
    r = a_t / a_m
    return r, (s_t**2 - (r * s_m) ** 2).clamp_min(0.0).sqrt()


def diffuse(process: GaussianProcess, x0: Tensor, eps: Tensor, t_m: Tensor, t: Tensor, noise: Tensor,
            mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Forward-diffuse the intermediate state ``x_m = alpha_m x0 + sigma_m eps`` from ``t_m`` to
    ``t >= t_m`` (``[B]`` each) with the exact transition (:func:`transition`):
    ``x_t = (alpha_t / alpha_m) x_m + beta n``, ``beta^2 = sigma_t^2 - (alpha_t sigma_m / alpha_m)^2``.

    Returns ``(x_t, m)`` ``[B, ...]`` with ``x_t = alpha_t x0 + sigma_t m``: ``m`` the "mixed
    noise" (``m = n`` when ``t_m = 0``)."""
    _, s_m = _coef(process, t_m, x0)
    a_t, s_t = _coef(process, t, x0)
    r, beta = transition(process, t_m, t, x0)
    mixed_noise = r * s_m * eps + beta * noise
    x_t = process.project(a_t * x0 + mixed_noise, mask)
    return x_t, process.project(mixed_noise / s_t, mask)


class TDMSample(NamedTuple):
    """One TDM training sample per batch element (all ``[B, ...]``, times ``[B]`` float64)."""

    x0_g: Tensor  #: the student's x0 at its trajectory state (with gradients when enabled)
    eps_g: Tensor  #: the student's epsilon there
    x_t: Tensor  #: the intermediate state diffused to ``t`` (detached)
    mixed: Tensor  #: ``(x_t - alpha_t x0_g) / sigma_t``
    noise: Tensor  #: the fresh transition noise ``n``
    t_m: Tensor  #: intermediate time
    t: Tensor  #: diffusion time


class TDM:
    """TDM objective with phases ``fake`` (the fake score on diffused intermediate states) and
    ``generator`` (every ``generator_every`` steps; the authors alternate 1:1).

    ``nets``: ``student`` (the few-step DDIM generator's denoiser), ``teacher`` (frozen),
    ``fake_score`` (initialised from the teacher).

    Args:
        process: the Gaussian process of teacher and student.
        grid: ``[K + 1]`` the generator's sampling grid (decreasing to 0).
        teacher_prediction: the teacher's parameterization (``None``: ``teacher.prediction``).
        separate: diffuse step ``k``'s state only within ``[t_{k+1}, t_k]`` (decoupled per-step
            targets); else up to ``min(grid[0], t_max)``.
        rand_mid: the intermediate time ``t_m ~ U[t_{k+1}, t_k)`` instead of ``t_{k+1}``.
        t_floor: smallest diffusion time (the authors' ``20 / 1000``).
        t_max: largest diffusion time (the teacher's x0 is ill-conditioned at ``t -> 1``).
        fake_weight: ``"min_snr"`` (``min(snr, snr_clip)``, the authors') or ``"uniform"``.
        importance_weight: multiply the fake-score loss by the mixed-noise importance weight.
        loss: ``"l2"`` (:func:`~.score_distill.dmd_loss`) or ``"huber"`` (pseudo-Huber on the
            same target, ``c = huber_c``, divided by ``mean |x0_g - mu_real|``).
        generator_every: fake-score updates per generator update.
    """

    def __init__(self, process: GaussianProcess, grid, *, teacher_prediction: Optional[str] = None, separate: bool = True,
                 rand_mid: bool = False, t_floor: float = 0.02, t_max: float = 0.98, fake_weight: str = "min_snr",
                 snr_clip: float = 5.0, importance_weight: bool = True, loss: str = "l2", huber_c: float = 1e-3,
                 generator_every: int = 1):
        if fake_weight not in FAKE_WEIGHTS:
            raise ValueError(f"unknown fake_weight {fake_weight!r}; valid: {', '.join(FAKE_WEIGHTS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        if not 0.0 <= t_floor < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_floor < t_max <= 1, got t_floor={t_floor}, t_max={t_max}")
        if not snr_clip > 0:
            raise ValueError(f"snr_clip must be > 0, got {snr_clip}")
        if not huber_c > 0:
            raise ValueError(f"huber_c must be > 0, got {huber_c}")
        if int(generator_every) != generator_every or int(generator_every) < 1:
            raise ValueError(f"generator_every must be a positive integer, got {generator_every}")
        self.process = process
        self.grid = torch.as_tensor(grid, dtype=torch.float64)
        if len(self.grid) < 2 or float(self.grid[-1]) != 0.0 or not bool((self.grid[1:] < self.grid[:-1]).all()):
            raise ValueError("grid must be strictly decreasing and end at t=0")
        self.teacher_prediction = teacher_prediction
        self.separate, self.rand_mid = bool(separate), bool(rand_mid)
        self.t_floor, self.t_max = float(t_floor), float(t_max)
        self.fake_weight, self.snr_clip = fake_weight, float(snr_clip)
        self.importance_weight = bool(importance_weight)
        self.loss, self.huber_c = loss, float(huber_c)
        self.generator_every = int(generator_every)
        self.phases = [("fake", ["fake_score"], 1), ("generator", ["student"], self.generator_every)]

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    def times(self, k: Tensor, generator: Generator) -> tuple[Tensor, Tensor, Tensor]:
        """For step indices ``k`` ``[B]``: ``(t_k, t_m, t)`` ``[B]`` float64: the step's input
        time, the intermediate time and the diffusion time (see the class docstring)."""
        g = first_generator(generator)
        dev = k.device
        u = torch.rand(2, len(k), generator=g, device=g.device if g is not None else None, dtype=torch.float64).to(dev)
        grid = self.grid.to(dev)
        t_k, t_next = grid[k], grid[k + 1]
        t_m = t_next + u[0] * (torch.clamp(t_k, max=self.t_max) - t_next).clamp_min(0.0) if self.rand_mid else t_next
        top = t_k if self.separate else torch.full_like(t_k, float(grid[0]))
        hi = torch.maximum(torch.clamp(top, max=self.t_max), t_m)  # never below t_m (diffusion goes up in t)
        lo = torch.minimum(torch.clamp(t_m, min=self.t_floor), hi)
        t = lo + u[1] * (hi - lo)
        return t_k, t_m, t

    def sample(self, nets, batch: Batch, generator: Generator, *, step=None) -> TDMSample:
        """One training sample per batch element (:class:`TDMSample`): the student's ``(x0_g,
        eps_g)`` at its own trajectory state ``x_{t_k}`` (with gradients when enabled), its
        intermediate state diffused to ``t``. ``step``: force the step indices (an int or
        ``[B]``; default uniform per sample)."""
        p, mask, cond = self.process, batch.mask, batch.cond
        x = batch.x
        B = x.shape[0]
        g = first_generator(generator)
        k = torch.randint(0, self.steps, (B,), generator=g) if step is None else torch.as_tensor(step, dtype=torch.long).expand(B)
        k = k.to(x.device)
        if bool(((k < 0) | (k >= self.steps)).any()):
            raise ValueError(f"step must be in 0..{self.steps - 1}")
        # the exported FlowGenerator feeds the prior noise x_T to its sampler unchanged at grid[0]
        x_start = noise_like(p, x, mask, generator) * p.prior_std()
        states = ddim_trajectory(nets["student"], p, self.grid, x_start, int(k.max()), mask=mask, cond=cond)
        x_k = torch.stack(states)[k, torch.arange(B, device=x.device)]
        t_k, t_m, t = self.times(k, generator)
        x0_g, eps_g = student_x0_eps(nets["student"], p, x_k, t_k, mask=mask, cond=cond)
        n = noise_like(p, x, mask, generator)
        x_t, m = diffuse(p, x0_g.detach(), eps_g.detach(), t_m, t, n, mask)
        return TDMSample(x0_g, eps_g, x_t, m, n, t_m, t)

    def fake_loss(self, fake: nn.Module, smp: TDMSample, mask=None, cond=None) -> Tensor:
        """The fake-score loss ``[B]`` on a (detached) :class:`TDMSample`: the fake net's x0
        prediction at ``(x_t, t)`` regresses the student's ``x0_g`` (min-SNR and importance
        weights as configured)."""
        p, x_t, t = self.process, smp.x_t, smp.t
        out = fake(x_t, t.to(x_t.dtype), **model_kwargs(mask, cond))
        pred = canonical_prediction(getattr(fake, "prediction", "epsilon"))
        f = p.project(p.convert(out, pred, "x0", x_t, t).to(x_t.dtype), mask)
        loss = masked_mean((f - smp.x0_g) ** 2, mask)
        if self.fake_weight == "min_snr":
            la, ls = p.log_alpha_sigma(t)
            loss = loss * torch.exp(2 * (la - ls)).to(loss.dtype).clamp(max=self.snr_clip)
        if self.importance_weight:  # density ratio of the mixed noise to the Gaussian noise it stands for
            loss = loss * torch.exp(-0.5 * masked_mean(smp.mixed**2, mask) + 0.5 * masked_mean(smp.noise**2, mask))
        return loss

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                smp = self.sample(nets, batch, generator)
            return self.fake_loss(nets["fake_score"], smp, mask, cond)
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        smp = self.sample(nets, batch, generator)
        x0_g, x_t, t = smp.x0_g, smp.x_t, smp.t
        mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        mu_fake = teacher_x0(nets["fake_score"], p, x_t, t, mask, cond)
        if self.loss == "l2":
            return dmd_loss(x0_g, mu_real, mu_fake, mask)
        with torch.no_grad():
            w = masked_mean((x0_g - mu_real).abs(), mask).clamp_min(1e-8)
            target = x0_g - (mu_fake - mu_real)
        c = self.huber_c
        return masked_mean(torch.sqrt((x0_g - target) ** 2 + c * c) - c, mask) / w

    def __repr__(self) -> str:
        return (f"TDM(steps={self.steps}, separate={self.separate}, rand_mid={self.rand_mid}, t=[{self.t_floor}, {self.t_max}], "
                f"fake_weight={self.fake_weight!r}, importance_weight={self.importance_weight}, "
                f"loss={self.loss!r}, generator_every={self.generator_every})")


@dataclass
class TDMOptions(MethodOptions):
    """Options of method ``tdm`` (``distill.KEY=VALUE``, documented in :func:`tdm_recipe`)."""

    separate: bool = True
    rand_mid: bool = False
    t_floor: float = 0.02
    t_max: float = 0.98
    fake_weight: str = "min_snr"
    snr_clip: float = 5.0
    importance_weight: bool = True
    loss: str = "l2"
    huber_c: float = 1e-3
    generator_every: int = 1
    init_sigma: Optional[float] = 2.5
    student: Optional[dict] = None


@register_method("tdm", options=TDMOptions, kind="flow", paper="Luo et al. 2025 (TDM)",
                 description="trajectory distribution matching: data-free, each step's intermediate state matched to the "
                             "teacher's marginal on its own interval, deterministic DDIM student")
def tdm_recipe(ctx: RecipeContext, opts: TDMOptions) -> DistillSetup:
    """TDM on the domain's teacher: the student (a denoiser sampled by deterministic DDIM on a
    ``student_steps`` grid uniform in ``t`` from ``t(init_sigma)`` to 0, reading the prior noise
    there as is; :func:`~workbench.distill.generators.t_of_init_sigma`, ``None`` = 1; the
    authors start at ``t = 0.9`` of a DDPM schedule) and the fake score start from the teacher.
    ``student``: backbone kwargs for a smaller student. Only shapes, masks and conditions of
    the training batches are used (data-free)."""
    from .generators import FlowGenerator, default_grid, t_of_init_sigma

    grid = default_grid(ctx.process, ctx.student_steps, t_start=t_of_init_sigma(ctx.process, opts.init_sigma))
    obj = TDM(ctx.process, grid, teacher_prediction=ctx.prediction, separate=opts.separate, rand_mid=opts.rand_mid, t_floor=opts.t_floor,
              t_max=opts.t_max, fake_weight=opts.fake_weight, snr_clip=opts.snr_clip, importance_weight=opts.importance_weight,
              loss=opts.loss, huber_c=opts.huber_c, generator_every=opts.generator_every)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.student)
    nets = {"student": make_student(ctx, sspec), "teacher": ctx.teacher,
            "fake_score": make_student(ctx, student_spec(ctx.teacher, ctx.domain))}

    def make_generator(n):
        return FlowGenerator(n["student"], ctx.process, sampler="euler", timesteps=grid, prediction=sspec["prediction"])

    # Adam without momentum (beta1 = 0) for both nets, as the authors' code
    return DistillSetup(obj, nets, ["student", "fake_score"], ["student"], make_generator,
                        train_defaults={"lr": 1e-4, "betas": (0.0, 0.999), "ema_decay": 0.99})
