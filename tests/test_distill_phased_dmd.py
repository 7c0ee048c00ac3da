"""Phased DMD (Fan et al. 2025): conformance, phase boundaries, the paper's deterministic
transition (training and sampling), the sequential schedule with frozen finished experts,
expert selection, gradient routing, times inside each phase's subinterval, the unbiased
subinterval target (eq. 12) and the eq. 13 flow-velocity loss re-derived from the paper."""
import pytest
import torch
from torch import nn

from workbench.distill import setup_method
from workbench.distill import phased_dmd as pd  # noqa: F401  (registers the recipe)
from workbench.distill.base import student_x0
from workbench.distill.conformance import check_recipe
from workbench.distill.generators import ExpertsGenerator, start_state, t_of_init_sigma
from workbench.distill.recipes import RecipeContext
from workbench.processes import RectifiedFlow, VPCosine
from domains.toy.domain import ToyDomain
from distill_helpers import Recorder, perturb, toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


@pytest.mark.parametrize("dataset,steps,opts", [("gmm", 1, {}), ("gmm", 1, {"fake_loss": "own"}), ("gmm", 2, {"schedule": "joint"}),
                                                ("pointset", 2, {"schedule": "joint", "fake_loss": "own"})])
def test_phased_dmd_conformance(dataset, steps, opts):
    """The full contract (every expert reached in its phase) holds for K = 1 and for the joint
    schedule; the sequential schedule trains one expert at a time (tested below)."""
    d, ctx = ctx_for(dataset, steps=steps)
    setup = setup_method("phased_dmd", ctx, {"student": TINY[dataset], **opts})
    obj = setup.objective
    assert [p[0] for p in obj.phases] == ["fake", "generator"]
    assert obj.phases[1][1] == obj.experts and obj.phases[0][1] == obj.fakes and len(obj.experts) == steps
    t0 = t_of_init_sigma(d.process(), 2.5)  # the generator starts where sigma / alpha = 2.5, as DMD2
    assert setup.spec["kind"] == "experts" and setup.spec["n"] == steps and setup.spec["transition"] == "deterministic"
    assert setup.spec["boundaries"] == pytest.approx([t0 * (1 - j / steps) for j in range(steps + 1)])
    # the generator phase is not a fixed-target regression; the fake phase must decrease. Eq. 13's
    # flow-velocity loss weights the toy's epsilon fake by ((alpha + sigma) / alpha)^2 (up to 1.7e4
    # at t_max): a fixed 64-draw estimate of it is too noisy for a 30-step decrease check, so the
    # decrease is checked with the own-parameterisation loss
    dec = "fake" if opts.get("fake_loss") == "own" else None
    check_recipe(setup, d, decrease_phase=dec, decrease_steps=30, lr=1e-4)  # the recipe's learning rate


def test_defaults_are_the_papers():
    d = ToyDomain(dataset="gmm")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=2, train={"steps": 100})
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"]})
    obj = setup.objective
    assert (obj.transition, obj.schedule, obj.fake_loss_kind, obj.fake_target, obj.weight_clamp, obj.dm_range,
            obj.generator_every) == ("deterministic", "sequential", "flow", "subinterval", 10.0, "upper", 5)
    assert obj.phase_steps == 50  # train.steps / K
    clock = setup.nets["phase_clock"]
    assert isinstance(clock, pd.PhaseClock) and "step" in clock.state_dict() and not list(clock.parameters())
    assert "phase_clock" not in setup.trainable and setup.make_generator(setup.nets).transition == "deterministic"



def test_exported_spec_rebuilds_the_transition():
    """``build_generator`` reads the spec's transition; files written before the key existed
    (no ``transition``) were trained with re-noising and rebuild that way."""
    from workbench.distill.recipes import build_generator

    d = ToyDomain(dataset="gmm")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=2, train={"steps": 100})
    for opts, want in [({}, "deterministic"), ({"transition": "renoise"}, "renoise")]:
        spec = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], **opts}).spec
        assert spec["transition"] == want and build_generator(d, spec).transition == want
    old = {k: v for k, v in spec.items() if k not in ("transition", "class")}  # a header from before both keys
    assert build_generator(d, old).transition == "renoise"

