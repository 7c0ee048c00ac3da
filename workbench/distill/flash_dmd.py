"""Flash-DMD (Chen et al. 2025, "Flash-DMD: Towards High-Fidelity Few-Step Image Generation
with Efficient Distillation and Joint Reinforcement Learning").

DMD2 (:class:`~workbench.distill.dmd.DMD2`: its generator, grid, fake score, rollout with
backward simulation and DMD loss are reused) with the paper's two changes. ``K`` is the number
of generator steps, ``t_0 > ... > t_{K-1}`` its grid.

1. *Timestep-aware distillation* (paper Sec. 3, Algorithm 1): the generator's steps are
   split into the first ``dm_steps`` HIGH-noise steps and the remaining LOW-noise steps, and
   each loss acts only on its own steps instead of both being summed at every step:

   * a high-noise step ``k < dm_steps``: distribution matching only. The generator output
     ``x0_g = G(x_{t_k}, t_k)`` (``x_{t_k}`` by backward simulation) is diffused to
     ``t ~ U(t_min, t_max)`` and follows the DMD gradient (paper eq. 4)
     ``(mu_fake - mu_real) / mean|x0_g - mu_real|`` (:func:`~.score_distill.dmd_loss`);
   * a low-noise step ``k >= dm_steps`` (only with ``gan_weight > 0``): adversarial loss only.
     A clean generator sample ``x0 = stopgrad(B(z))`` (all ``K`` steps) is re-noised to
     ``t_k``, the generator denoises it, ``x0' = G(alpha_k x0 + sigma_k eps, t_k)``, and a
     discriminator on clean samples (the paper's pixel-space GAN; here
     :class:`~.score_distill.Discriminator` on the domain's backbone evaluated at the
     process's ``t_min``) gives ``gan_weight * softplus(-D(x0'))``; the discriminator learns
     ``softplus(-D(x_real)) + softplus(D(x0'))`` in the ``fake`` phase.

   Each generator update draws one step ``k`` uniformly (one per batch). The fake score is
   trained by plain denoising (uniform ``t``) on outputs of the distribution-matching steps
   only; it is not a discriminator, which is what lets the paper lower the two time-scale
   ratio to 1-2 (``generator_every``). Optionally (``score_ema``) the generator's weights are
   blended into it before each generator update, ``psi <- lambda psi + (1 - lambda) theta``
   (paper eq. 11). Without a GAN (``gan_weight = 0``; the recipe's default for one step, which
   has no low-noise step) every step is a distribution-matching step, and with DMD2's
   ``generator_every`` the objective is DMD2's exactly.
2. *Joint reward fine-tuning* (paper Sec. 3, stage 2): while distillation continues, the generator
   also maximises a reward, here the differentiable ``Domain.reward`` of its output (the
   toy's exact log-density, the images' classifier log-probability) instead of the paper's
   latent-reward-model preference pairs, and only on the first ``reward_steps`` (high-noise)
   steps, where the paper applies its RL (the layout is decided there)::

       loss_G = L_DMD - reward_weight * reward(x0_g)     (step k < min(dm_steps, reward_steps))

   The ongoing distillation loss is the regulariser against reward hacking.

Report the domain's true metrics beside the reward (a reward is an imperfect verifier:
maximising the toy log-density alone collapses samples onto the modes).
"""
from __future__ import annotations

import math
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

__all__ = ["FlashDMD"]


