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
noise_scale=gamma)`` scales the re-injected noise.

Proteina-SiD (Xie et al. 2025, "Distilled Protein Backbone Generation"; authors' code
``mohammedehab2002/SiD_Protein`` d47253e) as options, all off by default (the image recipe):
``scale_initial_noise`` (``gamma`` scales every noise term, the first input included: the
authors' ``generator_step`` builds ``x = (1 - tau) gamma eps + tau x0_prev``, ``x0_prev = 0``
first, Proteina time ``tau = 1 - t``; they train at ``gamma = 1`` and sample at ``gamma < 1``,
``sample_noise_scale``), ``grid="proteina_log"`` (:func:`proteina_log_grid`),
``t_sampling="proteina_log"``, ``fake_t_sampling="proteina_beta"``, ``fake_loss="proteina_fm"``,
``normaliser="per_residue"``, ``generator_loss_scale`` and ``generator_betas``. The protein
recipe that sets them is ``domains/protein_backbone/distill_sid.py``.

Time convention: ``t = 0`` data, ``t = 1`` noise; ``x_t = alpha(t) x0 + sigma(t) eps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs
from .base import student_x0
from .score_distill import fake_score_loss, frozen, noise_like, rollout, sample_t, teacher_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["SiD", "sid_loss", "karras_times", "proteina_log_times", "proteina_beta_times", "proteina_fm_loss", "proteina_log_grid",
           "T_SAMPLINGS", "FAKE_T_SAMPLINGS", "FAKE_LOSSES", "NORMALISERS", "GRIDS", "generator_grid"]

#: how the generator loss draws its noise levels (see :meth:`SiD.sample_times`)
T_SAMPLINGS = ("uniform", "karras", "proteina_log")
#: how the fake-score loss draws its times (see :meth:`SiD.fake_times`)
FAKE_T_SAMPLINGS = ("uniform", "proteina_beta")
#: the fake-score loss (see :meth:`SiD.fake_loss`)
FAKE_LOSSES = ("denoising", "proteina_fm")
#: the per-sample normaliser of :func:`sid_loss`
NORMALISERS = ("mean", "per_residue")
#: the generator's sampling grid (see :func:`generator_grid`)
GRIDS = ("uniform", "proteina_log")


