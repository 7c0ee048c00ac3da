"""First-order stochastic sampler with a noise scale: the exponential integrator of the
reverse SDE family (DPM-Solver++(1) SDE, Lu et al. 2022b, "DPM-Solver++", sec. 5 / appendix;
SA-Solver with a constant ``tau``, Xue et al. 2023, "SA-Solver", eq. 10-12).

The family of reverse-time SDEs that share the data marginals (Song et al. 2021, eq. 6 and
the Langevin-augmented form of Karras et al. 2022, eq. 6), in the process time ``t`` running
from 1 to 0, is

    dx = [f(t) x - (1 + eta^2) / 2 g(t)^2 grad log p_t(x)] dt + eta g(t) dw_bar,

with ``f = d log alpha / dt``, ``g^2 = d sigma^2 / dt - 2 f sigma^2``. ``eta`` is the
``noise_scale`` option: it scales the Langevin part, i.e. the *extra* score term
``eta^2 / 2 g^2 grad log p`` and the noise ``eta g dw`` together. ``eta = 0`` is the
probability-flow ODE (this sampler then equals deterministic DDIM), ``eta = 1`` is the
reverse SDE of Song et al. (Anderson 1982); every ``eta`` samples the same marginals, larger
``eta`` corrects more of the accumulated error by Langevin mixing at the cost of more
discretisation error. Written with the data prediction ``x0 = E[x_0 | x_t]`` and ``h =
lambda_t - lambda_s > 0`` and solved exactly for a ``x0`` frozen over the step (first-order
exponential integrator), one step ``s -> t`` is

    x_t = (sigma_t / sigma_s) e^(-eta^2 h) x_s + alpha_t (1 - e^(-(1 + eta^2) h)) x0
          + sigma_t sqrt(temperature (1 - e^(-2 eta^2 h))) z,      z ~ N(0, I) projected,

(``eta = 1``: DPM-Solver++(1) SDE, ``x_t = (sigma_t/sigma_s) e^-h x_s + alpha_t (1 - e^-2h)
x0 + sigma_t sqrt(1 - e^-2h) z``; ``eta = 0``: DDIM). The step into the clean end returns
``x0`` (its exact limit).

``temperature`` (default 1, exact) multiplies only the *variance of the injected noise*, the
score term untouched: Proteina's inference-time "noise scaling" ``gamma`` (Geffner et al.
2025, "Proteina", sec. 3.3: ``dx = v dt + g s dt + sqrt(2 g gamma) dW``, ``gamma < 1``), the
low-temperature sampling also used for SiD-distilled protein generators. ``temperature < 1``
no longer samples the model's marginals: it concentrates mass near the modes (higher
designability, lower diversity).
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import ModelFn, is_clean, register


@register("sde", nfe=lambda n: n, order=1, stochastic=True,
          reference="Lu et al. 2022b (DPM-Solver++ SDE, first order); Xue et al. 2023 (SA-Solver, tau); Geffner et al. 2025 (Proteina noise scaling)")
def sde(model: ModelFn, x: Tensor, ts: Tensor, *, noise_scale: float = 1.0, temperature: float = 1.0) -> Tensor:
    """Exponential-integrator reverse-SDE sampler (first order, one NFE per step).

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        noise_scale: ``eta >= 0``; 0 = probability-flow ODE (DDIM), 1 = the reverse SDE;
            scales the Langevin score term and the noise together (marginals exact for all).
        temperature: ``gamma`` in ``[0, 1]`` multiplying the injected noise variance only
            (Proteina noise scaling); 1 = exact.
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        x = sde_step(model, x, pred.x0, s, t, noise_scale=noise_scale, temperature=temperature)
    return x


def sde_step(model: ModelFn, x: Tensor, x0: Tensor, s: float, t: float, *, noise_scale: float = 1.0, temperature: float = 1.0,
             noise: Tensor = None) -> Tensor:
    """One step ``s -> t > 0`` of :func:`sde` from the data prediction ``x0`` at ``(x, s)``
    (the module docstring's update; ``noise``: the standard normal draw, default
    ``model.noise_like(x)``). Shared by the reward-guided samplers that propose with it
    (``svdd_sde``, ``fk_steering``)."""
    eta2 = float(noise_scale) ** 2
    a_t, s_t = model.coef(t)
    _, s_s = model.coef(s)
    h = model.lam(t) - model.lam(s)  # > 0; +inf when lambda_s = -inf (alpha_s = 0)
    decay = 1.0 if eta2 == 0.0 else math.exp(-eta2 * h)  # e^(-eta^2 h), avoiding 0 * inf
    x = (s_t / s_s) * decay * x - (a_t * math.expm1(-(1.0 + eta2) * h)) * x0
    var = -math.expm1(-2.0 * eta2 * h) if eta2 > 0 else 0.0
    if var > 0 and temperature > 0:
        x = x + (s_t * math.sqrt(temperature * var)) * (model.noise_like(x) if noise is None else noise)
    return model.project(x)
