"""DEIS: diffusion exponential integrator sampler (Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator", ICLR).

Exponential integrator of the probability-flow ODE in the noise prediction. With
``x = alpha x0 + sigma eps`` the ODE is ``dx/dt = (alpha'/alpha) x + alpha rho'(t) eps`` with
``rho = sigma / alpha = exp(-lambda)`` (paper eq. 9-11: their ``Psi(t, s) = alpha_t / alpha_s``
and ``(1/2) Psi(t, tau) G G^T L^{-T}`` is ``alpha_t rho'(tau)`` here), so exactly

    x_t = (alpha_t / alpha_s) x_s + alpha_t int_{t_s}^{t_t} rho'(tau) eps(x_tau, tau) d tau.

``deis_1/2/3`` = **tAB-DEIS** (paper eq. 14-15, sec. 4; official ``qsh-zh/deis``
``th_deis/multistep.py`` ``get_ab_eps_coef`` / ``ab_step``): ``eps`` is replaced by the
Lagrange polynomial *in the time* ``t`` through the predictions at the current and the
previous ``k - 1`` grid times ``t_s = t_{i}, t_{i-1}, ...``, and the integral is taken exactly:

    x_t = (alpha_t / alpha_s) x_s + sum_j C_j eps_j,
    C_j = alpha_t int_{t_s}^{t_t} rho'(tau) L_j(tau) d tau,   L_j(t_m) = [j == m].

``deis_k`` uses ``k`` points (polynomial degree ``k - 1``): the official code's ``order = k -
1`` (the paper's tAB with ``r = k - 1``); ``deis_1`` is DDIM. The official code computes
``C_j`` with a 10^4-point left Riemann sum; here, for any :class:`GaussianProcess`, they are
computed in float64 by parts, ``C_j = alpha_t [rho_t L_j(t_t) - rho_s L_j(t_s) - int rho(tau)
L_j'(tau) d tau]``, with composite Gauss-Legendre quadrature (``_PANELS`` panels of
``_GL_NODES`` nodes per step; exact to rounding for the smooth schedules; for the piecewise
log-linear :class:`VPDiscrete` schedule the kinks of ``rho`` limit it to ~1e-7 relative),
all steps in one vectorised schedule call before the loop. Since ``sum_j L_j = 1``,
``sum_j C_j = alpha_t (rho_t - rho_s)`` and the update is written as the DDIM step plus
corrections, ``x_t = alpha_t x0_s + sigma_t eps_s + sum_{j>0} C_j (eps_j - eps_s)``, finite when
``alpha_s = 0`` (the first step from the rectified flow's ``t = 1``; history points at
``alpha = 0`` need no special care: ``eps`` is finite there and ``rho`` enters only inside
later intervals).

Warm start: ``min(k, steps so far)`` points (the official code's lower-order start). The
official sampler has no lower-order final steps (``lower_order_final=False``, the default);
the step into ``t = 0`` returns the data prediction of the last model call (the package's
contract; the official sampler stops at ``t_min``).

``deis_logrho_1/2/3``: the log-rho variant (Lagrange polynomial in ``log rho = -lambda``
instead of ``t``), which is exactly diffusers' ``DEISMultistepScheduler``
(``algorithm_type="deis"``, ``solver_type="logrho"``), with closed-form phi functions:
``h = lambda_t - lambda_s``, nodes ``tau_j = (lambda_j - lambda_s) / h`` and
``C_j = -sigma_t h int_0^1 exp(h (1 - tau)) L_j(tau) d tau``. Its warm start lowers the
order at history points with ``lambda = -inf``; ``lower_order_final`` (default on, diffusers'
rule) with fewer than 15 steps: last step first order, the one before at most second order.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import Tensor

from ._multistep import exp_weights, finite_tail, lagrange_monomials
from .base import ModelFn, is_clean, register

_GL_NODES = 8
_PANELS = 32


def _unit_quadrature() -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on ``[0, 1]`` (float64, ``[_PANELS * _GL_NODES]``)."""
    x, w = np.polynomial.legendre.leggauss(_GL_NODES)
    u = (np.arange(_PANELS)[:, None] + 0.5 * (x[None, :] + 1.0)) / _PANELS
    wu = np.broadcast_to(0.5 * w[None, :] / _PANELS, u.shape)
    return u.reshape(-1), np.ascontiguousarray(wu).reshape(-1)


def tab_coefficients(t_s: float, t_t: float, nodes: list[float], rho_s: float, rho_t: float, alpha_t: float,
                     rho_quad, u, w) -> list[float]:
    """tAB-DEIS coefficients ``C_j = alpha_t int_{t_s}^{t_t} rho'(tau) L_j(tau) d tau``.

    Args:
        t_s, t_t: the step ``t_s -> t_t``.
        nodes: the polynomial's times ``[t_s, t_{i-1}, ...]`` (``nodes[0] = t_s``).
        rho_s, rho_t, alpha_t: ``sigma / alpha`` at both ends and ``alpha(t_t)``.
        rho_quad: ``rho`` at ``t_s + u (t_t - t_s)`` for the unit quadrature nodes ``u``
            (weights ``w``); float64 arrays ``[Q]``.
    Returns:
        ``[len(nodes)]`` floats; ``C_0`` is only meaningful for finite ``rho_s``.
    """
    u, w, rq = (np.asarray(v, dtype=np.float64) for v in (u, w, rho_quad))
    wr = w * rq
    dt = t_t - t_s
    un = [(tj - t_s) / dt for tj in nodes]  # normalised nodes: current point 0, history < 0
    # moments M_m = int_0^1 rho(u) u^m du; then int rho L_j'(u) du = sum_k k c_jk M_(k-1) (by parts:
    # C_j = alpha_t [rho L_j]_0^1 - alpha_t int_0^1 rho(tau(u)) dL_j/du du)
    mom = []
    um = np.ones_like(u)
    for _ in range(max(len(nodes) - 1, 0)):
        mom.append(float(wr @ um))
        um = um * u
    out = []
    for j, row in enumerate(lagrange_monomials(un)):
        integral = sum(k * row[k] * mom[k - 1] for k in range(1, len(row)))
        start = rho_s if j == 0 else 0.0  # L_j(u = 0) = [j == 0]
        out.append(alpha_t * (rho_t * sum(row) - start - integral))  # sum(row) = L_j(u = 1)
    return out


