"""What the score-distillation family shares (DMD2, Phased DMD, Flash-DMD, TDM, SiD).

* :func:`rollout`: the generator's input state ``x_{t_k}`` at a training step ``k`` of its
  ``K``-step grid, by *backward simulation* (run the generator itself from noise for ``k``
  steps without gradients, re-noising between steps, Yin et al. 2024 "DMD2", Sec. 4.5) or by
  noising real data (forward diffusion), and the generator's output ``x0_g = G(x_{t_k}, t_k)``
  with gradients.
* :func:`fake_score_loss`: denoising score matching of the auxiliary "fake score" net on
  detached generator samples (DMD2 eq. 4; SiD's ``f_psi`` update), optionally restricted to a
  time interval (Phased DMD).
* :func:`dmd_loss`: the distribution-matching gradient as a per-sample loss (Yin et al. 2024
  "One-step Diffusion with Distribution Matching Distillation", eq. 7-8; DMD2):
  ``grad = (mu_fake - mu_real) / mean|x0_g - mu_real|`` and
  ``loss = 0.5 ||x0_g - stopgrad(x0_g - grad)||^2``.
* :class:`Discriminator`: a GAN head built from the domain's backbone (DMD2 Sec. 4.3; here a
  whole backbone whose per-element output is averaged over real elements into one logit per
  sample, so it exists for every domain).
* :func:`frozen`: a context that disables parameter gradients of modules that a phase reads but
  must not train (the fake score and discriminator in the generator phase).

Time convention: ``t = 0`` data, ``t = 1`` noise; ``x_t = alpha x0 + sigma eps``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..model import prepare_cond_all
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs, randn
from .base import student_x0

__all__ = ["frozen", "rollout", "fake_score_loss", "dmd_loss", "teacher_x0", "Discriminator", "sample_t", "noise_like"]


@contextlib.contextmanager
def frozen(*modules: Optional[nn.Module]):
    """Temporarily set ``requires_grad=False`` on every parameter of ``modules`` (restored
    after), so a loss can read them without leaking gradients into them."""
    saved = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)



def noise_like(process: GaussianProcess, x: Tensor, mask: Optional[Tensor], generator: Generator) -> Tensor:
    """Standard normal noise ``[B, ...]`` projected onto the process constraints."""
    return process.project(randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), mask)


def sample_t(B: int, generator: Generator, device, t_min: float, t_max: float) -> Tensor:
    """``[B]`` float64 times uniform in ``[t_min, t_max]``."""
    g = first_generator(generator)
    u = torch.rand(B, generator=g, device=g.device if g is not None else None, dtype=torch.float64).to(device)
    return t_min + (t_max - t_min) * u


def teacher_x0(teacher: nn.Module, process: GaussianProcess, x_t: Tensor, t: Tensor, mask=None, cond=None,
               prediction: Optional[str] = None) -> Tensor:
    """The teacher's data prediction ``[B, ...]`` at ``(x_t, t [B])`` in ``no_grad``."""
    with torch.no_grad():
        pred = canonical_prediction(prediction or getattr(teacher, "prediction", "epsilon"))
        out = teacher(x_t, t.to(x_t.dtype), **model_kwargs(mask, cond))
        x0 = out if pred == "x0" else process.convert(out, pred, "x0", x_t, t).to(x_t.dtype)
        return process.project(x0, mask)


