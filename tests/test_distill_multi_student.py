"""Multi-student distillation (Song et al. 2024): conformance on the toy domains, routing
(deterministic, equal mass under the prior, the same in training and sampling), per-student
gradients, re-noised couplings against a fine teacher solve, option errors, and a tiny
class-conditional images run."""
import math

import pytest
import torch

from workbench.distill.conformance import check_recipe
from workbench.distill.generators import MultiStudentGenerator, route_by_noise
from workbench.distill.multi_student import (MultiStudentRegression, build_renoised_couplings, route_samples,
                                             student_name)
from workbench.distill.pairs import build_teacher_pairs
from workbench.distill.recipes import RecipeContext, setup_method
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}
SMALL = dict(pool=96, teacher_steps=4, renoise_per_pair=2)


def setup(dataset="gmm", **opts):
    d, ctx = ctx_for(dataset)
    return d, setup_method("multi_student", ctx, {"backbone": TINY[dataset], **SMALL, **opts})


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_multi_student_conformance(dataset):
    d, s = setup(dataset, n_students=2, router="noise")
    assert s.spec["kind"] == "multi_student" and s.spec["inner"]["kind"] == "consistency"
    assert s.trainable == ["student_0", "student_1"] and sum(s.info["pairs_per_student"]) == SMALL["pool"]
    out = check_recipe(s, d, batch_size=16, decrease_steps=40)
    assert out["loss_end"] < out["loss_start"]


def test_noise_routing_equal_mass_and_deterministic():
    g = torch.Generator().manual_seed(0)
    for shape, n in (((40000, 2), 4), ((30000, 1, 8, 8), 3)):
        x = torch.randn(*shape, generator=g)
        r = route_by_noise(x, n)
        counts = torch.bincount(r, minlength=n).double()
        expected = shape[0] / n
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # chi-square with n - 1 dof: 99.9 % quantiles 16.27 (3 dof), 13.82 (2 dof)
        assert chi2 < {4: 16.27, 3: 13.82}[n], (counts, chi2)
        # deterministic and per-sample: the same noise alone, permuted or repeated gets the same route
        assert torch.equal(route_by_noise(x, n), r)
        perm = torch.randperm(shape[0], generator=g)[:500]
        assert torch.equal(route_by_noise(x[perm], n), r[perm])
        assert all(int(route_by_noise(x[i:i + 1], n)) == int(r[i]) for i in range(20))
    # the training routes are the sampling routes
    x = torch.randn(64, 2, generator=g)
    gen = MultiStudentGenerator(torch.nn.ModuleList([torch.nn.Identity()] * 3), router="noise")
    assert torch.equal(route_samples("noise", 3, x), gen.route(x))
    y = torch.arange(64) % 10
    gen_c = MultiStudentGenerator(torch.nn.ModuleList([torch.nn.Identity()] * 3), router="cond")
    assert torch.equal(route_samples("cond", 3, x, y), gen_c.route(x, y)) and torch.equal(gen_c.route(x, y), y % 3)


def test_pool_partition_matches_generator_routes():
    d, s = setup("gmm", n_students=3)
    pool = s.data.pool
    gen = s.make_generator(s.nets)
    assert torch.equal(s.data.routes, gen.route(pool.noise))
    b = s.data(13, torch.Generator().manual_seed(1))
    counts = torch.bincount(s.objective.route(b), minlength=3)
    assert counts.min() >= 13 // 3 and counts.sum() == 13  # stratified batches


def test_each_student_gets_gradients_only_from_its_partition():
    d, s = setup("gmm", n_students=3)
    obj, nets = s.objective, s.nets
    b = s.data(12, torch.Generator().manual_seed(2))
    route = obj.route(b)
    for k in range(3):
        for own in (True, False):
            for m in nets.values():
                m.zero_grad(set_to_none=True)
            loss = obj(nets, b, torch.Generator().manual_seed(3))
            (loss[route == k] if own else loss[route != k]).sum().backward()
            for j in range(3):
                grads = [p.grad for p in nets[student_name(j)].parameters() if p.grad is not None]
                has = any(bool(gr.abs().sum() > 0) for gr in grads)
                # own samples: only student k; the other samples: every student but k
                assert has == ((j == k) if own else (j != k)), (k, own, j)


def test_generator_uses_only_the_routed_student():
    d, s = setup("gmm", n_students=2)
    gen = s.make_generator(s.nets).eval()
    gb = d.generation_batch(64, generator=torch.Generator().manual_seed(5))
    r = gen.route(gb.x_T)
    with torch.no_grad():
        a = gen.generate(gb.x_T, 2, generator=torch.Generator().manual_seed(6))
        for p in s.nets["student_1"].parameters():
            p.add_(0.5)
        b = gen.generate(gb.x_T, 2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[r == 0], b[r == 0]) and not torch.allclose(a[r == 1], b[r == 1])


