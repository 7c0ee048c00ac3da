"""SiD (score identity distillation): conformance, the loss and its gradient in closed form,
alpha, multistep noise modulation and option errors."""
import math

import pytest
import torch
from torch import nn

import workbench.distill.sid  # noqa: F401  (registers "sid")
from workbench.analytic import GaussianMixture
from workbench.distill import setup_method
from workbench.distill.conformance import check_recipe
from workbench.distill.score_distill import dmd_loss
from workbench.distill.sid import SiD, karras_times, sid_loss
from workbench.processes import VPCosine
from domains.toy.domain import ToyDomain
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

SMALL = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


class Gauss1D(nn.Module):
    """The exact x0 denoiser of a 1-D Gaussian N(m, s^2) as a module (x0 prediction)."""

    def __init__(self, process, m, s):
        super().__init__()
        f64 = torch.float64
        mix = GaussianMixture(torch.tensor([[m]], dtype=f64), torch.tensor([[s]], dtype=f64), torch.tensor([1.0], dtype=f64))
        self.fn = mix.denoiser(process, "x0")
        self.prediction = "x0"

    def forward(self, x, t, **kw):
        return self.fn(x, t)


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_sid_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("sid", ctx, {"student": SMALL[dataset]})
    assert [p[0] for p in setup.objective.phases] == ["fake", "generator"]
    assert setup.spec["kind"] == "consistency" and setup.spec["parameterization"] == "x0"
    # the generator loss is not a fixed-target regression; the fake-score phase must decrease
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=25)


def test_sid_gradient_vanishes_when_fake_equals_teacher():
    """At initialisation the fake score is a copy of the teacher: f_r = f_f, so the loss is
    exactly 0 and the generator gradient vanishes (up to float rounding of the two
    cancelling Jacobian paths); a perturbed fake score gives a clear gradient."""
    d, ctx = ctx_for("gmm")
    setup = setup_method("sid", ctx, {"student": SMALL["gmm"]})
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    loss = setup.objective(setup.nets, b, torch.Generator().manual_seed(1), phase="generator")
    assert float(loss.detach().abs().max()) == 0.0
    loss.sum().backward()
    g0 = max(float(p.grad.abs().max()) for p in setup.nets["student"].parameters())
    with torch.no_grad():
        for p in setup.nets["fake_score"].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    setup.nets["student"].zero_grad(set_to_none=True)
    setup.objective(setup.nets, b, torch.Generator().manual_seed(1), phase="generator").sum().backward()
    g1 = max(float(p.grad.abs().max()) for p in setup.nets["student"].parameters())
    assert g0 < 1e-6 and g1 > 1e-3, (g0, g1)


