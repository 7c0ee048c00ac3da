"""Multi-student distillation (Song et al. 2024, MSD): conformance on the toy domains (MSD and
the regression variant), routing (deterministic, equal mass under the prior, the same in
training and sampling, in-cell DM noise), MSD's per-student DM gradient against DMD2's
``compute_distribution_matching_loss`` re-derived here, per-student fake scores, the TSM stage,
dict-valued conditions, re-noised couplings against a fine teacher solve, option errors, and a
tiny class-conditional images run."""
import math

import pytest
import torch
import torch.nn.functional as F

from workbench.distill.conformance import check_recipe
from workbench.distill.generators import MultiStudentGenerator, route_by_noise
from workbench.distill.multi_student import (MultiStudentRegression, build_renoised_couplings, route_samples,
                                             student_name)
from workbench.distill.pairs import build_teacher_pairs
from workbench.distill.recipes import RecipeContext, setup_method
from distill_helpers import perturb, toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}
SMALL = dict(pool=96, teacher_steps=4, renoise_per_pair=2)


def setup(dataset="gmm", steps=2, **opts):
    d, ctx = ctx_for(dataset, steps=steps)
    return d, setup_method("multi_student", ctx, {"backbone": TINY[dataset], **SMALL, **opts})


def reg_setup(dataset="gmm", **opts):
    return setup(dataset, objective="regression", **opts)


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_msd_conformance(dataset):
    d, s = setup(dataset, n_students=2, router="noise", tsm_steps=5, gan_weight=0.1 if dataset == "pointset" else 0.0)
    assert s.spec["kind"] == "multi_student" and s.spec["inner"]["kind"] == "consistency"
    assert s.info["objective"] == "msd" and s.info["tsm"]  # smaller students -> TSM stage
    want = ["student_0", "student_1", "fake_0", "fake_1"] + (["disc_0", "disc_1"] if dataset == "pointset" else [])
    assert sorted(s.trainable) == sorted(want) and sum(s.info["pairs_per_student"]) == SMALL["pool"]
    # noise router, DM noise from the whole prior: the GAN's reals are teacher samples of the whole pool
    assert s.objective.gan_reals == ("pool" if dataset == "pointset" else "part")
    if dataset == "pointset":
        assert "reg_target" in s.data(4, torch.Generator().manual_seed(0)).extra
    out = check_recipe(s, d, batch_size=16, decrease_steps=20, decrease_phase="fake")
    assert out["loss_end"] < out["loss_start"]


def test_regression_conformance():
    d, s = reg_setup("gmm", n_students=2, router="noise")
    assert s.trainable == ["student_0", "student_1"] and s.info["objective"] == "regression"
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
    d, s = reg_setup("gmm", n_students=3)
    pool = s.data.pool
    gen = s.make_generator(s.nets)
    assert torch.equal(s.data.routes, gen.route(pool.noise))
    b = s.data(13, torch.Generator().manual_seed(1))
    counts = torch.bincount(s.objective.route(b), minlength=3)
    assert counts.min() >= 13 // 3 and counts.sum() == 13  # stratified batches


@pytest.mark.parametrize("objective,phase,prefix,dm_noise", [("regression", None, "student_", None),
                                                             ("msd", "generator", "student_", "prior"),
                                                             ("msd", "fake", "fake_", "prior"), ("msd", "generator", "student_", "cell")])