def sid_loss(x_g: Tensor, f_real: Tensor, f_fake: Tensor, alpha: float = 1.2, mask: Optional[Tensor] = None,
             eps: float = 1e-5, normaliser: str = "mean") -> Tensor:
    """SiD generator loss ``[B]`` (Zhou et al. 2024, Sec. 4 / Algorithm 1; the form and the
    per-sample normaliser of the authors' code).

    Args:
        x_g: ``[B, ...]`` generator samples (with gradients).
        f_real, f_fake: ``[B, ...]`` teacher and fake-score x0 predictions at
            ``x_t = alpha_t x_g + sigma_t eps`` (with gradients through ``x_t`` when the caller
            wants SiD's full gradient, detached for the DMD-equivalent one).
        alpha: the SiD coefficient (1.2 for images in the paper, 1.0 for protein backbones).
        mask: ``[B, N]`` validity mask for set states (padding ignored in the means).
        normaliser: ``"mean"`` (the image code, ``training/sid_loss.py`` ``SID_EDMLoss``:
            means over real elements, ``w`` clamped at ``eps``) or ``"per_residue"`` (the
            protein code, ``SID_ProteinaLoss.generator_loss``, for set states ``[B, N, ...]``:
            ``sum_real[...] / stopgrad(sum_real |x_g - f_r|) / nres``, ``nres`` the real
            elements along dim 1; ``1 / nres`` times the ``"mean"`` value).
    Returns:
        ``[B]``: ``mean[(f_r - f_f) ((f_r - x_g) - alpha (f_r - f_f))] / stopgrad(mean |x_g - f_r|)``
        per sample (means over real elements), or the ``"per_residue"`` form.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; valid: {', '.join(NORMALISERS)}")
    d = f_real - f_fake
    if normaliser == "mean":
        with torch.no_grad():
            w = masked_mean((x_g - f_real).abs(), mask).clamp_min(eps)
        return masked_mean(d * ((f_real - x_g) - float(alpha) * d), mask) / w
    if x_g.ndim < 2:
        raise ValueError(f"normaliser='per_residue' needs set states [B, N, ...], got shape {tuple(x_g.shape)}")
    m = torch.ones(x_g.shape[:2], dtype=x_g.dtype, device=x_g.device) if mask is None else mask.to(x_g.dtype)
    me = m.reshape(m.shape + (1,) * (x_g.ndim - 2))
    nres = m.sum(1).clamp_min(1.0)
    with torch.no_grad():
        w = ((x_g - f_real).abs() * me).flatten(1).sum(1)
    return (d * ((f_real - x_g) - float(alpha) * d) * me).flatten(1).sum(1) / w / nres


def karras_times(process: GaussianProcess, B: int, generator: Generator, device, *, t_frac: float = 0.8,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """SiD's noise levels for the generator loss (the authors' code): ``u ~ U[0, t_frac]``,
    ``sigma~ = (sigma_max^(1/rho) + (1 - u) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    (the EDM / Karras rho-schedule, ``u = 0`` at ``sigma_min``; ``t_frac = tmax / 1000``), mapped
    to process time through ``lambda = -log sigma~`` (``sigma~ = sigma / alpha``). Returns ``[B]``
    float64 times."""
    g = first_generator(generator)
    u = t_frac * torch.rand(B, generator=g, device=g.device if g is not None else None, dtype=torch.float64).to(device)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + (1.0 - u) * (lo - hi)) ** rho
    return process.t_of_lambda(-torch.log(sig)).to(torch.float64)


def proteina_log_times(B: int, generator: Generator, device, *, t_total: int = 400, t_min: float = 0.02,
                       t_max: float = 0.98) -> Tensor:
    """Proteina-SiD's noise levels for the generator loss (authors' ``SID_ProteinaLoss.generator_loss``):
    ``s ~ U{0, ..., T}`` (``T = t_total``), Proteina time ``tau = 1 - 10^(-2 s / T)`` (``tau = 1``
    data) clamped to ``[t_min, t_max]``; returned in this package's time ``t = 1 - tau`` (``t = 0``
    data; the clamp is symmetric, so ``t = 10^(-2 s / T)`` clamped to ``[1 - t_max, 1 - t_min]``).
    Returns ``[B]`` float64."""
    g = first_generator(generator)
    s = torch.randint(0, int(t_total) + 1, (B,), generator=g, device=g.device if g is not None else None).to(torch.float64)
    tau = (1.0 - 10.0 ** (-2.0 * s / int(t_total))).clamp(float(t_min), float(t_max))
    return (1.0 - tau).to(device)


def proteina_beta_times(B: int, generator: Generator, device, *, p1: float = 1.9, p2: float = 1.0, p_uniform: float = 0.02,
                        t_min: float = 0.02, t_max: float = 0.98) -> Tensor:
    """Proteina's training-time law, used by Proteina-SiD for the fake score (authors'
    ``SID_ProteinaLoss.__call__``; Geffner et al. 2025 ``training_ca.yaml``): Proteina time
    ``tau ~ Beta(p1, p2)``, with probability ``p_uniform`` ``tau ~ U[0, 1]`` instead, clamped to
    ``[t_min, t_max]``; returned as ``t = 1 - tau`` (``t = 0`` data). ``Beta(p1, 1)`` is drawn
    by inversion, ``u^(1 / p1)`` (only ``p2 = 1`` is supported). Returns ``[B]`` float64."""
    if float(p2) != 1.0:
        raise ValueError(f"proteina_beta_times supports p2 = 1 only (Proteina's setting), got {p2}")
    g = first_generator(generator)
    dev = g.device if g is not None else None
    u_beta, u_unif, u_mix = (torch.rand(B, generator=g, device=dev, dtype=torch.float64) for _ in range(3))
    tau = torch.where(u_mix < float(p_uniform), u_unif, u_beta ** (1.0 / float(p1))).clamp(float(t_min), float(t_max))
    return (1.0 - tau).to(device)


def proteina_fm_loss(x0: Tensor, x0_pred: Tensor, t: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Proteina's flow-matching loss (authors' ``proteina_utils.compute_fm_loss``) ``[B]``: the mean
    over real elements of ``(x0 - x0_pred)^2`` times ``1 / ((1 - tau)^2 + 1e-5)``, ``1 - tau = t``
    (this package's time), i.e. the velocity error of a rectified flow. ``x0``, ``x0_pred``:
    ``[B, N, ...]``; ``t``: ``[B]``."""
    w = 1.0 / (t.to(torch.float64) ** 2 + 1e-5)
    return masked_mean((x0 - x0_pred) ** 2, mask) * w.to(x0.dtype)


