"""EDM Heun sampler with optional churn (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithms 1 and 2).

Deterministic part (Alg. 1): Heun's second-order method (explicit trapezoidal rule) on the
probability-flow ODE in the process's own time,

    dx/dt = alpha'(t) x0(x, t) + sigma'(t) eps(x, t)        (:meth:`Prediction.velocity`),

which is EDM's ``dx/dt = [sigma'/sigma + s'/s] x - sigma' s / sigma D(x / s; sigma)`` written
with ``s = alpha`` and ``sigma~ = sigma / alpha`` (their eq. 4); for the VE process
(``alpha = 1``, ``sigma = sigma_max t``) it is EDM's sampler verbatim. The last step into the
clean end ``t = 0`` is a single Euler step, which for ``sigma -> 0`` is exactly the data
prediction (EDM Alg. 1, line 8 skips the correction when ``sigma_{i+1} = 0``): the NFE is
``2 * steps - 1``.

Churn (Alg. 2): when ``s_tmin <= sigma~_i <= s_tmax`` (EDM's sigma, ``sigma~ = sigma /
alpha = exp(-lambda)``) the noise level is first raised to ``sigma~_hat = (1 + gamma)
sigma~_i`` with ``gamma = min(s_churn / steps, sqrt(2) - 1)`` by adding fresh noise,

    t_hat = t(lambda = -log sigma~_hat),
    x_hat = alpha(t_hat) / alpha(t_i) x_i + alpha(t_hat) sqrt(sigma~_hat^2 - sigma~_i^2) s_noise z,

and the Heun step then runs from ``t_hat`` to ``t_{i+1}``. ``s_churn = 0`` (the default) is
the deterministic sampler.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ModelFn, is_clean, register


def _churn_time(model: ModelFn, t: float, gamma: float) -> float:
    """The churned time ``t_hat`` with ``sigma~(t_hat) = (1 + gamma) sigma~(t)`` (clamped to 1), or
    ``t`` itself when there is nothing to churn."""
    a, s = model.coef(t)
    if gamma <= 0 or a <= 0.0:
        return t
    t_hat = min(1.0, model.t_of_lambda(-math.log((1.0 + gamma) * (s / a))))
    if model.coef(t_hat)[0] <= 0.0 or t_hat <= t:
        return t
    return t_hat


def _churn(model: ModelFn, x: Tensor, t: float, t_hat: float, s_noise: float) -> Tensor:
    """Raise the noise of ``x`` at ``t`` to the level of ``t_hat > t`` (EDM Alg. 2, lines 5-6)."""
    a, s = model.coef(t)
    a_hat, s_hat = model.coef(t_hat)
    sig, sig_hat = s / a, s_hat / a_hat  # exact noise level of the (possibly clamped) t_hat
    add = math.sqrt(max(0.0, sig_hat**2 - sig**2))
    x_hat = (a_hat / a) * x + (a_hat * add * s_noise) * model.noise_like(x)
    return model.project(x_hat)


@register("heun", nfe=lambda n: max(1, 2 * n - 1), order=2, reference="Karras et al. 2022 (EDM), Alg. 1 & 2")
def heun(model: ModelFn, x: Tensor, ts: Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0) -> Tensor:
    """EDM Heun sampler (second order; stochastic when ``s_churn > 0``).

    Args:
        model: the wrapped model (two calls per step, one on the last step into ``t = 0``).
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        s_churn: EDM's ``S_churn`` (total churn; per step ``gamma = min(s_churn / n,
            sqrt(2) - 1)``).
        s_tmin, s_tmax: churn only where ``s_tmin <= sigma / alpha <= s_tmax`` (EDM sigma units).
        s_noise: EDM's ``S_noise`` (std of the added noise relative to the exact amount).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
    n = len(ts) - 1
    tl = [float(v) for v in ts]
    gamma_max = min(s_churn / max(n, 1), math.sqrt(2.0) - 1.0)
    # the churned times depend only on the grid: compute them (and prime their schedule
    # scalars and derivatives in one vectorised call) before the loop
    t_hats = list(tl[:-1])
    if gamma_max > 0:
        for i in range(n):
            a, s = model.coef(tl[i])
            sig = s / a if a > 0 else math.inf
            if math.isfinite(sig) and s_tmin <= sig <= s_tmax:
                t_hats[i] = _churn_time(model, tl[i], gamma_max)
        extra = [t for t, t0 in zip(t_hats, tl) if t != t0]
        if extra:
            model.prime(torch.tensor(extra, dtype=torch.float64))
    for i in range(n):
        t_cur, t_next = t_hats[i], tl[i + 1]
        if t_cur != tl[i]:
            x = _churn(model, x, tl[i], t_cur, s_noise)
        pred = model(x, t_cur)
        if is_clean(t_next):
            return model.project(pred.x0)
        d = model.velocity(pred)
        dt = t_next - t_cur
        x_euler = model.project(torch.add(x, d, alpha=dt))
        pred2 = model(x_euler, t_next)
        d2 = model.velocity(pred2)
        x = model.project(torch.add(x, d, alpha=0.5 * dt).add_(d2, alpha=0.5 * dt))
    return x