def test_phase_boundaries():
    p = ToyDomain().process()
    assert torch.allclose(pd.phase_boundaries(p, 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    b = pd.phase_boundaries(p, 4, "uniform_lambda")
    assert float(b[0]) == 1.0 and float(b[-1]) == 0.0 and bool((b[1:] < b[:-1]).all())
    lam = p.lambda_(b[1:-1])
    lam_hi, lam_lo = p.lambda_(torch.tensor(1.0, dtype=torch.float64)), p.lambda_(torch.tensor(p.t_min, dtype=torch.float64))
    want = lam_hi + torch.arange(1, 4, dtype=torch.float64) / 4 * (lam_lo - lam_hi)
    assert torch.allclose(lam, want, atol=1e-6)  # equal log-SNR steps between lambda(1) and lambda(t_min)
    assert pd.phase_boundaries(p, 1).tolist() == [1.0, 0.0]
    assert torch.allclose(pd.phase_boundaries(p, 2, t_start=0.6), torch.tensor([0.6, 0.3, 0.0], dtype=torch.float64))
    bl = pd.phase_boundaries(p, 3, "uniform_lambda", t_start=0.6)
    assert float(bl[0]) == 0.6 and torch.allclose(p.lambda_(bl[1:-1]).diff(), (p.lambda_(bl[1:2]) - p.lambda_(bl[:1])).expand(1))
    assert pd.phase_boundaries(p, 2, [1.0, 0.3, 0.0]).tolist() == [1.0, 0.3, 0.0]
    with pytest.raises(ValueError, match="unknown boundaries 'log'; valid: uniform_t, uniform_lambda"):
        pd.phase_boundaries(p, 2, "log")
    with pytest.raises(ValueError, match="boundaries must be 3 decreasing times in \\[0, 1\\] ending at 0.0"):
        pd.phase_boundaries(p, 2, [1.0, 0.5, 0.2, 0.0])
    with pytest.raises(ValueError, match="t_start must be in \\(0, 1\\]"):
        pd.phase_boundaries(p, 2, t_start=0.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        pd.phase_boundaries(p, 2, [1.0, 1.0, 0.0])


def test_subinterval_targets_are_unbiased():
    """1-D Gaussian data: E[x0 | x_t] is linear in x_t, so least squares of the subinterval
    target on [1, x_t] must recover the exact posterior mean; the naive target x_s/alpha_s
    (what a biased objective would regress on) must not."""
    p = VPCosine()
    g = torch.Generator().manual_seed(0)
    n, m, v = 400_000, 0.7, 0.5**2
    s = torch.full((n,), 0.4, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    x0 = m + v**0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_s = p.add_noise(x0, s, torch.randn(n, 1, generator=g, dtype=torch.float64))
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_t = pd.subinterval_noise(p, x_s, s, t, eps)
    tgt, eps_t = pd.subinterval_targets(p, x_s, s, t, eps)
    a, sg = p.alpha(t[:1]), p.sigma(t[:1])
    assert torch.allclose(x_t, a * tgt + sg * eps_t, atol=1e-10)  # x_t = alpha_t x0* + sigma_t eps*
    # x_t has the marginal of x0 noised to t directly
    assert abs(float(x_t.var()) - float(a**2 * v + sg**2)) < 0.01
    gain = float(a * v / (a**2 * v + sg**2))
    exact = torch.tensor([m - gain * float(a) * m, gain], dtype=torch.float64)  # E[x0|x_t] = c0 + c1 x_t
    A = torch.cat([torch.ones(n, 1, dtype=torch.float64), x_t], 1)
    fit = torch.linalg.lstsq(A, tgt).solution.flatten()
    assert torch.allclose(fit, exact, atol=0.01), (fit, exact)
    naive = torch.linalg.lstsq(A, x_s / p.alpha(s[:1])).solution.flatten()
    assert (naive - exact).abs().max() > 0.1
    # s = 0: the usual denoising targets
    z = torch.zeros(4, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    e = torch.randn(4, 1, dtype=torch.float64)
    x0b, eb = pd.subinterval_targets(p, y, z, torch.full((4,), 0.5, dtype=torch.float64), e)
    assert torch.allclose(x0b, y) and torch.allclose(eb, e)


def _ddim(p, x, x0, t, tn):
    """The deterministic step re-derived: alpha_n x0 + sigma_n (x - alpha_t x0) / sigma_t."""
    t = torch.full((x.shape[0],), float(t), dtype=torch.float64)
    tn = torch.full((x.shape[0],), float(tn), dtype=torch.float64)
    a, s, an, sn = (v[:, None].to(x.dtype) for v in (p.alpha(t), p.sigma(t), p.alpha(tn), p.sigma(tn)))
    return an * x0 + sn * (x - a * x0) / s


def test_deterministic_transition_in_training_and_sampling():
    """Backward simulation, the phase output and the exported generator all use the paper's
    deterministic (DDIM / Euler) transition: re-derived by hand from the experts' outputs; the
    sample does not depend on the sampling RNG. ``transition="renoise"`` does."""
    d, ctx = ctx_for("gmm", steps=3)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "schedule": "joint"})
    obj, nets, p = setup.objective, setup.nets, d.process()
    for k, e in enumerate(obj.experts):
        perturb(nets[e], seed=10 + k)
    b = obj.boundaries
    batch = d.train_data()(6, torch.Generator().manual_seed(0))
    x0_2, x_s, s = obj.phase_output(nets, batch, 2, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same first draw: the start noise
    z = torch.randn(batch.x.shape, generator=g, dtype=batch.x.dtype)
    x = start_state(p, z * p.prior_std(), float(b[0]))
    with torch.no_grad():
        for k in range(3):
            x0 = student_x0(nets[obj.experts[k]], p, x, torch.full((6,), float(b[k]), dtype=torch.float64))
            if k < 2:
                x = _ddim(p, x, x0, b[k], b[k + 1])
    assert torch.allclose(x0_2, x0, atol=1e-5) and torch.equal(x_s, x0_2) and float(s[0]) == 0.0
    x0_0, x_s0, s0 = obj.phase_output(nets, batch, 0, torch.Generator().manual_seed(1))
    x_start = start_state(p, z * p.prior_std(), float(b[0]))
    assert torch.allclose(x_s0, _ddim(p, x_start, x0_0, b[0], b[1]), atol=1e-5) and float(s0[0]) == float(b[1])
    gen = setup.make_generator(nets).eval()
    x_T = d.generation_batch(64, generator=torch.Generator().manual_seed(5)).x_T
    with torch.no_grad():
        a1 = gen.generate(x_T, 3, generator=torch.Generator().manual_seed(0))
        a2 = gen.generate(x_T, 3, generator=torch.Generator().manual_seed(1))
        x = start_state(p, x_T, float(b[0]))
        for k in range(3):
            x0 = gen.experts[k](x, float(b[k]))
            x = _ddim(p, x, x0, b[k], b[k + 1]) if k < 2 else x0
    assert torch.equal(a1, a2) and torch.allclose(a1, x, atol=1e-5)
    renoise = ExpertsGenerator(gen.experts, p, b, transition="renoise")
    with torch.no_grad():
        r1 = renoise.generate(x_T, 3, generator=torch.Generator().manual_seed(0))
        r2 = renoise.generate(x_T, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(r1, r2)
    with pytest.raises(ValueError, match="unknown transition 'sde'; valid: deterministic, renoise"):
        ExpertsGenerator(gen.experts, p, b, transition="sde")


class VelocityX0(nn.Module):
    """An x0 model from a velocity field in the linear view: ``x0 = z - u v(z, u)`` scaled back,
    so the flow velocity of its prediction is exactly ``v``."""

    def __init__(self, process, v):
        super().__init__()
        self.process, self.v, self.prediction = process, v, "x0"

    def forward(self, x, t, mask=None, cond=None):
        t = t.to(torch.float64)
        a, s = self.process.alpha(t), self.process.sigma(t)
        z, u = x / (a + s)[:, None], (s / (a + s))[:, None]
        return z - u * self.v(z, u)


@pytest.mark.parametrize("process", [RectifiedFlow(), VPCosine()])
def test_flow_velocity_loss_is_eq13(process):
    """Eq. 13 re-derived for a rectified flow (alpha = 1 - t, sigma = t) in its own time; any
    other process is mapped to its linear view ``z = x / (alpha + sigma)``,
    ``u = sigma / (alpha + sigma)``, where it is a rectified flow:
    ``clamp(1 / sigma_{u|u_s}^2, 0, 10) sigma_{u|u_s}^2 ||v_F - v*||^2`` with
    ``v* = (a_s^2 sig_u + a_u sig_s^2) / (a_s^2 sigma_{u|u_s}) eps - z_s / a_s`` (rectified-flow
    coefficients of ``u_s``, ``u``)."""
    g = torch.Generator().manual_seed(0)
    B = 256
    W = torch.randn(2, 2, generator=g, dtype=torch.float64)
    fake = VelocityX0(process, lambda z, u: torch.tanh(z @ W) + u * torch.tensor([0.3, -0.7], dtype=torch.float64))
    s = 0.05 + 0.5 * torch.rand(B, generator=g, dtype=torch.float64)
    t = s + (0.98 - s) * torch.rand(B, generator=g, dtype=torch.float64)
    t[:32] = s[:32] + 1e-3  # sigma_{t|s} small: the clamp is active
    x_s = torch.randn(B, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 2, generator=g, dtype=torch.float64)
    for clamp in (10.0, None):
        got = pd.flow_velocity_loss(process, fake, x_s, s, t, eps, weight_clamp=clamp)
        a_s, s_s, a_t, s_t = process.alpha(s), process.sigma(s), process.alpha(t), process.sigma(t)
        us, ut = s_s / (a_s + s_s), s_t / (a_t + s_t)  # linear-view times (= s, t for the rectified flow)
        zs = x_s / (a_s + s_s)[:, None]
        A_s, S_s, A_t, S_t = 1 - us, us, 1 - ut, ut  # rectified-flow coefficients
        sig = (S_t**2 - (A_t / A_s) ** 2 * S_s**2).sqrt()
        z_t = (A_t / A_s)[:, None] * zs + sig[:, None] * eps
        v_star = ((A_s**2 * S_t + A_t * S_s**2) / (A_s**2 * sig))[:, None] * eps - zs / A_s[:, None]
        v_f = fake.v(z_t, ut[:, None])
        w = (1 / sig**2).clamp(0, 10) * sig**2 if clamp else torch.ones_like(sig)
        want = w * ((v_f - v_star) ** 2).mean(1)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), float((got - want).abs().max())
    w10 = (1 / sig**2).clamp(0, 10) * sig**2
    assert float(w10[:32].max()) < 0.05 and float(w10.max()) == 1.0 and bool((w10 > 0).all())  # the clamp is active


def test_expert_selection_and_backward_simulation():
    d, ctx = ctx_for("gmm", steps=3)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"]})
    obj = setup.objective
    rec = {n: Recorder(setup.nets[n]) for n in obj.experts}
    nets = {**setup.nets, **rec}
    b = d.train_data()(6, torch.Generator().manual_seed(0))
    for k in range(3):
        for r in rec.values():
            r.calls.clear()
        x0, x_s, s = obj.phase_output(nets, b, k, torch.Generator().manual_seed(1))
        for j in range(3):  # experts 0..k-1 simulate, expert k predicts, later experts are unused
            want = [float(obj.boundaries[j])] if j <= k else []
            assert [float(c[0]) for c in rec[f"expert_{j}"].calls] == pytest.approx(want, rel=1e-6)
        assert torch.allclose(s, obj.boundaries[k + 1].expand(6))
    # the exported ExpertsGenerator calls expert k at step k of its own grid
    gen = setup.make_generator(setup.nets)
    assert isinstance(gen, ExpertsGenerator) and gen.boundaries.tolist() == obj.boundaries.tolist()
    seen = []
    hooks = [e.register_forward_pre_hook(lambda m, a, kw=None, k=k: seen.append((k, float(torch.as_tensor(a[1]))))) for k, e in
             enumerate(gen.experts)]
    with torch.no_grad():
        gen.generate(d.generation_batch(5).x_T, 3, generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert [k for k, _ in seen] == [0, 1, 2]
    assert [t for _, t in seen] == pytest.approx(obj.boundaries[:3].tolist())


def test_joint_schedule_each_expert_and_fake_gets_gradients_only_from_its_phase():
    d, ctx = ctx_for("gmm", steps=3)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "schedule": "joint"})
    obj, nets = setup.objective, setup.nets
    for k in range(3):  # fakes != teacher, so the DMD gradients are not exactly zero
        perturb(nets[f"fake_{k}"], seed=k)
    b = d.train_data()(12, torch.Generator().manual_seed(0))
    which = obj.assign(12, torch.Generator().manual_seed(5))  # the first draw of the objective call
    assert sorted(which.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    for phase, own in (("generator", obj.experts), ("fake", obj.fakes)):
        loss = obj(nets, b, torch.Generator().manual_seed(5), phase=phase)
        assert loss.shape == (12,) and bool(torch.isfinite(loss).all())
        for k in range(3):
            for m in nets.values():
                m.zero_grad(set_to_none=True)
            loss[which == k].sum().backward(retain_graph=True)
            for n, m in nets.items():
                g = sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)
                if n == own[k]:
                    assert g > 0, f"{phase}: {n} gets no gradient from its phase"
                else:
                    assert g == 0, f"{phase}: phase {k} leaks a gradient into {n}"


def test_times_stay_inside_each_phase_subinterval():
    d, ctx = ctx_for("gmm", steps=2)
    for dm_range, hi0 in (("upper", 0.98), ("phase", 0.98)):
        setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "dm_range": dm_range, "t_max": 0.98, "init_sigma": None,
                                                 "schedule": "joint"})
        obj = setup.objective
        assert obj.ranges == [(0.5, hi0), (0.02, 0.98 if dm_range == "upper" else 0.5)]
        teacher, fakes = Recorder(setup.nets["teacher"]), [Recorder(setup.nets[f]) for f in obj.fakes]
        nets = {**setup.nets, "teacher": teacher, **dict(zip(obj.fakes, fakes))}
        b = d.train_data()(64, torch.Generator().manual_seed(0))
        obj(nets, b, torch.Generator().manual_seed(1), phase="generator")  # teacher called per phase, k = 0 then 1
        assert len(teacher.calls) == 2
        for k, ts in enumerate(teacher.calls):
            lo, hi = obj.ranges[k]
            assert float(ts.min()) >= lo and float(ts.max()) <= hi
        for f in fakes:
            f.calls.clear()
        obj(nets, b, torch.Generator().manual_seed(2), phase="fake")
        for k, f in enumerate(fakes):
            lo, hi = obj.ranges[k]
            assert len(f.calls) == 1 and float(f.calls[0].min()) >= lo and float(f.calls[0].max()) <= hi


def test_assign_shares_and_fake_target_x0():
    d, ctx = ctx_for("gmm", steps=2)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "phase_weights": [3, 1], "fake_target": "x0",
                                             "transition": "renoise", "schedule": "joint", "boundaries": "uniform_lambda"})
    obj = setup.objective
    a = obj.assign(8, torch.Generator().manual_seed(0))
    assert sorted(a.tolist()) == [0] * 6 + [1] * 2
    assert len({tuple(obj.assign(8, torch.Generator().manual_seed(i)).tolist()) for i in range(5)}) > 1  # random order
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    loss = obj(setup.nets, b, torch.Generator().manual_seed(0), phase="fake")
    assert loss.shape == (8,) and bool(torch.isfinite(loss).all())


