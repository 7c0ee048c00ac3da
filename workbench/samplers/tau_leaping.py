"""Tau-leaping for discrete diffusion (Campbell et al. 2022, "A Continuous Time Framework for
Discrete Denoising Models", sec. 4.1, eq. 9-10 and Alg. 1).

The reverse process is a continuous-time Markov chain whose rates ``R_t(x -> y)`` per position
follow from the model's ``p(x0 | x_t)`` and the forward rates (``process.reverse_rates``;
Campbell et al. prop. 1). Tau-leaping freezes the rates at ``t`` over the step ``[s, t]``
(``dt = t - s``) and updates all positions in parallel: jumps of each kind are Poisson with
mean ``R dt``. Tokens are not ordinal, so jumps cannot be added as Campbell et al. do for
pixel values; we take, per position, "no event" with probability ``exp(-R_tot dt)`` and
otherwise the target of the first event, ``y`` with probability proportional to
``R(x -> y)``. For the masked process this is exactly the frozen-rate chain (a masked token can
unmask once and then never changes); for the uniform process it neglects second jumps within a
step, an O(dt^2) error like tau-leaping's own. The choice for non-ordinal states is ours; the
paper leaves it open.

The last interval into ``t = 0`` is the exact posterior step (every still-noisy position drawn
from ``p(x0 | x_t)``), as the final "denoising" step of Campbell et al. and SEDD: the frozen
rate ``-alpha'/(1 - alpha)`` of the log-linear schedule is ``1 / t``, so a leap over
``[1/n, 0]`` would otherwise leave ``e^{-1}`` of the remaining masks in place.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import register


@register("tau_leaping", state="discrete", nfe=lambda n: n, order=None, stochastic=True,
          reference="Campbell et al. 2022, sec. 4.1, eq. 9-10 (tau-leaping)")
def tau_leaping(model: DiscreteModelFn, x: Tensor, ts: Tensor) -> Tensor:
    """Tau-leaping sampler (one NFE per step).

    Args:
        model: the wrapped discrete model.
        x: ``LongTensor [B, N]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]``.
    """
    proc = model.process
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        probs = model(x, t)
        if s <= 0.0:
            return model.project(model.sample(proc.posterior(probs, x, t, 0.0)))
        rates = proc.reverse_rates(probs, x, t)                        # [B, N, S], 0 at x
        total = rates.sum(-1, keepdim=True)
        p_jump = -torch.expm1(-total * (t - s))                        # 1 - exp(-R_tot dt)
        trans = torch.where(total > 0, p_jump * rates / total.clamp_min(1e-300), torch.zeros_like(rates))
        stay = torch.nn.functional.one_hot(x.long(), rates.shape[-1]).to(rates.dtype) * (1.0 - p_jump)
        x = model.project(model.sample(trans + stay))
    return x