def test_each_student_gets_gradients_only_from_its_partition(objective, phase, prefix, dm_noise):
    """Routing: sample i's loss reaches only student (or fake score) k_i; for MSD the route is
    the partition of the sample's pair (stratified batches); with ``dm_noise="cell"`` the DM
    noise also lies in that cell (the sampling-time route of the noise)."""
    d, s = setup("gmm", n_students=3, objective=objective, tsm=False, **({} if dm_noise is None else {"dm_noise": dm_noise}))
    obj, nets = s.objective, s.nets
    if objective == "msd":
        for k in range(3):
            perturb(nets[f"fake_{k}"], 0.1, seed=k)
    b = s.data(12, torch.Generator().manual_seed(2))
    route = obj.route(b)
    if objective == "msd":
        assert torch.equal(route, route_by_noise(b.extra["noise"], 3))  # the pair's partition
        if dm_noise == "cell":  # DM noise lies in its pair's cell
            assert torch.equal(route_by_noise(b.extra["dm_noise"], 3), route)
        assert torch.bincount(route, minlength=3).tolist() == [4, 4, 4]
    kw = {} if phase is None else {"phase": phase}
    for k in range(3):
        for own in (True, False):
            for m in nets.values():
                m.zero_grad(set_to_none=True)
            loss = obj(nets, b, torch.Generator().manual_seed(3), **kw)
            (loss[route == k] if own else loss[route != k]).sum().backward()
            for j in range(3):
                grads = [p.grad for p in nets[f"{prefix}{j}"].parameters() if p.grad is not None]
                has = any(bool(gr.abs().sum() > 0) for gr in grads)
                # own samples: only student k; the other samples: every student but k
                assert has == ((j == k) if own else (j != k)), (k, own, j)


def test_generator_uses_only_the_routed_student():
    d, s = setup("gmm", n_students=2, tsm=False)
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
    d, s = reg_setup("gmm", n_students=2, top_fraction=0.5)
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
             ({"router": "hash"}, "unknown router 'hash'; valid: auto, cond, noise"),
             ({"router": "cond"}, "router='cond' needs class labels"),
             ({"states": "all"}, "unknown states 'all'; valid: renoise, trajectory"),
             ({"loss": "l1"}, "unknown loss 'l1'; valid: l2, pseudo_huber"),
             ({"top_fraction": 1.5}, "top_fraction must lie in"),
             ({"pool": 1}, "pool must be an integer of at least n_students=2"),
             ({"teacher_steps": 1}, "teacher_steps must be an integer >= 2"),
             ({"renoise_per_pair": 0}, "renoise_per_pair must be a positive integer"),
             ({"teacher_sampler": "nope"}, "nope"),
             ({"objective": "dmd"}, "unknown objective 'dmd'; valid: msd, regression"),
             ({"pairs": "mine"}, "unknown pairs 'mine'; valid: shared, partition"),
             ({"tsm": "yes"}, "unknown tsm 'yes'; valid: auto, true, false"),
             ({"tsm_data": "fake"}, "unknown tsm_data 'fake'; valid: real, teacher"),
             ({"regression_weight": -1.0}, "regression_weight and gan_weight must be >= 0"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"t_min": 0.5, "t_max": 0.4}, "need 0 <= t_min < t_max <= 1"),
             ({"dm_noise": "half"}, "unknown dm_noise 'half'; valid: prior, cell"),
             ({"init_sigma": -1.0}, "init_sigma must be positive"),
             ({"n_studentz": 2}, "unknown option\\(s\\) 'n_studentz' for method 'multi_student'")]
    reg_only = ("states", "loss", "top_fraction", "renoise_per_pair")
    for opts, msg in cases:
        if any(k in opts for k in reg_only):
            opts = {"objective": "regression", **opts}
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
    s = setup_method("multi_student", ctx, {"n_students": 2, "backbone": tiny, "pool": 20, "teacher_steps": 2, "tsm": False})
    assert s.spec["router"] == "cond"  # router="auto" partitions the class labels
    assert s.info["pairs_per_student"] == [10, 10]  # labels i % 10: even labels -> student 0, odd -> student 1
    assert torch.equal(s.data.routes, s.data.pool.cond % 2)
    b = s.data(6, torch.Generator().manual_seed(0))
    assert torch.equal(s.objective.route(b), b.cond % 2)  # the DM route is the label's
    out = check_recipe(s, d, batch_size=6, decrease_steps=8, gen_steps=2, decrease_phase="fake")
    assert out["sample"].shape[1:] == (1, 8, 8) and math.isfinite(float(out["sample"].abs().max()))


