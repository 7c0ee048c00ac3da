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


# -- Proteina-SiD options (Xie et al. 2025; authors' code mohammedehab2002/SiD_Protein d47253e) ---------------
class InputRecorder(nn.Module):
    """An x0 'student' that predicts 0 and records every input it is called with."""

    prediction = "x0"

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, t, **kw):
        self.inputs.append(x.detach().clone())
        return torch.zeros_like(x)


def _official_grid(K, t_init=30, T=400):
    """Re-derived from the authors' sid_training_loop.py / sid_utils.sample_t (Proteina time tau,
    tau = 1 data), returned in this package's time 1 - tau, with the final 0."""
    if K == 1:
        taus = [0.37]
    else:
        s = torch.round(torch.linspace(float(t_init), float(T), K, dtype=torch.float64))
        taus = [1.0 - 10.0 ** (-(float(si) / T) * 2.0) for si in s]
    return torch.tensor([1.0 - tau for tau in taus] + [0.0], dtype=torch.float64)


@pytest.mark.parametrize("K", [1, 8, 16])
def test_proteina_log_grid_is_the_published_grid(K):
    from workbench.distill.sid import generator_grid, proteina_log_grid

    g = proteina_log_grid(K)
    torch.testing.assert_close(g, _official_grid(K), rtol=0, atol=1e-12)
    torch.testing.assert_close(generator_grid(ToyDomain(dataset="gmm").process(), K, grid="proteina_log"), g)
    if K == 8:  # the review's numbers: 0.708, 0.385, 0.209, ..., 0.010
        assert [round(float(v), 3) for v in g[:3]] == [0.708, 0.385, 0.209] and round(float(g[-2]), 3) == 0.010
    with pytest.raises(ValueError, match="unknown grid 'log'; valid: uniform, proteina_log"):
        generator_grid(ToyDomain(dataset="gmm").process(), K, grid="log")


@pytest.mark.parametrize("gamma", [1.0, 0.45])
def test_scale_initial_noise_scales_every_noise_term(gamma):
    """With ``scale_initial_noise`` every generator input is ``alpha(t_k) x0_{k-1} + gamma sigma(t_k) z``
    with ``x0_{-1} = 0`` (authors' generator_step: interpolate(gamma eps, x_prev, tau)); the first
    input's std is ``0.708 gamma`` at K = 8 on a rectified flow. Default (every other method):
    only the re-injected noise is scaled, the first input is the unscaled prior part."""
    from workbench.distill.base import FewStepGenerator
    from workbench.distill.sid import proteina_log_grid
    from workbench.processes import RectifiedFlow

    p = RectifiedFlow()
    grid = proteina_log_grid(8)
    x_T = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    first = {}
    for scaled in (True, False):
        rec = InputRecorder()
        gen = FewStepGenerator(rec, p, timesteps=grid, noise_scale=gamma, scale_initial_noise=scaled)
        gen.generate(x_T, generator=torch.Generator().manual_seed(1))
        first[scaled] = rec.inputs[0]
        if scaled:
            # official first input: (1 - tau_0) gamma eps + tau_0 * 0, 1 - tau_0 = 10^(-2*30/400)
            torch.testing.assert_close(first[True], (10 ** (-0.15)) * gamma * x_T, rtol=1e-6, atol=1e-6)
            assert abs(float(first[True].std()) - 0.708 * gamma) < 0.01
            # later inputs (x0 = 0 here): gamma sigma(t_k) z, std 0.385 gamma at the second time
            assert abs(float(rec.inputs[1].std()) - float(grid[1]) * gamma) < 0.01
    torch.testing.assert_close(first[False], 10 ** (-0.15) * x_T, rtol=1e-6, atol=1e-6)  # unscaled by default
    with pytest.raises(ValueError, match="scale_initial_noise must be True or False"):
        FewStepGenerator(InputRecorder(), p, scale_initial_noise=1)


def test_rollout_scales_the_initial_noise_only_when_asked():
    from workbench.distill.score_distill import rollout
    from workbench.losses import Batch
    from workbench.processes import RectifiedFlow

    p, grid = RectifiedFlow(), _official_grid(4)
    b = Batch(x=torch.zeros(4, 256))
    out = {}
    for scaled in (True, False):
        rec = InputRecorder()
        rollout(rec, p, grid, b, torch.Generator().manual_seed(3), step=0, noise_scale=0.45, scale_initial_noise=scaled)
        out[scaled] = rec.inputs[0]
    torch.testing.assert_close(out[True], 0.45 * out[False])
    torch.testing.assert_close(rollout(InputRecorder(), p, grid, b, torch.Generator().manual_seed(3), step=0)[1], out[False])


def _official_generator_loss(x_g, y_real, y_fake, mask, alpha):
    """SID_ProteinaLoss.generator_loss (authors' training/sid_loss.py), re-derived: x [B, N, 3], mask [B, N]."""
    nres = mask.sum(-1)
    with torch.no_grad():
        wf = (abs((x_g - y_real) * mask[:, :, None])).sum(dim=[1, 2]).view(-1, 1, 1)
    loss = (y_real - y_fake) * ((y_real - x_g) - alpha * (y_real - y_fake)) / wf
    return (loss * mask[:, :, None]).sum(dim=[1, 2]) / nres


@pytest.mark.parametrize("alpha", [1.0, 1.2])
def test_per_residue_normaliser_is_the_official_protein_loss(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 3, generator=g, dtype=torch.float64)
    f_r, f_f = torch.randn(3, 7, 3, generator=g, dtype=torch.float64), torch.randn(3, 7, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3, [1.0] * 2 + [0.0] * 5], dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = sid_loss(x1, f_r, f_f, alpha, mask, normaliser="per_residue")
    ref = _official_generator_loss(x2, f_r, f_f, mask, alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-14)
    # the image form ("mean", the default) is nres times it
    torch.testing.assert_close(sid_loss(x, f_r, f_f, alpha, mask), ref.detach() * mask.sum(-1), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="unknown normaliser 'sum'; valid: mean, per_residue"):
        sid_loss(x, f_r, f_f, alpha, mask, normaliser="sum")


