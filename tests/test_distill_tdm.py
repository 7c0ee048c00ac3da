"""TDM (trajectory distribution matching): conformance, the exact forward diffusion of the
student's intermediate states, the steps-aware time intervals, the DDIM trajectory and the
exported generator, the losses and option errors."""
import pytest
import torch

import workbench.distill.tdm  # noqa: F401  (registers "tdm")
from domains.toy.domain import ToyDomain
from workbench.distill import setup_method
from workbench.distill.conformance import check_recipe
from workbench.distill.recipes import build_generator
from workbench.distill.tdm import TDM, ddim_trajectory, diffuse, student_x0_eps
from workbench.processes import VPCosine
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

SMALL = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_tdm_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("tdm", ctx, {"student": SMALL[dataset]})
    assert [p[0] for p in setup.objective.phases] == ["fake", "generator"]
    assert setup.spec["kind"] == "flow" and setup.spec["sampler"] == "euler"
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=25)


def test_diffuse_maps_teacher_marginals_to_teacher_marginals():
    """If the intermediate state is distributed as the teacher's marginal at t_m
    (x_m = a_m x0 + s_m eps, eps independent), the diffused state has the marginal at t:
    mean a_t m, variance a_t^2 v + s_t^2; the mixed noise is then standard normal, and at
    t_m = 0 it is the fresh noise itself."""
    p = VPCosine()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = 1.5 + 0.4 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps, noise = torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)
    t_m, t = torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), 0.6, dtype=torch.float64)
    x_t, m = diffuse(p, x0, eps, t_m, t, noise)
    a, s = float(p.alpha(t[:1])), float(p.sigma(t[:1]))
    assert abs(float(x_t.mean()) - a * 1.5) < 0.01
    assert abs(float(x_t.var()) - (a * a * 0.16 + s * s)) < 0.01
    assert abs(float(m.std()) - 1.0) < 0.01 and torch.allclose(x_t, a * x0 + s * m)
    x_t0, m0 = diffuse(p, x0, eps, torch.zeros(n, dtype=torch.float64), t, noise)
    assert torch.allclose(m0, noise) and torch.allclose(x_t0, a * x0 + s * noise)


def test_tdm_times_are_steps_aware():
    """separate=True: step k is diffused only inside its own interval [t_{k+1}, t_k] from the
    intermediate time t_{k+1}; rand_mid moves t_m inside [t_{k+1}, t_k); separate=False
    diffuses up to the top of the grid (capped at t_max)."""
    p = ToyDomain(dataset="gmm").process()
    grid = torch.linspace(1.0, 0.0, 5, dtype=torch.float64)
    k = torch.arange(4).repeat_interleave(500)
    t_k, t_m, t = TDM(p, grid).times(k, torch.Generator().manual_seed(0))
    lo = torch.clamp(grid[k + 1], min=0.02)
    assert torch.equal(t_k, grid[k]) and torch.equal(t_m, grid[k + 1])
    assert bool((t >= lo).all()) and bool((t <= torch.clamp(grid[k], max=0.98)).all())
    for j in range(4):  # each interval is covered
        tj = t[k == j]
        assert float(tj.max() - tj.min()) > 0.8 * (min(float(grid[j]), 0.98) - max(float(grid[j + 1]), 0.02))
    _, t_m, t = TDM(p, grid, rand_mid=True).times(k, torch.Generator().manual_seed(0))
    assert bool((t_m >= grid[k + 1]).all()) and bool((t_m < grid[k]).all()) and bool((t >= torch.clamp(t_m, min=0.02)).all())
    _, _, t = TDM(p, grid, separate=False).times(k, torch.Generator().manual_seed(0))
    assert float(t[k == 3].max()) > 0.5 and float(t.max()) <= 0.98


def test_tdm_trajectory_matches_the_exported_generator():
    """Training inputs x_{t_k} are the student's own deterministic DDIM states, and the exported
    flow generator (euler on the grid, also rebuilt from the spec) runs the same trajectory."""
    d, ctx = ctx_for("pointset", steps=3)
    setup = setup_method("tdm", ctx, {"student": SMALL["pointset"]})
    obj, st = setup.objective, setup.nets["student"]
    gb = d.generation_batch(4, generator=torch.Generator().manual_seed(0))
    p = d.process()
    states = ddim_trajectory(st, p, obj.grid, gb.x_T, 3, mask=gb.mask)
    with torch.no_grad():
        x = gb.x_T
        for j in range(3):  # DDIM by hand with the student's (x0, eps)
            tj = obj.grid[j].expand(4)
            x0, eps = student_x0_eps(st, p, x, tj, mask=gb.mask)
            assert torch.allclose(states[j], x, atol=1e-6)
            if j < 2:
                x = p.project(float(p.alpha(obj.grid[j + 1])) * x0 + float(p.sigma(obj.grid[j + 1])) * eps, gb.mask)
        gen = setup.make_generator(setup.nets).eval()
        re = build_generator(d, setup.spec)
        re.load_state_dict(gen.state_dict())
        out = re.generate(gb.x_T, 3, mask=gb.mask)
    assert torch.allclose(out, x0, atol=1e-5)
    assert gen.nfe(3) == 3