_QUAD = _unit_quadrature()


def deis(model: ModelFn, x: Tensor, ts: Tensor, *, solver_order: int = 2, lower_order_final: bool = False) -> Tensor:
    """tAB-DEIS sampler (Lagrange polynomial in ``t``), one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        solver_order: number of polynomial points ``k`` (1 = DDIM; 1-4 supported; the
            official code's ``order = k - 1``).
        lower_order_final: with fewer than 15 steps, last step first order and the one
            before at most second order (not in the paper / official code; off by default).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if int(solver_order) != solver_order or not 1 <= solver_order <= 4:
        raise ValueError(f"solver_order must be 1, 2, 3 or 4, got {solver_order!r}")
    k = int(solver_order)
    n = len(ts) - 1
    tl = [float(v) for v in ts]
    # -- all coefficients before the loop: one vectorised schedule call for every step's quadrature nodes
    orders = []
    for i in range(n):
        o = min(k, i + 1)
        if lower_order_final and n < 15:
            o = 1 if i == n - 1 else (min(o, 2) if i == n - 2 else o)
        if is_clean(tl[i + 1]) or not model.coef(tl[i])[0] > 0.0:
            o = 1  # the clean end returns x0; a start at alpha = 0 has no history
        orders.append(o)
    hi = [i for i in range(n) if orders[i] > 1]
    coefs: dict[int, list[float]] = {}
    if hi:
        u, w = _QUAD
        t_s = np.array([tl[i] for i in hi])
        t_t = np.array([tl[i + 1] for i in hi])
        la, ls = model.process.log_alpha_sigma(torch.from_numpy(t_s[:, None] + u[None, :] * (t_t - t_s)[:, None]))
        rho_q = torch.exp(ls - la).numpy()
        for r, i in enumerate(hi):
            a_s, s_s = model.coef(tl[i])
            a_t, s_t = model.coef(tl[i + 1])
            nodes = [tl[i - j] for j in range(orders[i])]
            coefs[i] = tab_coefficients(tl[i], tl[i + 1], nodes, s_s / a_s, s_t / a_t, a_t, rho_q[r], u, w)
    epss: list[Tensor] = []
    for i in range(n):
        s, t = tl[i], tl[i + 1]
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        epss = (epss + [pred.eps])[-k:]
        a_t, s_t = model.coef(t)
        out = a_t * pred.x0
        c = coefs.get(i)
        if c is None:
            out = out.add_(pred.eps, alpha=s_t)
        else:  # x_t = a_t x0_s + (s_t - sum_{j>0} C_j) eps_s + sum_{j>0} C_j eps_j
            out = out.add_(pred.eps, alpha=s_t - sum(c[1:]))
            for j in range(1, len(c)):
                out = out.add_(epss[-1 - j], alpha=c[j])
        x = model.project(out)
    return x


def deis_logrho(model: ModelFn, x: Tensor, ts: Tensor, *, solver_order: int = 2, lower_order_final: bool = True) -> Tensor:
    """DEIS with the polynomial in ``log rho`` (diffusers' ``DEISMultistepScheduler``), one
    model call per step.

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
    tl = [float(v) for v in ts]
    lams: list[float] = []
    epss: list[Tensor] = []
    for i in range(n):
        s, t = tl[i], tl[i + 1]
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
        out = (a_t * pred.x0).add_(pred.eps, alpha=s_t)
        if order > 1:
            lam_s = lams[-1]
            h = model.lam(t) - lam_s
            nodes = [(lams[-1 - j] - lam_s) / h for j in range(order)]
            wts = exp_weights(nodes, h)
            corr = sum(wts[1:order])
            out = out.add_(pred.eps, alpha=s_t * corr)
            for j in range(1, order):
                out = out.add_(epss[-1 - j], alpha=-s_t * wts[j])
        x = model.project(out)
    return x


_TAB = "Zhang & Chen 2023 (DEIS), tAB-DEIS eq. 14-15 (Lagrange in t); official qsh-zh/deis th_deis/multistep.py"
register("deis_1", nfe=lambda n: n, order=1, solver_order=1, reference=_TAB + " (1 point = DDIM)")(deis)
register("deis_2", nfe=lambda n: n, order=2, solver_order=2, reference=_TAB + " (2 points, official order 1)")(deis)
register("deis_3", nfe=lambda n: n, order=3, solver_order=3, reference=_TAB + " (3 points, official order 2)")(deis)
_LOGRHO = "Zhang & Chen 2023 (DEIS), log-rho variant; diffusers DEISMultistepScheduler(solver_type='logrho')"
register("deis_logrho_1", nfe=lambda n: n, order=1, solver_order=1, reference=_LOGRHO + " (order 1 = DDIM)")(deis_logrho)
register("deis_logrho_2", nfe=lambda n: n, order=2, solver_order=2, reference=_LOGRHO)(deis_logrho)
register("deis_logrho_3", nfe=lambda n: n, order=3, solver_order=3, reference=_LOGRHO)(deis_logrho)
