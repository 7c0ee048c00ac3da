"""The float64 reference PF-ODE solver (workbench.reference): closed-form solutions for Gaussian
data, agreement with a fine Heun run, every parameterization, masked zero-CoM point sets."""
import math

import pytest
import torch

import workbench
from workbench import processes as P
from workbench.analytic import GaussianMixture, PointSetMixture
from workbench.reference import reference_run, reference_solve, t_of_u, u_of_t


F64 = torch.float64
PROCESSES = {
    "vp_linear": lambda **kw: P.VPLinear(**kw),
    "vp_cosine": lambda **kw: P.VPCosine(**kw),
    "ve": lambda **kw: P.VE(**kw),
    "flow": lambda **kw: P.RectifiedFlow(**kw),
}


def _closed_form(proc, m, s, x1, t, t1=1.0):
    """PF-ODE solution for data N(m, s^2) (per coordinate): the standardised value
    (x - a m) / sqrt(a^2 s^2 + sigma^2) is constant along the flow."""
    tt, t1 = torch.tensor(t, dtype=F64), torch.tensor(t1, dtype=F64)
    a, sg = proc.alpha(tt), proc.sigma(tt)
    a1, s1 = proc.alpha(t1), proc.sigma(t1)
    return a * m + torch.sqrt(a**2 * s**2 + sg**2) * (x1 - a1 * m) / torch.sqrt(a1**2 * s**2 + s1**2)


@pytest.mark.parametrize("pname", sorted(PROCESSES))
def test_reference_matches_gaussian_closed_form(pname, gen):
    proc = PROCESSES[pname]()
    m = torch.tensor([0.7, -0.3], dtype=F64)
    s = torch.tensor([0.5, 1.3], dtype=F64)
    gm = GaussianMixture(m[None], s[None])
    x1 = proc.prior((8, 2), generator=gen, dtype=F64)
    for t_end in [0.5, proc.t_min]:
        r = reference_run(gm.denoiser(proc), proc, x1, prediction="x0", t_end=t_end, denoise_final=False)
        exact = _closed_form(proc, m, s, x1, t_end)
        scale = exact.abs().max()
        assert float((r.x - exact).abs().max()) < 1e-8 * max(1.0, float(scale)), (t_end, float((r.x - exact).abs().max()))
        assert r.nfe > 10 and r.t_end == t_end
    # denoise_final: one more call, the exact posterior mean at t_end
    r = reference_run(gm.denoiser(proc), proc, x1, prediction="x0")
    torch.testing.assert_close(r.x, gm.x0(r.x_t_end, proc.t_min, proc), rtol=1e-12, atol=1e-12)


def test_reference_from_intermediate_start(gen):
    proc = P.VPLinear()
    m, s = torch.tensor([1.0], dtype=F64), torch.tensor([0.3], dtype=F64)
    gm = GaussianMixture(m[None], s[None])
    x = torch.randn(6, 1, generator=gen, dtype=F64)
    r = reference_run(gm.denoiser(proc), proc, x, prediction="x0", t_start=0.6, t_end=0.05, denoise_final=False)
    torch.testing.assert_close(r.x, _closed_form(proc, m, s, x, 0.05, t1=0.6), rtol=1e-8, atol=1e-9)


def test_u_t_change_of_variables():
    for proc in [P.VPLinear(), P.VPCosine(), P.VE(), P.RectifiedFlow()]:
        for t in [1e-3, 0.2, 0.7, 0.99]:
            u = u_of_t(proc, t)
            tt = torch.tensor(t, dtype=F64)
            a, s = float(proc.alpha(tt)), float(proc.sigma(tt))
            assert abs(u - s / (a + s)) < 1e-14
            assert abs(t_of_u(proc, u) - t) < 1e-9
    assert u_of_t(P.RectifiedFlow(), 1.0) == 1.0 and t_of_u(P.RectifiedFlow(), 1.0) == 1.0


@pytest.mark.parametrize("prediction", ["epsilon", "v", "velocity", "score"])
def test_reference_is_parameterization_independent(prediction, gen):
    proc = P.VPCosine()
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64), torch.tensor([0.4, 0.6], dtype=F64))
    x1 = proc.prior((8, 2), generator=gen, dtype=F64)
    a = reference_solve(gm.denoiser(proc, "x0"), proc, x1, prediction="x0", t_end=0.01)
    b = reference_solve(gm.denoiser(proc, prediction), proc, x1, prediction=prediction, t_end=0.01)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_reference_agrees_with_fine_heun(gen):
    """Heun with many steps on the EDM grid converges to the reference at second order."""
    proc = P.VE()
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.2, -0.4], [0.2, 1.5]], dtype=F64), torch.tensor([0.6, 0.5, 0.7], dtype=F64))
    model = gm.denoiser(proc, "x0")
    x1 = proc.prior((32, 2), generator=gen, dtype=F64)
    ref = reference_solve(model, proc, x1, prediction="x0")
    errs = []
    for n in (100, 200):
        out = workbench.run_sampler(model, proc, x1, sampler="heun", steps=n, prediction="x0", timesteps="edm")
        errs.append(float((out.x - ref).norm(dim=1).mean()))
    assert errs[1] < 1e-3
    assert 1.7 < math.log2(errs[0] / errs[1]) < 2.3


def test_reference_nfe_is_counted(gen):
    proc = P.RectifiedFlow()
    gm = GaussianMixture(torch.tensor([[0.0, 1.0]], dtype=F64), torch.tensor([0.5], dtype=F64))
    inner = gm.denoiser(proc, "velocity")
    calls = []

    def model(x, t, **kw):
        calls.append(1)
        return inner(x, t)

    r = reference_run(model, proc, proc.prior((4, 2), generator=gen, dtype=F64), prediction="velocity", rtol=1e-8, atol=1e-8)
    assert r.nfe == len(calls) > 0
    with pytest.raises(ValueError):
        reference_run(model, proc, torch.zeros(2, 2, dtype=F64), prediction="velocity", t_end=0.0)


@pytest.mark.parametrize("pname", ["vp_linear", "ve"])
def test_reference_point_sets_zero_com_and_closed_form(pname, gen):
    """Masked variable-size point sets: the state stays zero-CoM with zero padding, and a
    single-component set follows the closed-form flow inside the zero-CoM subspace."""
    proc = PROCESSES[pname](zero_com=True)
    psm = PointSetMixture([1.2], [0.4], dim=3)
    _, mask = psm.sample([5, 3, 4], gen)
    x1 = proc.prior((3, 5, 3), generator=gen, mask=mask, dtype=F64)
    r = reference_run(psm.denoiser(proc, "epsilon"), proc, x1, prediction="epsilon", mask=mask, t_end=0.05, denoise_final=False)
    m = mask[..., None]
    torch.testing.assert_close((r.x * m).sum(1) / m.sum(1), torch.zeros(3, 3, dtype=F64), atol=1e-10, rtol=0)
    assert bool((r.x[mask == 0] == 0).all())
    mu = psm.templates(mask)[:, 0]
    torch.testing.assert_close(r.x, _closed_form(proc, mu, torch.tensor(0.4, dtype=F64), x1, 0.05) * m, rtol=1e-8, atol=1e-8)