def test_one_phase_is_dmd2():
    """K = 1: one expert on ``(0, t_max)`` is DMD2 (same grid, same losses in distribution;
    the fake score in DMD2's own-parameterisation loss)."""
    d, ctx = ctx_for("gmm", steps=1, teacher="exact")
    ref = setup_method("dmd2", ctx, {"student": TINY["gmm"]})
    ph = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "fake_loss": "own"})
    assert ph.objective.boundaries.tolist() == ref.objective.grid.tolist()
    nets = {"expert_0": ref.nets["student"], "fake_0": ref.nets["fake_score"], "teacher": ref.nets["teacher"]}
    b = d.train_data()(4096, torch.Generator().manual_seed(0))
    for phase in ("fake", "generator"):
        la = ref.objective(ref.nets, b, torch.Generator().manual_seed(1), phase=phase).detach()
        lb = ph.objective(nets, b, torch.Generator().manual_seed(2), phase=phase).detach()
        se = (la.var() / len(la) + lb.var() / len(lb)).sqrt()
        assert abs(float(la.mean() - lb.mean())) < 4 * float(se), (phase, float(la.mean()), float(lb.mean()), float(se))


def test_sequential_schedule_trains_one_phase_at_a_time():
    """Phase k = min(step // phase_steps, K - 1) with the step counted by the fake phase: only
    E_k and F_k get gradients (the whole batch), finished experts only simulate."""
    d, ctx = ctx_for("gmm", steps=3)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "phase_steps": 2})
    obj, nets = setup.objective, setup.nets
    for k in range(3):
        perturb(nets[f"fake_{k}"], seed=k)
    clock = nets["phase_clock"]
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    seen = []
    for step in range(7):  # the shared loop: fake every step, then generator
        for phase, own in (("fake", obj.fakes), ("generator", obj.experts)):
            for m in nets.values():
                m.zero_grad(set_to_none=True)
            loss = obj(nets, b, torch.Generator().manual_seed(step), phase=phase)
            assert loss.shape == (8,) and bool(torch.isfinite(loss).all())
            loss.mean().backward()
            got = [n for n, m in nets.items() if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters())]
            k = min(step // 2, 2)
            assert got == [own[k]], (step, phase, got)
        seen.append(obj.stage(nets))
        assert int(clock.step) == step + 1
    assert seen == [0, 0, 1, 1, 2, 2, 2]
    rec = Recorder(nets["expert_0"])  # in phase 2 the finished experts 0 and 1 simulate
    obj(dict(nets, expert_0=rec), b, torch.Generator().manual_seed(0), phase="generator")
    assert [float(c[0]) for c in rec.calls] == pytest.approx([float(obj.boundaries[0])])
    with pytest.raises(ValueError, match="needs nets\\['phase_clock'\\]"):
        obj({k: v for k, v in nets.items() if k != "phase_clock"}, b, None, phase="generator")


def test_generator_gradient_on_the_transition_output():
    """The DM gradient acts on ``y = x_s / alpha_s``: ``d loss / d x0_k = c g / D`` with
    ``g = (mu_fake - mu_real) / mean|x0_k - mu_real|`` at the same ``x_t`` and ``c = d y / d x0_k =
    (alpha_s - sigma_s alpha_b / sigma_b) / alpha_s`` for the deterministic transition, ``1`` for
    re-noising."""
    d, ctx = ctx_for("gmm", steps=2)
    p = d.process()
    for transition in ("deterministic", "renoise"):
        setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "transition": transition, "schedule": "joint"})
        obj, nets = setup.objective, setup.nets
        perturb(nets["fake_0"], seed=3)
        B = 16
        x_b = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
        x0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        x_s = obj.step_to(x_b, x0, 0, None, torch.Generator().manual_seed(2))
        s = obj.boundaries[1].expand(B)
        loss = obj.generator_loss(nets, x0, x_s, s, 0, None, None, torch.Generator().manual_seed(4))
        loss.sum().backward()
        g4 = torch.Generator().manual_seed(4)  # the same draws: t, then eps
        lo, hi = obj.ranges[0]
        t = lo + (hi - lo) * torch.rand(B, generator=g4, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=g4)
        a_s, s_s, a_t, s_t = p.alpha(s), p.sigma(s), p.alpha(t), p.sigma(t)
        sts = (s_t**2 - (a_t / a_s) ** 2 * s_s**2).sqrt()
        x_t = ((a_t / a_s)[:, None] * x_s.detach() + sts[:, None] * eps).float()
        mu_r = student_x0(nets["teacher"], p, x_t, t)
        mu_f = student_x0(nets["fake_0"], p, x_t, t)
        with torch.no_grad():
            gdir = (mu_f - mu_r) / (x0 - mu_r).abs().mean(1, keepdim=True)
        bb = obj.boundaries[0]
        c = (a_s - s_s * p.alpha(bb) / p.sigma(bb)) / a_s if transition == "deterministic" else torch.ones_like(a_s)
        want = c[:, None].float() * gdir / 2
        assert torch.allclose(x0.grad, want, rtol=1e-4, atol=1e-6), float((x0.grad - want).abs().max())