def proteina_log_grid(steps: int, *, t_init: int = 30, t_total: int = 400) -> Tensor:
    """Proteina-SiD's ``[steps + 1]`` float64 generation grid (authors' ``sid_training_loop.py``
    and ``sid_utils.sample_t``): step indices ``s_k = round(linspace(t_init, t_total, K))``,
    Proteina times ``tau_k = 1 - 10^(-2 s_k / t_total)``, here ``t_k = 1 - tau_k =
    10^(-2 s_k / t_total)`` (for ``K = 8``: 0.708, 0.385, ..., 0.010), then 0 (the last step's
    x0 is the sample). ``K = 1``: ``tau = 0.37`` (``t = 0.63``), as the authors' one-step case."""
    K = int(steps)
    if K < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not 0 < int(t_init) < int(t_total):
        raise ValueError(f"need 0 < t_init < t_total, got {t_init}, {t_total}")
    if K == 1:
        ts = torch.tensor([1.0 - 0.37], dtype=torch.float64)
    else:
        s = torch.round(torch.linspace(float(t_init), float(t_total), K, dtype=torch.float64))
        if len(torch.unique(s)) < K:
            raise ValueError(f"{K} steps need distinct rounded indices in [{t_init}, {t_total}]; use fewer steps")
        ts = 10.0 ** (-2.0 * s / float(t_total))
    return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])


