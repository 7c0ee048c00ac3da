"""Ambient diffusion (Daras et al. 2024/2025): Tweedie coefficients, the fixed corrupted data
set, the time restriction of noisy examples, projections, the recipe contract and errors."""
import math

import pytest
import torch

from domains.toy.domain import ToyDomain
from workbench.distill.ambient import AmbientData, AmbientLoss, sample_time_above, tweedie_coefficients
from workbench.distill.conformance import check_recipe
from workbench.distill.recipes import RecipeContext, get_method, setup_method
from workbench.losses import Batch
from workbench.processes import VE, RectifiedFlow, VPCosine, VPLinear
from functools import partial

from distill_helpers import toy_ctx

ctx_for = partial(toy_ctx, teacher="exact")

torch.set_num_threads(1)

GMM_TINY = {"hidden": 32, "depth": 1, "freq_dim": 16}
SET_TINY = {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}


def processes():
    return [ToyDomain(dataset="gmm").process(), VPLinear(), VPCosine(), VE(), RectifiedFlow()]


@pytest.mark.parametrize("proc", processes(), ids=lambda p: type(p).__name__)
def test_tweedie_coefficients_match_gaussian_closed_form(proc):
    """c_x x_t + c_0 E[x0|x_t] equals E[x_s|x_t] computed from the joint Gaussian of
    (x_s, x_t) for Gaussian data x0 ~ N(mu, v), and the Markov transition is consistent."""
    g = torch.Generator().manual_seed(0)
    n = 64
    s = 0.02 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    t = s + (0.97 - s) * torch.rand(n, generator=g, dtype=torch.float64)
    mu, v = 0.7, 0.3
    x_t = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    c = tweedie_coefficients(proc, t, s)
    a_t, sg_t, a_s, sg_s = proc.alpha(t), proc.sigma(t), proc.alpha(s), proc.sigma(s)
    var_t = a_t**2 * v + sg_t**2
    cov_st = a_s * a_t * v + (a_t / a_s) * sg_s**2  # Cov(x_s, x_t)
    exact_xs = a_s * mu + cov_st / var_t * (x_t - a_t * mu)
    e_x0 = mu + a_t * v / var_t * (x_t - a_t * mu)
    torch.testing.assert_close(c["c_x"] * x_t + c["c_0"] * e_x0, exact_xs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c["a_ts"] * a_s, a_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c["a_ts"] ** 2 * sg_s**2 + c["s_ts"] ** 2, sg_t**2, rtol=1e-9, atol=1e-12)
    clean = tweedie_coefficients(proc, t, torch.zeros_like(t))  # a clean example: the usual forward process
    torch.testing.assert_close(clean["c_x"], torch.zeros_like(t))
    torch.testing.assert_close(clean["c_0"], torch.ones_like(t))
    torch.testing.assert_close(clean["a_ts"], a_t)
    torch.testing.assert_close(clean["s_ts"], sg_t)
    with pytest.raises(ValueError, match="t >= t_n"):
        tweedie_coefficients(proc, s * 0.5, s)


class GaussianDenoiser(torch.nn.Module):
    """Exact E[x0|x_t] of x0 ~ N(mu, diag v) (x0 prediction) plus a learnable bias b and
    scale k: D = D*(x_t) + b + k x_t; at b = k = 0 it is the exact denoiser."""

    prediction = "x0"

    def __init__(self, proc, mu, v, b=0.0):
        super().__init__()
        self.proc, self.mu, self.v = proc, mu, v
        self.b = torch.nn.Parameter(torch.full((2,), float(b), dtype=torch.float64))
        self.k = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, *, mask=None, cond=None):
        t = t.double()
        a, s = self.proc.alpha(t)[:, None], self.proc.sigma(t)[:, None]
        post = self.mu + a * self.v / (a**2 * self.v + s**2) * (x - a * self.mu)
        return post + self.b + self.k * x