class FlashDMD(DMD2):
    """Flash-DMD objective: DMD2 phases ``fake`` (fake score, and the discriminator when
    ``gan_weight > 0``) and ``generator`` with step-wise (timestep-aware) losses and a reward
    term (module docstring).

    Args (beyond :class:`~workbench.distill.dmd.DMD2`'s):
        dm_steps: number of leading (high-noise) steps trained by distribution matching
            (``None``: all ``K`` without a GAN, ``ceil(K / 2)`` with one, the paper's 2 of 4);
            the other steps are trained by the adversarial loss.
        reward_fn: ``reward_fn(Batch) -> [B]`` differentiable reward (``Domain.reward``).
        reward_weight: weight of the reward term (0: none).
        reward_steps: number of leading steps whose outputs receive the reward (``None``:
            ``ceil(K / 2)``).
        score_ema: ``lambda`` of the generator-to-fake-score blend (``None``: off; needs the
            same architecture for both).
    """

    def __init__(self, process, grid, *, dm_steps: Optional[int] = None, reward_fn: Optional[Callable[[Batch], Tensor]] = None,
                 reward_weight: float = 0.0, reward_steps: Optional[int] = None, score_ema: Optional[float] = None, **dmd2_kwargs):
        super().__init__(process, grid, **dmd2_kwargs)
        K = len(self.grid) - 1
        if dm_steps is None:
            dm_steps = int(math.ceil(K / 2)) if self.gan_weight > 0 else K
        if int(dm_steps) != dm_steps or not 1 <= int(dm_steps) <= K:
            raise ValueError(f"dm_steps must be an integer in 1..{K} (the generator's steps), got {dm_steps}")
        if self.gan_weight > 0 and int(dm_steps) == K:
            raise ValueError(f"gan_weight > 0 needs a low-noise step for the adversarial loss: dm_steps must be < {K} "
                             f"(student_steps >= 2), got dm_steps={dm_steps}")
        if self.gan_weight == 0 and int(dm_steps) < K:
            raise ValueError(f"with gan_weight=0 steps {int(dm_steps)}..{K - 1} would receive no loss; use dm_steps={K} or gan_weight > 0")
        if reward_steps is None:
            reward_steps = int(math.ceil(K / 2))
        if int(reward_steps) != reward_steps or not 1 <= int(reward_steps) <= K:
            raise ValueError(f"reward_steps must be an integer in 1..{K}, got {reward_steps}")
        if reward_weight < 0:
            raise ValueError(f"reward_weight must be >= 0, got {reward_weight}")
        if reward_weight > 0 and reward_fn is None:
            raise ValueError("reward_weight > 0 needs a reward_fn (Domain.reward)")
        if score_ema is not None and not 0.0 <= float(score_ema) < 1.0:
            raise ValueError(f"score_ema must be in [0, 1) or None, got {score_ema}")
        self.K = K
        self.dm_steps = int(dm_steps)
        self.reward_fn = reward_fn
        self.reward_weight = float(reward_weight)
        self.reward_steps = int(reward_steps)
        self.score_ema = None if score_ema is None else float(score_ema)

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _draw(lo: int, hi: int, generator: Generator) -> int:
        """A uniform integer in ``lo..hi-1`` from ``generator``."""
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        return lo + int(torch.randint(0, hi - lo, (1,), generator=g))

    def is_dm_step(self, k: int) -> bool:
        """Step ``k`` is a high-noise (distribution-matching) step."""
        return k < self.dm_steps

    def gets_reward(self, k: int) -> bool:
        """Outputs of step ``k`` receive the reward term (high-noise distribution-matching steps)."""
        return self.reward_weight > 0 and k < min(self.dm_steps, self.reward_steps)

    def low_noise_output(self, nets, batch: Batch, k: int, generator: Generator) -> Tensor:
        """``G(alpha_k x0 + sigma_k eps, t_k)`` ``[B, ...]`` (gradient to the student): a clean
        generator sample ``x0`` (all ``K`` steps, no gradient) re-noised to the low-noise step
        ``t_k`` and denoised once more (paper eq. 10)."""
        p, mask, cond = self.process, batch.mask, batch.cond
        with torch.no_grad():
            x0, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                               step=self.K - 1)
        t = self.grid[k].expand(len(batch)).to(x0.device)
        x_hat = p.add_noise(x0, t, noise_like(p, x0, mask, generator), mask)
        return student_x0(nets["student"], p, x_hat, t, mask=mask, cond=cond)

    def _disc(self, nets, x: Tensor, mask, cond) -> Tensor:
        t = torch.full((x.shape[0],), float(self.process.t_min), dtype=x.dtype, device=x.device)
        return nets["disc"](x, t, **model_kwargs(mask, cond))

    @torch.no_grad()
    def blend_score(self, nets) -> None:
        """``fake_score <- score_ema fake_score + (1 - score_ema) student`` (paper eq. 11)."""
        st = dict(nets["student"].named_parameters())
        for name, p in nets["fake_score"].named_parameters():
            p.lerp_(st[name].detach(), 1.0 - self.score_ema)

    # -- objective ---------------------------------------------------------------------------
    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():
                x0_g, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                                     step=self._draw(0, self.dm_steps, generator))
            loss = fake_score_loss(nets["fake_score"], p, x0_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
            if self.gan_weight > 0:
                with torch.no_grad():
                    fake_x = self.low_noise_output(nets, batch, self._draw(self.dm_steps, self.K, generator), generator)
                loss = loss + F.softplus(-self._disc(nets, batch.x, mask, cond)) + F.softplus(self._disc(nets, fake_x, mask, cond))
            return loss
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        if self.score_ema is not None:
            self.blend_score(nets)
        k = self._draw(0, self.K, generator)
        if not self.is_dm_step(k):  # low-noise step: adversarial loss only
            x_lo = self.low_noise_output(nets, batch, k, generator)
            with frozen(nets["disc"]):
                return self.gan_weight * F.softplus(-self._disc(nets, x_lo, mask, cond))
        x0_g, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation, step=k)
        t = sample_t(len(batch), generator, x0_g.device, self.t_min, self.t_max)
        x_t = p.add_noise(x0_g.detach(), t, noise_like(p, x0_g, mask, generator), mask)
        mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        mu_fake = teacher_x0(nets["fake_score"], p, x_t, t, mask, cond)
        loss = dmd_loss(x0_g, mu_real, mu_fake, mask)
        if self.gets_reward(k):
            loss = loss - self.reward_weight * self.reward_fn(Batch(x=x0_g, mask=mask, cond=cond)).to(loss.dtype)
        return loss

    def __repr__(self) -> str:
        return (f"FlashDMD(steps={self.K}, dm_steps={self.dm_steps}, t=[{self.t_min}, {self.t_max}], gan_weight={self.gan_weight}, "
                f"reward_weight={self.reward_weight}, reward_steps={self.reward_steps}, score_ema={self.score_ema}, "
                f"generator_every={self.generator_every})")


