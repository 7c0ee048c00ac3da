"""Cached ancestral sampling of masked diffusion (Sahoo et al. 2024, MDLM, sec. 3.3 "efficient
sampler" / app. on caching).

With SUBS, a reverse step ``t -> s`` in which no token changes leaves ``x_s = x_t``; for a model
that does not depend on ``t`` given ``x_t`` (MDLM trains its models without time conditioning,
and the exact denoiser of an absorbing process is time-agnostic, Zheng et al. 2024, sec. 3) the
next ``p(x0 | x_s)`` equals the previous one, so the network need not run again. This sampler
keeps the last ``p(x0 | x)`` per sample and calls the network only when some sample's tokens
changed since its last evaluation (one full-batch call; rows that did not change keep their
cached probabilities, so sample ``i`` never depends on the others). ``run_sampler`` reports the
real number of calls; the registered ``nfe(steps) = steps`` is the upper bound.

Given the same generators it returns exactly what ``mdlm_ancestral`` returns whenever the
model is time-agnostic (both draw the same random numbers from the same probabilities); with
a time-conditioned network the cached rows use probabilities from an earlier ``t``, which is
MDLM's approximation. Absorbing (masked) processes only: under uniform noise the exact
denoiser depends on ``t`` even when no token changes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import register


@register("mdlm_cached", state="discrete", requires=("absorbing",), nfe=lambda n: n, order=None, stochastic=True,
          reference="Sahoo et al. 2024 (MDLM) sec. 3.3 (caching), eq. 7")
def mdlm_cached(model: DiscreteModelFn, x: Tensor, ts: Tensor) -> Tensor:
    """MDLM ancestral sampler that skips the network when no token changed.

    Args:
        model: the wrapped discrete model (absorbing process).
        x: ``LongTensor [B, N]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]``; ``model.nfe`` <= ``n``.
    """
    proc = model.process
    probs, seen = None, None
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        if probs is None:
            probs = model(x, t)
        else:
            changed = (x != seen).flatten(1).any(1)
            if bool(changed.any()):
                probs = torch.where(changed[:, None, None], model(x, t), probs)
        seen = x
        x = model.project(model.sample(proc.posterior(probs, x, t, s)))
    return x
