"""DEIS: diffusion exponential integrator sampler, tAB-DEIS in log-rho (Zhang & Chen 2023,
"Fast Sampling of Diffusion Models with Exponential Integrator", ICLR; eq. 14-15 with the
polynomial extrapolation of ``eps`` in ``log rho``; ``rho = sigma / alpha = exp(-lambda)``).

The exponential integrator of the probability-flow ODE in the *noise prediction* is

    x_t / alpha_t = x_s / alpha_s + int_{rho_s}^{rho_t} eps(rho) d rho.

tAB-DEIS of order ``k`` replaces ``eps`` by the Lagrange polynomial (in ``log rho = -lambda``)
through the last ``k`` predictions and integrates it exactly. With ``h = lambda_t - lambda_s``
and nodes ``tau_j = (lambda_j - lambda_s) / h``:

    x_t = (alpha_t / alpha_s) x_s - sigma_t sum_j w_j eps_j,
    w_j = h int_0^1 exp(h (1 - tau)) L_j(tau) d tau = h sum_m c_jm m! phi_{m+1}(h),

which is exactly diffusers' ``DEISMultistepScheduler`` (``algorithm_type="deis"``,
``solver_type="logrho"``), written with closed-form phi functions instead of
antiderivatives in ``rho``. Implemented as the DDIM step plus corrections,
``x_t = alpha_t x0_s + sigma_t eps_s - sigma_t sum_{j>0} w_j (eps_j - eps_s)``, so the first
step from ``alpha_s = 0`` (``lambda_s = -inf``) is finite.

Warm start: order ``min(k, steps so far)``; a history point with ``lambda = -inf`` lowers
the order. ``lower_order_final`` with fewer than 15 steps: last step first order, the one
before at most second order (diffusers' rule). The step into ``t = 0`` returns the data
prediction of the last model call.
"""
from __future__ import annotations

from torch import Tensor

from ._multistep import exp_weights, finite_tail
from .base import ModelFn, is_clean, register


def deis(model: ModelFn, x: Tensor, ts: Tensor, *, solver_order: int = 2, lower_order_final: bool = True) -> Tensor:
    """tAB-DEIS (log-rho) sampler, one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        solver_order: polynomial order ``k`` (1 = DDIM; 1-4 supported).
        lower_order_final: diffusers' rule for fewer than 15 steps (last step order 1, the
            one before at most order 2).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if int(solver_order) != solver_order or not 1 <= solver_order <= 4:
        raise ValueError(f"solver_order must be 1, 2, 3 or 4, got {solver_order!r}")
    k = int(solver_order)
    n = len(ts) - 1
    lams: list[float] = []
    epss: list[Tensor] = []
    for i in range(n):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        lams = (lams + [model.lam(s)])[-k:]
        epss = (epss + [pred.eps])[-k:]
        order = max(1, min(k, finite_tail(lams)))
        if lower_order_final and n < 15:
            if i == n - 1:
                order = 1
            elif i == n - 2:
                order = min(order, 2)
        a_t, s_t = model.coef(t)
        out = a_t * pred.x0 + s_t * pred.eps
        if order > 1:
            lam_s = lams[-1]
            h = model.lam(t) - lam_s
            nodes = [(lams[-1 - j] - lam_s) / h for j in range(order)]
            w = exp_weights(nodes, h)
            for j in range(1, order):
                out = out - (s_t * w[j]) * (epss[-1 - j] - pred.eps)
        x = model.project(out)
    return x


register("deis_1", nfe=lambda n: n, order=1, solver_order=1,
         reference="Zhang & Chen 2023 (DEIS), tAB-DEIS order 1 (= DDIM)")(deis)
register("deis_2", nfe=lambda n: n, order=2, solver_order=2,
         reference="Zhang & Chen 2023 (DEIS), tAB-DEIS log-rho order 2; diffusers DEISMultistepScheduler")(deis)
register("deis_3", nfe=lambda n: n, order=3, solver_order=3,
         reference="Zhang & Chen 2023 (DEIS), tAB-DEIS log-rho order 3; diffusers DEISMultistepScheduler")(deis)
