"""Exact ground truth (workbench.analytic): densities against torch.distributions / brute force,
posterior means against closed forms, Tweedie's formula and Monte Carlo."""
import math

import pytest
import torch
from scipy import integrate

import workbench
from workbench import processes as P
from workbench.analytic import GaussianMixture, PointSetMixture
from workbench.processes import project


F64 = torch.float64
PROCESSES = {
    "vp_linear": lambda **kw: P.VPLinear(**kw),
    "vp_cosine": lambda **kw: P.VPCosine(**kw),
    "ve": lambda **kw: P.VE(**kw),
    "flow": lambda **kw: P.RectifiedFlow(**kw),
}


def _gmm(event=(2,), diag=True):
    g = torch.Generator().manual_seed(3)
    K = 3
    means = torch.randn((K, *event), generator=g, dtype=F64) * 1.5
    stds = (0.3 + torch.rand((K, *event) if diag else (K,), generator=g, dtype=F64))
    return GaussianMixture(means, stds, torch.tensor([0.2, 0.5, 0.3], dtype=F64))


def _noised(process, t, x0, gen):
    tb = torch.full((x0.shape[0],), float(t), dtype=F64)
    return process.add_noise(x0, tb, torch.randn(x0.shape, generator=gen, dtype=F64))


def test_gmm_log_prob_matches_torch_distributions(gen):
    gm = _gmm()
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.Independent(torch.distributions.Normal(gm.means, gm.stds), 1))
    x = torch.randn(50, 2, generator=gen, dtype=F64) * 3
    torch.testing.assert_close(gm.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-12)