@pytest.mark.parametrize("proc", [ToyDomain(dataset="gmm").process(), VE(sigma_max=5.0)], ids=["toy_vp", "ve"])
def test_exact_denoiser_is_the_ambient_loss_minimiser(proc):
    """Noisy observations only: the expected ambient-loss gradient vanishes at the exact
    denoiser (the mapped prediction is E[x_{t_n}|x_t]) and not at a wrong one."""
    g = torch.Generator().manual_seed(1)
    n, chunks = 40000, 20
    mu, v = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.8], dtype=torch.float64)
    t_n = torch.full((n,), 0.1 if isinstance(proc, VE) else 0.15, dtype=torch.float64)
    x0 = mu + v.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    a, s = proc.alpha(t_n)[:, None], proc.sigma(t_n)[:, None]
    x_s = a * x0 + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    batch = Batch(x=x_s, extra={"t_n": t_n})
    loss = AmbientLoss(proc, ambient_weighting="xtn")

    def grads(model):
        gs = []
        for i in range(chunks):
            model.zero_grad()
            sub = batch.index(slice(i * n // chunks, (i + 1) * n // chunks))
            loss({"model": model}, sub, torch.Generator().manual_seed(100 + i)).mean().backward()
            gs.append(torch.cat([model.b.grad, model.k.grad[None]]).clone())
        gs = torch.stack(gs)
        return gs.mean(0), gs.std(0) / math.sqrt(chunks)

    m, se = grads(GaussianDenoiser(proc, mu, v))
    assert bool((m.abs() < 4 * se).all()), f"gradient at the exact denoiser {m} is not zero (s.e. {se})"
    m_bad, se_bad = grads(GaussianDenoiser(proc, mu, v, b=0.2))
    assert bool((m_bad[:2].abs() > 10 * se_bad[:2]).all()), f"a biased denoiser is not detected: {m_bad} (s.e. {se_bad})"


def test_corrupted_dataset_is_fixed_per_index():
    d = ToyDomain(dataset="gmm")
    p = d.process()
    kw = dict(clean_fraction=0.1, t_noisy=0.2, dataset_size=500, data_seed=3)
    a, b = AmbientData(d, **kw), AmbientData(d, **kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.t_n, b.t_n) and torch.equal(a.noisy, b.noisy)
    assert a.n_clean == 50 and int(a.noisy.sum()) == 450
    assert set(a.t_n.unique().tolist()) == {0.0, 0.2}
    # the noise of example i depends only on (data_seed, i)
    torch.testing.assert_close(a.noise_of(torch.tensor([7]), (2,)), a.noise_of(torch.tensor([3, 7]), (2,))[1:])
    # observations: alpha x0 + sigma eps_i for noisy examples, x0 for clean ones
    from workbench.distill.ambient import _finite_dataset

    x0 = _finite_dataset(d, 500, 3).x
    idx = a.noisy.nonzero().flatten()
    expect = p.add_noise(x0[idx], a.t_n[idx], a.noise_of(idx, (2,)))
    torch.testing.assert_close(a.x[idx], expect)
    torch.testing.assert_close(a.x[~a.noisy], x0[~a.noisy])
    assert not torch.allclose(a.x[idx], x0[idx])
    # batches: every draw of index i returns the same observation
    g = torch.Generator().manual_seed(0)
    b1, b2 = a(300, g), b(300, g)
    for bt in (b1, b2):
        torch.testing.assert_close(bt.x, a.x[bt.extra["index"]])
        assert torch.equal(bt.extra["noisy"], a.noisy[bt.extra["index"]])
    other = AmbientData(d, **{**kw, "data_seed": 4})
    assert not torch.equal(other.x, a.x)
    drop = AmbientData(d, **kw, noisy_loss="drop")(200, torch.Generator().manual_seed(0))
    assert not bool(drop.extra["noisy"].any()) and bool((drop.extra["t_n"] == 0).all())


def test_balanced_sampler_pairs_times_with_eligible_examples():
    """Balanced: the times follow the base sampler; below t_noisy only clean examples, above
    it the whole set (so noisy examples appear at their population share)."""
    d = ToyDomain(dataset="gmm")
    data = AmbientData(d, clean_fraction=0.1, t_noisy=0.3, dataset_size=1000, time_sampler="uniform")
    b = data(20000, torch.Generator().manual_seed(0))
    t, nz = b.extra["t"], b.extra["noisy"]
    assert bool((t[nz] >= 0.3).all())
    frac_low = float((t < 0.3).double().mean())
    assert abs(frac_low - (0.3 - 1e-3) / (1 - 1e-3)) < 0.015  # U(t_eps, 1)
    assert abs(float(nz[t >= 0.3].double().mean()) - 0.9) < 0.015
    torch.testing.assert_close(b.x, data.x[b.extra["index"]])
    naive = AmbientData(d, clean_fraction=0.1, t_noisy=0.3, dataset_size=1000, time_sampler="uniform", noisy_loss="naive")
    bn = naive(5000, torch.Generator().manual_seed(0))
    assert bool(bn.extra["noisy"][bn.extra["t"] < 0.3].any())
    # the objective refuses a time below t_n for a noisy example
    bad = Batch(x=b.x[:4], extra={"t_n": torch.full((4,), 0.3, dtype=torch.float64), "t": torch.full((4,), 0.2, dtype=torch.float64)})
    net = d.build_backbone(**GMM_TINY)
    with pytest.raises(ValueError, match="below its noise level"):
        AmbientLoss(d.process())({"model": net}, bad, torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_resume_sees_the_same_corrupted_data(tmp_path):
    """3 steps + resume to 6 equals 6 steps in one go (the data set is rebuilt on resume)."""
    from workbench.runner import distill

    d = ToyDomain(dataset="gmm", teacher="exact")
    opts = {"backbone": GMM_TINY, "dataset_size": 300}
    tr = {"batch_size": 16, "progress": False, "ckpt_every": 1000}
    distill(d, method="ambient", out_dir=tmp_path / "a", train={**tr, "steps": 3}, method_options=opts)
    distill(d, method="ambient", out_dir=tmp_path / "a", train={**tr, "steps": 6}, method_options=opts)
    distill(d, method="ambient", out_dir=tmp_path / "b", train={**tr, "steps": 6}, method_options=opts)
    from workbench.checkpoint import load_weights

    wa, _ = load_weights(tmp_path / "a" / "generator.safetensors")
    wb, _ = load_weights(tmp_path / "b" / "generator.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Spy(torch.nn.Module):
    """Wraps a model and records (t, x_t, mask) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.prediction, self.calls = inner, inner.prediction, []

    def forward(self, x, t, *, mask=None, cond=None):
        self.calls.append((t.detach().double(), x.detach(), mask))
        return self.inner(x, t, mask=mask, cond=cond)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("sampler", ["uniform", "logit_normal", "edm"])
def test_noisy_examples_never_trained_below_t_n(sampler, balance):
    d, ctx = ctx_for("gmm")
    setup = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 400, "clean_fraction": 0.3, "t_noisy": 0.3,
                                          "time_sampler": sampler, "balance": balance})
    spy = Spy(setup.nets["model"])
    g = torch.Generator().manual_seed(0)
    below_clean = 0
    for _ in range(10):
        b = setup.data(256, g)
        with torch.no_grad():
            setup.objective({"model": spy}, b, g)
        t = spy.calls[-1][0]
        nz = b.extra["noisy"]
        assert bool((t[nz] >= 0.3).all()), f"noisy examples trained at t = {t[nz].min():.4g} < t_n = 0.3"
        assert bool((t > 0).all() and (t <= 1).all())
        below_clean += int((t[~nz] < 0.3).sum())
    assert below_clean > 0  # clean examples cover t < t_n
    # the truncated sampler: every draw lies above its lower bound
    lo = torch.linspace(0.0, 0.95, 200, dtype=torch.float64)
    tt = sample_time_above(lo, sampler, process=d.process(), generator=torch.Generator().manual_seed(1))
    assert bool((tt >= lo).all() and (tt <= 1).all())


def test_pointset_noise_is_projected():
    """Corrupted observations and the extra noise respect padding and zero centre of mass."""
    d, ctx = ctx_for("pointset")
    setup = setup_method("ambient", ctx, {"backbone": SET_TINY, "dataset_size": 300, "t_noisy": 0.4})
    p = d.process()
    data = setup.data
    assert data.mask is not None and int(data.noisy.sum()) == 270
    torch.testing.assert_close(p.project(data.x, data.mask), data.x, atol=1e-6, rtol=0)
    spy = Spy(setup.nets["model"])
    b = data(64, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = setup.objective({"model": spy}, b, torch.Generator().manual_seed(1))
    assert loss.shape == (64,) and bool(torch.isfinite(loss).all())
    _, x_t, mask = spy.calls[-1]
    m = mask[..., None]
    assert float(((1 - m) * x_t).abs().max()) == 0.0
    com = (x_t * m).sum(1) / m.sum(1)
    assert float(com.abs().max()) < 1e-5


@pytest.mark.parametrize("weighting", ["xtn", "x0"])
def test_recipe_conformance_gmm(weighting):
    d, ctx = ctx_for("gmm")
    setup = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 500, "ambient_weighting": weighting})
    assert set(setup.nets) == {"model"} and setup.trainable == ["model"] and setup.ema == ["model"]
    assert setup.spec["kind"] == "flow" and setup.spec["sampler"] == "dpm_solver_pp_3m" and setup.spec["timesteps"] is None
    assert setup.info["teacher_used_for_training"] is False
    out = check_recipe(setup, d, decrease_steps=60)
    assert out["loss_end"] < out["loss_start"]
    assert get_method("ambient").kind == "flow"


def test_recipe_conformance_pointset():
    # starts from the shipped point-set network (init="teacher") so that the generator's
    # samples stay O(1) after the fixed-batch training of the check
    d, ctx = ctx_for("pointset", teacher="mlp")
    setup = setup_method("ambient", ctx, {"init": "teacher", "dataset_size": 300})
    assert torch.equal(next(iter(setup.nets["model"].parameters())), next(iter(ctx.teacher.parameters())))
    # check_recipe compares the eval-mode generator with a rebuilt one left in train mode; in
    # eval mode torch's transformer "fast path" rounds differently (~2e-5 on O(10) samples),
    # so the round-trip comparison is made with the fast path off (same kernels both ways)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        out = check_recipe(setup, d, decrease_steps=60)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    assert out["loss_end"] < out["loss_start"]


def test_clean_only_and_all_clean_settings():
    d, ctx = ctx_for("gmm")
    drop = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 200, "noisy_loss": "drop"})
    assert not bool(drop.data(100, torch.Generator().manual_seed(0)).extra["noisy"].any())
    allc = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 200, "clean_fraction": 1.0})
    assert allc.data.n_clean == 200
    default = setup_method("ambient", ctx, {"backbone": GMM_TINY})  # toy: a fixed set of 10000 samples
    assert default.info["dataset_size"] == 10000 and default.info["n_clean"] == 1000
    # sigma_noisy picks t_n with sigma / alpha = sigma_noisy
    s = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 200, "sigma_noisy": 0.8})
    assert abs(s.info["sigma_noisy"] - 0.8) < 1e-6
    # naive: noisy observations are trained as clean data, also below t_n
    naive = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 200, "noisy_loss": "naive", "t_noisy": 0.5})
    spy = Spy(naive.nets["model"])
    b = naive.data(512, torch.Generator().manual_seed(0))
    with torch.no_grad():
        naive.objective({"model": spy}, b, torch.Generator().manual_seed(1))
    assert bool((spy.calls[-1][0][b.extra["noisy"]] < 0.5).any())


@pytest.mark.parametrize("opts,msg", [
    ({"clean_fraction": 0.0}, "clean_fraction must be in \\(0, 1\\]"),
    ({"clean_fraction": 1.5}, "clean_fraction must be in \\(0, 1\\]"),
    ({"t_noisy": 1.0}, "t_noisy must be in \\(0, 1\\)"),
    ({"t_noisy": 0.2, "sigma_noisy": 0.5}, "either t_noisy or sigma_noisy"),
    ({"sigma_noisy": -1.0}, "sigma_noisy must be a positive"),
    ({"noisy_loss": "x"}, "unknown noisy_loss 'x'; valid: ambient, drop, naive"),
    ({"weighting": "x"}, "unknown weighting 'x'; valid: epsilon, edm"),
    ({"ambient_weighting": "x"}, "unknown ambient_weighting 'x'; valid: xtn, x0"),
    ({"time_sampler": "x"}, "unknown time_sampler 'x'; valid: uniform"),
    ({"init": "x"}, "unknown init 'x'; valid: scratch, teacher"),
    ({"sampler": "x"}, "unknown sampler 'x'; valid: "),
    ({"dataset_size": 0}, "dataset_size must be a positive integer"),
    ({"dataset_size": 5, "clean_fraction": 0.01}, "leaves no clean example"),
    ({"backbone": 3}, "backbone must be a dict"),
    ({"max_factor": 0.5}, "max_factor >= 1"),
    ({"balance": "yes"}, "balance must be true or false"),
])
def test_bad_options_raise_one_line_errors(opts, msg):
    d, ctx = ctx_for("gmm")
    with pytest.raises(ValueError, match=msg) as ei:
        setup_method("ambient", ctx, {"backbone": GMM_TINY, **({"dataset_size": 100} if "dataset_size" not in opts else {}), **opts})
    assert "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="unknown option"):
        setup_method("ambient", ctx, {"clean_fracton": 0.1})


class DroppingWrapper:
    """A domain objective that wraps a ``base`` loss and rebuilds the batch WITHOUT ``extra``
    (as the images domain's label dropout): it replaces every label by -1."""

    def __init__(self, base):
        self.base = base

    def __call__(self, nets, batch, generator=None):
        return self.base(nets, Batch(x=batch.x, mask=batch.mask, cond=torch.full((len(batch),), -1)), generator)


def test_domain_objective_wrapper_keeps_ambient_extra():
    class WrappedToy(ToyDomain):
        def objective(self):
            return DroppingWrapper(super().objective())

    d = WrappedToy(dataset="gmm", teacher="exact")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher(), student_steps=2)
    setup = setup_method("ambient", ctx, {"backbone": GMM_TINY, "dataset_size": 400, "t_noisy": 0.4})
    seen = []

    class Rec(torch.nn.Module):
        prediction = "epsilon"

        def forward(self, x, t, *, mask=None, cond=None):
            seen.append((t.detach().double(), cond))
            return torch.zeros_like(x)

    b = setup.data(500, torch.Generator().manual_seed(0))
    loss = setup.objective({"model": Rec()}, b, torch.Generator().manual_seed(1))
    assert loss.shape == (500,) and bool(torch.isfinite(loss).all())
    t, cond = seen[-1]
    assert bool((cond == -1).all())  # the wrapper ran
    assert bool((t[b.extra["noisy"]] >= 0.4).all()) and bool((t[~b.extra["noisy"]] < 0.4).any())  # t_n survived it


@pytest.mark.slow
def test_images_label_dropout_keeps_ambient_extra():
    """On the images domain the ambient loss runs inside the domain's CFG label dropout."""
    from domains.images import ImagesDomain
    from domains.images.data import NULL_LABEL

    d = ImagesDomain()
    ctx = RecipeContext(domain=d, teacher=d.build_backbone(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8))
    setup = setup_method("ambient", ctx, {"backbone": dict(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8),
                                          "dataset_size": None, "t_noisy": 0.3})
    assert setup.info["dataset_size"] == len(d.train_data("train"))
    seen = []

    class Rec(torch.nn.Module):
        prediction = "epsilon"

        def forward(self, x, t, *, mask=None, cond=None):
            seen.append((t.detach().double(), cond.clone()))
            return torch.zeros_like(x)

    b = setup.data(1000, torch.Generator().manual_seed(0))
    loss = setup.objective({"model": Rec()}, b, torch.Generator().manual_seed(1))
    assert loss.shape == (1000,) and bool(torch.isfinite(loss).all())
    t, cond = seen[-1]
    assert bool((t[b.extra["noisy"]] >= 0.3).all())
    assert 0.05 < float((cond == NULL_LABEL).double().mean()) < 0.15
