"""iPNDM: improved pseudo numerical method (Zhang & Chen 2023, "Fast Sampling of Diffusion
Models with Exponential Integrator", ICLR, appendix (iPNDM, eq. 40-41); the variant of
k-diffusion's ``sample_ipndm``).

The probability-flow ODE in the scaled variables ``y = x / alpha`` and
``rho = sigma / alpha = exp(-lambda)`` (EDM's ``sigma``) is ``dy / d rho = eps``. iPNDM is
Adams-Bashforth in ``rho`` with the *fixed* (equal-step) coefficients of order
``min(max_order, steps so far)``:

    order 1: E = eps_0
    order 2: E = (3 eps_0 - eps_1) / 2
    order 3: E = (23 eps_0 - 16 eps_1 + 5 eps_2) / 12
    order 4: E = (55 eps_0 - 59 eps_1 + 37 eps_2 - 9 eps_3) / 24

    y_t = y_s + (rho_t - rho_s) E

written back in ``x`` as the DDIM step plus a correction,
``x_t = alpha_t x0_s + sigma_t eps_s + alpha_t (rho_t - rho_s) (E - eps_s)``, which stays
finite when ``alpha_s = 0`` (the first step, always order 1). Deviation from k-diffusion:
the step into the clean end ``t = 0`` returns the data prediction of the last model call
(first order) instead of an order-4 step to ``sigma = 0``.
"""
from __future__ import annotations


from torch import Tensor

from .base import ModelFn, is_clean, register

_AB = {
    1: (1.0,),
    2: (3.0 / 2, -1.0 / 2),
    3: (23.0 / 12, -16.0 / 12, 5.0 / 12),
    4: (55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24),
}


@register("ipndm", nfe=lambda n: n, order=4,
          reference="Zhang & Chen 2023 (DEIS), appendix: iPNDM; k-diffusion sample_ipndm")
def ipndm(model: ModelFn, x: Tensor, ts: Tensor, *, max_order: int = 4) -> Tensor:
    """iPNDM sampler, one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        max_order: highest Adams-Bashforth order (1-4); lower orders warm the history up.
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if int(max_order) != max_order or not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    epss: list[Tensor] = []
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        epss = (epss + [pred.eps])[-int(max_order):]
        order = len(epss)
        a_t, s_t = model.coef(t)
        out = a_t * pred.x0 + s_t * pred.eps
        a_s, s_s = model.coef(s)
        if order > 1 and a_s > 0:
            d_rho = s_t / a_t - s_s / a_s
            comb = sum(c * e for c, e in zip(_AB[order], reversed(epss)))
            out = out + (a_t * d_rho) * (comb - pred.eps)
        x = model.project(out)
    return x
