"""Flash-DMD (Chen et al. 2025, "Flash-DMD: Towards High-Fidelity Few-Step Image Generation
with Efficient Distillation and Joint Reinforcement Learning").

DMD2 (:class:`~workbench.distill.dmd.DMD2`, whose generator, fake score, rollout and fake
phase this reuses) with the paper's two changes:

1. *Timestep-aware distillation* (paper Sec. 3.2): the two generator losses are assigned to
   disjoint noise ranges instead of being summed at every time.

   * distribution matching only at HIGH noise: the generator output ``x0_g = G(x_{t_k}, t_k)``
     (any step ``k`` of its grid, backward simulation) is diffused to
     ``t ~ U(t_split, t_max)`` and follows the DMD gradient
     ``(mu_fake - mu_real) / mean|x0_g - mu_real|`` (:func:`~.score_distill.dmd_loss`);
   * the adversarial loss only at LOW noise (``gan_weight > 0``): a clean sample of the
     generator ``x0 = stopgrad(B(z))`` (all ``K`` steps) is re-noised to
     ``t^ ~ U(t_min, t_split)``, the generator denoises it, ``x0' = G(x^_{t^}, t^)``, and a
     discriminator on clean samples (the paper's pixel-space GAN; here
     :class:`~.score_distill.Discriminator` on the domain's backbone, evaluated at the
     process's ``t_min``) gives the non-saturating loss ``softplus(-D(x0'))``; the
     discriminator learns ``softplus(-D(x_real)) + softplus(D(x0'))`` in the ``fake`` phase.

   The fake score is trained by plain denoising only (it is not a discriminator), which is
   what lets the paper lower the two time-scale ratio to 1-2 (``generator_every``); optionally
   (``score_ema``) the generator's weights are blended into it before each generator update,
   ``psi <- lambda psi + (1 - lambda) theta`` (paper eq. 11).
2. *Joint reward fine-tuning* (paper Sec. 3.3): while distillation continues, the generator
   also maximises a reward, here the differentiable ``Domain.reward`` of its output (the
   toy's exact log-density, the images' classifier log-probability) instead of the paper's
   latent-reward-model preference pairs::

       loss_G = L_DMD + gan_weight L_adv - reward_weight * reward(x0_g) [* (t_k >= t_split)]

   The distillation loss is the regulariser against reward hacking. With
   ``reward_steps="high"`` (the paper's choice: RL only at high-noise steps, where the layout
   is decided) the reward acts only on outputs of generator steps with ``t_k >= t_split``.

Report the domain's true metrics beside the reward (a reward is an imperfect verifier:
maximising the toy log-density alone collapses samples onto the modes).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import Batch
from ..utils import Generator, model_kwargs
from .base import student_x0
from .dmd import DMD2, dmd2_recipe
from .recipes import DistillSetup, RecipeContext, register_method
from .score_distill import dmd_loss, fake_score_loss, frozen, noise_like, rollout, sample_t, teacher_x0

__all__ = ["FlashDMD", "REWARD_STEPS"]

REWARD_STEPS = ("high", "all")


class FlashDMD(DMD2):
    """Flash-DMD objective: DMD2 phases ``fake`` (fake score, and the discriminator when
    ``gan_weight > 0``) and ``generator`` with timestep-aware losses and a reward term
    (module docstring).

    Args (beyond :class:`~workbench.distill.dmd.DMD2`'s):
        t_split: the noise level separating distribution matching (``[t_split, t_max]``)
            from the adversarial loss (``[t_min, t_split]``), and high-noise generator steps
            (``t_k >= t_split``) from low-noise ones for ``reward_steps="high"``.
        reward_fn: ``reward_fn(Batch) -> [B]`` differentiable reward (``Domain.reward``).
        reward_weight: weight of the reward term (0: none).
        reward_steps: ``"high"`` or ``"all"`` generator steps receive the reward.
        score_ema: ``lambda`` of the generator-to-fake-score blend (``None``: off; needs the
            same architecture for both).
    """

    def __init__(self, process, grid, *, t_split: float = 0.5, reward_fn: Optional[Callable[[Batch], Tensor]] = None,
                 reward_weight: float = 0.0, reward_steps: str = "high", score_ema: Optional[float] = None, **dmd2_kwargs):
        super().__init__(process, grid, **dmd2_kwargs)
        if not self.t_min < float(t_split) < self.t_max:
            raise ValueError(f"t_split must lie in (t_min, t_max) = ({self.t_min}, {self.t_max}), got {t_split}")
        if reward_weight < 0:
            raise ValueError(f"reward_weight must be >= 0, got {reward_weight}")
        if reward_weight > 0 and reward_fn is None:
            raise ValueError("reward_weight > 0 needs a reward_fn (Domain.reward)")
        if reward_steps not in REWARD_STEPS:
            raise ValueError(f"unknown reward_steps {reward_steps!r}; valid: {', '.join(REWARD_STEPS)}")
        if score_ema is not None and not 0.0 <= float(score_ema) < 1.0:
            raise ValueError(f"score_ema must be in [0, 1) or None, got {score_ema}")
        self.t_split = float(t_split)
        self.reward_fn = reward_fn
        self.reward_weight = float(reward_weight)
        self.reward_steps = reward_steps
        self.score_ema = None if score_ema is None else float(score_ema)

    # -- pieces ------------------------------------------------------------------------------
    def dm_times(self, B: int, generator: Generator, device) -> Tensor:
        """``[B]`` distribution-matching times, ``U(t_split, t_max)`` (high noise only)."""
        return sample_t(B, generator, device, self.t_split, self.t_max)

    def reward_mask(self, t_k: Tensor) -> Tensor:
        """``[B]`` 1 where a generator output of step time ``t_k`` ``[B]`` receives the reward."""
        if self.reward_steps == "all":
            return torch.ones_like(t_k)
        return (t_k >= self.t_split - 1e-12).to(t_k.dtype)

    def low_noise_output(self, nets, batch: Batch, generator: Generator) -> Tensor:
        """``G(x^_{t^}, t^)`` ``[B, ...]`` (with gradient): a clean generator sample (all ``K``
        steps, no gradient) re-noised to ``t^ ~ U(t_min, t_split)`` and denoised once more."""
        p, mask, cond = self.process, batch.mask, batch.cond
        with torch.no_grad():
            x0, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                               step=len(self.grid) - 2)
        t = sample_t(len(batch), generator, x0.device, self.t_min, self.t_split)
        x_hat = p.add_noise(x0, t, noise_like(p, x0, mask, generator), mask)
        return student_x0(nets["student"], p, x_hat, t, mask=mask, cond=cond)

    def _disc(self, nets, x: Tensor, mask, cond) -> Tensor:
        t = torch.full((x.shape[0],), float(self.process.t_min), dtype=x.dtype, device=x.device)
        return nets["disc"](x, t, **model_kwargs(mask, cond))

    @torch.no_grad()
    def blend_score(self, nets) -> None:
        """``fake_score <- score_ema fake_score + (1 - score_ema) student`` (paper eq. 11)."""
        fake, st = dict(nets["fake_score"].named_parameters()), dict(nets["student"].named_parameters())
        for name, p in fake.items():
            p.lerp_(st[name].detach(), 1.0 - self.score_ema)

    # -- objective ---------------------------------------------------------------------------
    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                x0_g, _, _ = self._generate(nets, batch, generator)
            loss = fake_score_loss(nets["fake_score"], p, x0_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
            if self.gan_weight > 0:
                with torch.no_grad():
                    fake_x = self.low_noise_output(nets, batch, generator)
                loss = loss + F.softplus(-self._disc(nets, batch.x, mask, cond)) + F.softplus(self._disc(nets, fake_x, mask, cond))
            return loss
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        if self.score_ema is not None:
            self.blend_score(nets)
        x0_g, _, t_k = self._generate(nets, batch, generator)
        t = self.dm_times(len(batch), generator, x0_g.device)
        x_t = p.add_noise(x0_g.detach(), t, noise_like(p, x0_g, mask, generator), mask)
        mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        mu_fake = teacher_x0(nets["fake_score"], p, x_t, t, mask, cond)
        loss = dmd_loss(x0_g, mu_real, mu_fake, mask)
        if self.gan_weight > 0:
            x_lo = self.low_noise_output(nets, batch, generator)
            with frozen(nets["disc"]):
                loss = loss + self.gan_weight * F.softplus(-self._disc(nets, x_lo, mask, cond))
        if self.reward_weight > 0:
            r = self.reward_fn(Batch(x=x0_g, mask=mask, cond=cond))
            loss = loss - self.reward_weight * r * self.reward_mask(t_k).to(r.dtype)
        return loss

    def __repr__(self) -> str:
        return (f"FlashDMD(steps={len(self.grid) - 1}, t_split={self.t_split}, t=[{self.t_min}, {self.t_max}], gan_weight={self.gan_weight}, "
                f"reward_weight={self.reward_weight}, reward_steps={self.reward_steps!r}, score_ema={self.score_ema}, "
                f"generator_every={self.generator_every})")


@register_method("flash_dmd", kind="consistency", paper="Chen et al. 2025 (Flash-DMD)",
                 description="DMD2 with timestep-aware losses (DM at high noise, GAN at low noise) and joint reward fine-tuning")
def flash_dmd_recipe(ctx: RecipeContext, *, t_split: float = 0.5, t_min: float = 0.02, t_max: float = 0.98, gan_weight: float = 0.1,
                     reward_weight: float = 0.0, reward_steps: str = "high", score_ema: Optional[float] = None,
                     backward_simulation: bool = True, generator_every: int = 2, student: Optional[dict] = None) -> DistillSetup:
    """Flash-DMD on the domain's teacher: the nets, generator and spec of ``dmd2`` (student and
    fake score from the teacher, discriminator from the teacher's architecture when
    ``gan_weight > 0``) with the :class:`FlashDMD` objective; ``reward_weight > 0`` needs
    ``Domain.reward``."""
    from ..domain import Domain

    if reward_weight > 0 and type(ctx.domain).reward is Domain.reward:
        raise ValueError(f"domain {ctx.domain.name!r} defines no reward; use reward_weight=0")
    if score_ema is not None and student:
        raise ValueError("score_ema blends the student into the fake score and needs the teacher's architecture (student=None)")
    base = dmd2_recipe(ctx, t_min=t_min, t_max=t_max, gan_weight=gan_weight, backward_simulation=backward_simulation,
                       generator_every=generator_every, student=student)
    obj = FlashDMD(ctx.process, base.objective.grid, t_split=t_split, reward_fn=ctx.domain.reward if reward_weight > 0 else None,
                   reward_weight=reward_weight, reward_steps=reward_steps, score_ema=score_ema, teacher_prediction=ctx.prediction,
                   t_min=t_min, t_max=t_max, gan_weight=gan_weight, backward_simulation=backward_simulation, generator_every=generator_every)
    return replace(base, objective=obj, info={**base.info, "t_split": float(t_split), "reward_weight": float(reward_weight)})
