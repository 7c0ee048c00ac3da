"""DualFast (Yu et al. 2025, arXiv:2506.13058): the mixed noise prediction
``eps~ = (1 + c_i) eps_i - c_i eps_tau`` in the first-order term of the base solver, re-derived
here in the paper's noise-prediction form and compared with the sampler on identical inputs."""
import math

import pytest
import torch

import workbench
from workbench import processes as P

F64 = torch.float64


def _model(x, t):
    """An arbitrary smooth epsilon-prediction network ``[B, D] -> [B, D]`` (has 'approximation error')."""
    tt = t.to(x.dtype)[:, None]
    return torch.tanh(x) * (0.6 + 0.4 * tt) + 0.1 * tt * x.roll(1, dims=1)


def _setup(n, grid="uniform_t"):
    proc = P.VPLinear()
    x1 = proc.prior((6, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    from workbench.api import resolve_timesteps

    return proc, x1, resolve_timesteps(proc, n, grid)


def _run(x1, proc, ts, **opts):
    return workbench.run_sampler(_model, proc, x1, sampler="dualfast", steps=len(ts) - 1, prediction="epsilon", timesteps=ts, **opts)


def _sched(proc, t):
    la, ls = proc.log_alpha_sigma(torch.tensor(t, dtype=F64))
    return math.exp(float(la)), math.exp(float(ls))


def _eps(x, t):
    return _model(x, torch.full((x.shape[0],), t, dtype=F64))


def _paper_ddim(proc, x, ts, c, reference="first"):
    """The paper's eq. 12 in DDIM / DPM-Solver-1 noise form: x_t = (a_t/a_s) x - s_t (e^h - 1) eps~."""
    n = len(ts) - 1
    eps_first = eps_prev = None
    for i in range(n):
        s, t = float(ts[i]), float(ts[i + 1])
        e = _eps(x, s)
        eps_first = e if eps_first is None else eps_first
        e_tau = eps_first if reference == "first" else (eps_prev if eps_prev is not None else e)
        eps_prev = e
        ci = c * i / (n - 1)
        e_mix = (1 + ci) * e - ci * e_tau
        a_s, s_s = _sched(proc, s)
        if t == 0.0:
            return (x - s_s * e_mix) / a_s
        a_t, s_t = _sched(proc, t)
        h = math.log(a_t / s_t) - math.log(a_s / s_s)
        x = (a_t / a_s) * x - s_t * math.expm1(h) * e_mix
    return x


def _paper_2m(proc, x, ts, c):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) with eq. 12 substituted in the first-order
    term only: x0~ = (x_s - s_s eps~) / a_s; D1 from the raw data predictions."""
    n = len(ts) - 1
    eps_first, x0_prev, lam_prev = None, None, None
    for i in range(n):
        s, t = float(ts[i]), float(ts[i + 1])
        a_s, s_s = _sched(proc, s)
        e = _eps(x, s)
        eps_first = e if eps_first is None else eps_first
        x0 = (x - s_s * e) / a_s
        ci = c * i / (n - 1)
        x0_mix = (x - s_s * ((1 + ci) * e - ci * eps_first)) / a_s
        if t == 0.0:
            return x0_mix
        a_t, s_t = _sched(proc, t)
        lam_s, lam_t = math.log(a_s / s_s), math.log(a_t / s_t)
        h = lam_t - lam_s
        if x0_prev is None:
            x_new = (s_t / s_s) * x - a_t * math.expm1(-h) * x0_mix
        else:
            r = (lam_s - lam_prev) / h
            x_new = (s_t / s_s) * x - a_t * math.expm1(-h) * (x0_mix + 0.5 * (x0 - x0_prev) / r)
        x0_prev, lam_prev, x = x0, lam_s, x_new
    return x


@pytest.mark.parametrize("grid", ["uniform_t", "uniform_lambda"])
def test_order1_matches_paper_ddim_form(grid):
    proc, x1, ts = _setup(6, grid)
    for c in (0.0, 0.15, 0.5):
        out = _run(x1, proc, ts, order=1, c=c)
        assert out.nfe == 6
        torch.testing.assert_close(out.x, _paper_ddim(proc, x1, ts, c), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(_run(x1, proc, ts, order=1, c=0.3, reference="previous").x,
                               _paper_ddim(proc, x1, ts, 0.3, reference="previous"), rtol=1e-11, atol=1e-11)


def test_order2_matches_paper_dpmpp_2m_form():
    proc, x1, ts = _setup(7, "uniform_lambda")
    for c in (0.0, 0.15):
        torch.testing.assert_close(_run(x1, proc, ts, order=2, c=c).x, _paper_2m(proc, x1, ts, c), rtol=1e-11, atol=1e-11)


def test_c_zero_is_the_base_solver():
    proc, x1, ts = _setup(8, "uniform_lambda")
    base = workbench.run_sampler(_model, proc, x1, sampler="dpm_solver_pp_2m", steps=8, prediction="epsilon", timesteps=ts,
                                 lower_order_final=False)
    torch.testing.assert_close(_run(x1, proc, ts, order=2, c=0.0).x, base.x, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(_run(x1, proc, ts, order=2).x, base.x, atol=1e-4)  # the default c does act


@pytest.mark.parametrize("c,away", [(0.4, True), (-0.4, False)])
def test_direction_relative_to_the_higher_noise_prediction(c, away):
    """Two steps ending at t = 0: the returned sample is x0~ of the last step, so eps~ can be read
    back from it; eps~ - eps_tau = (1 + c)(eps_i - eps_tau): away from eps_tau for c > 0 (the
    paper's sign), towards it for c < 0."""
    proc = P.VPLinear()
    x1 = proc.prior((5, 3), generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = torch.tensor([1.0, 0.4, 0.0], dtype=F64)
    seen = []
    out = workbench.run_sampler(_model, proc, x1, sampler="dualfast", steps=2, prediction="epsilon", timesteps=ts, c=c,
                                callback=lambda info: seen.append(info["x"].clone()))
    x_s = seen[1]
    a_s, s_s = _sched(proc, 0.4)
    eps_mix = (x_s - a_s * out.x) / s_s
    eps_i, eps_tau = _eps(x_s, 0.4), _eps(x1, 1.0)
    torch.testing.assert_close(eps_mix - eps_tau, (1 + c) * (eps_i - eps_tau), rtol=1e-10, atol=1e-10)
    d_mix, d_raw = (eps_mix - eps_tau).norm(), (eps_i - eps_tau).norm()
    assert (d_mix > d_raw) == away


def test_bad_options_raise():
    proc, x1, ts = _setup(4)
    for opts, word in [({"order": 4}, "order"), ({"reference": "last"}, "reference"), ({"space": "v"}, "space"),
                       ({"c": float("nan")}, "finite")]:
        with pytest.raises(ValueError, match=word):
            _run(x1, proc, ts, **opts)
