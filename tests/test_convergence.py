"""ACCEPTANCE: every deterministic ODE sampler's empirical order of convergence on an analytic
Gaussian mixture (float64, well conditioned) is within 0.3 of its theoretical order over a
range of step counts; stochastic samplers converge in distribution (two-sample tests).

Setup. Data: a 3-component 2-d Gaussian mixture with the exact denoiser
(:mod:`workbench.analytic`), so samplers have no approximation error. Grids end
``[..., t_min, 0]`` with a *fixed* ``t_min`` (``uniform_lambda`` on VP-linear, EDM's rho=7
grid on VE); the last step returns the data prediction at ``t_min``, and the reference is the
float64 adaptive PF-ODE solution to the same ``t_min`` followed by the same exact denoising
(:func:`workbench.reference.reference_solve`, tolerance 1e-12). The error is the mean over 64
samples of ``|x - x_ref|``; the order is the least-squares slope of ``log error`` against
``log steps`` over a range of step counts in the asymptotic regime, chosen per order so that
float64 round-off and the reference tolerance stay far below the errors.

The final jump ``t_min -> 0`` is the exact denoiser applied to the sampler's state at
``t_min`` (the same map as for the reference), so it does not reduce the global order: the
error after it is a Lipschitz image of the ODE error at ``t_min``. What can reduce the global
order is a *lowered order inside the grid*; samplers that lower the order of their last
steps only below 15 steps (diffusers' ``lower_order_final``) run at full order in the
measured range. Known deviations (registered order != asymptotic order of the algorithm as
implemented) are listed in ``KNOWN_ORDER``: the test then checks the measured order against
the asymptotic one and reports the registration as an expected failure.

Samplers registered without an order are not ODE discretisations with a convergence order
(``time_shift``: its shift window does not shrink with the step); their consistency limits
and option variants (``dualfast`` with ``c = 0`` is DPM-Solver++ of its base order; with
``c > 0`` and ``reference="previous"`` it is first order; its default ``reference="first"`` has
no order) are in ``VARIANTS``.
"""
import functools

import numpy as np
import pytest
import torch
from scipy import stats

import workbench
from workbench import processes as P
from workbench.analytic import GaussianMixture
from workbench.reference import reference_solve
from workbench.samplers import SAMPLERS


F64 = torch.float64
GMM = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.2, -0.4], [0.2, 1.5]], dtype=F64), torch.tensor([0.6, 0.5, 0.7], dtype=F64),
                      torch.tensor([0.3, 0.4, 0.3], dtype=F64))
SETTINGS = {"vp_lambda": (lambda: P.VPLinear(), "uniform_lambda"), "ve_edm": (lambda: P.VE(), "edm")}
TOL = 0.3

#: step counts per theoretical order (asymptotic regime, errors >> 1e-10)
STEPS = {1: [64, 128, 256, 512], 2: [32, 48, 64, 96, 128], 3: [48, 64, 96, 128, 192], 4: [48, 64, 96, 128, 192]}

#: name -> (registered order, asymptotic order of the default as implemented, steps, why):
#: the paper's / official methods whose nominal order is not their asymptotic one on these
#: (non-uniform) grids; the option variants that reach the nominal order are tested below
KNOWN_ORDER: dict = {
    "dpm_solver_pp_3m": (3, 2, [128, 192, 256, 384, 512],
                         "the official D2 weight phi_3 (default; more accurate at <= 20 steps) is second order"),
    "ipndm": (4, 2, [32, 48, 64, 96, 128], "the paper's fixed equal-step AB coefficients are second order on non-uniform grids"),
}


def _deterministic():
    return sorted(n for n, s in SAMPLERS.items() if not s.stochastic and s.order is not None)


