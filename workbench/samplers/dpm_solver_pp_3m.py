"""DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++", sec. 4 / Alg. 2 extended to third
order as in the authors' reference code and diffusers' ``DPMSolverMultistepScheduler``).

Multistep third-order exponential integrator in the data prediction ``x0`` and the
log-SNR ``lambda``. With ``h = lambda_t - lambda_s0``, ``r_0 = (lambda_s0 - lambda_s1) / h``,
``r_1 = (lambda_s1 - lambda_s2) / h`` and backward differences

    D1_0 = (m0 - m1) / r_0,   D1_1 = (m1 - m2) / r_1
    D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),   D2 = (D1_0 - D1_1) / (r_0 + r_1)

the update is

    x_t = (sigma_t / sigma_s0) x - alpha_t phi1 m0 + alpha_t phi2 D1 - alpha_t phi3 D2,
    phi1 = expm1(-h), phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2.

Note: ``D1``/``D2`` are the first / second monomial coefficients of the quadratic through
the three data predictions (in ``tau = (lambda - lambda_s0) / h``). The exact exponential
integral of that quadratic weights ``D2`` by ``2 * phi3``; the reference implementations
(Lu et al.'s ``dpm_solver_pytorch.py`` ``multistep_dpm_solver_third_update``, diffusers,
k-diffusion) use ``phi3``. That halved term is an ``O(h^3)`` local error, so the reference 3M
converges at second order asymptotically (rate 2 with many steps; 3 with the exact weight).

The default is the reference / official update (``exact_third_order=False``; equal to the
official code and diffusers), because it is the more accurate one in the few-step regime
this workbench is for. Measured (mean L2 error vs the exact ODE solution, exact 16-D
8-component Gaussian mixture from :mod:`workbench.analytic`, 256 samples, float64,
``lower_order_final`` on; ratio = exact-weight error / reference error, steps 3-20):

    VP linear, uniform_lambda grid: 1.00 (3-4 steps, no third-order step yet), 1.09-1.92 (5-20)
    VP linear, edm grid:            1.00 (3-4), 1.01-1.53 (5-20)
    VE (EDM),  edm grid:            1.00 (3-4), 1.16-1.59 (5-20)
    VE (EDM),  uniform_lambda grid: 1.00 (3-4), 1.08-1.68 (5-20)

i.e. the reference weight is never worse and 10-90 % better at <= 20 steps (the independent
review found the exact weight ahead only from ~80 steps). ``exact_third_order=True`` keeps
the genuinely third-order variant as an option (asymptotically better: error rate 3 vs 2).

Warm start: orders 1, 2, 3 on the first three steps; a history point with ``lambda = -inf``
lowers the order. With ``lower_order_final`` and fewer than 15 steps the last two steps
use orders 1 and at most 2 (diffusers' rule); the step into ``t = 0`` always returns the
data prediction of the last model call.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._multistep import ddim_data_step, finite_tail
from .base import ModelFn, is_clean, register
from .dpm_solver_pp_2m import dpmpp_second_order


def dpmpp_third_order(x: Tensor, m0: Tensor, m1: Tensor, m2: Tensor, lam_s2: float, lam_s1: float, lam_s0: float,
                      lam_t: float, sig_ratio: float, alpha_t: float, d2_weight: float = 1.0) -> Tensor:
    """One DPM-Solver++(3M) update; ``m0, m1, m2`` data predictions ``[B, ...]`` at
    ``s0`` (current), ``s1``, ``s2``; all log-SNRs finite; ``sig_ratio = sigma_t / sigma_s0``;
    ``d2_weight`` 1 (reference) or 2 (exact quadratic).

    The update is linear in ``(x, m0, m1, m2)``: its scalar weights are formed in float64 first
    (``D1 = a0 m0 + a1 m1 + a2 m2``, ``D2 = b0 m0 + b1 m1 + b2 m2`` from the backward
    differences above), so one step is four tensor operations."""
    h = lam_t - lam_s0
    r0 = (lam_s0 - lam_s1) / h
    r1 = (lam_s1 - lam_s2) / h
    # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1
    q = r0 / (r0 + r1)
    a0, a1, a2 = (1.0 + q) / r0, -(1.0 + q) / r0 - q / r1, q / r1  # D1 = D1_0 + q (D1_0 - D1_1)
    b0, b1, b2 = 1.0 / (r0 * (r0 + r1)), (-1.0 / r0 - 1.0 / r1) / (r0 + r1), 1.0 / (r1 * (r0 + r1))  # D2
    phi1 = math.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    c2, c3 = alpha_t * phi2, d2_weight * alpha_t * phi3
    w0 = -alpha_t * phi1 + c2 * a0 - c3 * b0
    w1 = c2 * a1 - c3 * b1
    w2 = c2 * a2 - c3 * b2
    return torch.mul(x, sig_ratio).add_(m0, alpha=w0).add_(m1, alpha=w1).add_(m2, alpha=w2)


@register("dpm_solver_pp_3m", nfe=lambda n: n, order=3,
          reference="Lu et al. 2022 (DPM-Solver++), multistep 3M; diffusers DPMSolverMultistepScheduler(solver_order=3)")
def dpm_solver_pp_3m(model: ModelFn, x: Tensor, ts: Tensor, *, lower_order_final: bool = True,
                     exact_third_order: bool = False) -> Tensor:
    """DPM-Solver++(3M) sampler, one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        lower_order_final: with fewer than 15 steps, use first order on the last step and
            at most second order on the one before (diffusers' default).
        exact_third_order: ``False`` (default) = the official / diffusers weight ``phi3`` on
            ``D2`` (more accurate at <= 20 steps, second order asymptotically); ``True`` = the
            exact integral of the quadratic, ``2 * phi3`` (third order; see above).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    n = len(ts) - 1
    tl = [float(v) for v in ts]
    lams: list[float] = []
    x0s: list[Tensor] = []
    for i in range(n):
        s, t = tl[i], tl[i + 1]
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        lams = (lams + [model.lam(s)])[-3:]
        x0s = (x0s + [pred.x0])[-3:]
        order = max(1, min(3, finite_tail(lams)))
        if lower_order_final and n < 15:
            if i == n - 1:
                order = 1
            elif i == n - 2:
                order = min(order, 2)
        lam_t = model.lam(t)
        a_t, s_t = model.coef(t)
        sig_ratio = s_t / model.coef(s)[1]
        if order == 1:
            x = ddim_data_step(x, pred.x0, sig_ratio, a_t, lam_t - lams[-1])
        elif order == 2:
            x = dpmpp_second_order(x, x0s[-1], x0s[-2], lams[-2], lams[-1], lam_t, sig_ratio, a_t)
        else:
            x = dpmpp_third_order(x, x0s[-1], x0s[-2], x0s[-3], lams[-3], lams[-2], lams[-1], lam_t, sig_ratio, a_t,
                                  2.0 if exact_third_order else 1.0)
        x = model.project(x)
    return x