# -- MSD ------------------------------------------------------------------------------------------
def _x0(net, p, x, t):
    """The data prediction of a toy net at ``(x, t [B])`` (the process's parameterisation change)."""
    out = net(x, t.to(x.dtype))
    return out if net.prediction == "x0" else p.convert(out, net.prediction, "x0", x, t).to(x.dtype)


def test_msd_dm_gradient_equals_dmd2_per_partition():
    """Ground truth: DMD2's compute_distribution_matching_loss (tianweiy/DMD2 edm_guidance.py),
    re-derived here from its formula on student k's own samples: p_real = x0 - mu_real,
    p_fake = x0 - mu_fake, grad = (p_real - p_fake) / mean|p_real|,
    loss = 0.5 mse(x0, stopgrad(x0 - grad)), with mu_fake from student k's OWN fake score."""
    d, s = setup("gmm", steps=1, n_students=2, regression_weight=0.0, tsm=False, prediction="x0")
    obj, nets, p = s.objective, s.nets, d.process()
    for k in range(2):
        perturb(nets[f"fake_{k}"], 0.2, seed=10 + k)
    b = s.data(24, torch.Generator().manual_seed(0))
    loss = obj(nets, b, torch.Generator().manual_seed(1), phase="generator")
    route = obj.route(b)
    for k in range(2):
        rows = obj.last[k]["rows"]
        assert torch.equal(rows, (route == k).nonzero().flatten())
        st = nets[f"student_{k}"]
        params = [q for q in st.parameters() if q.requires_grad]
        ours = torch.autograd.grad(loss[rows].mean(), params, retain_graph=True, allow_unused=True)
        # the DMD2 formula on identical inputs
        x_T = b.extra["dm_noise"][rows]
        # one step from t0 = t(init_sigma = 2.5), as DMD2, on the noise part sigma(t0) z of the marginal, z = x_T / prior_std
        t0 = obj.grid[0].expand(len(rows))
        assert 0.4 < float(t0[0]) < 0.5 and abs(float(p.sigma(t0[0]) / p.alpha(t0[0])) - 2.5) < 1e-6
        x0 = st(x_T * (float(p.sigma(t0[0])) / p.prior_std()), t0.float())  # x0-prediction student
        x_t, t = obj.last[k]["x_t"], obj.last[k]["t"]
        assert torch.allclose(obj.last[k]["x0_g"], x0.detach(), atol=1e-6)  # generated by student k from its own noise
        with torch.no_grad():
            mu_real = _x0(nets["teacher"], p, x_t, t)
            mu_fake = _x0(nets[f"fake_{k}"], p, x_t, t)
            p_real, p_fake = x0 - mu_real, x0 - mu_fake
            grad = (p_real - p_fake) / p_real.abs().mean(dim=1, keepdim=True)
        ref_loss = 0.5 * F.mse_loss(x0, (x0 - grad).detach(), reduction="mean")
        ref = torch.autograd.grad(ref_loss, params, allow_unused=True)
        assert any(float(r.abs().max()) > 1e-6 for r in ref if r is not None)
        for a, r in zip(ours, ref):
            assert torch.allclose(a, r, atol=1e-7, rtol=1e-5), float((a - r).abs().max())
        # and student k's loss reaches no other student
        other = nets[f"student_{1 - k}"]
        g = torch.autograd.grad(loss[rows].sum(), list(other.parameters()), retain_graph=True, allow_unused=True)
        assert all(x is None or float(x.abs().max()) == 0.0 for x in g)


def test_msd_fake_score_sees_only_its_students_outputs():
    """Fake score k's update depends on student k (its samples) and on no other student."""
    d, s = setup("gmm", steps=1, n_students=2, tsm=False)
    obj, nets = s.objective, s.nets
    b = s.data(16, torch.Generator().manual_seed(0))

    def fake_grads(k):
        for m in nets.values():
            m.zero_grad(set_to_none=True)
        obj(nets, b, torch.Generator().manual_seed(4), phase="fake").sum().backward()
        return torch.cat([q.grad.flatten() for q in nets[f"fake_{k}"].parameters()])

    g0 = fake_grads(0)
    with torch.no_grad():
        perturb(nets["student_1"], 0.3, seed=1)
    assert torch.equal(fake_grads(0), g0)  # student 1 changed: fake 0's update does not
    with torch.no_grad():
        perturb(nets["student_0"], 0.3, seed=2)
    assert not torch.allclose(fake_grads(0), g0)  # student 0 changed: it does


