"""Flash-DMD (Chen et al. 2025, "Flash-DMD: Towards High-Fidelity Few-Step Image Generation
with Efficient Distillation and Joint Reinforcement Learning", arXiv 2511.20549).

No official code is released ("codes are coming soon"); this follows the paper's Algorithm 1
and eqs. 4, 10, 11 as reproduced in paper notes, and takes what the paper leaves open from the
method its RL stage builds on (LPO, Zhang et al. 2025, arXiv 2502.01051, official code
``Kwai-Kolors/LPO`` ``lpo/train_scripts/train_lpo_sdxl.py`` and
``lpo/preference_models/compare_funcs.py``). Every choice that is not the paper's is listed
under "Choices" below.

The generator ``G`` is DMD2's (:class:`~workbench.distill.dmd.DMD2`): an x0 student sampled by
multistep consistency sampling on a ``K``-step grid ``t_0 > ... > t_{K-1} > t_K = 0``,
``x_{t_{k+1}} = alpha_{k+1} G(x_{t_k}, t_k) + sigma_{k+1} z``; a frozen teacher ("real
score"); a fake score initialised from the teacher; backward simulation. Shapes: states
``[B, ...]`` (``mask`` ``[B, N]`` for sets), times ``[B]`` float64, losses ``[B]``.

Stage 1, timestep-aware distillation (Algorithm 1). The steps split into the first
``dm_steps`` HIGH-noise steps ``T_noisy`` and the remaining LOW-noise steps. Every generator
update minimises (eq. 4)

    L_G = L_DMD(x0_g) + lambda * L_adv(x')

* ``L_DMD``: a high-noise step ``j ~ U{0..dm_steps-1}``, ``x0_g = G(x_{t_j}, t_j)`` with
  ``x_{t_j}`` by backward simulation, diffused to ``t ~ U(t_min, t_max)``; DMD gradient
  ``(mu_fake - mu_real) / mean|x0_g - mu_real|`` (:func:`~.score_distill.dmd_loss`);
* ``L_adv`` (eq. 10): a low-noise step ``k ~ U{dm_steps..K-1}``; a clean generator sample
  ``x0 = stopgrad(B(z))`` (all ``K`` steps) is re-noised to ``t_k`` and denoised,
  ``x' = G(alpha_k x0 + sigma_k eps, t_k)``; hinge generator loss ``-D(x')`` (Algorithm 1
  says hinge).

The fake-score phase trains the fake score by denoising on ``G(x_{tau}, tau)`` for ``tau``
drawn from ALL ``K`` steps, and the discriminator with the hinge loss
``relu(1 - D(x_real)) + relu(1 + D(x'))``. After each generator update the generator's
weights are blended into the fake score (eq. 11), ``psi <- lambda_ema psi + (1 - lambda_ema)
theta`` (``score_ema``; needs the teacher's architecture for the student). The two
time-scale ratio is 1-2 (``generator_every=2``). With one step (``K = 1``) there is no
low-noise step: ``L_G = L_DMD``.

Stage 2, joint preference RL (``rl="preference"``): distillation continues and every
``rl_every + 1``-th generator update (5 distillation updates : 1 preference update, counted
from ``rl_start``) is a preference update instead:

1. a high-noise step ``k ~ U{0..rl_steps-1}`` (default the first ``ceil(K/2)`` steps, the
   paper's ``t in {999, 749}`` of 4 steps), ``x_{t_k}`` by backward simulation;
2. ``rl_candidates`` (``K_c = 4``) candidates of the generator's stochastic transition,
   ``x^i = alpha_{k+1} G(x_{t_k}, t_k) + sigma_{k+1} z_i``;
3. the reward model scores each candidate; winner ``w`` = best, loser ``l`` = worst; the pair
   is kept when ``tanh((r_w - r_l)/2) > rl_threshold`` (LPO's softmax margin);
4. DPO loss ``-log sigma(beta H(w, l))`` with the implicit-reward difference of the
   generator's Gaussian step policy ``pi(x | x_{t_k}) = N(alpha_{k+1} G(x_{t_k}, t_k),
   sigma_{k+1}^2 I)`` against a frozen reference policy (LPO / Diffusion-DPO):

       H(w, l) = [log pi_theta(x^w) - log pi_ref(x^w)] - [log pi_theta(x^l) - log pi_ref(x^l)]
       log pi_theta(x) - log pi_ref(x) = -(||x - a m_theta||^2 - ||x - a m_ref||^2) / (2 s^2)

   with ``a, s = alpha_{k+1}, sigma_{k+1}``, ``m = G(x_{t_k}, t_k)`` (sums over the real
   elements of one sample). Samples whose pair is dropped contribute 0; the others are
   scaled by ``B / n_kept`` so the batch mean is the mean over kept pairs (as LPO averages
   kept pairs).

Choices (not recoverable from the paper text available here):

* reward model: ``Domain.reward`` of the domain (the toy's exact log-density, the images'
  classifier log-probability) SUBSTITUTES the paper's latent reward model (LRM, which scores
  noisy latents); a candidate is scored by the reward of its clean estimate
  ``G(x^i, t_{k+1})`` (one generator evaluation);
* reference policy: a frozen copy of the generator taken when stage 2 starts (``rl_start``,
  counted in generator updates; default 0 = joint from the start);
* ``rl_beta=1``, ``rl_threshold=0`` (keep every pair with a strict winner), no ratio clipping
  (``rl_ratio_clip=None``; LPO clips ``exp(log-ratio)`` to ``[1-eps, 1+eps]``); the preference
  update uses the generator's optimiser;
* ``lambda = gan_weight = 0.1``, ``score_ema = 0.99``, ``dm_steps = ceil(K/2)`` (the paper's 2
  of 4);
* discriminator: the paper's frozen SAM encoder with trainable heads on pixels is a domain
  SUBSTITUTION here, :class:`~.score_distill.Discriminator` (a copy of the domain's backbone)
  evaluated at the process's ``t_min`` on clean samples; its loss is the paper's hinge.

Named variants (never the default): ``combine="alternate"`` (one loss per generator update:
a drawn high-noise step gets ``L_DMD`` only, a low-noise step ``lambda L_adv`` only);
``gan_loss="non_saturating"`` (softplus losses); ``rl="reward_ascent"`` (differentiable
reward ascent summed into the distillation loss, ``- reward_weight * reward(x0_g)`` on the
first ``reward_steps`` steps: reward backpropagation, not the paper's preference RL).

Report the domain's true metrics beside the reward (a reward is an imperfect verifier).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import Batch
from ..processes import append_dims
from ..utils import Generator, first_generator, model_kwargs
from .base import student_x0
from .dmd import DMD2, DMD2Options, dmd2_recipe
from .score_distill import dmd_loss, fake_score_loss, frozen, noise_like, rollout, sample_t, teacher_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method

__all__ = ["FlashDMD", "FlashState", "COMBINES", "GAN_LOSSES", "RL_MODES"]

#: how the generator's losses combine: Algorithm 1's sum, or the project's one-loss-per-update variant
COMBINES = ("sum", "alternate")
#: discriminator/generator adversarial losses: Algorithm 1's hinge, or DMD2's non-saturating (softplus)
GAN_LOSSES = ("hinge", "non_saturating")
#: stage 2: none, the paper's preference RL, or the project's reward-backpropagation variant
RL_MODES = ("none", "preference", "reward_ascent")


class FlashState(nn.Module):
    """The objective's schedule state as buffers (so the training loop checkpoints it with
    the nets): ``generator_updates`` (generator updates done), ``blend_pending`` (a generator
    update awaits its eq. 11 blend), ``reference_ready`` (the stage-2 reference is taken)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("generator_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("blend_pending", torch.zeros((), dtype=torch.long))
        self.register_buffer("reference_ready", torch.zeros((), dtype=torch.long))


def _sq_sum(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``sum`` of ``x^2`` over the real elements of each sample: ``[B, ...] -> [B]``."""
    sq = x ** 2
    if mask is not None:
        sq = sq * append_dims(mask.to(x.dtype), x.ndim)
    return sq.flatten(1).sum(1)


class FlashDMD(DMD2):
    """Flash-DMD objective (module docstring): phases ``fake`` (fake score; discriminator when
    ``gan_weight > 0``) and ``generator`` (distillation updates, and preference updates in
    stage 2).

    Args (beyond :class:`~workbench.distill.dmd.DMD2`'s; ``gan_weight`` is eq. 4's ``lambda``):
        dm_steps: number of leading (high-noise) steps ``T_noisy`` (``None``: ``K`` without a
            GAN, ``ceil(K / 2)`` with one); the others are the adversarial (low-noise) steps.
        combine: ``"sum"`` (Algorithm 1) or ``"alternate"`` (variant, module docstring).
        gan_loss: ``"hinge"`` (Algorithm 1) or ``"non_saturating"`` (variant).
        score_ema: ``lambda`` of eq. 11 (``None``: off), applied after each generator update.
        rl: ``"none"``, ``"preference"`` (stage 2) or ``"reward_ascent"`` (variant).
        reward_fn: ``reward_fn(Batch) -> [B]`` (``Domain.reward``); needed by ``rl != "none"``.
        rl_beta, rl_candidates, rl_every, rl_start, rl_steps, rl_threshold, rl_ratio_clip:
            DPO ``beta``; candidates per state; distillation updates per preference update;
            generator update at which stage 2 starts; number of leading high-noise steps the
            preference updates use (``None``: ``min(ceil(K/2), K-1)``); LPO pair margin; LPO
            ratio clip ``eps`` (``None``: off).
        reward_weight, reward_steps: ``rl="reward_ascent"`` only.
    """

    def __init__(self, process, grid, *, dm_steps: Optional[int] = None, combine: str = "sum", gan_loss: str = "hinge",
                 score_ema: Optional[float] = None, rl: str = "none", reward_fn: Optional[Callable[[Batch], Tensor]] = None,
                 rl_beta: float = 1.0, rl_candidates: int = 4, rl_every: int = 5, rl_start: int = 0, rl_steps: Optional[int] = None,
                 rl_threshold: float = 0.0, rl_ratio_clip: Optional[float] = None, reward_weight: float = 0.0,
                 reward_steps: Optional[int] = None, **dmd2_kwargs):
        super().__init__(process, grid, **dmd2_kwargs)
        K = len(self.grid) - 1
        if combine not in COMBINES:
            raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown gan_loss {gan_loss!r}; valid: {', '.join(GAN_LOSSES)}")
        if rl not in RL_MODES:
            raise ValueError(f"unknown rl {rl!r}; valid: {', '.join(RL_MODES)}")
        if dm_steps is None:
            dm_steps = int(math.ceil(K / 2)) if self.gan_weight > 0 else K
        if int(dm_steps) != dm_steps or not 1 <= int(dm_steps) <= K:
            raise ValueError(f"dm_steps must be an integer in 1..{K} (the generator's steps), got {dm_steps}")
        if self.gan_weight > 0 and int(dm_steps) == K:
            raise ValueError(f"gan_weight > 0 needs a low-noise step for the adversarial loss: dm_steps must be < {K} "
                             f"(student_steps >= 2), got dm_steps={dm_steps}")
        if self.gan_weight == 0 and int(dm_steps) < K:
            raise ValueError(f"with gan_weight=0 steps {int(dm_steps)}..{K - 1} would receive no loss; use dm_steps={K} or gan_weight > 0")
        if score_ema is not None and not 0.0 <= float(score_ema) < 1.0:
            raise ValueError(f"score_ema must be in [0, 1) or None, got {score_ema}")
        if rl != "none" and reward_fn is None:
            raise ValueError(f"rl={rl!r} needs a reward_fn (Domain.reward)")
        if rl == "preference":
            if K < 2:
                raise ValueError("rl='preference' needs student_steps >= 2: a one-step generator has no stochastic transition to prefer")
            if rl_steps is None:
                rl_steps = min(int(math.ceil(K / 2)), K - 1)
            if int(rl_steps) != rl_steps or not 1 <= int(rl_steps) <= K - 1:
                raise ValueError(f"rl_steps must be an integer in 1..{K - 1} (steps with a noisy successor), got {rl_steps}")
            if int(rl_candidates) != rl_candidates or int(rl_candidates) < 2:
                raise ValueError(f"rl_candidates must be an integer >= 2, got {rl_candidates}")
            if int(rl_every) != rl_every or int(rl_every) < 0:
                raise ValueError(f"rl_every must be an integer >= 0 (distillation updates per preference update), got {rl_every}")
            if int(rl_start) != rl_start or int(rl_start) < 0:
                raise ValueError(f"rl_start must be an integer >= 0 (generator updates before stage 2), got {rl_start}")
            if not rl_beta > 0:
                raise ValueError(f"rl_beta must be > 0, got {rl_beta}")
            if not -1.0 <= float(rl_threshold) < 1.0:
                raise ValueError(f"rl_threshold must be in [-1, 1), got {rl_threshold}")
            if rl_ratio_clip is not None and not 0.0 < float(rl_ratio_clip) < 1.0:
                raise ValueError(f"rl_ratio_clip must be in (0, 1) or None, got {rl_ratio_clip}")
        if reward_weight < 0:
            raise ValueError(f"reward_weight must be >= 0, got {reward_weight}")
        if reward_weight > 0 and rl != "reward_ascent":
            raise ValueError(f"reward_weight is the weight of rl='reward_ascent' (a variant); got rl={rl!r}")
        if reward_steps is None:
            reward_steps = int(math.ceil(K / 2))
        if int(reward_steps) != reward_steps or not 1 <= int(reward_steps) <= K:
            raise ValueError(f"reward_steps must be an integer in 1..{K}, got {reward_steps}")
        self.K = K
        self.dm_steps = int(dm_steps)
        self.combine, self.gan_loss, self.rl = combine, gan_loss, rl
        self.score_ema = None if score_ema is None else float(score_ema)
        self.reward_fn = reward_fn
        self.rl_beta, self.rl_candidates, self.rl_every = float(rl_beta), int(rl_candidates), int(rl_every)
        self.rl_start = int(rl_start)
        self.rl_steps = None if rl_steps is None else int(rl_steps)
        self.rl_threshold = float(rl_threshold)
        self.rl_ratio_clip = None if rl_ratio_clip is None else float(rl_ratio_clip)
        self.reward_weight = float(reward_weight)
        self.reward_steps = int(reward_steps)
        #: schedule state; the recipe puts it in ``nets["flash_state"]`` so it is checkpointed
        self.state = FlashState()

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _draw(lo: int, hi: int, generator: Generator) -> int:
        """A uniform integer in ``lo..hi-1`` from ``generator``."""
        g = first_generator(generator)
        return lo + int(torch.randint(0, hi - lo, (1,), generator=g))

    def is_dm_step(self, k: int) -> bool:
        """Step ``k`` is a high-noise (distribution-matching) step."""
        return k < self.dm_steps

    def gets_reward(self, k: int) -> bool:
        """``rl="reward_ascent"``: outputs of step ``k`` receive the reward term."""
        return self.rl == "reward_ascent" and self.reward_weight > 0 and k < min(self.dm_steps, self.reward_steps)

    def is_preference_update(self, n: int) -> bool:
        """Generator update ``n`` (0-based) is a preference update: stage 2 has started
        (``n >= rl_start``) and it is the last of each ``rl_every + 1`` updates (5:1)."""
        return self.rl == "preference" and n >= self.rl_start and (n - self.rl_start) % (self.rl_every + 1) == self.rl_every

    def low_noise_output(self, nets, batch: Batch, k: int, generator: Generator) -> Tensor:
        """``x' = G(alpha_k x0 + sigma_k eps, t_k)`` ``[B, ...]`` (gradient to the student): a
        clean generator sample ``x0 = stopgrad(B(z))`` (all ``K`` steps) re-noised to the
        low-noise step ``t_k`` and denoised once more (paper eq. 10)."""
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

    def adv_generator_loss(self, d_fake: Tensor) -> Tensor:
        """Generator adversarial loss ``[B]`` from logits ``D(x')``: hinge ``-D``, or
        non-saturating ``softplus(-D)``."""
        return -d_fake if self.gan_loss == "hinge" else F.softplus(-d_fake)

    def adv_disc_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        """Discriminator loss ``[B]``: hinge ``relu(1 - D(real)) + relu(1 + D(fake))``, or
        non-saturating ``softplus(-D(real)) + softplus(D(fake))``."""
        if self.gan_loss == "hinge":
            return F.relu(1.0 - d_real) + F.relu(1.0 + d_fake)
        return F.softplus(-d_real) + F.softplus(d_fake)

    @torch.no_grad()
    def blend_score(self, nets) -> None:
        """``fake_score <- score_ema fake_score + (1 - score_ema) student`` (paper eq. 11)."""
        st = dict(nets["student"].named_parameters())
        for name, p in nets["fake_score"].named_parameters():
            p.lerp_(st[name].detach(), 1.0 - self.score_ema)

    def _apply_pending_blend(self, nets) -> None:
        """Eq. 11 after the previous generator update (the loop's optimiser step happens
        after the objective returns, so the blend runs at the start of the next call)."""
        if self.score_ema is not None and int(self.state.blend_pending):
            self.blend_score(nets)
            self.state.blend_pending.fill_(0)

    # -- losses ------------------------------------------------------------------------------
    def distillation_terms(self, nets, batch: Batch, generator: Generator) -> dict:
        """The pieces of one distillation update (``combine="sum"``): ``j``, ``x0_g``
        ``[B, ...]`` (grad), its noisy version ``x_t`` and ``t`` ``[B]``, ``mu_real``,
        ``mu_fake`` and, with a GAN, ``k`` and ``x_lo = G(alpha_k x0 + sigma_k eps, t_k)``
        (grad)."""
        p, mask, cond = self.process, batch.mask, batch.cond
        j = self._draw(0, self.dm_steps, generator)
        x0_g, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation, step=j)
        t = sample_t(len(batch), generator, x0_g.device, self.t_min, self.t_max)
        x_t = p.add_noise(x0_g.detach(), t, noise_like(p, x0_g, mask, generator), mask)
        out = {"j": j, "x0_g": x0_g, "x_t": x_t, "t": t,
               "mu_real": teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction),
               "mu_fake": teacher_x0(nets["fake_score"], p, x_t, t, mask, cond)}
        if self.gan_weight > 0:
            k = self._draw(self.dm_steps, self.K, generator)
            out["k"], out["x_lo"] = k, self.low_noise_output(nets, batch, k, generator)
        return out

    def distillation_loss(self, nets, batch: Batch, generator: Generator) -> Tensor:
        """``L_DMD + lambda L_adv`` ``[B]`` (Algorithm 1, eq. 4), or the ``alternate`` variant."""
        mask, cond = batch.mask, batch.cond
        if self.combine == "alternate":
            k = self._draw(0, self.K, generator)
            if not self.is_dm_step(k):  # variant: a low-noise step gets the adversarial loss only
                x_lo = self.low_noise_output(nets, batch, k, generator)
                with frozen(nets["disc"]):
                    return self.gan_weight * self.adv_generator_loss(self._disc(nets, x_lo, mask, cond))
            p = self.process
            x0_g, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation, step=k)
            t = sample_t(len(batch), generator, x0_g.device, self.t_min, self.t_max)
            x_t = p.add_noise(x0_g.detach(), t, noise_like(p, x0_g, mask, generator), mask)
            loss = dmd_loss(x0_g, teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction),
                            teacher_x0(nets["fake_score"], p, x_t, t, mask, cond), mask)
            j = k
        else:
            d = self.distillation_terms(nets, batch, generator)
            x0_g, j = d["x0_g"], d["j"]
            loss = dmd_loss(x0_g, d["mu_real"], d["mu_fake"], mask)
            if self.gan_weight > 0:
                with frozen(nets["disc"]):
                    loss = loss + self.gan_weight * self.adv_generator_loss(self._disc(nets, d["x_lo"], mask, cond))
        if self.gets_reward(j):
            loss = loss - self.reward_weight * self.reward_fn(Batch(x=x0_g, mask=mask, cond=cond)).to(loss.dtype)
        return loss

    def preference_terms(self, nets, batch: Batch, generator: Generator) -> dict:
        """The pieces of one preference update (no gradients): step ``k``, state ``x_k``
        ``[B, ...]`` at ``t_k`` ``[B]``, successor time ``t_next`` ``[B]``, ``candidates``
        ``[K_c, B, ...]``, their ``scores`` ``[K_c, B]`` (reward of ``G(x^i, t_{k+1})``), winner
        and loser indices ``win``, ``lose`` ``[B]`` and the kept pairs ``valid`` ``[B]`` bool."""
        p, mask, cond = self.process, batch.mask, batch.cond
        st = nets["student"]
        k = self._draw(0, self.rl_steps, generator)
        with torch.no_grad():
            m, x_k, t_k = rollout(st, p, self.grid, batch, generator, backward_simulation=self.backward_simulation, step=k)
            t_next = self.grid[k + 1].expand(len(batch)).to(m.device).clone()
            a = append_dims(p.alpha(t_next).to(m.dtype), m.ndim)
            s = append_dims(p.sigma(t_next).to(m.dtype), m.ndim)
            cands = torch.stack([p.project(a * m + s * noise_like(p, m, mask, generator), mask) for _ in range(self.rl_candidates)])
            scores = torch.stack([self.reward_fn(Batch(x=student_x0(st, p, c, t_next, mask=mask, cond=cond), mask=mask, cond=cond))
                                  .to(torch.float64) for c in cands])
            order = torch.argsort(scores, dim=0, descending=True)
            win, lose = order[0], order[-1]
            r_w, r_l = scores.gather(0, win[None])[0], scores.gather(0, lose[None])[0]
            valid = torch.tanh((r_w - r_l) / 2) > self.rl_threshold  # LPO: softmax(r_w, r_l) margin
        return {"k": k, "x_k": x_k, "t_k": t_k, "t_next": t_next, "candidates": cands, "scores": scores, "win": win, "lose": lose,
                "valid": valid}

    def preference_loss(self, nets, batch: Batch, generator: Generator) -> Tensor:
        """``-log sigma(beta H(w, l))`` ``[B]`` (module docstring), 0 for dropped pairs, kept
        pairs scaled by ``B / n_kept``."""
        p, mask, cond = self.process, batch.mask, batch.cond
        d = self.preference_terms(nets, batch, generator)
        x_k, t_k, t_next = d["x_k"], d["t_k"], d["t_next"]
        m_theta = student_x0(nets["student"], p, x_k, t_k, mask=mask, cond=cond)
        with torch.no_grad():
            m_ref = student_x0(nets["reference"], p, x_k, t_k, mask=mask, cond=cond)
        a = append_dims(p.alpha(t_next).to(x_k.dtype), x_k.ndim)
        s2 = (p.sigma(t_next).to(torch.float64) ** 2)
        idx = torch.arange(len(batch), device=x_k.device)
        x_w, x_l = d["candidates"][d["win"], idx], d["candidates"][d["lose"], idx]

        def log_ratio(x):  # log pi_theta(x | x_k) - log pi_ref(x | x_k), Gaussian step policy
            lr = -(_sq_sum(x - a * m_theta, mask) - _sq_sum(x - a * m_ref, mask)).to(torch.float64) / (2 * s2)
            if self.rl_ratio_clip is not None:
                lr = lr.clamp(math.log(1 - self.rl_ratio_clip), math.log(1 + self.rl_ratio_clip))
            return lr

        h = log_ratio(x_w) - log_ratio(x_l)
        valid = d["valid"]
        scale = len(batch) / max(int(valid.sum()), 1)
        loss = -F.logsigmoid(self.rl_beta * h) * valid.to(h.dtype) * scale
        return loss.to(x_k.dtype)

    # -- objective ---------------------------------------------------------------------------
    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        if phase not in ("fake", "generator"):
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        self._apply_pending_blend(nets)
        p, mask, cond = self.process, batch.mask, batch.cond
        if phase == "fake":
            with torch.no_grad():  # G(x_tau, tau) for tau from ALL steps (Algorithm 1)
                x0_g, _, _ = rollout(nets["student"], p, self.grid, batch, generator, backward_simulation=self.backward_simulation,
                                     step=self._draw(0, self.K, generator))
            loss = fake_score_loss(nets["fake_score"], p, x0_g, mask, cond, generator, t_min=self.t_min, t_max=self.t_max)
            if self.gan_weight > 0:
                with torch.no_grad():
                    fake_x = self.low_noise_output(nets, batch, self._draw(self.dm_steps, self.K, generator), generator)
                loss = loss + self.adv_disc_loss(self._disc(nets, batch.x, mask, cond), self._disc(nets, fake_x, mask, cond))
            return loss
        n = int(self.state.generator_updates)
        if self.rl == "preference" and n == self.rl_start and not int(self.state.reference_ready):
            with torch.no_grad():  # stage 2 starts: the reference policy is the generator now
                for q, r in zip(nets["reference"].parameters(), nets["student"].parameters()):
                    q.copy_(r)
            self.state.reference_ready.fill_(1)
        if self.is_preference_update(n):
            loss = self.preference_loss(nets, batch, generator)
        else:
            loss = self.distillation_loss(nets, batch, generator)
        self.state.generator_updates.add_(1)
        if self.score_ema is not None:
            self.state.blend_pending.fill_(1)
        return loss

    def __repr__(self) -> str:
        return (f"FlashDMD(steps={self.K}, dm_steps={self.dm_steps}, combine={self.combine!r}, gan_weight={self.gan_weight}, "
                f"gan_loss={self.gan_loss!r}, score_ema={self.score_ema}, rl={self.rl!r}, generator_every={self.generator_every})")


@dataclass
class FlashDMDOptions(MethodOptions):
    """Options of method ``flash_dmd`` (``distill.KEY=VALUE``, documented in :func:`flash_dmd_recipe`)."""

    dm_steps: Optional[int] = None
    t_min: float = 0.02
    t_max: float = 0.98
    gan_weight: Optional[float] = None
    combine: str = "sum"
    gan_loss: str = "hinge"
    score_ema: Optional[float] = 0.99
    rl: str = "none"
    rl_beta: float = 1.0
    rl_candidates: int = 4
    rl_every: int = 5
    rl_start: int = 0
    rl_steps: Optional[int] = None
    rl_threshold: float = 0.0
    rl_ratio_clip: Optional[float] = None
    reward_weight: float = 0.0
    reward_steps: Optional[int] = None
    backward_simulation: bool = True
    generator_every: int = 2
    student: Optional[dict] = None
    init_sigma: Optional[float] = 2.5


@register_method("flash_dmd", options=FlashDMDOptions, kind="consistency", paper="Chen et al. 2025 (Flash-DMD, arXiv 2511.20549)",
                 description="timestep-aware DMD (L_DMD on high-noise + lambda hinge GAN on low-noise steps, summed), fake-score EMA, "
                             "optional joint preference RL (DPO pairs, 5:1)")
def flash_dmd_recipe(ctx: RecipeContext, opts: FlashDMDOptions) -> DistillSetup:
    """Flash-DMD on the domain's teacher: the nets, generator, grid (from ``t(init_sigma)``)
    and spec of ``dmd2`` (student and fake score from the teacher, discriminator from the
    teacher's architecture when ``gan_weight > 0``) with the :class:`FlashDMD` objective, plus
    ``nets["flash_state"]`` (schedule state) and, for ``rl="preference"``, ``nets["reference"]``
    (frozen reference policy). ``gan_weight=None``: 0.1 with two or more steps, 0 for one
    step (no low-noise step). ``score_ema`` (eq. 11) needs the teacher's architecture for the
    student: pass ``score_ema=None`` with a smaller ``student``. ``rl != "none"`` needs
    ``Domain.reward``."""
    from ..domain import Domain

    if opts.gan_weight is None:
        opts = replace(opts, gan_weight=0.1 if int(ctx.student_steps) >= 2 else 0.0)
    if opts.rl != "none" and type(ctx.domain).reward is Domain.reward:
        raise ValueError(f"domain {ctx.domain.name!r} defines no reward; use rl='none'")
    if opts.score_ema is not None and opts.student:
        raise ValueError("score_ema blends the student into the fake score and needs the teacher's architecture; "
                         "use score_ema=None with a smaller student")
    base = dmd2_recipe(ctx, DMD2Options(t_min=opts.t_min, t_max=opts.t_max, gan_weight=opts.gan_weight,
                                        backward_simulation=opts.backward_simulation, generator_every=opts.generator_every,
                                        student=opts.student, init_sigma=opts.init_sigma))
    obj = FlashDMD(ctx.process, base.objective.grid, dm_steps=opts.dm_steps, combine=opts.combine, gan_loss=opts.gan_loss, score_ema=opts.score_ema,
                   rl=opts.rl, reward_fn=ctx.domain.reward if opts.rl != "none" else None, rl_beta=opts.rl_beta, rl_candidates=opts.rl_candidates,
                   rl_every=opts.rl_every, rl_start=opts.rl_start, rl_steps=opts.rl_steps, rl_threshold=opts.rl_threshold, rl_ratio_clip=opts.rl_ratio_clip,
                   reward_weight=opts.reward_weight, reward_steps=opts.reward_steps, teacher_prediction=ctx.prediction, t_min=opts.t_min,
                   t_max=opts.t_max, gan_weight=opts.gan_weight, backward_simulation=opts.backward_simulation, generator_every=opts.generator_every)
    nets = {**base.nets, "flash_state": obj.state}
    if opts.rl == "preference":
        nets["reference"] = copy.deepcopy(base.nets["student"]).requires_grad_(False)
    return replace(base, objective=obj, nets=nets,
                   info={**base.info, "dm_steps": obj.dm_steps, "combine": opts.combine, "gan_loss": opts.gan_loss, "score_ema": obj.score_ema,
                         "rl": opts.rl, "rl_steps": obj.rl_steps})