def test_proteina_time_laws():
    """Generator loss: s ~ U{0..400}, tau = 1 - 10^(-2 s/400) clamped to [0.02, 0.98]; fake score:
    tau ~ Beta(1.9, 1) w.p. 0.98 else U[0, 1], clamped (authors' SID_ProteinaLoss); both returned
    as t = 1 - tau."""
    from workbench.distill.sid import proteina_beta_times, proteina_log_times

    t = proteina_log_times(4000, torch.Generator().manual_seed(0), "cpu")
    s = torch.randint(0, 401, (4000,), generator=torch.Generator().manual_seed(0)).double()
    tau = (1.0 - 10 ** (-(s / 400) * 2.0)).clamp(0.02, 0.98)
    torch.testing.assert_close(t, 1.0 - tau)
    assert float(t.min()) >= 0.02 - 1e-12 and float(t.max()) <= 0.98 + 1e-12
    tb = proteina_beta_times(40000, torch.Generator().manual_seed(1), "cpu")
    taub = 1.0 - tb
    assert float(taub.min()) >= 0.02 - 1e-12 and float(taub.max()) <= 0.98 + 1e-12
    for x in (0.1, 0.3, 0.5, 0.7, 0.9):  # the mixture's CDF 0.98 x^1.9 + 0.02 x inside the clamp
        assert abs(float((taub <= x).double().mean()) - (0.98 * x ** 1.9 + 0.02 * x)) < 0.01
    with pytest.raises(ValueError, match="p2 = 1 only"):
        proteina_beta_times(4, None, "cpu", p2=2.0)


def test_proteina_fm_loss_is_compute_fm_loss():
    from workbench.distill.sid import proteina_fm_loss

    g = torch.Generator().manual_seed(0)
    x1, x1p = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    tau = torch.tensor([0.3, 0.9], dtype=torch.float64)
    # compute_fm_loss (authors' proteina_utils.py): sum err^2 / (3 nres) * 1 / ((1 - tau)^2 + 1e-5)
    ref = ((x1 - x1p) * mask[..., None]).pow(2).sum(dim=(-1, -2)) / (mask.sum(-1) * 3) / ((1.0 - tau) ** 2 + 1e-5).float()
    torch.testing.assert_close(proteina_fm_loss(x1, x1p, 1.0 - tau, mask), ref)


def test_sid_proteina_options_in_the_recipe():
    d, ctx = ctx_for("pointset", steps=8)
    opts = {"student": SMALL["pointset"], "grid": "proteina_log", "t_sampling": "proteina_log", "fake_t_sampling": "proteina_beta",
            "fake_loss": "proteina_fm", "normaliser": "per_residue", "scale_initial_noise": True, "train_noise_scale": 1.0,
            "sample_noise_scale": 0.45, "generator_betas": (0.9, 0.999), "generator_loss_scale": 100.0}
    setup = setup_method("sid", ctx, opts)
    obj = setup.objective
    torch.testing.assert_close(obj.grid, _official_grid(8))
    assert setup.spec["noise_scale"] == 0.45 and setup.spec["scale_initial_noise"] is True
    assert obj.phase_betas == {"generator": (0.9, 0.999)} and setup.train_defaults["betas"] == (0.0, 0.999)
    gen = setup.make_generator(setup.nets)
    assert gen.noise_scale == 0.45 and gen.scale_initial_noise and obj.train_noise_scale == 1.0
    b = d.train_data()(4, torch.Generator().manual_seed(0))
    for phase in ("fake", "generator"):
        loss = obj(setup.nets, b, torch.Generator().manual_seed(1), phase=phase)
        assert loss.shape == (4,) and torch.isfinite(loss).all()
    # the image defaults: only the re-injected noise is scaled, gamma = the train scale
    plain = setup_method("sid", ctx, {"student": SMALL["pointset"], "train_noise_scale": 0.8})
    assert plain.spec["scale_initial_noise"] is False and plain.spec["noise_scale"] == 0.8 and plain.objective.phase_betas == {}
    for bad, msg in ((("fake_t_sampling", "beta"), "unknown fake_t_sampling 'beta'; valid: uniform, proteina_beta"),
                     (("fake_loss", "fm"), "unknown fake_loss 'fm'; valid: denoising, proteina_fm"),
                     (("generator_betas", (0.9,)), "generator_betas must be two numbers"),
                     (("generator_loss_scale", 0.0), "generator_loss_scale must be a positive number"),
                     (("sample_noise_scale", -1.0), "sample_noise_scale must be >= 0")):
        with pytest.raises(ValueError, match=msg):
            setup_method("sid", ctx, {bad[0]: bad[1]})


def test_generator_loss_scale_multiplies_the_generator_loss():
    d, ctx = ctx_for("pointset", steps=2)
    b = d.train_data()(4, torch.Generator().manual_seed(0))
    losses = []
    for scale in (1.0, 100.0):
        setup = setup_method("sid", ctx, {"student": SMALL["pointset"], "generator_loss_scale": scale})
        torch.manual_seed(0)
        for n in setup.nets["fake_score"].parameters():
            n.data.add_(0.01 * torch.randn(n.shape, generator=torch.Generator().manual_seed(2)))
        losses.append(setup.objective(setup.nets, b, torch.Generator().manual_seed(1), phase="generator").detach())
    torch.testing.assert_close(losses[1], 100.0 * losses[0], rtol=1e-4, atol=1e-8)