@functools.lru_cache(maxsize=None)
def _setting(key):
    make, grid = SETTINGS[key]
    proc = make()
    x1 = proc.prior((64, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    model = GMM.denoiser(proc, "x0")
    ref = reference_solve(model, proc, x1, prediction="x0", rtol=1e-12, atol=1e-12)
    return proc, grid, model, x1, ref


def _errors(name, key, steps, grid_options=None, grid=None, **opts):
    proc, default_grid, model, x1, ref = _setting(key)
    spec = SAMPLERS[name]
    errs = []
    for n in steps:
        out = workbench.run_sampler(model, proc, x1, sampler=name, steps=n, prediction="x0", timesteps=grid or default_grid,
                                    grid_options=grid_options, **opts)
        assert out.nfe == spec.nfe(n), f"{name}: {out.nfe} model calls for {n} steps, registered nfe({n}) = {spec.nfe(n)}"
        errs.append(float((out.x - ref).norm(dim=1).mean()))
    return errs


def _slope(steps, errs):
    return float(-np.polyfit(np.log(steps), np.log(errs), 1)[0])


def _check_order(measured, expected, errs, label):
    assert min(errs) > 1e-9, f"{label}: error {min(errs):.1e} too close to the reference tolerance"
    assert abs(measured - expected) <= TOL, f"{label}: empirical order {measured:.2f}, expected {expected} (errors {errs})"


@pytest.mark.parametrize("key", sorted(SETTINGS))
@pytest.mark.parametrize("name", _deterministic())
def test_empirical_order_of_deterministic_samplers(name, key):
    spec = SAMPLERS[name]
    expected, steps = spec.order, STEPS[min(max(spec.order, 1), 4)]
    known = KNOWN_ORDER.get(name)
    if known is not None and known[0] == spec.order:
        expected, steps = known[1], known[2]
    errs = _errors(name, key, steps)
    measured = _slope(steps, errs)
    _check_order(measured, expected, errs, f"{name} on {key}")
    if expected != spec.order:
        pytest.xfail(f"{name}: registered order {spec.order}, measured {measured:.2f} = asymptotic order {expected}: {known[3]}")


#: consistency limits of samplers without a registered order (and option variants)
VARIANTS = [
    ("dualfast", {"c": 0.0, "order": 1}, 1),
    ("dualfast", {"c": 0.0, "order": 2}, 2),
    ("dualfast", {"c": 0.0, "order": 3}, 2),  # its 3M base uses the official D2 weight: measured second order
    ("dualfast", {"c": 1.0, "order": 3, "reference": "previous"}, 1),
    ("dualfast", {"c": 1.0, "order": 2, "reference": "previous", "space": "x0"}, 1),
    ("time_shift", {"window": 0.0}, 1),
    ("sde", {"noise_scale": 0.0}, 1),
    ("heun", {"s_churn": 0.0}, 2),
]


@pytest.mark.parametrize("name,opts,order", VARIANTS, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for n, o, _ in VARIANTS])
def test_empirical_order_of_variants(name, opts, order):
    steps = STEPS[order]
    errs = _errors(name, "vp_lambda", steps, **opts)
    _check_order(_slope(steps, errs), order, errs, f"{name}{opts}")


def _run(name, key, n, **opts):
    proc, grid, model, x1, _ = _setting(key)
    return workbench.run_sampler(model, proc, x1, sampler=name, steps=n, prediction="x0", timesteps=grid, **opts).x


def test_consistency_limits_are_exact():
    """Zero-strength options reduce the wrappers exactly to their base samplers."""
    ddim = _run("euler", "vp_lambda", 20)
    torch.testing.assert_close(_run("sde", "vp_lambda", 20, noise_scale=0.0), ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_run("time_shift", "vp_lambda", 20, window=0.0), ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_run("time_shift", "vp_lambda", 20, cutoff=1.0), ddim, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_run("dualfast", "vp_lambda", 20, c=0.0, order=1), ddim, rtol=1e-12, atol=1e-12)
    # a deterministic run of heun with churn switched off by its window equals plain heun
    torch.testing.assert_close(_run("heun", "ve_edm", 20, s_churn=5.0, s_tmin=1e9), _run("heun", "ve_edm", 20), rtol=0, atol=0)


@pytest.mark.parametrize("other,opts", [("dpm_solver_pp_2m", {}), ("dpm_solver_pp_3m", {})])
def test_dualfast_base_matches_dpm_solver_pp(other, opts):
    """DualFast with c = 0 is DPM-Solver++(order M): an independent implementation agrees
    (at >= 15 steps, where diffusers' lower_order_final is off)."""
    order = 2 if other.endswith("2m") else 3
    b = _run(other, "ve_edm", 20, **opts)
    torch.testing.assert_close(_run("dualfast", "ve_edm", 20, c=0.0, order=order), b, rtol=1e-10, atol=1e-10)


def test_dualfast_correction_changes_the_result_without_extra_nfe():
    proc, grid, model, x1, ref = _setting("vp_lambda")
    a = workbench.run_sampler(model, proc, x1, sampler="dualfast", steps=10, prediction="x0", timesteps=grid, c=0.5)
    b = workbench.run_sampler(model, proc, x1, sampler="dualfast", steps=10, prediction="x0", timesteps=grid, c=0.0)
    assert a.nfe == b.nfe == 10
    assert float((a.x - b.x).abs().max()) > 1e-3


def test_time_shift_picks_the_matching_noise_level():
    """A state whose variance is that of a noisier time gets evaluated at that time."""
    from workbench.samplers.base import ModelFn
    from workbench.samplers.time_shift import shifted_times

    proc = P.VE()
    seen = []

    def model(x, t, **kw):
        seen.append(t.clone())
        return torch.zeros_like(x)

    mf = ModelFn(model, proc, "epsilon")
    g = torch.Generator().manual_seed(0)
    t0 = 0.5
    sig = lambda t: float(proc.sigma(torch.tensor(t, dtype=F64)))  # noqa: E731
    z = torch.randn(3, 4096, generator=g, dtype=F64)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)  # sample variance exactly 1
    x = z * torch.tensor([sig(t0), sig(t0 + 0.01), sig(t0 - 0.01)], dtype=F64)[:, None]
    ts = shifted_times(mf, x, t0, window=0.04, window_points=41, data_var=0.0)
    torch.testing.assert_close(ts, torch.tensor([t0, t0 + 0.01, t0 - 0.01], dtype=F64), atol=1e-9, rtol=0)
    pred = mf(x, ts)  # ModelFn evaluates at per-sample times in one NFE
    assert mf.nfe == 1 and seen[0].shape == (3,) and torch.equal(seen[0], ts)
    torch.testing.assert_close(pred.x0, x, rtol=0, atol=0)  # eps = 0 -> x0 = x / alpha = x
    # a sampler run: one NFE per step, the shift only above the cut-off
    out = workbench.run_sampler(GMM.denoiser(proc, "x0"), proc, proc.prior((8, 2), generator=g, dtype=F64), sampler="time_shift",
                                steps=12, prediction="x0", timesteps="edm", window=0.05, cutoff=0.01)
    assert out.nfe == 12 and bool(torch.isfinite(out.x).all())


