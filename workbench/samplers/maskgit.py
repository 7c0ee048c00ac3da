"""Confidence-ordered parallel decoding (Chang et al. 2022, "MaskGIT: Masked Generative Image
Transformer", sec. 3.2 "iterative decoding" and sec. 3.3 / eq. 3 (mask scheduling); official code
``maskgit/libml/parallel_decode.py`` and ``mask_schedule.py``).

Step ``i = 0..T-1`` (``T = len(ts) - 1``): (1) one model call gives ``p(x0 | x)``; (2) every
masked position draws a token from it; (3) its confidence is the probability of the drawn
token (already known tokens have confidence ``+inf``); (4) the ``n_i`` least confident
positions are masked again, where with ``r = (i + 1) / T`` and ``n_0`` the number of masked real
positions at the start

    n_i = clamp(floor(n_0 * gamma(r)), 1, n_unknown - 1),  gamma(r) = cos(pi r / 2)  (cosine, default)
                                                              gamma(r) = 1 - r         (linear)

so each step commits at least one token and keeps one masked until the last step, which
keeps every drawn token. As in the official code, the ranking adds annealed Gumbel noise:
``log(confidence) + temperature * (1 - r) * G`` (``temperature`` 4.5 is its default
``choice_temperature``; 0 gives the deterministic most-confident-first order).

The grid ``ts`` sets only the number of steps: the model is called at the per-sample time whose
clean fraction ``alpha(t)`` equals the sample's current fraction of unmasked real tokens
(``process.t_of_alpha``), the time at which a masked diffusion model sees such states in
training. MaskGIT does not sample the model's joint law even with many steps (committing the
most confident draws first biases it towards high-probability tokens); it is a heuristic
baseline. Absorbing (masked) processes only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import register

SCHEDULES = ("cosine", "linear")


def mask_ratio(r: float, schedule: str) -> float:
    """MaskGIT's ``gamma(r)``: the fraction of the initial masks still masked after progress ``r``."""
    if schedule == "cosine":
        return math.cos(math.pi / 2 * r)
    return 1.0 - r


@register("maskgit", state="discrete", requires=("absorbing",), nfe=lambda n: n, order=None, stochastic=True,
          reference="Chang et al. 2022 (MaskGIT) sec. 3.2-3.3, eq. 3")
def maskgit(model: DiscreteModelFn, x: Tensor, ts: Tensor, *, schedule: str = "cosine", temperature: float = 4.5) -> Tensor:
    """MaskGIT iterative decoding (one NFE per step).

    Args:
        model: the wrapped discrete model (absorbing process).
        x: ``LongTensor [B, N]`` (all real positions masked at the start, usually).
        ts: ``[T + 1]`` grid; only its length is used (module docstring).
        schedule: ``cosine`` (MaskGIT's default) or ``linear`` number-to-keep-masked schedule.
        temperature: Gumbel temperature of the confidence ranking, annealed by ``1 - r``.
    Returns:
        ``LongTensor [B, N]`` with every real position unmasked.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown maskgit schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    proc = model.process
    m = proc.mask_id
    real = model.real(x)
    n_real = real.sum(1).clamp_min(1)
    n0 = ((x == m) & real).sum(1)
    T = len(ts) - 1
    for i in range(T):
        unknown = (x == m) & real
        n_unknown = unknown.sum(1)
        t = proc.t_of_alpha(1.0 - n_unknown.to(torch.float64) / n_real)       # [B]
        probs = model(x, t)                                                  # [B, N, V]
        drawn = torch.where(unknown, model.sample(probs), x)
        g = -torch.log(-torch.log(model.uniform(x).clamp_min(1e-300)))       # float64 Gumbel, per sample
        if i == T - 1:
            return model.project(drawn)
        r = (i + 1) / T
        keep = torch.floor(n0.to(torch.float64) * mask_ratio(r, schedule)).long()
        keep = torch.minimum(keep, n_unknown - 1).clamp_min(1)
        keep = torch.where(n_unknown > 0, keep, torch.zeros_like(keep))
        conf = probs.gather(-1, drawn.clamp(max=proc.vocab_size - 1).long()[..., None])[..., 0].clamp_min(1e-300).log()
        conf = conf + temperature * (1.0 - r) * g
        conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))
        rank = conf.argsort(dim=1, stable=True).argsort(dim=1)              # 0 = least confident
        x = model.project(torch.where(rank < keep[:, None], torch.full_like(drawn, m), drawn))
    return x
