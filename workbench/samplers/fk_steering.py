"""Feynman-Kac steering (Singhal, Horvitz, Teehan, Ren, Yu, McKeown and Ranganath 2025, "A
General Framework for Inference-time Scaling and Steering of Diffusion Models", ICML; official
code zacharyhorvitz/Fk-Diffusion-Steering, ``text_to_image/fkd_diffusers/fkd_class.py``) on
continuous state, with the first-order reverse SDE (:func:`~workbench.samplers.sde.sde_step`) as
the proposal.

Every output sample runs ``K = particles`` particles. At step ``i`` (grid ``t_i -> t_{i+1}``) each
particle takes one SDE step from its data prediction ``x0_i`` and, at the resampling steps, the
particles of a sample are resampled with weights from the reward of ``x0_i`` (the official
``resample(latents=<the stepped latents>, x0_preds=<x0 at the current latents>)``):

* ``potential="diff"`` (the official launcher's default): ``w = exp(lmbda (r_i - r_prev))``;
* ``"max"``: ``w = exp(lmbda max(r_i, r_prev))``; ``"add"``: ``w = exp(lmbda (r_i + r_prev))``;
  ``"rt"``: ``w = exp(lmbda r_i)``; at the last step these three are divided by the product of
  the potentials used so far (the official correction, so the final target is ``p(x) exp(lmbda r(x))``);

``r_prev`` is the particle's reward at its previous resampling (``reward_min`` before the first).
Weights are clamped to ``[0, 1e10]`` (NaN -> 0). With ``adaptive=True`` (and always at the last
step) a sample's particles are resampled only when their effective sample size is below ``K /
2``. Resampling steps (the official ``resampling_t_start`` / ``_end`` / ``resample_frequency``,
given here as fractions of the ``n`` steps so they scale with the grid): ``start, start +
every, ..., <= end`` and the last step.

The output is one particle per sample: ``select="best"`` the highest final reward (how the paper
reports best-of-``K``), ``"random"`` a uniform draw among the particles (a draw from the tilted
target). Cost: ``K`` model calls per step per sample (``nfe`` registered for the default ``K = 4``)
and one reward call per particle at every resampling step. Defaults follow the official
text-to-image launcher (``launch_eval_runs.py``: 4 particles, ``lmbda`` 10, ``diff``, start 5 /
end 30 / every 5 of 100 steps). Report the unguided quality metrics beside the reward it raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor

from ..losses import tree_map
from .base import ModelFn, is_clean, register
from .sde import sde_step

DEFAULT_PARTICLES = 4
POTENTIALS = ("diff", "max", "add", "rt")
SELECT = ("best", "random")


@contextmanager
def particles_of(model: ModelFn, K: int):
    """Run ``model`` on ``B * K`` particles (sample ``b``'s particles are rows ``b K .. b K + K -
    1``): its mask and condition are repeated ``K`` times per sample and each sample's generator is
    shared by its ``K`` particles (drawn in turn), so a sample's result depends on its own
    generator only. Restores the model afterwards."""
    saved = (model.mask, model.cond, model.generator)
    rep = lambda a: a.repeat_interleave(K, dim=0) if isinstance(a, Tensor) else a  # noqa: E731
    model.mask = rep(model.mask) if model.mask is not None else None
    model.cond = tree_map(rep, model.cond) if model.cond is not None else None
    g = model.generator
    if g is not None and not isinstance(g, torch.Generator):
        model.generator = [gi for gi in g for _ in range(K)]
    try:
        yield model
    finally:
        model.mask, model.cond, model.generator = saved


def _uniforms(model: ModelFn, B: int, K: int, shape: tuple, device) -> Tensor:
    """Float64 uniforms ``[B, *shape]``; with per-sample generators row ``b`` comes from sample
    ``b``'s generator (``model.generator`` holds it ``K`` times inside :func:`particles_of`)."""
    from ..processes.discrete import rand64

    g = model.generator
    if g is not None and not isinstance(g, torch.Generator):
        g = list(g)[::K]
    return rand64((B, *shape), g, device=device)


def _multinomial(w: Tensor, u: Tensor) -> Tensor:
    """``K`` indices per row of ``w [B, K]`` drawn with replacement in proportion to ``w`` (the
    official ``torch.multinomial(w, K, replacement=True)``), by the inverse CDF of the uniforms
    ``u [B, K]``."""
    cdf = torch.cumsum(w / w.sum(1, keepdim=True), 1)
    return torch.searchsorted(cdf, u.to(w.dtype).contiguous(), right=True).clamp(max=w.shape[1] - 1)