def test_noise_in_cell_is_the_prior_restricted_to_the_cell():
    from workbench.distill.multi_student import sample_noise_in_cell
    from workbench.distill.generators import noise_route_direction

    g = torch.Generator().manual_seed(0)
    n, N = 3, 30000
    z = torch.randn(N, 4, generator=g)
    e = noise_route_direction(z).float()
    for k in range(n):
        zk = sample_noise_in_cell(z, k, n, g)
        assert bool((route_by_noise(zk, n) == k).all())
        c = (zk * e).sum(1)
        # the coordinate along e is N(0, 1) restricted to [Phi^-1(k/n), Phi^-1((k+1)/n)]: compare its mean
        lo, hi = torch.special.ndtri(torch.tensor([k / n, (k + 1) / n], dtype=torch.float64)).tolist()
        phi = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi) if math.isfinite(v) else 0.0  # noqa: E731
        mean = (phi(lo) - phi(hi)) * n
        assert abs(float(c.mean()) - mean) < 0.03, (k, float(c.mean()), mean)
        rest = zk - c[:, None] * e
        assert torch.allclose(rest, z - (z * e).sum(1)[:, None] * e, atol=1e-5)  # the orthogonal part is kept


def test_tsm_stage_reduces_denoising_error_vs_teacher():
    """TSM (Sec. 4.3): after the stage, the smaller student's data prediction is closer to the
    teacher's on noised real data than at its initialisation."""
    from workbench.distill.multi_student import _run_tsm

    d, ctx = ctx_for("gmm", steps=1)
    p = d.process()
    torch.manual_seed(0)
    student = d.build_backbone(**TINY["gmm"]).train().requires_grad_(True)
    g = torch.Generator().manual_seed(9)
    x = d.train_data("train")(512, g).x
    t = 0.02 + 0.96 * torch.rand(512, generator=g, dtype=torch.float64)
    x_t = p.add_noise(x, t, torch.randn(x.shape, generator=g))

    def err(net):
        with torch.no_grad():
            return float(((_x0(net, p, x_t, t) - _x0(ctx.teacher, p, x_t, t)) ** 2).mean())

    before = err(student)
    trained, _ = _run_tsm(ctx, student, None, tsm_data="real", steps=150, overrides={"batch_size": 128, "lr": 3e-3}, t_min=0.02,
                          t_max=0.98, out=None)
    after = err(trained)
    assert after < 0.5 * before, (before, after)


def test_dict_cond_is_sliced_per_sub_batch():
    from workbench.distill.generators import slice_batch

    B = 6
    cond = {"labels": torch.arange(B), "emb": torch.arange(B * 2.0).reshape(B, 2), "scale": torch.tensor(2.0), "name": "x",
            "nested": [torch.arange(B) * 10, None]}
    sel = torch.tensor([1, 4])
    out = slice_batch(cond, sel, B)
    assert torch.equal(out["labels"], torch.tensor([1, 4])) and torch.equal(out["emb"], cond["emb"][sel])
    assert out["scale"] is cond["scale"] and out["name"] == "x" and torch.equal(out["nested"][0], torch.tensor([10, 40]))
    assert out["nested"][1] is None

    class Rec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def generate(self, x_T, steps, *, cond=None, mask=None, **kw):
            self.seen.append((x_T.clone(), cond))
            return x_T + 1

    students = torch.nn.ModuleList([Rec(), Rec()])
    gen = MultiStudentGenerator(students, router="noise")
    x = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
    r = gen.route(x)
    y = gen.generate(x, 1, cond=cond)
    assert torch.equal(y, x + 1)
    for k, s in enumerate(students):
        if not bool((r == k).any()):
            continue
        xs, c = s.seen[0]
        idx = (r == k).nonzero().flatten()
        assert torch.equal(xs, x[idx]) and torch.equal(c["labels"], idx) and torch.equal(c["emb"], cond["emb"][idx])