def rollout(student: nn.Module, process: GaussianProcess, grid: Tensor, batch: Batch, generator: Generator, *,
            backward_simulation: bool = True, step: Optional[int] = None, prediction: Optional[str] = None,
            noise_scale: float = 1.0, scale_initial_noise: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The generator's output at a random step of its grid.

    Args:
        student: x0 student ``(x_t, t) -> prediction`` (``prediction`` or ``student.prediction``).
        grid: ``[K + 1]`` float64 decreasing generation grid ending at 0 (``K`` steps).
        batch: gives shapes, ``mask``, ``cond`` and (for forward noising) real data ``x``.
        backward_simulation: reach ``x_{t_k}`` by running the generator itself from noise
            (no gradients); else by noising ``batch.x`` (needs real data).
        step: force the step index ``k`` (default uniform in ``0..K-1``, one per batch).
        noise_scale: ``gamma``, scale of the fresh noise re-injected between backward-simulation
            steps.
        scale_initial_noise: also scale the first input by ``gamma`` (as
            :class:`~.base.FewStepGenerator` with ``scale_initial_noise=True``, Proteina-SiD);
            default ``False`` (only the re-injected noise).
    Returns:
        ``(x0_g [B, ...] with grad, x_tk [B, ...], t_k [B] float64)``.
    """
    x, mask, cond = batch.x, batch.mask, batch.cond
    B = x.shape[0]
    # the student sees its per-trajectory conditioning (trunk outputs, self-conditioning state) as at inference
    cond = prepare_cond_all(student, cond, mask=mask, batch_size=B)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    K = len(grid) - 1
    g = first_generator(generator)
    k = int(torch.randint(0, K, (1,), generator=g)) if step is None else int(step)
    if not 0 <= k < K:
        raise ValueError(f"step must be in 0..{K - 1}, got {k}")
    from .generators import start_state

    z = noise_like(process, x, mask, generator)
    x_start = start_state(process, z * process.prior_std(), float(grid[0]))  # what the generators start from
    if scale_initial_noise:
        x_start = x_start * float(noise_scale)
    if k == 0:
        x_k = x_start
    elif backward_simulation:
        with torch.no_grad():
            x_k = x_start
            for j in range(k):
                tj = grid[j].expand(B).to(x.device)
                x0 = student_x0(student, process, x_k, tj, prediction=prediction, mask=mask, cond=cond)
                tn = grid[j + 1].expand(B).to(x.device)
                e = noise_like(process, x, mask, generator)
                x_k = process.project(append_dims(process.alpha(tn).to(x.dtype), x.ndim) * x0
                                      + append_dims(process.sigma(tn).to(x.dtype), x.ndim) * float(noise_scale) * e, mask)
    else:
        tk = grid[k].expand(B).to(x.device)
        x_k = process.add_noise(x, tk, z, mask)
    t_k = grid[k].expand(B).to(x.device).clone()
    x0_g = student_x0(student, process, x_k, t_k, prediction=prediction, mask=mask, cond=cond)
    return x0_g, x_k, t_k


def fake_score_loss(fake: nn.Module, process: GaussianProcess, x0: Tensor, mask, cond, generator: Generator, *,
                    t_min: float = 0.02, t_max: float = 0.98, prediction: Optional[str] = None) -> Tensor:
    """Denoising loss ``[B]`` of the fake-score net on (detached) generator samples ``x0``
    ``[B, ...]`` at ``t ~ U[t_min, t_max]``, in the net's own parameterization (uniform
    weighting, as the teacher was trained)."""
    x0 = x0.detach()
    B = x0.shape[0]
    t = sample_t(B, generator, x0.device, t_min, t_max)
    eps = noise_like(process, x0, mask, generator)
    x_t = process.add_noise(x0, t, eps, mask)
    pred = canonical_prediction(prediction or getattr(fake, "prediction", "epsilon"))
    out = fake(x_t, t.to(x0.dtype), **model_kwargs(mask, cond))
    target = process.from_x0_eps(x0, eps, pred, x_t, t).to(x0.dtype)
    return masked_mean((out - target) ** 2, mask)


def dmd_loss(x0_g: Tensor, mu_real: Tensor, mu_fake: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Distribution-matching loss ``[B]`` (DMD eq. 7-8 with DMD2's normalisation,
    ``0.5 * mean (x0_g - stopgrad(x0_g - grad))^2``): its gradient in ``x0_g`` is
    ``(mu_fake - mu_real) / w`` per element divided by the number of real elements, with
    ``w = mean |x0_g - mu_real|`` per sample; ``mu_*`` are the real (teacher) and fake x0
    predictions at the same noisy generator sample."""
    with torch.no_grad():
        w = masked_mean((x0_g - mu_real).abs(), mask).clamp_min(1e-8)
        grad = (mu_fake - mu_real) / append_dims(w, x0_g.ndim)
        target = x0_g - grad
    return 0.5 * masked_mean((x0_g - target) ** 2, mask)


class Discriminator(nn.Module):
    """GAN head from the domain's backbone: ``logit(x_t [B, ...], t [B]) -> [B]`` = the mean over
    real elements of ``backbone(x_t, t)`` (``backbone`` a :class:`~workbench.model.Denoiser`
    or any ``(x, t, mask=, cond=) -> [B, ...]`` module)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x_t: Tensor, t: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        out = self.backbone(x_t, t, **model_kwargs(mask, cond))
        return masked_mean(out, mask)
