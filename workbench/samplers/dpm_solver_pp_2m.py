"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2).

Multistep second-order exponential integrator of the probability-flow ODE in the *data
prediction* ``x0``, integrated in the log-SNR ``lambda``. With ``h = lambda_t - lambda_s``,
``h_0 = lambda_s - lambda_{s'}`` (``s'`` the previous grid point) and ``r_0 = h_0 / h``:

    D_1 = (x0_s - x0_{s'}) / r_0
    x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) (x0_s + D_1 / 2)

(the "midpoint" form of the paper and of diffusers' ``DPMSolverMultistepScheduler``, which
this reproduces step for step). The first step has no history and is first order (DDIM);
a step whose history point has ``lambda = -inf`` (``t = 1`` of rectified flow) also drops to
first order. The step into the clean end ``t = 0`` returns the data prediction of the last
model call (the ``h -> inf`` limit of the first-order step, diffusers'
``final_sigmas_type="zero"``); with ``lower_order_final`` and fewer than 15 steps the last
step is first order whatever it lands on (diffusers' rule).
"""
from __future__ import annotations

import math

from torch import Tensor

from ._multistep import ddim_data_step, finite_tail
from .base import ModelFn, is_clean, register


def dpmpp_second_order(x: Tensor, m0: Tensor, m1: Tensor, lam_s1: float, lam_s0: float, lam_t: float,
                       sig_ratio: float, alpha_t: float) -> Tensor:
    """One DPM-Solver++(2M) update (Lu et al. 2022, Alg. 2, midpoint form).

    ``x`` state at ``s0``; ``m0``/``m1`` data predictions at ``s0`` / the previous point
    ``s1`` (all ``[B, ...]``); all log-SNRs finite; ``sig_ratio = sigma_t / sigma_s0``.
    """
    h = lam_t - lam_s0
    r0 = (lam_s0 - lam_s1) / h
    d1 = (m0 - m1) / r0
    em = math.expm1(-h)
    return sig_ratio * x - (alpha_t * em) * m0 - (0.5 * alpha_t * em) * d1


@register("dpm_solver_pp_2m", nfe=lambda n: n, order=2,
          reference="Lu et al. 2022 (DPM-Solver++), Alg. 2 (multistep 2M); diffusers DPMSolverMultistepScheduler")
def dpm_solver_pp_2m(model: ModelFn, x: Tensor, ts: Tensor, *, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) sampler, one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        lower_order_final: with fewer than 15 steps, take the last step at first order
            (diffusers' default; the step into ``t = 0`` is always first order).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    n = len(ts) - 1
    lams: list[float] = []
    x0s: list[Tensor] = []
    for i in range(n):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        lams = (lams + [model.lam(s)])[-2:]
        x0s = (x0s + [pred.x0])[-2:]
        order = max(1, min(2, finite_tail(lams)))
        if lower_order_final and n < 15 and i == n - 1:
            order = 1
        lam_t = model.lam(t)
        a_t, s_t = model.coef(t)
        sig_ratio = s_t / model.coef(s)[1]
        if order == 1:
            x = ddim_data_step(x, pred.x0, sig_ratio, a_t, lam_t - lams[-1])
        else:
            x = dpmpp_second_order(x, x0s[-1], x0s[-2], lams[-2], lams[-1], lam_t, sig_ratio, a_t)
        x = model.project(x)
    return x