def generator_grid(process: GaussianProcess, steps: int, init_sigma: Optional[float] = 2.5, grid: str = "uniform", *,
                   t_init: int = 30, t_total: int = 400) -> Tensor:
    """The generator's ``[steps + 1]`` float64 grid.

    ``grid="uniform"``: uniform in ``t`` from ``t(init_sigma)`` to 0, where
    ``sigma / alpha = init_sigma`` (SiD's ``init_sigma = 2.5``: the generator reads scaled pure
    noise at a moderate noise level, where an epsilon-parameterised student's x0 is well
    conditioned; ``None`` starts at ``t = 1``), see
    :func:`~workbench.distill.generators.t_of_init_sigma`. ``grid="proteina_log"``: Proteina-SiD's
    log grid :func:`proteina_log_grid` (``init_sigma`` unused; Proteina's time law is that of a
    rectified flow, ``alpha = 1 - t``, ``sigma = t``)."""
    from .generators import default_grid, t_of_init_sigma

    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)}")
    if grid == "proteina_log":
        return proteina_log_grid(steps, t_init=t_init, t_total=t_total)
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
            (also the clamp of ``"karras"``, ``"proteina_log"`` and ``"proteina_beta"`` times).
        t_sampling: ``"karras"`` (SiD's rho-schedule, :func:`karras_times`, clamped to
            ``[t_min, t_max]``), ``"uniform"`` (``t ~ U[t_min, t_max]``, as DMD2) or
            ``"proteina_log"`` (Proteina-SiD, :func:`proteina_log_times` with ``t_total``).
        fake_t_sampling: times of the fake-score loss: ``"uniform"`` (``U[t_min, t_max]``) or
            ``"proteina_beta"`` (Proteina's law, :func:`proteina_beta_times`).
        fake_loss: ``"denoising"`` (:func:`~.score_distill.fake_score_loss`, the net's own
            parameterization, uniform weight) or ``"proteina_fm"`` (:func:`proteina_fm_loss`).
        normaliser: of :func:`sid_loss` (``"mean"`` or Proteina-SiD's ``"per_residue"``).
        scale_initial_noise: backward simulation scales the first input by
            ``train_noise_scale`` too (Proteina-SiD's noise modulation form).
        generator_betas: Adam betas of the generator phase where they differ from the fake
            score's (Proteina-SiD: ``(0.9, 0.999)``); stored as :attr:`phase_betas` for a training
            loop that honours per-phase betas.
        t_total: ``T`` of ``t_sampling="proteina_log"`` (Proteina-SiD: 400).
        generator_loss_scale: factor on the generator loss (the authors' ``loss_scaling_G``,
            100 in ``run_sid_proteina.sh``; it matters through gradient clipping and Adam's
            ``eps``).
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
                 backward_simulation: bool = True, generator_every: int = 1, train_noise_scale: float = 1.0,
                 fake_t_sampling: str = "uniform", fake_loss: str = "denoising", normaliser: str = "mean",
                 scale_initial_noise: bool = False, generator_betas=None, t_total: int = 400, generator_loss_scale: float = 1.0):
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}")
        if fake_t_sampling not in FAKE_T_SAMPLINGS:
            raise ValueError(f"unknown fake_t_sampling {fake_t_sampling!r}; valid: {', '.join(FAKE_T_SAMPLINGS)}")
        if fake_loss not in FAKE_LOSSES:
            raise ValueError(f"unknown fake_loss {fake_loss!r}; valid: {', '.join(FAKE_LOSSES)}")
        if normaliser not in NORMALISERS:
            raise ValueError(f"unknown normaliser {normaliser!r}; valid: {', '.join(NORMALISERS)}")
        if not isinstance(scale_initial_noise, bool):
            raise ValueError(f"scale_initial_noise must be True or False, got {scale_initial_noise!r}")
        if generator_betas is not None and (len(generator_betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in generator_betas)):
            raise ValueError(f"generator_betas must be two numbers in [0, 1), got {generator_betas!r}")
        if not (math.isfinite(float(generator_loss_scale)) and float(generator_loss_scale) > 0):
            raise ValueError(f"generator_loss_scale must be a positive number, got {generator_loss_scale}")
        if int(t_total) < 1:
            raise ValueError(f"t_total must be a positive integer, got {t_total}")
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
        self.fake_t_sampling, self.fake_loss_kind, self.normaliser = fake_t_sampling, fake_loss, normaliser
        self.scale_initial_noise = scale_initial_noise
        self.t_total = int(t_total)
        self.generator_loss_scale = float(generator_loss_scale)
        #: per-phase Adam betas (phase name -> betas) for a loop that supports them
        self.phase_betas = {} if generator_betas is None else {"generator": tuple(float(b) for b in generator_betas)}
        self.phases = [("fake", ["fake_score"], 1), ("generator", ["student"], self.generator_every)]

    def generator_sample(self, nets, batch: Batch, generator: Generator, step: Optional[int] = None):
        """``(x_g [B, ...] with grad, x_tk, t_k [B])`` at a random (or given) step of the grid."""
        return rollout(nets["student"], self.process, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                       step=step, noise_scale=self.train_noise_scale, scale_initial_noise=self.scale_initial_noise)

    def sample_times(self, B: int, generator: Generator, device) -> Tensor:
        """``[B]`` float64 noise levels of the generator loss."""
        if self.t_sampling == "uniform":
            return sample_t(B, generator, device, self.t_min, self.t_max)
        if self.t_sampling == "proteina_log":
            return proteina_log_times(B, generator, device, t_total=self.t_total, t_min=self.t_min, t_max=self.t_max)
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
        return sid_loss(x_g, f_r, f_f, self.alpha, mask, normaliser=self.normaliser)

    def fake_loss(self, nets, x_g: Tensor, mask=None, cond=None, generator: Generator = None) -> Tensor:
        """The fake score's loss ``[B]`` on detached generator samples ``x_g`` ``[B, ...]``."""
        fake = nets["fake_score"]
        if self.fake_t_sampling == "uniform" and self.fake_loss_kind == "denoising":
            return fake_score_loss(fake, self.process, x_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
        p, x0 = self.process, x_g.detach()
        if self.fake_t_sampling == "uniform":
            t = sample_t(len(x0), generator, x0.device, self.t_min, self.t_max)
        else:
            t = proteina_beta_times(len(x0), generator, x0.device, t_min=self.t_min, t_max=self.t_max)
        eps = noise_like(p, x0, mask, generator)
        x_t = p.add_noise(x0, t, eps, mask)
        if self.fake_loss_kind == "proteina_fm":
            return proteina_fm_loss(x0, student_x0(fake, p, x_t, t, mask=mask, cond=cond), t, mask)
        pred = canonical_prediction(getattr(fake, "prediction", "epsilon"))
        out = fake(x_t, t.to(x0.dtype), **model_kwargs(mask, cond))
        return masked_mean((out - p.from_x0_eps(x0, eps, pred, x_t, t).to(x0.dtype)) ** 2, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                x_g, _, _ = self.generator_sample(nets, batch, generator)
            return self.fake_loss(nets, x_g, mask, cond, generator)
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        x_g, _, _ = self.generator_sample(nets, batch, generator)
        t = self.sample_times(len(batch), generator, x_g.device)
        eps = noise_like(p, x_g, mask, generator)
        loss = self.generator_loss(nets, x_g, t, eps, mask, cond)
        return loss * self.generator_loss_scale if self.generator_loss_scale != 1.0 else loss

    def __repr__(self) -> str:
        return (f"SiD(steps={len(self.grid) - 1}, alpha={self.alpha}, t=[{self.t_min}, {self.t_max}], t_sampling={self.t_sampling!r}, "
                f"score_grad={self.score_grad}, generator_every={self.generator_every}, train_noise_scale={self.train_noise_scale}, "
                f"fake_t_sampling={self.fake_t_sampling!r}, fake_loss={self.fake_loss_kind!r}, normaliser={self.normaliser!r}, "
                f"scale_initial_noise={self.scale_initial_noise})")


@dataclass
class SiDOptions(MethodOptions):
    """Options of method ``sid`` (``distill.KEY=VALUE``, documented in :func:`sid_recipe`)."""

    alpha: float = 1.2
    t_min: float = 0.02
    t_max: float = 0.98
    t_sampling: str = "karras"
    init_sigma: Optional[float] = 2.5
    score_grad: bool = True
    backward_simulation: bool = True
    generator_every: int = 1
    train_noise_scale: float = 1.0
    student: Optional[dict] = None
    grid: str = "uniform"
    t_init: int = 30
    t_total: int = 400
    sample_noise_scale: Optional[float] = None
    scale_initial_noise: bool = False
    fake_t_sampling: str = "uniform"
    fake_loss: str = "denoising"
    normaliser: str = "mean"
    generator_betas: Optional[tuple] = None
    generator_loss_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.sample_noise_scale is not None and not float(self.sample_noise_scale) >= 0.0:
            raise ValueError(f"sample_noise_scale must be >= 0 or None, got {self.sample_noise_scale}")


@register_method("sid", options=SiDOptions, kind="consistency", paper="Zhou et al. 2024 (SiD); Xie et al. 2025 (Proteina-SiD multistep)",
                 description="score identity distillation: data-free, fake score, loss through x_t, multistep with noise modulation")
def sid_recipe(ctx: RecipeContext, opts: SiDOptions) -> DistillSetup:
    """SiD on the domain's teacher: the student (x0 generator on a ``student_steps`` grid,
    :func:`generator_grid` with ``grid``, ``init_sigma``, ``t_init``, ``t_total``) and the fake
    score start from the teacher. ``student``: backbone kwargs for a smaller student. Only the
    shapes, masks and conditions of the training batches are used (data-free).

    ``sample_noise_scale``: the generator's default inference ``gamma`` (``None``: the
    ``train_noise_scale``); ``scale_initial_noise``: ``gamma`` scales the first input too, in
    training and sampling (Proteina-SiD). The defaults are SiD's image recipe; Proteina-SiD's is
    ``grid="proteina_log"``, ``t_sampling="proteina_log"``, ``fake_t_sampling="proteina_beta"``,
    ``fake_loss="proteina_fm"``, ``normaliser="per_residue"``, ``scale_initial_noise=True``,
    ``train_noise_scale=1``, ``sample_noise_scale=0.45``, ``alpha=1``, ``generator_betas=(0.9, 0.999)``,
    ``generator_loss_scale=100``
    (``domains/protein_backbone/distill_sid.py``)."""
    from .base import FewStepGenerator

    gen_grid = generator_grid(ctx.process, ctx.student_steps, opts.init_sigma, opts.grid, t_init=opts.t_init, t_total=opts.t_total)
    obj = SiD(ctx.process, gen_grid, teacher_prediction=ctx.prediction, alpha=opts.alpha, t_min=opts.t_min, t_max=opts.t_max, t_sampling=opts.t_sampling,
              score_grad=opts.score_grad, backward_simulation=opts.backward_simulation, generator_every=opts.generator_every,
              train_noise_scale=opts.train_noise_scale, fake_t_sampling=opts.fake_t_sampling, fake_loss=opts.fake_loss, normaliser=opts.normaliser,
              scale_initial_noise=opts.scale_initial_noise, generator_betas=opts.generator_betas, t_total=opts.t_total,
              generator_loss_scale=opts.generator_loss_scale)
    gamma = float(opts.train_noise_scale if opts.sample_noise_scale is None else opts.sample_noise_scale)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.student)
    nets = {"student": make_student(ctx, sspec), "teacher": ctx.teacher,
            "fake_score": make_student(ctx, student_spec(ctx.teacher, ctx.domain))}

    def make_generator(n):  # samples by default with gamma (the training scale unless sample_noise_scale)
        return FewStepGenerator(n["student"], ctx.process, parameterization="x0", timesteps=gen_grid, noise_scale=gamma,
                                scale_initial_noise=opts.scale_initial_noise)

    # Adam without momentum (beta1 = 0) for both nets, as the authors' code (generator_betas: the
    # generator's where a loop honours SiD.phase_betas)
    return DistillSetup(obj, nets, ["student", "fake_score"], ["student"], make_generator,
                        train_defaults={"lr": 3e-4, "betas": (0.0, 0.999), "ema_decay": 0.99})
