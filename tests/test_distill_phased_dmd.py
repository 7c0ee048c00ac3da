"""Phased DMD: conformance, phase boundaries, expert selection, gradient routing per phase,
times inside each phase's subinterval, the unbiased subinterval score-matching target."""
import pytest
import torch

from workbench.distill import setup_method
from workbench.distill import phased_dmd as pd  # noqa: F401  (registers the recipe)
from workbench.distill.conformance import check_recipe
from workbench.distill.generators import ExpertsGenerator, t_of_init_sigma
from workbench.processes import VPCosine
from domains.toy.domain import ToyDomain
from distill_helpers import Recorder, perturb, toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_phased_dmd_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("phased_dmd", ctx, {"student": TINY[dataset]})
    assert [p[0] for p in setup.objective.phases] == ["fake", "generator"]
    assert setup.objective.phases[1][1] == ["expert_0", "expert_1"] and setup.objective.phases[0][1] == ["fake_0", "fake_1"]
    t0 = t_of_init_sigma(d.process(), 2.5)  # the generator starts where sigma / alpha = 2.5, as DMD2
    assert setup.spec["kind"] == "experts" and setup.spec["n"] == 2
    assert setup.spec["boundaries"] == pytest.approx([t0, t0 / 2, 0.0])
    # the generator phase is not a fixed-target regression; the fake phase must decrease
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30)


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


def test_each_expert_and_fake_gets_gradients_only_from_its_phase():
    d, ctx = ctx_for("gmm", steps=3)
    setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"]})
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
        setup = setup_method("phased_dmd", ctx, {"student": TINY["gmm"], "dm_range": dm_range, "t_max": 0.98, "init_sigma": None})
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
                                             "boundaries": "uniform_lambda"})
    obj = setup.objective
    a = obj.assign(8, torch.Generator().manual_seed(0))
    assert sorted(a.tolist()) == [0] * 6 + [1] * 2
    assert len({tuple(obj.assign(8, torch.Generator().manual_seed(i)).tolist()) for i in range(5)}) > 1  # random order
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    loss = obj(setup.nets, b, torch.Generator().manual_seed(0), phase="fake")
    assert loss.shape == (8,) and bool(torch.isfinite(loss).all())


def test_one_phase_is_dmd2():
    """K = 1: one expert on ``(0, t_max)`` is DMD2 (same grid, same losses in distribution)."""
    d, ctx = ctx_for("gmm", steps=1, teacher="exact")
    ref = setup_method("dmd2", ctx, {"student": TINY["gmm"]})
    ph = setup_method("phased_dmd", ctx, {"student": TINY["gmm"]})
    assert ph.objective.boundaries.tolist() == ref.objective.grid.tolist()
    nets = {"expert_0": ref.nets["student"], "fake_0": ref.nets["fake_score"], "teacher": ref.nets["teacher"]}
    b = d.train_data()(4096, torch.Generator().manual_seed(0))
    for phase in ("fake", "generator"):
        la = ref.objective(ref.nets, b, torch.Generator().manual_seed(1), phase=phase).detach()
        lb = ph.objective(nets, b, torch.Generator().manual_seed(2), phase=phase).detach()
        se = (la.var() / len(la) + lb.var() / len(lb)).sqrt()
        assert abs(float(la.mean() - lb.mean())) < 4 * float(se), (phase, float(la.mean()), float(lb.mean()), float(se))


def test_phased_dmd_bad_options():
    d, ctx = ctx_for("gmm")
    cases = [({"boundaries": "cosine"}, "unknown boundaries 'cosine'; valid: uniform_t, uniform_lambda"),
             ({"boundaries": [1.0, 0.0]}, "boundaries must be 3 decreasing times"),
             ({"init_sigma": -1.0}, "init_sigma must be positive"),
             ({"dm_range": "all"}, "unknown dm_range 'all'; valid: upper, phase"),
             ({"fake_target": "eps"}, "unknown fake_target 'eps'; valid: subinterval, x0"),
             ({"weight_clamp": 0.0}, "weight_clamp must be positive or None"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"phase_weights": [1.0]}, "phase_weights must be 2 non-negative numbers"),
             ({"phase_weights": [1.0, -1.0]}, "phase_weights must be 2 non-negative numbers"),
             ({"t_min": 0.9, "t_max": 0.1}, "t_min < t_max"),
             ({"t_max": 0.4, "init_sigma": None}, "phase 0 has an empty time range")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            setup_method("phased_dmd", ctx, opts)
