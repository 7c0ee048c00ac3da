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


def test_clean_end_is_protenix_last_step():
    """With eta = 1 the step into c = 0 gives the last data prediction; with eta != 1 it is
    Protenix's over-shooting Euler step (1 - eta) x_noisy + eta x0^ (not x0^)."""
    proc = VE()
    for eta in (1.0, 1.5):
        seen = []
        out = workbench.run_sampler(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=7, prediction="x0",
                                    step_scale_eta=eta, generator=torch.Generator().manual_seed(0),
                                    callback=lambda info: seen.append((info["x"], info["x0"])))
        assert len(seen) == out.nfe == 7
        x_noisy, x0 = seen[-1]
        torch.testing.assert_close(out.x, (1.0 - eta) * x_noisy + eta * x0, rtol=1e-12, atol=1e-12)
        if eta != 1.0:
            assert float((out.x - x0).abs().max()) > 1e-6


def _equivariant_denoiser(sigma_max):
    """An E(3)-equivariant, nonlinear x0-denoiser on point sets ``[B, N, 3]`` (masked):
    D_i = c + sum_j w_ij (x_j - c) / 2, w = softmax_j(-|x_i - x_j|^2 / (1 + sigma^2)), c the
    centroid of the real points: D(R x + T) = R D(x) + T."""
    def den(x, t, mask=None):
        m = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
        c = (x * m[..., None]).sum(1, keepdim=True) / m.sum(1, keepdim=True)[..., None]
        sig = (t * sigma_max).to(x.dtype)[:, None, None]
        d2 = ((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1)
        logits = -d2 / (1.0 + sig**2) + torch.log(m[:, None, :].clamp_min(1e-300))
        w = torch.softmax(logits, dim=-1)
        return (c + 0.5 * torch.einsum("bij,bjd->bid", w, x - c)) * m[..., None]
    return den


def _protenix_augment(x, g, s_trans, mask=None):
    """Protenix centre_random_augmentation (AF3 Alg. 19) re-derived, with the sampler's draw
    order (Gaussian quaternion [B, 4], then translation [B, 3], from the same generator)."""
    B = x.shape[0]
    q = torch.randn((B, 4), generator=g, dtype=torch.float64)
    tr = torch.randn((B, 3), generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    R = []
    for w, a, b, c in q.tolist():  # unit quaternion (w, a, b, c) -> rotation matrix
        R.append([[w * w + a * a - b * b - c * c, 2 * (a * b - w * c), 2 * (a * c + w * b)],
                  [2 * (a * b + w * c), w * w - a * a + b * b - c * c, 2 * (b * c - w * a)],
                  [2 * (a * c - w * b), 2 * (b * c + w * a), w * w - a * a - b * b + c * c]])
    R = torch.tensor(R, dtype=torch.float64)
    m = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
    centre = (x * m[..., None]).sum(1, keepdim=True) / m.sum(1, keepdim=True)[..., None]
    return (torch.einsum("bij,bnj->bni", R, x - centre) + s_trans * tr[:, None, :]) * m[..., None]


@pytest.mark.parametrize("augment", [False, True])
def test_verbatim_protenix_sample_diffusion(augment):
    """Protenix ``sample_diffusion`` (AF3 Alg. 18/19) transcribed on the VE process (x = x0 + c
    eps, c = sigma_max t) with the same draws: augmentation (when on), churn noise, denoiser,
    Euler step with eta = 1.5 on every step, the last (into c = 0) included. Churn is on for
    the first steps (c_tau > gamma_min) and gated off after."""
    smax = 80.0
    proc = VE(sigma_max=smax)
    den = _equivariant_denoiser(smax)
    ts = torch.tensor([0.5, 0.2, 0.05, 0.01, 0.004, 0.0], dtype=torch.float64)
    x1 = torch.randn((3, 5, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10.0
    g0, lam, eta, gmin, s_trans = 0.8, 1.003, 1.5, 1.0, 0.7
    out = workbench.sample(den, proc, x1, sampler="af3_edm", timesteps=ts, prediction="x0", generator=torch.Generator().manual_seed(7),
                           gamma0=g0, noise_scale_lambda=lam, step_scale_eta=eta, gamma_min=gmin, augment=augment, s_trans=s_trans)
    g = torch.Generator().manual_seed(7)
    c = (ts * smax).tolist()
    x = x1.clone()
    for c_prev, c_tau in zip(c[:-1], c[1:]):
        if augment:
            x = _protenix_augment(x, g, s_trans)
        gamma = g0 if c_tau > gmin else 0.0
        t_hat = c_prev * (gamma + 1)
        xi = lam * math.sqrt(t_hat**2 - c_prev**2) * torch.randn(x.shape, generator=g, dtype=x.dtype) if gamma > 0 else 0.0
        x_noisy = x + xi
        x_den = den(x_noisy, torch.full((x.shape[0],), t_hat / smax, dtype=torch.float64))
        delta = (x_noisy - x_den) / t_hat
        x = x_noisy + eta * (c_tau - t_hat) * delta
    assert float((out - x).abs().max()) < 1e-6


def _kabsch_residual(a, b, mask):
    """Largest per-sample RMSD of ``b`` after its best rigid superposition onto ``a`` ([B, N, 3])."""
    out = []
    for ai, bi, mi in zip(a, b, mask):
        ai, bi = ai[mi > 0], bi[mi > 0]
        ca, cb = ai.mean(0), bi.mean(0)
        u, _, vt = torch.linalg.svd((bi - cb).T @ (ai - ca))
        d = torch.sign(torch.det(u @ vt))
        rot = u @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=a.dtype)) @ vt
        out.append(float(((bi - cb) @ rot + ca - ai).pow(2).sum(-1).mean().sqrt()))
    return max(out)


@pytest.mark.parametrize("zero_com", [False, True])
def test_augmentation_is_a_rigid_motion_with_equivariant_denoiser(zero_com):
    """With an E(3)-equivariant denoiser and no churn noise, the augmented sampler's output is
    the unaugmented one moved by a proper rigid motion, per sample, padding zero; and that
    motion is not the identity."""
    smax = 80.0
    proc = VE(sigma_max=smax, zero_com=zero_com)
    den = _equivariant_denoiser(smax)
    mask = torch.ones(3, 6, dtype=torch.float64)
    mask[1, 4:] = 0
    x1 = proc.prior((3, 6, 3), generator=torch.Generator().manual_seed(0), mask=mask, dtype=torch.float64) * 0.1
    kw = dict(sampler="af3_edm", steps=6, prediction="x0", gamma0=0.0)
    ref = workbench.sample(den, proc, x1, mask=mask, augment=False, generator=per_sample_generators(0, 3), **kw)
    aug = workbench.sample(den, proc, x1, mask=mask, generator=per_sample_generators(0, 3), **kw)
    assert float(aug[mask == 0].abs().max()) == 0.0
    scale = float(ref.abs().max())
    assert scale > 1e-3
    assert _kabsch_residual(ref, aug, mask) < 1e-9 * scale
    assert float((aug - ref).abs().max()) > 0.1 * scale  # the augmentation really moved the samples
    com_ref = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    com_aug = (aug * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    if zero_com:  # the process's projection removes the translation
        assert float(com_aug.abs().max()) < 1e-10
    else:  # AF3's random translation moves the centroid
        assert float((com_aug - com_ref).norm(dim=-1).min()) > 0.1 * scale
    # reproducible per seed, and each sample depends only on its own generator
    again = workbench.sample(den, proc, x1[:2], mask=mask[:2], generator=per_sample_generators(0, 2), **kw)
    torch.testing.assert_close(again, aug[:2], rtol=0, atol=1e-12)


def test_augmentation_skipped_off_point_sets():
    """States that are not [B, N, 3] have nothing to rotate: augment on == augment off."""
    proc = VE()
    x1 = _x1(proc, n=8, d=1)
    kw = dict(sampler="af3_edm", steps=5, prediction="x0")
    a = workbench.sample(GM.denoiser(proc), proc, x1, generator=torch.Generator().manual_seed(0), **kw)
    b = workbench.sample(GM.denoiser(proc), proc, x1, generator=torch.Generator().manual_seed(0), augment=False, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


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
                                 {"gamma_min": -1.0}, {"s_trans": -1.0}, {"augment": "yes"}])
def test_bad_options(opt):
    proc = VE()
    with pytest.raises(ValueError) as e:
        workbench.sample(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=3, prediction="x0", **opt)
    assert "\n" not in str(e.value) and next(iter(opt)) in str(e.value)
    with pytest.raises(ValueError, match="valid"):
        workbench.sample(GM.denoiser(proc), proc, _x1(proc), sampler="af3_edm", steps=3, prediction="x0", s_churn=1.0)