def test_tdm_last_step_is_dmd_and_importance_weight_is_one():
    """At the last step (t_m = t_K = 0) the diffused sample is alpha_t x0_g + sigma_t n with the
    fresh noise n (mixed noise = n), so the importance weight is exactly 1."""
    d, ctx = ctx_for("gmm", steps=2)
    setup = setup_method("tdm", ctx, {"student": SMALL["gmm"]})
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        smp = setup.objective.sample(setup.nets, b, torch.Generator().manual_seed(1), step=1)
    p = d.process()
    assert torch.allclose(smp.mixed, smp.noise) and torch.allclose(smp.x_t, p.add_noise(smp.x0_g, smp.t, smp.noise), atol=1e-6)
    assert bool((smp.t <= setup.objective.grid[1]).all()) and float(smp.t_m.abs().max()) == 0.0
    # a fake net predicting x0_g exactly has zero loss; the min-SNR weight is min(snr, 5)
    oracle = lambda x, t, **kw: smp.x0_g  # noqa: E731
    oracle.prediction = "x0"
    obj = TDM(p, setup.objective.grid)
    assert float(obj.fake_loss(oracle, smp).abs().max()) < 1e-10
    off = lambda x, t, **kw: smp.x0_g + 0.1  # noqa: E731
    off.prediction = "x0"
    snr = (p.alpha(smp.t) / p.sigma(smp.t)) ** 2
    expect = 0.01 * snr.clamp(max=5.0)
    assert torch.allclose(obj.fake_loss(off, smp), expect.float(), rtol=1e-4)
    assert torch.allclose(TDM(p, setup.objective.grid, fake_weight="uniform").fake_loss(off, smp), torch.full((8,), 0.01), rtol=1e-4)


def test_tdm_generator_gradient_vanishes_when_fake_equals_teacher():
    d, ctx = ctx_for("gmm", steps=2)
    setup = setup_method("tdm", ctx, {"student": SMALL["gmm"]})
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    setup.objective(setup.nets, b, torch.Generator().manual_seed(1), phase="generator").sum().backward()
    assert max(float(p.grad.abs().max()) for p in setup.nets["student"].parameters()) == 0.0


def test_tdm_huber_loss_is_a_sign_update():
    """The pseudo-Huber loss with a small c moves x0_g by sign(mu_fake - mu_real) / w per
    element (the authors' default), unlike the l2 loss (proportional to the difference)."""
    p = VPCosine()

    class Const(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v, self.prediction = v, "x0"

        def forward(self, x, t, **kw):
            return torch.full_like(x, self.v)

    grid = torch.tensor([1.0, 0.0], dtype=torch.float64)
    st = torch.nn.Linear(2, 2)
    student = lambda x, t, **kw: st(x)  # noqa: E731
    student.prediction = "x0"
    from workbench.losses import Batch

    b = Batch(x=torch.zeros(16, 2))
    nets = {"student": student, "teacher": Const(1.0), "fake_score": Const(-2.0)}
    out = {}
    for loss in ("l2", "huber"):
        obj = TDM(p, grid, loss=loss)
        val = obj(nets, b, torch.Generator().manual_seed(0))
        x0_g = obj.sample(nets, b, torch.Generator().manual_seed(0)).x0_g
        w = (x0_g - 1.0).abs().mean(1)
        out[loss] = (val.detach(), w.detach())
    l2, w = out["l2"]
    hub, _ = out["huber"]
    assert torch.allclose(l2, 0.5 * 9.0 / w**2, rtol=1e-5)  # 0.5 * mean((mu_f - mu_r) / w)^2
    assert torch.allclose(hub, (torch.sqrt(torch.tensor(9.0 + 1e-6)) - 1e-3) / w, rtol=1e-5)


def test_tdm_bad_options():
    d, ctx = ctx_for("gmm")
    with pytest.raises(ValueError, match="unknown fake_weight 'snr'; valid: min_snr, uniform"):
        setup_method("tdm", ctx, {"fake_weight": "snr"})
    with pytest.raises(ValueError, match="unknown loss 'l1'; valid: l2, huber"):
        setup_method("tdm", ctx, {"loss": "l1"})
    with pytest.raises(ValueError, match="t_floor < t_max"):
        setup_method("tdm", ctx, {"t_floor": 0.5, "t_max": 0.4})
    with pytest.raises(ValueError, match="snr_clip must be > 0"):
        setup_method("tdm", ctx, {"snr_clip": 0.0})
    with pytest.raises(ValueError, match="generator_every must be a positive integer"):
        setup_method("tdm", ctx, {"generator_every": 0})
    with pytest.raises(ValueError, match="init_sigma must be positive"):
        setup_method("tdm", ctx, {"init_sigma": 0.0})
    setup = setup_method("tdm", ctx, {"student": SMALL["gmm"]})
    with pytest.raises(ValueError, match="step must be in 0..1"):
        setup.objective.sample(setup.nets, d.train_data()(2, torch.Generator().manual_seed(0)), None, step=2)
    with pytest.raises(ValueError, match="unknown phase 'gen'; valid: fake, generator"):
        setup.objective(setup.nets, d.train_data()(2, torch.Generator().manual_seed(0)), None, phase="gen")
