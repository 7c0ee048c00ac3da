"""iPNDM: improved pseudo numerical method (Zhang & Chen 2023, "Fast Sampling of Diffusion
Models with Exponential Integrator", ICLR, appendix, iPNDM eq. 40-41; official code:
zju-pi/diff-sampler ``diff-solvers-main/solvers.py`` ``ipndm_sampler``, same method as
k-diffusion's ``sample_ipndm``).

The probability-flow ODE in the scaled variables ``y = x / alpha`` and
``rho = sigma / alpha = exp(-lambda)`` (EDM's ``sigma``) is ``dy / d rho = eps``. iPNDM is
Adams-Bashforth in ``rho`` with the *fixed* equal-step coefficients of order
``min(max_order, steps so far)`` (the lower orders warm the history up):

    order 1: E = eps_0
    order 2: E = (3 eps_0 - eps_1) / 2
    order 3: E = (23 eps_0 - 16 eps_1 + 5 eps_2) / 12
    order 4: E = (55 eps_0 - 59 eps_1 + 37 eps_2 - 9 eps_3) / 24

    y_t = y_s + (rho_t - rho_s) E

(``eps_0`` the current prediction, ``eps_m`` the one ``m`` steps back). This default is the
paper's / official method. Fixed coefficients are fourth order only on grids uniform in
``rho``; on the usual smooth non-uniform grids they are second order (measured in
``tests/test_convergence.py``).

Option ``variable_step=True`` (a workbench variant, not from the paper): the exact
variable-step Adams-Bashforth weights (the integral over ``[rho_s, rho_t]`` of the Lagrange
polynomial through the previous ``eps`` at their own ``rho``), which equal the fixed ones on
uniform grids and keep order 4 on any grid. It is **not** diff-sampler's ``ipndm_v_sampler``
(iPNDM-v of Zhou et al. 2024), whose order-3/4 weights are different (not exact for
quadratics).

The update is written back in ``x`` as the DDIM step plus a correction,
``x_t = alpha_t x0_s + sigma_t eps_s + alpha_t (rho_t - rho_s) (E - eps_s)``, which stays
finite when ``alpha_s = 0`` (the first step, always order 1). Deviation from the official
code: the step into the clean end ``t = 0`` returns the data prediction of the last model
call (the official sampler stops at ``sigma_min``, optionally followed by that same
``denoise_to_zero`` jump).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._multistep import lagrange_monomials
from .base import ModelFn, is_clean, register

_AB = {
    1: (1.0,),
    2: (3.0 / 2, -1.0 / 2),
    3: (23.0 / 12, -16.0 / 12, 5.0 / 12),
    4: (55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24),
}


@register("ipndm", nfe=lambda n: n, order=4,
          reference="Zhang & Chen 2023 (DEIS), appendix: iPNDM; zju-pi/diff-sampler ipndm_sampler")
def ipndm(model: ModelFn, x: Tensor, ts: Tensor, *, max_order: int = 4, variable_step: bool = False) -> Tensor:
    """iPNDM sampler, one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        max_order: highest Adams-Bashforth order (1-4); lower orders warm the history up.
        variable_step: ``False`` (default) = the fixed equal-step coefficients of the paper
            / official code; ``True`` = exact variable-step Adams-Bashforth weights (a
            workbench variant; order kept on any grid).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if int(max_order) != max_order or not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    epss: list[Tensor] = []
    rhos: list[float] = []
    tl = [float(v) for v in ts]
    for i in range(len(tl) - 1):
        s, t = tl[i], tl[i + 1]
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        a_t, s_t = model.coef(t)
        a_s, s_s = model.coef(s)
        rho_s = s_s / a_s if a_s > 0 else math.inf
        epss = (epss + [pred.eps])[-int(max_order):]
        rhos = (rhos + [rho_s])[-int(max_order):]
        while rhos and not math.isfinite(rhos[0]):  # a history point at alpha = 0 carries no rho
            rhos, epss = rhos[1:], epss[1:]
        order = len(epss)
        out = torch.mul(pred.x0, a_t).add_(pred.eps, alpha=s_t)
        if order > 1:
            d_rho = s_t / a_t - rho_s
            if variable_step:
                nodes = [(r - rho_s) / d_rho for r in reversed(rhos)]  # current point at 0, earlier points at -1, -2, ... on uniform grids
                coefs = [sum(c / (k + 1) for k, c in enumerate(row)) for row in lagrange_monomials(nodes)]
            else:
                coefs = _AB[order]
            # + alpha_t d_rho (sum_m c_m eps_m - eps_0), one fused update per history term
            f = a_t * d_rho
            for m, (c, e) in enumerate(zip(coefs, reversed(epss))):
                out = out.add_(e, alpha=f * (c - 1.0 if m == 0 else c))
        x = model.project(out)
    return x