def test_gmm_isotropic_stds_and_event_shape(gen):
    gm = _gmm(event=(2, 3), diag=False)
    assert gm.stds.shape == (3, 2, 3)
    x = torch.randn(7, 2, 3, generator=gen, dtype=F64)
    comps = torch.stack([torch.distributions.Normal(gm.means[k], gm.stds[k]).log_prob(x).sum(dim=(1, 2)) for k in range(3)], 1)
    torch.testing.assert_close(gm.log_prob(x), torch.logsumexp(comps + gm.weights.log(), 1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="expected states"):
        gm.log_prob(torch.zeros(4, 3, 2, dtype=F64))


def test_gmm_sample_moments(gen):
    gm = _gmm()
    x = gm.sample(40000, gen)
    assert x.shape == (40000, 2) and x.dtype == F64
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(x.var(0), gm.variance(), atol=0.06, rtol=0.03)
    # per-sample generators: sample i depends only on generator i
    a = gm.sample(3, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    b = gm.sample(2, [torch.Generator().manual_seed(s) for s in (6, 7)])
    torch.testing.assert_close(a[1:], b)


@pytest.mark.parametrize("pname", sorted(PROCESSES))
@pytest.mark.parametrize("t", [1e-3, 0.3, 0.9, 1.0])
def test_gmm_x0_single_gaussian_closed_form(pname, t, gen):
    proc = PROCESSES[pname]()
    m, S = torch.tensor([[0.4, -1.1]], dtype=F64), torch.tensor([[0.7, 1.6]], dtype=F64)
    gm = GaussianMixture(m, S)
    x = torch.randn(20, 2, generator=gen, dtype=F64) * 2
    tt = torch.tensor(t, dtype=F64)
    a, s = proc.alpha(tt), proc.sigma(tt)
    v = a**2 * S**2 + s**2
    x0, eps = gm.posterior(x, t, proc)
    torch.testing.assert_close(x0, m + a * S**2 / v * (x - a * m), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps, s / v * (x - a * m), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pname", sorted(PROCESSES))
@pytest.mark.parametrize("t", [0.02, 0.4, 0.95])
def test_gmm_x0_is_tweedie(pname, t, gen):
    """E[x0|x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha with p_t the noised mixture."""
    proc = PROCESSES[pname]()
    gm = _gmm()
    x = _noised(proc, t, gm.sample(30, gen), gen).requires_grad_(True)
    lp = gm.marginal(proc, t).log_prob(x).sum()
    (score,) = torch.autograd.grad(lp, x)
    tt = torch.tensor(t, dtype=F64)
    a, s = proc.alpha(tt), proc.sigma(tt)
    x = x.detach()
    torch.testing.assert_close(gm.x0(x, t, proc), (x + s**2 * score) / a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gm.score(x, t, proc), score, rtol=1e-9, atol=1e-9)


def test_gmm_x0_monte_carlo(gen):
    """Self-normalised importance sampling of E[x0 | x_t] from exact data samples."""
    proc = P.VPLinear()
    gm = _gmm()
    t = 0.35
    tt = torch.tensor(t, dtype=F64)
    a, s = proc.alpha(tt), proc.sigma(tt)
    x0s = gm.sample(400000, gen)
    xt = torch.tensor([[0.3, -0.2], [-1.0, 1.0], [1.5, 0.5]], dtype=F64)
    logw = -((xt[:, None, :] - a * x0s[None]) ** 2).sum(-1) / (2 * s**2)  # [3, M]
    w = torch.softmax(logw, dim=1)
    mc = w @ x0s
    ess = 1.0 / (w**2).sum(1)
    assert bool((ess > 2000).all())
    torch.testing.assert_close(gm.x0(xt, t, proc), mc, atol=0.03, rtol=0)


@pytest.mark.parametrize("prediction", ["x0", "epsilon", "v", "velocity", "score"])
@pytest.mark.parametrize("pname", ["vp_linear", "ve", "flow"])
def test_gmm_denoiser_every_prediction(prediction, pname, gen):
    proc = PROCESSES[pname]()
    gm = _gmm()
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=F64)
    x = proc.add_noise(gm.sample(5, gen), t, torch.randn(5, 2, generator=gen, dtype=F64))
    model = gm.denoiser(proc, prediction)
    out = model(x, t)
    x0, eps = proc.to_x0_eps(out, prediction, x, t)
    ex0, eeps = gm.posterior(x, t, proc)
    torch.testing.assert_close(x0, ex0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps, eeps, rtol=1e-9, atol=1e-9)
    # x_t = alpha E[x0|x_t] + sigma E[eps|x_t] holds exactly
    a = proc.alpha(t)[:, None]
    s = proc.sigma(t)[:, None]
    torch.testing.assert_close(a * ex0 + s * eeps, x, rtol=1e-12, atol=1e-12)
    assert model(x.float(), t.float()).dtype == torch.float32


def test_gmm_denoiser_drives_workbench_sample(gen):
    proc = P.VPLinear()
    gm = _gmm()
    x1 = proc.prior((16, 2), generator=gen, dtype=F64)
    a = workbench.sample(gm.denoiser(proc, "epsilon"), proc, x1, sampler="euler", steps=20, prediction="epsilon")
    b = workbench.sample(gm.denoiser(proc, "x0"), proc, x1, sampler="euler", steps=20, prediction="x0")
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


# -- point sets ---------------------------------------------------------------------------
def _psm(dim=3):
    return PointSetMixture([1.0, 1.6], [0.3, 0.45], [0.4, 0.6], dim=dim)


def _com(x, mask):
    m = mask[..., None]
    return (x * m).sum(1) / m.sum(1)


def test_pointset_samples_zero_com_and_padding(gen):
    psm = _psm()
    x, mask = psm.sample([3, 7, 5, 2], gen)
    assert x.shape == (4, 7, 3) and mask.shape == (4, 7)
    assert mask.sum(1).tolist() == [3, 7, 5, 2]
    torch.testing.assert_close(_com(x, mask), torch.zeros(4, 3, dtype=F64), atol=1e-12, rtol=0)
    assert bool((x[mask == 0] == 0).all())
    mu = psm.templates(mask)
    torch.testing.assert_close(_com(mu.reshape(8, 7, 3), mask.repeat_interleave(2, 0)), torch.zeros(8, 3, dtype=F64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        psm.sample([1, 3], gen)


def test_pointset_sample_covariance(gen):
    """Component k: x - mu_k has covariance s_k^2 P on the zero-CoM subspace."""
    psm = PointSetMixture([1.0], [0.5], dim=2)
    x, mask = psm.sample([4] * 20000, gen)
    r = (x - psm.templates(mask)[:, 0]).reshape(20000, 8)
    cov = r.T @ r / 20000
    P4 = torch.eye(4, dtype=F64) - 1.0 / 4
    expected = 0.25 * torch.kron(P4, torch.eye(2, dtype=F64))
    torch.testing.assert_close(cov, expected, atol=0.01, rtol=0)


def test_pointset_log_prob_one_dimensional_subspace():
    """n = 2, D = 1: V is the line x = c (1, -1) / sqrt(2); the density in c is a 1-d mixture."""
    psm = PointSetMixture([1.0, 1.5], [0.3, 0.5], [0.3, 0.7], dim=1)
    mask = torch.ones(1, 2, dtype=F64)
    e = torch.tensor([1.0, -1.0], dtype=F64) / math.sqrt(2)
    mu_c = (psm.templates(mask)[0, :, :, 0] @ e)  # [K]

    def dens(c):
        x = (c * e).reshape(1, 2, 1)
        return float(psm.log_prob(x, mask).exp())

    total, _ = integrate.quad(dens, -10, 10, points=[float(m) for m in mu_c], limit=200)
    assert abs(total - 1.0) < 1e-8
    c = torch.linspace(-3, 3, 13, dtype=F64)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=psm.weights), torch.distributions.Normal(mu_c, psm.stds))
    got = psm.log_prob((c[:, None] * e).reshape(13, 2, 1), mask.expand(13, 2))
    torch.testing.assert_close(got, mix.log_prob(c), rtol=1e-12, atol=1e-12)


def test_pointset_log_prob_integrates_to_one_in_two_dims():
    """n = 2, D = 2: x = (y, -y), orthonormal coordinates c = sqrt(2) y, dc = 2 dy."""
    psm = PointSetMixture([0.8, 1.2], [0.35, 0.5], dim=2)
    h = 0.02
    g = torch.arange(-4, 4 + h / 2, h, dtype=F64)
    yy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    x = torch.stack([yy, -yy], 1)  # [M, 2, 2]
    lp = psm.log_prob(x, torch.ones(x.shape[0], 2, dtype=F64))
    assert abs(float(lp.exp().sum() * 2 * h * h) - 1.0) < 1e-6


@pytest.mark.parametrize("t", [0.05, 0.5, 0.97])
def test_pointset_x0_is_tweedie_zero_com(t, gen):
    proc = P.VPLinear(zero_com=True)
    psm = _psm()
    x0, mask = psm.sample([4, 6, 3], gen)
    tt = torch.tensor(t, dtype=F64)
    xt = proc.add_noise(x0, tt.expand(3), project(torch.randn(x0.shape, generator=gen, dtype=F64), mask, zero_com=True), mask)
    xt = xt.requires_grad_(True)
    (score,) = torch.autograd.grad(psm.marginal_log_prob(xt, t, proc, mask).sum(), xt)  # = P grad, zero on padding
    xt = xt.detach()
    a, s = proc.alpha(tt), proc.sigma(tt)
    got = psm.x0(xt, t, proc, mask)
    torch.testing.assert_close(got, (xt + s**2 * score) / a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(_com(got, mask), torch.zeros(3, 3, dtype=F64), atol=1e-12, rtol=0)
    assert bool((got[mask == 0] == 0).all())


@pytest.mark.parametrize("pname", ["vp_linear", "ve", "flow"])
def test_pointset_x0_single_component_closed_form(pname, gen):
    proc = PROCESSES[pname](zero_com=True)
    psm = PointSetMixture([1.3], [0.4], dim=3)
    x0, mask = psm.sample([5, 3], gen)
    t = torch.tensor([0.1, 0.7], dtype=F64)
    xt = proc.add_noise(x0, t, project(torch.randn(x0.shape, generator=gen, dtype=F64), mask, zero_com=True), mask)
    a, s = proc.alpha(t)[:, None, None], proc.sigma(t)[:, None, None]
    mu = psm.templates(mask)[:, 0]
    expected = mu + a * 0.16 / (a**2 * 0.16 + s**2) * (xt - a * mu)
    torch.testing.assert_close(psm.x0(xt, t, proc, mask), expected, rtol=1e-12, atol=1e-12)


def test_pointset_denoiser_predictions_and_sampling(gen):
    proc = P.VE(zero_com=True)
    psm = _psm()
    _, mask = psm.sample([5, 3, 4], gen)
    x1 = proc.prior((3, 5, 3), generator=gen, mask=mask, dtype=F64)
    t = torch.full((3,), 0.2, dtype=F64)
    for prediction in ["epsilon", "v", "velocity"]:
        out = psm.denoiser(proc, prediction)(x1, t, mask=mask)
        x0, _ = proc.to_x0_eps(out, prediction, x1, t)
        torch.testing.assert_close(x0, psm.x0(x1, t, proc, mask), rtol=1e-9, atol=1e-9)
    x = workbench.sample(psm.denoiser(proc, "epsilon"), proc, x1, sampler="euler", steps=30, prediction="epsilon", mask=mask)
    torch.testing.assert_close(_com(x, mask), torch.zeros(3, 3, dtype=F64), atol=1e-10, rtol=0)
    assert bool((x[mask == 0] == 0).all())
    # without a mask every point is real
    xf, _ = psm.sample([4, 4], gen)
    torch.testing.assert_close(psm.x0(xf, 0.3, proc), psm.x0(xf, 0.3, proc, torch.ones(2, 4, dtype=F64)))