def fk_weights(r: Tensor, r_prev: Tensor, prod: Tensor, *, potential: str, lmbda: float, last: bool) -> tuple[Tensor, Tensor]:
    """The official ``FKD.resample`` weights: ``(r', w)`` for rewards ``r [B, K]`` of the current
    data predictions, the particles' previous rewards ``r_prev`` and their products of potentials
    ``prod``; ``r'`` is the reward the population keeps (the running max / sum for ``max`` /
    ``add``). At the ``last`` step ``max``, ``add`` and ``rt`` use ``exp(lmbda r') / prod``.
    Clamped to ``[0, 1e10]``, NaN -> 0."""
    if potential == "max":
        r = torch.maximum(r, r_prev)
        w = torch.exp(lmbda * r)
    elif potential == "add":
        r = r + r_prev
        w = torch.exp(lmbda * r)
    elif potential == "diff":
        w = torch.exp(lmbda * (r - r_prev))
    elif potential == "rt":
        w = torch.exp(lmbda * r)
    else:
        raise ValueError(f"unknown FK potential {potential!r}; valid: {', '.join(POTENTIALS)}")
    if last and potential != "diff":
        w = torch.exp(lmbda * r) / prod
    return r, torch.nan_to_num(w.clamp(0.0, 1e10), nan=0.0)


@register("fk_steering", nfe=lambda n: DEFAULT_PARTICLES * n, order=1, stochastic=True, needs=("reward",),
          reference="Singhal et al. 2025 (Feynman-Kac steering), zacharyhorvitz/Fk-Diffusion-Steering fkd_class.py")
def fk_steering(model: ModelFn, x: Tensor, ts: Tensor, *, reward: Callable, particles: int = DEFAULT_PARTICLES, potential: str = "diff",
                lmbda: float = 10.0, start: float = 0.05, end: float = 0.3, every: float = 0.05, adaptive: bool = False,
                reward_min: float = 0.0, select: str = "best", noise_scale: float = 1.0, temperature: float = 1.0) -> Tensor:
    """Feynman-Kac steering with ``particles`` per sample (module docstring).

    Args:
        model: the wrapped model. x: ``[B, ...]`` state at ``ts[0]``. ts: ``[n + 1]`` grid.
        reward: ``reward(x0 [B', ...], mask [B', N] or None) -> [B']`` (higher is better).
        particles: ``K >= 1`` (``K = 1``: the plain :func:`~workbench.samplers.sde.sde`).
        potential: ``diff``, ``max``, ``add`` or ``rt``. lmbda: the potential's scale.
        start, end, every: resampling steps as fractions of the ``n`` steps.
        adaptive: resample only when the effective sample size is below ``K / 2``.
        select: ``best`` or ``random`` particle per sample. noise_scale, temperature: of the SDE.
    Returns:
        ``[B, ...]`` samples.
    """
    K = int(particles)
    if K != particles or K < 1:
        raise ValueError(f"particles must be a positive integer, got {particles!r}")
    if potential not in POTENTIALS:
        raise ValueError(f"unknown FK potential {potential!r}; valid: {', '.join(POTENTIALS)}")
    if select not in SELECT:
        raise ValueError(f"unknown FK select {select!r}; valid: {', '.join(SELECT)}")
    if not (0.0 <= float(start) <= 1.0 and 0.0 <= float(end) <= 1.0 and float(every) > 0):
        raise ValueError(f"start and end must be fractions in [0, 1] and every > 0, got {start}, {end}, {every}")
    n = len(ts) - 1
    B = x.shape[0]
    stride = max(1, round(float(every) * n))
    steps = set(range(int(round(float(start) * n)), int(round(float(end) * n)) + 1, stride)) | {n - 1}
    with particles_of(model, K):
        xs = x.repeat_interleave(K, dim=0)
        mask = model.mask
        r_prev = torch.full((B, K), float(reward_min), dtype=torch.float64, device=x.device)
        prod = torch.ones(B, K, dtype=torch.float64, device=x.device)
        for i in range(n):
            s, t = float(ts[i]), float(ts[i + 1])
            pred = model(xs, s)
            model.nfe += K - 1               # one batched call evaluates K particles per sample: K NFE
            x0 = model.project(pred.x0)
            xs = x0 if is_clean(t) else sde_step(model, xs, pred.x0, s, t, noise_scale=noise_scale, temperature=temperature)
            if K == 1 or i not in steps:
                continue
            r = torch.as_tensor(reward(x0, mask), dtype=torch.float64, device=x.device).reshape(B, K)
            r, w = fk_weights(r, r_prev, prod, potential=potential, lmbda=lmbda, last=i == n - 1)
            w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
            idx = _multinomial(w, _uniforms(model, B, K, (K,), x.device))
            if adaptive or i == n - 1:
                nw = w / w.sum(1, keepdim=True)
                ess = 1.0 / (nw ** 2).sum(1)
                keep = ess >= 0.5 * K
                idx = torch.where(keep[:, None], torch.arange(K, device=x.device)[None, :].expand(B, K), idx)
                wsel = torch.where(keep[:, None], torch.ones_like(w), w.gather(1, idx))
            else:
                wsel = w.gather(1, idx)
            flat = (idx + K * torch.arange(B, device=x.device)[:, None]).reshape(-1)
            xs = xs[flat]
            x0 = x0[flat]
            r_prev = r.gather(1, idx)
            prod = prod.gather(1, idx) * wsel
        if K == 1:
            return xs
        if select == "best":
            r_fin = torch.as_tensor(reward(xs, mask), dtype=torch.float64, device=x.device).reshape(B, K)
            pick = r_fin.argmax(1)
        else:
            pick = (_uniforms(model, B, K, (), x.device) * K).long().clamp(max=K - 1)
        return xs[pick + K * torch.arange(B, device=x.device)]