@pytest.mark.parametrize("alpha", [1.0, 1.2])
def test_sid_loss_and_gradient_on_1d_gaussians(alpha):
    """Real N(1, 0.5^2), fake N(-0.5, 0.8^2): the x0 predictions are affine in x_t,
    f(x_t) = m + c (x_t - a m), c = a s^2 / (a^2 s^2 + sigma^2), so the SiD loss and its gradient
    through x_g and x_t = a x_g + sigma eps are available by hand."""
    p = VPCosine()
    real, fake = Gauss1D(p, 1.0, 0.5), Gauss1D(p, -0.5, 0.8)
    obj = SiD(p, [1.0, 0.0], alpha=alpha)
    g = torch.Generator().manual_seed(0)
    x_g = torch.randn(6, 1, generator=g, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(6, 1, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.6, 0.7, 0.9], dtype=torch.float64)
    loss = obj.generator_loss({"teacher": real, "fake_score": fake}, x_g, t, eps)
    loss.sum().backward()

    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x = x_g.detach()
    x_t = a * x + s * eps
    c_r, c_f = a * 0.25 / (a**2 * 0.25 + s**2), a * 0.64 / (a**2 * 0.64 + s**2)
    f_r, f_f = 1.0 + c_r * (x_t - a * 1.0), -0.5 + c_f * (x_t + a * 0.5)
    D = f_r - f_f
    w = (x - f_r).abs()
    expect = D * ((f_r - x) - alpha * D) / w
    dD, df_r = a * (c_r - c_f), a * c_r
    expect_grad = (dD * ((f_r - x) - alpha * D) + D * (df_r - 1.0 - alpha * dD)) / w
    assert torch.allclose(loss, expect[:, 0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(x_g.grad, expect_grad, rtol=1e-8, atol=1e-12)


def test_sid_alpha_and_score_grad_options():
    """alpha enters the gradient only through the score Jacobians: with ``score_grad=False`` the
    update is DMD's ``(f_f - f_r) / w`` for every alpha; with it, alpha changes the update by
    ``-2 (alpha1 - alpha0) D D' / w``."""
    p = VPCosine()
    real, fake = Gauss1D(p, 1.0, 0.5), Gauss1D(p, -1.0, 0.5)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(500, 1, generator=g, dtype=torch.float64) * 0.5 - 1.0
    eps = torch.randn(500, 1, generator=g, dtype=torch.float64)
    t = torch.full((500,), 0.5, dtype=torch.float64)
    nets = {"teacher": real, "fake_score": fake}

    def grad(alpha, score_grad):
        x = x0.clone().requires_grad_(True)
        SiD(p, [1.0, 0.0], alpha=alpha, score_grad=score_grad).generator_loss(nets, x, t, eps).sum().backward()
        return x.grad

    x = x0.clone().requires_grad_(True)
    x_t = p.add_noise(x0, t, eps)
    mu_r, mu_f = real(x_t, t), fake(x_t, t)
    dmd_loss(x, mu_r, mu_f).sum().backward()
    for alpha in (1.0, 1.2):
        assert torch.allclose(grad(alpha, False), x.grad, atol=1e-12)
    # equal variances: c_r = c_f, so D' = 0 and alpha drops out of the gradient
    assert torch.allclose(grad(1.0, True), grad(1.2, True), atol=1e-12)
    # unequal variances: the alpha term of the gradient is -2 (1.2 - 1.0) D D' / w
    fake2 = Gauss1D(p, -1.0, 0.9)
    nets["fake_score"] = fake2
    g10, g12 = grad(1.0, True), grad(1.2, True)
    a, s = float(p.alpha(t[:1])), float(p.sigma(t[:1]))
    c_r, c_f = a * 0.25 / (a**2 * 0.25 + s**2), a * 0.81 / (a**2 * 0.81 + s**2)
    f_r, f_f = real(x_t, t), fake2(x_t, t)
    w = (x0 - f_r).abs()
    assert torch.allclose(g12 - g10, -2 * 0.2 * (f_r - f_f) * a * (c_r - c_f) / w, atol=1e-10)
    # both move generator samples (around -1) towards the teacher's mode at +1
    assert float((-g10).mean()) > 0 and float((-g12).mean()) > 0


def test_sid_multistep_noise_modulation():
    """``train_noise_scale`` scales the fresh noise of backward simulation (0: the step-1 input is
    exactly alpha(t_1) times the step-0 output); ``noise_scale`` at generation does the same at
    inference (0: deterministic whatever the seed)."""
    d, ctx = ctx_for("pointset", steps=4)
    b = d.train_data()(4, torch.Generator().manual_seed(0))
    xs = {}
    for ns in (0.0, 1.0):
        setup = setup_method("sid", ctx, {"student": SMALL["pointset"], "train_noise_scale": ns})
        obj = setup.objective
        with torch.no_grad():
            x0_first, _, _ = obj.generator_sample(setup.nets, b, torch.Generator().manual_seed(5), step=0)
            _, xs[ns], t_1 = obj.generator_sample(setup.nets, b, torch.Generator().manual_seed(5), step=1)
        assert torch.allclose(t_1, obj.grid[1].expand(4))
        if ns == 0.0:
            a1 = float(d.process().alpha(obj.grid[1]))
            assert torch.allclose(xs[0.0], a1 * x0_first, atol=1e-6)
    assert not torch.allclose(xs[1.0], xs[0.0], atol=1e-3)
    gen = setup.make_generator(setup.nets).eval()
    gb = d.generation_batch(4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = {(ns, seed): gen.generate(gb.x_T, 4, mask=gb.mask, generator=torch.Generator().manual_seed(seed), noise_scale=ns)
               for ns in (0.0, 0.5, 1.0) for seed in (0, 1)}
    assert torch.equal(out[(0.0, 0)], out[(0.0, 1)])
    assert not torch.allclose(out[(0.5, 0)], out[(1.0, 0)], atol=1e-4)
    assert not torch.allclose(out[(0.5, 0)], out[(0.5, 1)], atol=1e-4)
    assert float(((1 - gb.mask)[..., None] * out[(0.5, 0)]).abs().max()) == 0.0


def test_karras_times_follow_the_sid_schedule():
    p = ToyDomain(dataset="gmm").process()
    t = karras_times(p, 64, torch.Generator().manual_seed(0), "cpu")
    u = 0.8 * torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    sig = (hi + (1 - u) * (lo - hi)) ** 7
    inside = (sig > 0.02) & (sig < 100)  # within the process's noise range
    assert torch.allclose((-p.lambda_(t))[inside].exp(), sig[inside], rtol=1e-6)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_sid_bad_options():
    d, ctx = ctx_for("gmm")
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        setup_method("sid", ctx, {"alpha": math.nan})
    with pytest.raises(ValueError, match="unknown t_sampling 'edm'; valid: uniform, karras"):
        setup_method("sid", ctx, {"t_sampling": "edm"})
    with pytest.raises(ValueError, match="t_min < t_max"):
        setup_method("sid", ctx, {"t_min": 0.9, "t_max": 0.1})
    with pytest.raises(ValueError, match="generator_every must be a positive integer"):
        setup_method("sid", ctx, {"generator_every": 0})
    with pytest.raises(ValueError, match="train_noise_scale must be >= 0"):
        setup_method("sid", ctx, {"train_noise_scale": -1.0})
    with pytest.raises(ValueError, match="init_sigma must be positive"):
        setup_method("sid", ctx, {"init_sigma": -1.0})
    with pytest.raises(ValueError, match="unknown option"):
        setup_method("sid", ctx, {"alfa": 1.0})
    setup = setup_method("sid", ctx, {"student": SMALL["gmm"]})
    with pytest.raises(ValueError, match="unknown phase 'gen'; valid: fake, generator"):
        setup.objective(setup.nets, d.train_data()(2, torch.Generator().manual_seed(0)), None, phase="gen")


def test_sid_loss_masks_padding():
    x = torch.randn(2, 3, 1, requires_grad=True)
    f_r, f_f = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    full = sid_loss(x, f_r, f_f, 1.2, mask)
    x2 = x.detach().clone()
    x2[0, 2] += 10.0
    x2[1, 1:] -= 7.0
    assert torch.allclose(sid_loss(x2, f_r, f_f, 1.2, mask), full)
    full.sum().backward()
    assert float(x.grad[0, 2].abs().max()) == 0.0 and float(x.grad[1, 1:].abs().max()) == 0.0


def test_generator_samples_with_its_training_noise_scale_by_default():
    """The spec records ``train_noise_scale``; the rebuilt generator uses it when no
    ``noise_scale`` is given, and an explicit value overrides it."""
    from workbench.distill.recipes import build_generator

    d, ctx = ctx_for("pointset", steps=3)
    setup = setup_method("sid", ctx, {"train_noise_scale": 0.5, "student": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}})
    assert setup.spec["noise_scale"] == 0.5
    gen = build_generator(d, setup.spec).eval()
    assert gen.noise_scale == 0.5
    gb = d.generation_batch(4, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        return gen.generate(gb.x_T, 3, mask=gb.mask, generator=torch.Generator().manual_seed(1), **kw)

    with torch.no_grad():
        default, half, one = run(), run(noise_scale=0.5), run(noise_scale=1.0)
    torch.testing.assert_close(default, half)
    assert not torch.allclose(default, one)
