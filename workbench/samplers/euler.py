"""Euler / DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

Deterministic DDIM is the first-order exponential integrator of the probability-flow ODE
(equivalently Euler in ``sigma~ = sigma / alpha``): ``x_t = alpha_t x0 + sigma_t eps``.
With ``eta > 0`` it is DDIM's generalised (ancestral) step: the noise ``sigma_t`` is split
into a deterministic part ``sigma_down`` and fresh noise ``sigma_up`` with
``sigma_up = eta * sigma_t * sqrt(1 - exp(-2 h))`` (``h = lambda_t - lambda_s``), which is
DDIM's ``sigma_t(eta)`` of eq. 16 written for any Gaussian process (``eta = 1`` is DDPM's
ancestral sampler).
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import ModelFn, is_clean, register


@register("euler", nfe=lambda n: n, order=1, reference="Song et al. 2021 (DDIM), eq. 12/16")
def euler(model: ModelFn, x: Tensor, ts: Tensor, *, eta: float = 0.0) -> Tensor:
    """DDIM / Euler sampler.

    Args:
        model: the wrapped model (one call per step).
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral sampling.
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        a_t, s_t = model.coef(t)
        if eta > 0:
            ratio = math.exp(2.0 * (model.lam(s) - model.lam(t)))  # exp(-2h), 0 if lambda_s = -inf
            s_up = min(s_t, eta * s_t * math.sqrt(max(0.0, 1.0 - ratio)))
            s_down = math.sqrt(max(0.0, s_t**2 - s_up**2))
            x = a_t * pred.x0 + s_down * pred.eps + s_up * model.noise_like(x)
        else:
            x = a_t * pred.x0 + s_t * pred.eps
        x = model.project(x)
    return x
