"""Fidelity of the training-free samplers to their papers' / official codes' updates, each
re-derived here from the published formula (not imported from the project) on identical
inputs:

* ``deis_k``: tAB-DEIS (Zhang & Chen 2023, eq. 14-15; qsh-zh/deis ``th_deis/multistep.py``):
  coefficients ``C_j = int_{t_s}^{t_t} Psi(t_t, tau) (1/2) G G^T L^-T(tau) L_j(tau) d tau``
  (Lagrange basis in ``t``), by ``scipy.integrate.quad``, and the multistep update
  ``x_t = Psi x_s + sum_j C_j eps_j`` (official ``ab_step``).
* ``ipndm``: diff-sampler's ``ipndm_sampler`` (fixed Adams-Bashforth coefficients, lower-order
  warm start) on the VE process.
* ``dpm_solver_pp_3m``: the official DPM-Solver++(3M) update (``dpm_solver_pytorch.py``
  ``multistep_dpm_solver_third_update``) for the default and the ``exact_third_order`` option.
* ModelFn: the cheap finiteness check still raises on NaN / inf and does not raise on a float
  sum that overflows.
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

import workbench
from workbench.analytic import GaussianMixture
from workbench.processes import VE, RectifiedFlow, VPLinear

F64 = torch.float64
GM = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.2, -0.4], [0.2, 1.5]], dtype=F64), torch.tensor([0.6, 0.5, 0.7], dtype=F64),
                     torch.tensor([0.3, 0.4, 0.3], dtype=F64))
B0, B1 = 0.1, 20.0


def _lagrange(t, nodes, j):
    v = 1.0
    for m, tm in enumerate(nodes):
        if m != j:
            v *= (t - tm) / (nodes[j] - tm)
    return v


# -- official DEIS (VPSDE) in its own variables: abar = alpha^2 ------------------------------
def _abar(t):
    return math.exp(2.0 * (-0.25 * t**2 * (B1 - B0) - 0.5 * t * B0))


def _official_tab_coef(t_s, t_t, nodes):
    """qsh-zh/deis get_one_coef_per_step_fn, with the Riemann sum replaced by quad:
    int psi(tau, t_end) * eps_integrand(tau) * L_j(tau) dtau from t_start to t_end."""
    def integrand(tau, j):
        psi = math.sqrt(_abar(t_t) / _abar(tau))
        dlog_abar = -(B1 - B0) * tau - B0
        eps_integrand = -0.5 * dlog_abar / math.sqrt(1.0 - _abar(tau))
        return psi * eps_integrand * _lagrange(tau, nodes, j)
    return [quad(integrand, t_s, t_t, args=(j,), epsabs=1e-14, epsrel=1e-13)[0] for j in range(len(nodes))]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_deis_tab_coefficients_match_quadrature_vp(k):
    from workbench.samplers.deis import _unit_quadrature, tab_coefficients

    proc = VPLinear(B0, B1)
    grid = [0.9, 0.7, 0.45, 0.3]
    t_s, t_t = grid[-1], 0.18
    nodes = [grid[-1 - j] for j in range(k)]
    u, w = _unit_quadrature()
    la, ls = proc.log_alpha_sigma(torch.from_numpy(t_s + u * (t_t - t_s)))
    a = lambda t: math.sqrt(_abar(t))
    rho = lambda t: math.sqrt(1.0 - _abar(t)) / a(t)
    got = tab_coefficients(t_s, t_t, nodes, rho(t_s), rho(t_t), a(t_t), torch.exp(ls - la), u, w)
    ref = _official_tab_coef(t_s, t_t, nodes)
    for g, r in zip(got, ref):
        assert abs(g - r) <= 1e-10 * max(abs(r), 1e-3), (got, ref)
    if k == 1:  # one point: the DDIM coefficient alpha_t (rho_t - rho_s)
        assert abs(got[0] - a(t_t) * (rho(t_t) - rho(t_s))) < 1e-12


@pytest.mark.parametrize("pname", ["ve", "flow"])
def test_deis_tab_coefficients_other_processes(pname):
    """``C_j = alpha_t int rho'(tau) L_j(tau) dtau`` with the closed-form ``rho'`` (VE: sigma_max;
    rectified flow: rho = t / (1 - t), rho' = 1 / (1 - t)^2)."""
    from workbench.samplers.deis import _unit_quadrature, tab_coefficients

    proc = {"ve": VE(sigma_max=80.0), "flow": RectifiedFlow()}[pname]
    rho = {"ve": lambda t: 80.0 * t, "flow": lambda t: t / (1.0 - t)}[pname]
    drho = {"ve": lambda t: 80.0, "flow": lambda t: 1.0 / (1.0 - t) ** 2}[pname]
    alpha = {"ve": lambda t: 1.0, "flow": lambda t: 1.0 - t}[pname]
    nodes, t_s, t_t = [0.5, 0.62, 0.8], 0.5, 0.37
    u, w = _unit_quadrature()
    la, ls = proc.log_alpha_sigma(torch.from_numpy(t_s + u * (t_t - t_s)))
    got = tab_coefficients(t_s, t_t, nodes, rho(t_s), rho(t_t), alpha(t_t), torch.exp(ls - la), u, w)
    for j, g in enumerate(got):
        r = alpha(t_t) * quad(lambda x: drho(x) * _lagrange(x, nodes, j), t_s, t_t, epsabs=1e-14, epsrel=1e-13)[0]
        assert abs(g - r) <= 1e-10 * max(abs(r), 1e-3)


@pytest.mark.parametrize("k", [2, 3])
def test_deis_tab_trajectory_matches_official_update(k):
    """The whole tAB-DEIS trajectory (warm start 1, 2, ... points, no lower-order final steps)
    equals the official ``ab_step`` recursion x_{i+1} = Psi x_i + sum_j C_ij eps_j on a grid
    that stops at t_min (the official sampler's end), with an exact epsilon model."""
    proc = VPLinear(B0, B1)
    model = GM.denoiser(proc, "epsilon")
    ts = torch.tensor([1.0, 0.75, 0.5, 0.33, 0.2, 0.11, 0.05, 0.02], dtype=F64)
    x1 = proc.prior((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    out = workbench.sample(model, proc, x1, sampler=f"deis_{k}", timesteps=ts, prediction="epsilon")
    t = ts.tolist()
    x, hist = x1.clone(), []
    for i in range(len(t) - 1):
        eps = model(x, torch.full((x.shape[0],), t[i], dtype=F64))
        hist = [eps] + hist[: k - 1]
        nodes = [t[i - j] for j in range(len(hist))]  # t_i, t_{i-1}, ...
        c = _official_tab_coef(t[i], t[i + 1], nodes)
        x_new = math.sqrt(_abar(t[i + 1]) / _abar(t[i])) * x
        for cj, ej in zip(c, hist):
            x_new = x_new + cj * ej
        x = x_new
    torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-9)


def test_deis_tab_differs_from_logrho():
    """The two DEIS variants are different integrators (the log-rho one is diffusers')."""
    proc = VPLinear()
    model = GM.denoiser(proc, "x0")
    x1 = proc.prior((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    a = workbench.sample(model, proc, x1, sampler="deis_3", steps=6, prediction="x0", lower_order_final=True)
    b = workbench.sample(model, proc, x1, sampler="deis_logrho_3", steps=6, prediction="x0")
    assert float((a - b).abs().max()) > 1e-4
    c = workbench.sample(model, proc, x1, sampler="deis_1", steps=6, prediction="x0")
    d = workbench.sample(model, proc, x1, sampler="deis_logrho_1", steps=6, prediction="x0")
    e = workbench.sample(model, proc, x1, sampler="euler", steps=6, prediction="x0")
    torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d, e, rtol=1e-12, atol=1e-12)


# -- iPNDM: diff-sampler ipndm_sampler on the VE (EDM) process ----------------------------------
@pytest.mark.parametrize("max_order", [2, 4])
def test_ipndm_default_is_official_fixed_coefficients(max_order):
    proc = VE(sigma_min=0.002, sigma_max=80.0)
    den = GM.denoiser(proc, "x0")
    sig = [80.0, 40.0, 17.0, 7.0, 2.5, 0.8, 0.2, 0.03]
    ts = torch.tensor([s / 80.0 for s in sig], dtype=F64)
    x1 = proc.prior((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    out = workbench.sample(den, proc, x1, sampler="ipndm", timesteps=ts, prediction="x0", max_order=max_order)
    x, buf = x1.clone(), []
    for i, (tc, tn) in enumerate(zip(sig[:-1], sig[1:])):
        d = (x - den(x, torch.full((x.shape[0],), tc / 80.0, dtype=F64))) / tc
        order = min(max_order, i + 1)
        if order == 1:
            x_next = x + (tn - tc) * d
        elif order == 2:
            x_next = x + (tn - tc) * (3 * d - buf[-1]) / 2
        elif order == 3:
            x_next = x + (tn - tc) * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            x_next = x + (tn - tc) * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        buf = (buf + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)
    # the workbench's variable-step variant is a different method on this non-uniform grid
    v = workbench.sample(den, proc, x1, sampler="ipndm", timesteps=ts, prediction="x0", max_order=max_order, variable_step=True)
    assert float((v - out).abs().max()) > 1e-6


# -- DPM-Solver++(3M): official third-order multistep update --------------------------------------
@pytest.mark.parametrize("exact", [False, True])
def test_dpm_solver_pp_3m_matches_official_update(exact):
    """Lu et al.'s multistep_dpm_solver_third_update (data prediction): with
    h = l_t - l_0, r0 = h_0 / h, r1 = h_1 / h (h_0 = l_0 - l_1, h_1 = l_1 - l_2),
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1) / (r0 + r1), phi_1 = expm1(-h), phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:
    x_t = sigma_t / sigma_0 x - alpha_t phi_1 m0 + alpha_t phi_2 D1 - alpha_t phi_3 D2 (the official
    weight of D2; ``exact_third_order=True`` uses 2 phi_3). Warm start orders 1, 2; no lower-order
    final steps; grid stops at t_min."""
    proc = VPLinear()
    den = GM.denoiser(proc, "x0")
    ts = torch.tensor([1.0, 0.7, 0.45, 0.28, 0.15, 0.07, 0.03, 0.01], dtype=F64)
    x1 = proc.prior((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    out = workbench.sample(den, proc, x1, sampler="dpm_solver_pp_3m", timesteps=ts, prediction="x0", lower_order_final=False,
                           exact_third_order=exact)

    def sched(t):
        la = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        return math.exp(la), math.sqrt(1.0 - math.exp(2 * la))

    t = ts.tolist()
    lam = [math.log(sched(v)[0] / sched(v)[1]) for v in t]
    x, ms = x1.clone(), []
    for i in range(len(t) - 1):
        ms = ([den(x, torch.full((x.shape[0],), t[i], dtype=F64))] + ms)[:3]
        a_t, s_t = sched(t[i + 1])
        s_0 = sched(t[i])[1]
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        if len(ms) == 1:
            x = s_t / s_0 * x - a_t * phi_1 * ms[0]
        elif len(ms) == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1 = (ms[0] - ms[1]) / r0
            x = s_t / s_0 * x - a_t * phi_1 * ms[0] - 0.5 * a_t * phi_1 * d1
        else:
            r0 = (lam[i] - lam[i - 1]) / h
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (ms[0] - ms[1]) / r0, (ms[1] - ms[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x = s_t / s_0 * x - a_t * phi_1 * ms[0] + a_t * phi_2 * d1 - (2.0 if exact else 1.0) * a_t * phi_3 * d2
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


# -- ModelFn finiteness check -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_model_output_raises_clearly(bad):
    proc = VPLinear()

    def model(x, t):
        out = torch.zeros_like(x)
        out[1, 0] = bad
        return out

    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        workbench.sample(model, proc, torch.randn(4, 3), sampler="euler", steps=3)


def test_large_finite_output_whose_sum_overflows_does_not_raise():
    """float32 outputs near the float32 maximum: their sum overflows to inf, yet every entry is
    finite, so no error."""
    proc = VE()
    big = torch.finfo(torch.float32).max / 4

    def model(x, t):
        return torch.full_like(x, big)

    out = workbench.run_sampler(model, proc, torch.zeros(8, 4), sampler="euler", steps=1, prediction="x0")
    assert out.nfe == 1 and bool(torch.isfinite(out.x).all())
