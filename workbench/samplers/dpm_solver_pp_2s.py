"""DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 1, singlestep second order).

Per step ``s -> t`` (``h = lambda_t - lambda_s``) one extra model call at the intermediate
point ``s_1`` with ``lambda_{s_1} = lambda_s + r h``:

    u   = (sigma_{s_1} / sigma_s) x_s - alpha_{s_1} expm1(-r h) x0_s
    D   = (1 - 1 / (2 r)) x0_s + 1 / (2 r) x0(u, s_1)
    x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) D

``r`` is the actual ``(lambda_{s_1} - lambda_s) / h`` of the time returned by
``t_of_lambda`` (exact even where that inverse is approximate, e.g. piecewise-linear
discrete schedules). Where ``lambda_s = -inf`` (``t = 1`` of flows) the log-SNR midpoint is
undefined: the intermediate time is then ``s + r (t - s)`` and the ``h -> inf`` limit of the
formulas is used (``u`` is the DDIM step to ``s_1`` and ``x_t = (sigma_t / sigma_s) x_s +
alpha_t D``).

The step into the clean end ``t = 0`` is first order (returns the data prediction of its
single model call), so a grid of ``n`` steps ending at ``t = 0`` costs ``2 n - 1`` model
calls (``2 n`` on a grid that stops at ``t > 0``).
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import ModelFn, is_clean, register


@register("dpm_solver_pp_2s", nfe=lambda n: 2 * n - 1, order=2,
          reference="Lu et al. 2022 (DPM-Solver++), Alg. 1 (singlestep 2S)")
def dpm_solver_pp_2s(model: ModelFn, x: Tensor, ts: Tensor, *, r: float = 0.5) -> Tensor:
    """DPM-Solver++(2S) sampler, two model calls per step (one on the step into ``t = 0``).

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        r: position of the intermediate point in ``lambda`` (0 < r < 1; 0.5 = midpoint).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if not 0.0 < r < 1.0:
        raise ValueError(f"r must lie in (0, 1), got {r}")
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        lam_s, lam_t = model.lam(s), model.lam(t)
        h = lam_t - lam_s
        s_s = model.coef(s)[1]
        if math.isfinite(h):
            s1 = model.t_of_lambda(lam_s + r * h)
            if not t < s1 < s:  # inverse off by rounding at a grid point: fall back to time fraction
                s1 = s + r * (t - s)
            r_eff = (model.lam(s1) - lam_s) / h
        else:
            s1 = s + r * (t - s)
            r_eff = r
        a1, sig1 = model.coef(s1)
        u = model.project((sig1 / s_s) * x - (a1 * math.expm1(-(model.lam(s1) - lam_s))) * pred.x0)
        pred1 = model(u, s1)
        d = (1.0 - 0.5 / r_eff) * pred.x0 + (0.5 / r_eff) * pred1.x0
        a_t, s_t = model.coef(t)
        x = model.project((s_t / s_s) * x - (a_t * math.expm1(-h)) * d)
    return x
