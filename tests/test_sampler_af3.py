"""The AlphaFold 3 diffusion sampler ``af3_edm`` (AF3 Suppl. Alg. 18): it reduces to the
``euler`` (DDIM) sampler for ``gamma0 = 0, eta = 1``; it is AF3's algorithm verbatim on the VE
process; it is stochastic and reproducible with per-sample generators; the churn gate
``gamma_min`` works; with ``eta = 1, lambda = 1`` it samples a Gaussian data distribution with
the right mean and variance (exact denoiser) and with AF3's ``eta = 1.5`` it sharpens it;
masks / zero centre of mass are preserved; bad options raise one-line ValueErrors."""
from __future__ import annotations

import math

import pytest
import torch

import workbench
from workbench.analytic import GaussianMixture, PointSetMixture
from workbench.processes import VE, RectifiedFlow, VPCosine, VPLinear
from workbench.samplers import get
from workbench.utils import per_sample_generators

M, S = 0.7, 0.3
GM = GaussianMixture(torch.tensor([[M]]), torch.tensor([S]))
PROCESSES = {"ve": VE(), "vp_linear": VPLinear(), "vp_cosine": VPCosine(), "flow": RectifiedFlow()}
ODE = dict(gamma0=0.0, step_scale_eta=1.0)


def _x1(proc, n=64, d=1, seed=0):
    return proc.prior((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_registered():
    spec = get("af3_edm")
    assert spec.stochastic and spec.nfe(200) == 200 and spec.order == 1
    assert "AlphaFold 3" in spec.reference


@pytest.mark.parametrize("pname", list(PROCESSES))
@pytest.mark.parametrize("steps", [1, 2, 5, 40])
def test_reduces_to_euler(pname, steps):
    proc = PROCESSES[pname]
    den = GM.denoiser(proc)
    x1 = _x1(proc)
    out = workbench.run_sampler(den, proc, x1, sampler="af3_edm", steps=steps, prediction="x0", **ODE)
    ref = workbench.run_sampler(den, proc, x1, sampler="euler", steps=steps, prediction="x0")
    assert out.nfe == ref.nfe == steps
    torch.testing.assert_close(out.x, ref.x, rtol=1e-9, atol=1e-9)
    # churn gated off everywhere (gamma_min above every noise level) is Euler as well
    gated = workbench.sample(den, proc, x1, sampler="af3_edm", steps=steps, prediction="x0", gamma0=0.8, gamma_min=1e12,
                             step_scale_eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gated, ref.x, rtol=1e-9, atol=1e-9)


def test_clean_end_returns_last_x0():
    proc = VE()
    seen = []
    out = workbench.run_sampler(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=7, prediction="x0",
                                generator=torch.Generator().manual_seed(0), callback=lambda info: seen.append(info["x0"]))
    assert len(seen) == out.nfe == 7
    torch.testing.assert_close(out.x, seen[-1], rtol=0, atol=0)


def test_verbatim_algorithm_18_on_ve():
    """A literal transcription of AF3 Alg. 18 (VE: x = x0 + c eps; noise levels c = sigma_max t)
    with the same noise draws gives the same trajectory (grid started below t = 1 so no churn
    level is clamped; the step into c = 0 returns x0^ by the package contract)."""
    proc = VE(sigma_max=80.0)
    den = GM.denoiser(proc)
    ts = torch.tensor([0.5, 0.2, 0.05, 0.01, 0.004, 0.0], dtype=torch.float64)
    x1 = _x1(proc, n=16) * 0.5
    g0, lam, eta, gmin = 0.8, 1.003, 1.5, 1.0
    out = workbench.sample(den, proc, x1, sampler="af3_edm", timesteps=ts, prediction="x0", generator=torch.Generator().manual_seed(7),
                           gamma0=g0, noise_scale_lambda=lam, step_scale_eta=eta, gamma_min=gmin)
    g = torch.Generator().manual_seed(7)
    c = (ts * 80.0).tolist()
    x = x1.clone()
    for c_prev, c_tau in zip(c[:-1], c[1:]):
        gamma = g0 if c_tau > gmin else 0.0
        t_hat = c_prev * (gamma + 1)
        xi = lam * math.sqrt(t_hat**2 - c_prev**2) * torch.randn(x.shape, generator=g, dtype=x.dtype) if gamma > 0 else 0.0
        x_noisy = x + xi
        x_den = den(x_noisy, torch.full((x.shape[0],), t_hat / 80.0, dtype=torch.float64))
        if c_tau == 0.0:
            x = x_den
            break
        x = x_noisy + eta * (c_tau - t_hat) * (x_noisy - x_den) / t_hat
    torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-9)


def test_stochastic_and_reproducible_per_sample():
    proc = VPLinear()
    den = GM.denoiser(proc)
    x1 = _x1(proc, n=6)
    kw = dict(sampler="af3_edm", steps=30, prediction="x0")
    a = workbench.sample(den, proc, x1, generator=per_sample_generators(0, 6), **kw)
    b = workbench.sample(den, proc, x1, generator=per_sample_generators(0, 6), **kw)
    c = workbench.sample(den, proc, x1, generator=per_sample_generators(100, 6), **kw)
    e = workbench.sample(den, proc, x1, sampler="euler", steps=30, prediction="x0")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().min() > 1e-6  # every sample changed with its seed
    assert (a - e).abs().min() > 1e-6  # the churn noise matters
    # sample i depends only on its own generator (batch of 3 = first 3 of the batch of 6)
    a3 = workbench.sample(den, proc, x1[:3], generator=per_sample_generators(0, 3), **kw)
    torch.testing.assert_close(a3, a[:3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pname", ["ve", "vp_linear", "flow"])
def test_gaussian_mean_variance_many_steps(pname):
    """gamma0 = 0.8 with eta = lambda = 1 is EDM's stochastic (churn) sampler with Euler steps:
    at 200 steps the samples of N(M, S^2) have its mean and variance (4000 samples, standard
    errors ~0.005 for the mean and ~0.0034 for the std)."""
    proc = PROCESSES[pname]
    den = GM.denoiser(proc)
    x1 = _x1(proc, n=4000)
    x = workbench.sample(den, proc, x1, sampler="af3_edm", steps=200, prediction="x0", generator=torch.Generator().manual_seed(1),
                         gamma0=0.8, step_scale_eta=1.0, noise_scale_lambda=1.0)
    assert abs(float(x.mean()) - M) < 0.02
    assert abs(float(x.std()) - S) < 0.015
    # AF3's defaults (eta = 1.5, lambda = 1.003) over-shoot each Euler step inside the churn
    # region: same mean, strongly reduced spread (a documented trade of diversity for accuracy)
    y = workbench.sample(den, proc, x1, sampler="af3_edm", steps=200, prediction="x0", generator=torch.Generator().manual_seed(1))
    assert abs(float(y.mean()) - M) < 0.02
    assert float(y.std()) < 0.5 * S


def test_masks_and_zero_com_preserved():
    proc = VE(zero_com=True)
    psm = PointSetMixture(radii=[1.0], stds=[0.2])
    den = psm.denoiser(proc)
    mask = torch.ones(3, 7)
    mask[0, 5:] = 0
    mask[2, 4:] = 0
    x1 = proc.prior((3, 7, 3), generator=torch.Generator().manual_seed(0), mask=mask, dtype=torch.float64)
    x = workbench.sample(den, proc, x1, sampler="af3_edm", steps=12, prediction="x0", mask=mask, generator=per_sample_generators(0, 3))
    assert torch.isfinite(x).all()
    assert float(x[mask == 0].abs().max()) == 0.0
    com = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-10


@pytest.mark.parametrize("opt", [{"gamma0": -0.1}, {"noise_scale_lambda": float("nan")}, {"step_scale_eta": 0.0},
                                 {"gamma_min": -1.0}])
def test_bad_options(opt):
    proc = VE()
    with pytest.raises(ValueError) as e:
        workbench.sample(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=3, prediction="x0", **opt)
    assert "\n" not in str(e.value) and next(iter(opt)) in str(e.value)
    with pytest.raises(ValueError, match="valid"):
        workbench.sample(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=3, prediction="x0", s_churn=1.0)