MY_SAMPLERS = [("heun", {}), ("heun", {"s_churn": 20.0}), ("sde", {}), ("sde", {"noise_scale": 0.5, "temperature": 0.7}),
               ("time_shift", {}), ("dualfast", {}), ("dualfast", {"order": 3, "reference": "previous", "space": "x0"})]


@pytest.mark.parametrize("pname", ["flow", "vp_cosine", "vp_linear", "ve"])
@pytest.mark.parametrize("name,opts", MY_SAMPLERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MY_SAMPLERS)])
def test_samplers_run_on_every_process(name, opts, pname):
    """Finite output, exact NFE, clean-end data prediction on processes whose log-SNR is -inf at
    t = 1 (flow, cosine) as well as finite (VP, VE); velocity / v / epsilon models."""
    proc = {"flow": P.RectifiedFlow, "vp_cosine": P.VPCosine, "vp_linear": P.VPLinear, "ve": P.VE}[pname]()
    prediction = {"flow": "velocity", "vp_cosine": "v", "vp_linear": "epsilon", "ve": "epsilon"}[pname]
    g = torch.Generator().manual_seed(0)
    out = workbench.run_sampler(GMM.denoiser(proc, prediction), proc, proc.prior((16, 2), generator=g, dtype=F64), sampler=name, steps=8,
                                prediction=prediction, generator=g, **opts)
    assert out.nfe == SAMPLERS[name].nfe(8)
    assert bool(torch.isfinite(out.x).all())
    assert float(out.x.abs().max()) < 20


