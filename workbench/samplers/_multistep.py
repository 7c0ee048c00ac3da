"""Shared arithmetic of the exponential-integrator samplers (DPM-Solver++, DEIS, UniPC).

Not a sampler module (the leading underscore keeps it out of the auto-import in
``workbench.samplers``); sampler files import it explicitly.

Conventions (Lu et al. 2022, "DPM-Solver", sec. 3; Zhang & Chen 2023, "DEIS", sec. 4):
``lambda = log(alpha / sigma)`` increases from noise to data, a step ``s -> t`` has
``h = lambda_t - lambda_s > 0``, and a history point ``j`` has the normalised node
``tau_j = (lambda_j - lambda_s) / h <= 0``. ``lambda`` is ``+inf`` at the clean end and may be
``-inf`` at ``t = 1`` (rectified flow); every function here is a pure function of Python
floats, exact in float64.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["phi", "lagrange_monomials", "exp_weights", "finite_tail", "ddim_data_step"]


def phi(k: int, h: float) -> float:
    """``phi_k(h) = int_0^1 exp((1 - u) h) u^(k-1) / (k-1)! du`` (``phi_0 = e^h``), so
    ``phi_1(h) = expm1(h) / h`` and ``phi_{k+1}(h) = (phi_k(h) - 1/k!) / h``.

    A Taylor series (``sum_j h^j / (j + k)!``) for ``|h| < 1`` avoids the cancellation of
    the recursion at small ``h``; the recursion is stable for ``|h| >= 1``.
    """
    if k < 0:
        raise ValueError(f"phi_k needs k >= 0, got {k}")
    if k == 0:
        return math.exp(h)
    if abs(h) < 1.0:
        term = 1.0 / math.factorial(k)
        total = term
        for j in range(1, 40):
            term *= h / (j + k)
            total += term
            if abs(term) < 1e-18 * abs(total):
                break
        return total
    val = math.expm1(h) / h
    for j in range(1, k):
        val = (val - 1.0 / math.factorial(j)) / h
    return val


def lagrange_monomials(nodes: Sequence[float]) -> list[list[float]]:
    """Monomial coefficients of the Lagrange basis on ``nodes``.

    Returns ``c`` with ``L_j(tau) = sum_k c[j][k] tau^k`` (``len(nodes)`` rows and columns),
    ``L_j(nodes[m]) = [j == m]``.
    """
    p = len(nodes)
    out = []
    for j in range(p):
        poly = [1.0]  # coefficients, lowest degree first
        denom = 1.0
        for m in range(p):
            if m == j:
                continue
            # multiply by (tau - nodes[m])
            new = [0.0] * (len(poly) + 1)
            for k, c in enumerate(poly):
                new[k + 1] += c
                new[k] -= c * nodes[m]
            poly = new
            denom *= nodes[j] - nodes[m]
        out.append([c / denom for c in poly])
    return out


def exp_weights(nodes: Sequence[float], h: float) -> list[float]:
    """Exponential-integrator quadrature weights of a polynomial through ``nodes``.

    ``w_j = h * int_0^1 exp(h (1 - tau)) L_j(tau) dtau = h * sum_k c_jk k! phi_{k+1}(h)``
    where ``L_j`` is the Lagrange basis on the (normalised, ``tau = 0`` for the current
    point) ``nodes``. ``sum_j w_j = expm1(h)``. Use ``h > 0`` for the noise-prediction
    integral (DPM-Solver / DEIS) and ``-h`` for the data-prediction one (DPM-Solver++ /
    UniPC).
    """
    coeffs = lagrange_monomials(nodes)
    phis = [math.factorial(k) * phi(k + 1, h) for k in range(len(nodes))]
    return [h * sum(c * f for c, f in zip(row, phis)) for row in coeffs]


def finite_tail(lams: Sequence[float]) -> int:
    """How many trailing entries of ``lams`` are finite (usable multistep history)."""
    n = 0
    for v in reversed(lams):
        if not math.isfinite(v):
            break
        n += 1
    return n


def ddim_data_step(x, x0, sig_ratio: float, alpha_t: float, h: float):
    """First-order data-prediction exponential step (DPM-Solver++ 1 = DDIM):
    ``x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) x0``; finite for ``h = +inf``
    (``lambda_s = -inf``)."""
    return sig_ratio * x - (alpha_t * math.expm1(-h)) * x0