@register_method("flash_dmd", kind="consistency", paper="Chen et al. 2025 (Flash-DMD)",
                 description="DMD2 with timestep-aware losses (DM on high-noise steps, GAN on low-noise steps), joint reward tuning")
def flash_dmd_recipe(ctx: RecipeContext, *, dm_steps: Optional[int] = None, t_min: float = 0.02, t_max: float = 0.98,
                     gan_weight: Optional[float] = None, reward_weight: float = 0.0, reward_steps: Optional[int] = None,
                     score_ema: Optional[float] = None, backward_simulation: bool = True, generator_every: int = 2,
                     student: Optional[dict] = None, init_sigma: Optional[float] = 2.5) -> DistillSetup:
    """Flash-DMD on the domain's teacher: the nets, generator, grid (from ``t(init_sigma)``)
    and spec of ``dmd2`` (student and fake score from the teacher, discriminator from the
    teacher's architecture when ``gan_weight > 0``) with the :class:`FlashDMD` objective.
    ``gan_weight=None``: 0.1 with two or more steps (the timestep-aware split), 0 for one step
    (no low-noise step exists). ``reward_weight > 0`` (stage 2, opt-in: the reward's scale is
    the domain's) needs ``Domain.reward``."""
    from ..domain import Domain

    if gan_weight is None:
        gan_weight = 0.1 if int(ctx.student_steps) >= 2 else 0.0
    if reward_weight > 0 and type(ctx.domain).reward is Domain.reward:
        raise ValueError(f"domain {ctx.domain.name!r} defines no reward; use reward_weight=0")
    if score_ema is not None and student:
        raise ValueError("score_ema blends the student into the fake score and needs the teacher's architecture (student=None)")
    base = dmd2_recipe(ctx, t_min=t_min, t_max=t_max, gan_weight=gan_weight, backward_simulation=backward_simulation,
                       generator_every=generator_every, student=student, init_sigma=init_sigma)
    obj = FlashDMD(ctx.process, base.objective.grid, dm_steps=dm_steps, reward_fn=ctx.domain.reward if reward_weight > 0 else None,
                   reward_weight=reward_weight, reward_steps=reward_steps, score_ema=score_ema, teacher_prediction=ctx.prediction,
                   t_min=t_min, t_max=t_max, gan_weight=gan_weight, backward_simulation=backward_simulation,
                   generator_every=generator_every)
    return replace(base, objective=obj, info={**base.info, "dm_steps": obj.dm_steps, "reward_weight": float(reward_weight),
                                              "reward_steps": obj.reward_steps})