def test_phased_dmd_bad_options():
    d, ctx = ctx_for("gmm")
    cases = [({"boundaries": "cosine"}, "unknown boundaries 'cosine'; valid: uniform_t, uniform_lambda"),
             ({"boundaries": [1.0, 0.0]}, "boundaries must be 3 decreasing times"),
             ({"init_sigma": -1.0}, "init_sigma must be positive"),
             ({"dm_range": "all"}, "unknown dm_range 'all'; valid: upper, phase"),
             ({"fake_target": "eps"}, "unknown fake_target 'eps'; valid: subinterval, x0"),
             ({"fake_target": "x0"}, "fake_target='x0' is valid only with transition='renoise'"),
             ({"transition": "sde"}, "unknown transition 'sde'; valid: deterministic, renoise"),
             ({"schedule": "staged"}, "unknown schedule 'staged'; valid: sequential, joint"),
             ({"fake_loss": "eps"}, "unknown fake_loss 'eps'; valid: flow, own"),
             ({"phase_steps": 0}, "phase_steps must be a positive integer or None"),
             ({"weight_clamp": 0.0}, "weight_clamp must be positive or None"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"phase_weights": [1.0]}, "phase_weights must be 2 non-negative numbers"),
             ({"phase_weights": [1.0, -1.0]}, "phase_weights must be 2 non-negative numbers"),
             ({"t_min": 0.9, "t_max": 0.1}, "t_min < t_max"),
             ({"t_max": 0.4, "init_sigma": None}, "phase 0 has an empty time range")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            setup_method("phased_dmd", ctx, opts)