# -- stochastic samplers: convergence in distribution ---------------------------------------
N_DIST = 2000
DIRECTIONS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [2.0, 1.0], [1.0, -3.0]], dtype=F64)


def _ks_min_pvalue(x, y):
    d = DIRECTIONS / DIRECTIONS.norm(dim=1, keepdim=True)
    return min(stats.ks_2samp((x @ v).numpy(), (y @ v).numpy()).pvalue for v in d)


def _exact_samples():
    return GMM.sample(N_DIST, torch.Generator().manual_seed(123))


def _stochastic_cases():
    # af3_edm at its marginal-preserving setting (AF3's default step_scale_eta = 1.5 and
    # noise_scale_lambda = 1.003 deliberately sharpen the distribution, like a low temperature)
    cases = [("sde", {}), ("sde", {"noise_scale": 0.5}), ("euler", {"eta": 1.0}), ("heun", {"s_churn": 10.0}),
             ("af3_edm", {"step_scale_eta": 1.0, "noise_scale_lambda": 1.0})]
    seen = {c[0] for c in cases}
    # reward-guided samplers (svdd_sde, fk_steering) with a constant reward: no tilt, so they must
    # keep the model's law (FK resamples with equal weights, SVDD keeps its first candidate)
    cases += [(n, {"reward": _null_reward} if "reward" in s.needs else {}) for n, s in sorted(SAMPLERS.items()) if s.stochastic and n not in seen]
    return cases


def _case_id(name, opts):
    return f"{name}-" + "-".join(f"{k}{getattr(v, '__name__', v)}" for k, v in opts.items())


def _null_reward(x, mask=None):
    return torch.zeros(x.shape[0], dtype=torch.float64)


def _many_step_samples(name, opts, steps=100, seed=7, key="vp_lambda"):
    make, grid = SETTINGS[key]
    proc = make()
    g = torch.Generator().manual_seed(seed)
    x1 = proc.prior((N_DIST, 2), generator=g, dtype=F64)
    return workbench.sample(GMM.denoiser(proc, "x0"), proc, x1, sampler=name, steps=steps, prediction="x0", timesteps=grid, generator=g, **opts)


@pytest.mark.parametrize("name,opts", _stochastic_cases(), ids=[_case_id(n, o) for n, o in _stochastic_cases()])
def test_stochastic_samplers_converge_in_distribution(name, opts):
    """100-step samples vs exact mixture samples: Kolmogorov-Smirnov on 6 fixed projections,
    Bonferroni level 1e-3 (the negative control below shows the test has power)."""
    x = _many_step_samples(name, opts)
    assert bool(torch.isfinite(x).all())
    p = _ks_min_pvalue(x, _exact_samples())
    assert p > 1e-3 / len(DIRECTIONS), f"{name}{opts}: min KS p-value {p:.2e}"


def test_two_sample_test_has_power():
    """Low temperature (Proteina noise scaling) does not preserve the marginals: detected."""
    x = _many_step_samples("sde", {"temperature": 0.2})
    assert _ks_min_pvalue(x, _exact_samples()) < 1e-6
    y = _many_step_samples("euler", {}, steps=2)
    assert _ks_min_pvalue(y, _exact_samples()) < 1e-6


def test_exact_third_order_3m_is_third_order():
    """DPM-Solver++(3M) with the exact D2 weight 2 phi_3 (``exact_third_order=True``, an option)
    converges at third order; the default official weight is second order (KNOWN_ORDER)."""
    steps = STEPS[3]
    errs = _errors("dpm_solver_pp_3m", "vp_lambda", steps, exact_third_order=True)
    _check_order(_slope(steps, errs), 3, errs, "dpm_solver_pp_3m(exact_third_order=True)")


def test_ipndm_variable_step_option_keeps_fourth_order():
    """The paper's fixed equal-step coefficients (the default) lose orders 3-4 on a smooth
    non-uniform grid (second order, KNOWN_ORDER); the ``variable_step=True`` option keeps 4."""
    steps = STEPS[4]
    errs = _errors("ipndm", "vp_lambda", steps, variable_step=True)
    _check_order(_slope(steps, errs), 4, errs, "ipndm(variable_step=True)")