def test_renoised_couplings_are_teacher_ode_solutions():
    """Ground truth: with the exact GMM teacher each re-noised state's target is the ODE
    solution from it (checked against a 200-step solve), and the state is alpha y + sigma eps."""
    from workbench.api import run_sampler
    from workbench.timegrids import uniform_t

    d, ctx = ctx_for("gmm", teacher="exact")
    p = d.process()
    grid = uniform_t(p, 32)
    pairs = build_teacher_pairs(d, ctx.teacher, 48, sampler="dpm_solver_pp_3m", steps=32, timesteps=grid, seed=7, progress=False)
    rc = build_renoised_couplings(ctx.teacher, p, pairs, grid, per_pair=2, seed=3)
    assert rc.x.shape == (48, 2, 2) and rc.t.shape == (48, 2)
    assert bool(((rc.t > 0) & (rc.t < 1)).all()) and all(bool((grid == v).any()) for v in rc.t.flatten())
    a = p.alpha(rc.t)[..., None].float()
    s = p.sigma(rc.t)[..., None].float()
    eps = (rc.x - a * pairs.x0[:, None]) / s
    assert abs(float(eps.std()) - 1.0) < 0.2
    errs = []
    for i in range(8):
        t0 = float(rc.t[i, 0])
        j = int((grid == t0).nonzero())
        same = run_sampler(ctx.teacher, p, rc.x[i, :1], sampler="dpm_solver_pp_3m", steps=32 - j, prediction="x0",
                           timesteps=grid[j:]).x
        assert torch.allclose(same, rc.target[i, :1], atol=1e-5)  # the solve on the grid's tail from the state's time
        fine = torch.linspace(t0, 0.0, 401, dtype=torch.float64)
        ref = run_sampler(ctx.teacher, p, rc.x[i, :1], sampler="dpm_solver_pp_3m", steps=400, prediction="x0", timesteps=fine).x
        errs.append(float((ref - rc.target[i, :1]).abs().max()))
    assert sum(errs) / len(errs) < 5e-2 and max(errs) < 0.15, errs  # and close to a fine solve (32-step discretisation error)


def test_objective_regresses_on_noise_and_renoised_states():
    d, s = setup("gmm", n_students=2, top_fraction=0.5)
    obj = s.objective
    b = s.data(256, torch.Generator().manual_seed(0))
    x, t, target = obj.inputs(b, torch.Generator().manual_seed(1))
    top = t == 1.0
    assert 0.35 < float(top.double().mean()) < 0.65
    assert torch.equal(x[top], b.extra["noise"][top]) and torch.equal(target[top], b.x[top])
    assert torch.equal(x[~top], b.extra["renoised"][~top]) and torch.equal(target[~top], b.extra["renoised_target"][~top])


def test_bad_options_raise_one_line_errors():
    d, ctx = ctx_for("gmm")
    cases = [({"n_students": 0}, "n_students must be a positive integer"),
             ({"router": "hash"}, "unknown router 'hash'; valid: cond, noise"),
             ({"router": "cond"}, "router='cond' needs class labels"),
             ({"states": "all"}, "unknown states 'all'; valid: renoise, trajectory"),
             ({"loss": "l1"}, "unknown loss 'l1'; valid: l2, pseudo_huber"),
             ({"top_fraction": 1.5}, "top_fraction must lie in"),
             ({"pool": 1}, "pool must be an integer of at least n_students=2"),
             ({"teacher_steps": 1}, "teacher_steps must be an integer >= 2"),
             ({"renoise_per_pair": 0}, "renoise_per_pair must be a positive integer"),
             ({"teacher_sampler": "nope"}, "nope"),
             ({"n_studentz": 2}, "unknown option\\(s\\) 'n_studentz' for method 'multi_student'")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            setup_method("multi_student", ctx, {"backbone": TINY["gmm"], **SMALL, **opts})
        assert "\n" not in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="unknown parameterization 'edm2'"):
        MultiStudentRegression(d.process(), 2, "noise", [1.0, 0.0], parameterization="edm2")


def test_images_cond_router_tiny():
    from domains.images.domain import ImagesDomain

    tiny = dict(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8)
    d = ImagesDomain(dataset="digits")
    torch.manual_seed(0)
    teacher = d.build_backbone(**tiny).eval().requires_grad_(False)
    ctx = RecipeContext(domain=d, teacher=teacher, student_steps=2)
    s = setup_method("multi_student", ctx, {"n_students": 2, "router": "cond", "backbone": tiny, "pool": 20, "teacher_steps": 2,
                                            "renoise_per_pair": 1})
    assert s.info["pairs_per_student"] == [10, 10]  # labels i % 10: even labels -> student 0, odd -> student 1
    assert torch.equal(s.data.routes, s.data.pool.cond % 2)
    out = check_recipe(s, d, batch_size=6, decrease_steps=15, gen_steps=2)
    assert out["sample"].shape[1:] == (1, 8, 8) and math.isfinite(float(out["sample"].abs().max()))