def test_msd_recipe_settings_agree_with_dmd2():
    """MSD's DM stage is DMD's: with the default options the MSD recipe uses the DMD2 recipe's
    generator grid (start at t(init_sigma = 2.5)), the students' parameterisation (the
    teacher's), the fake-score time range, lr and EMA (the settings that differed and made MSD
    diverge on the toy: v students from t = 1)."""
    d, ctx = ctx_for("gmm", steps=2)
    msd = setup_method("multi_student", ctx, {"n_students": 1, "pool": 16, "teacher_steps": 2})
    dmd = setup_method("dmd2", ctx, {})
    assert msd.spec["inner"]["timesteps"] == dmd.spec["timesteps"] and dmd.spec["timesteps"][0] < 1.0
    assert msd.spec["inner"]["student"]["prediction"] == dmd.spec["student"]["prediction"] == ctx.teacher.prediction
    assert msd.nets["student_0"].prediction == dmd.nets["student"].prediction
    assert msd.train_defaults == dmd.train_defaults
    for a in ("t_min", "t_max", "backward_simulation", "teacher_prediction"):
        assert getattr(msd.objective, a) == getattr(dmd.objective, a), a
    assert torch.equal(msd.objective.grid, dmd.objective.grid)


@pytest.mark.parametrize("phase", ["generator", "fake"])
def test_msd_one_student_reduces_to_dmd2(phase):
    """One student, regression_weight 0, no GAN: MSD's objective on the same nets, batch and
    generator state gives DMD2's losses (per sample) and gradients, in both phases.

    DMD2 draws its generator noise inside ``rollout`` (after the step index); MSD reads it from
    ``batch.extra["dm_noise"]``: the test draws that noise from the stream exactly as DMD2
    does and hands MSD the generator state after it, so every later draw (DM time, noise, fake
    time, noise) is shared."""
    from workbench.distill.score_distill import noise_like

    d, ctx = ctx_for("gmm", steps=1)
    p = d.process()
    msd = setup_method("multi_student", ctx, {"n_students": 1, "pool": 16, "teacher_steps": 2, "regression_weight": 0.0,
                                               "gan_weight": 0.0, "generator_every": 5})
    dmd = setup_method("dmd2", ctx, {"generator_every": 5})
    assert msd.objective.phases == [("fake", ["fake_0"], 1), ("generator", ["student_0"], 5)]
    assert dmd.objective.phases == [("fake", ["fake_score"], 1), ("generator", ["student"], 5)]
    perturb(dmd.nets["student"], 0.05, seed=1)
    perturb(dmd.nets["fake_score"], 0.2, seed=2)
    nets_d = dmd.nets
    nets_m = {"student_0": nets_d["student"], "fake_0": nets_d["fake_score"], "teacher": nets_d["teacher"]}
    b = msd.data(32, torch.Generator().manual_seed(0))
    g_d = torch.Generator().manual_seed(7)
    g_m = torch.Generator().manual_seed(7)
    torch.randint(0, 1, (1,), generator=g_m)  # DMD2's step index (K = 1)
    b.extra["dm_noise"] = noise_like(p, b.x, None, g_m) * p.prior_std()  # DMD2's generator noise
    train = "student" if phase == "generator" else "fake_score"
    params = list(nets_d[train].parameters())
    loss_d = dmd.objective(nets_d, b, g_d, phase=phase)
    loss_m = msd.objective(nets_m, b, g_m, phase=phase)
    assert loss_d.shape == loss_m.shape == (32,)
    assert float(loss_d.detach().abs().min()) > 0
    assert torch.allclose(loss_m, loss_d, rtol=1e-6, atol=1e-9), float((loss_m - loss_d).abs().max())
    gd = torch.autograd.grad(loss_d.mean(), params)
    gm = torch.autograd.grad(loss_m.mean(), params)
    assert any(float(x.abs().max()) > 1e-6 for x in gd)
    for a, r in zip(gm, gd):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-9), float((a - r).abs().max())
