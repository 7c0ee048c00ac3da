"""BOSS (Nguyen et al. 2024): the Bellman schedule search and the velocity-refinement recipe."""
import itertools
import math

import pytest
import torch

import workbench
import workbench.distill.boss  # noqa: F401  (registers the "boss" recipe)
from domains.toy.domain import ToyDomain
from workbench.distill import setup_method
from workbench.distill.boss import BossRefinement
from workbench.distill.conformance import check_recipe
from workbench.distill.recipes import RecipeContext
from workbench.losses import Batch
from workbench.processes import VE, RectifiedFlow, VPLinear
from workbench.reference import reference_solve
from workbench.search import (bellman_path, boss_grid, boss_schedule, boss_search, ddim_jump, ddim_target_x0, jump_cost_matrix,
                              reference_trajectories)
from workbench.utils import per_sample_generators

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


def _brute_force(c, K):
    F = c.shape[0] - 1
    best, arg = math.inf, None
    for mid in itertools.combinations(range(1, F), K - 1):
        path = [0, *mid, F]
        tot = sum(float(c[a, b]) for a, b in zip(path, path[1:]))
        if tot < best:
            best, arg = tot, path
    return arg, best


def test_bellman_path_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    for F in (5, 8):
        # random costs that grow with the jump length plus noise: many competing paths
        i, j = torch.meshgrid(torch.arange(F + 1), torch.arange(F + 1), indexing="ij")
        c = ((j - i).clamp_min(0).double() ** 2) * torch.rand(F + 1, F + 1, generator=g, dtype=torch.float64)
        for K in range(1, F + 1):
            path, total = bellman_path(c, K)
            ref_path, ref_total = _brute_force(c, K)
            assert path == ref_path and total == pytest.approx(ref_total, rel=1e-12), (F, K)
            assert len(path) == K + 1 and path[0] == 0 and path[-1] == F
    # a hand-made case where the greedy choice is wrong: 0 -> 1 is cheap but 1 -> 3 is dear
    c = torch.full((4, 4), 10.0, dtype=torch.float64)
    c[0, 1], c[1, 3], c[1, 2], c[2, 3], c[0, 2] = 0.1, 50.0, 50.0, 1.0, 1.0
    assert bellman_path(c, 2) == ([0, 2, 3], 2.0)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 3\]"):
        bellman_path(c, 4)
    with pytest.raises(ValueError, match="square"):
        bellman_path(torch.zeros(3, 4), 1)


@pytest.mark.parametrize("proc", [VPLinear(), RectifiedFlow(), VE(), ToyDomain(dataset="pointset").process()],
                         ids=["vp_linear", "rectified_flow", "ve", "toy_pointset"])
def test_refinement_target_makes_the_ddim_jump_exact(proc):
    g = torch.Generator().manual_seed(1)
    B = 6
    shape = (B, 5, 3) if proc.zero_com else (B, 4)
    mask = torch.ones(B, 5) if proc.zero_com else None
    if mask is not None:
        mask[:3, 3:] = 0
    x_i = proc.project(torch.randn(shape, generator=g, dtype=torch.float64), mask)
    x_n = proc.project(torch.randn(shape, generator=g, dtype=torch.float64), mask)
    t_i = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    t_n = t_i * torch.rand(B, generator=g, dtype=torch.float64)
    t_n[0] = 0.0  # a last step: x0* must be the landing state itself
    x0 = ddim_target_x0(proc, x_i, x_n, t_i, t_n, mask)
    landed = ddim_jump(proc, x_i, x0, t_i, t_n, mask)
    assert torch.allclose(landed, x_n, atol=1e-9, rtol=1e-9)
    assert torch.allclose(x0[0], x_n[0])
    # the same jump written as DDIM with (x0, eps): alpha_n x0 + sigma_n eps, eps = (x_i - alpha_i x0) / sigma_i
    a_i, s_i = proc.alpha(t_i), proc.sigma(t_i)
    a_n, s_n = proc.alpha(t_n), proc.sigma(t_n)
    v = lambda c: c.view(-1, *([1] * (x_i.ndim - 1)))  # noqa: E731
    eps = (x_i - v(a_i) * x0) / v(s_i)
    assert torch.allclose(proc.project(v(a_n) * x0 + v(s_n) * eps, mask), x_n, atol=1e-9)
    with pytest.raises(ValueError, match="t_from > t_to"):
        ddim_target_x0(proc, x_i, x_n, t_n, t_i)


def test_cost_matrix_is_the_jump_error_and_zero_along_euler_steps():
    d = ToyDomain(dataset="gmm", teacher="exact")
    proc, model = d.process(), d.load_teacher()
    x_T = d.generation_batch(32, generator=per_sample_generators(0, 32)).x_T.double()
    ts = torch.linspace(1.0, 0.0, 13, dtype=torch.float64)
    traj, x0, _ = reference_trajectories(model, proc, x_T, timesteps=ts, sampler="euler")
    c = jump_cost_matrix(proc, traj, x0, ts)
    for i, j in [(0, 5), (2, 12), (7, 9), (0, 12)]:
        direct = ((traj[:, j] - ddim_jump(proc, traj[:, i], x0[:, i], ts[i], ts[j])) ** 2).sum(1).mean()
        assert float(c[i, j]) == pytest.approx(float(direct), rel=1e-10)
    # the reference trajectory is itself made of these jumps: adjacent costs vanish
    adj = torch.stack([c[i, i + 1] for i in range(12)])
    assert float(adj.max()) < 1e-20 and float(c[0, 12]) > 1e-2
    lower = torch.ones(13, 13, dtype=torch.bool).tril()
    assert bool(torch.isinf(c[lower]).all()) and bool(torch.isfinite(c[~lower]).all())
    # a multistep sampler (one call per node) gives trajectories that are not single jumps
    traj3, x03, _ = reference_trajectories(model, proc, x_T, timesteps=ts, sampler="dpm_solver_pp_3m")
    assert float(jump_cost_matrix(proc, traj3, x03, ts)[5, 6]) > 0
    with pytest.raises(ValueError, match="one call per fine-grid node"):
        reference_trajectories(model, proc, x_T, timesteps=ts, sampler="heun")


def test_boss_grid_beats_uniform_euler_on_the_exact_gmm():
    d = ToyDomain(dataset="gmm", teacher="exact")
    proc, model = d.process(), d.load_teacher()
    search_noise = d.generation_batch(128, generator=per_sample_generators(10_000, 128)).x_T
    gb = d.generation_batch(256, generator=per_sample_generators(0, 256))
    ref = reference_solve(model, proc, gb.x_T.double(), prediction="x0")
    res = boss_search(model, proc, search_noise, fine_steps=60)
    for K in (2, 3, 4):
        ts = res.schedule(K)
        assert ts.dtype == torch.float64 and len(ts) == K + 1 and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
        assert bool((ts[1:] < ts[:-1]).all())
        err = {}
        for name, grid in (("uniform", "uniform_t"), ("boss", ts)):
            x = workbench.sample(model, proc, gb.x_T.double(), sampler="euler", steps=K, prediction="x0", timesteps=grid)
            err[name] = float((x - ref).pow(2).sum(1).sqrt().mean())
        assert err["boss"] < 0.8 * err["uniform"], (K, err)
        # the searched path is no dearer than the uniform subset of the fine grid
        assert res.path(K)[1] <= res.path_cost([i * 60 // K for i in range(K + 1)]) + 1e-12
    assert res.schedule(1).tolist() == [1.0, 0.0]
    assert torch.equal(res.schedule(60), res.fine_timesteps)
    # the public entry points agree with the search object
    assert torch.equal(boss_schedule(model, proc, 3, x_T=search_noise, fine_steps=60), res.schedule(3))
    g = boss_grid(d, model, 4, n=64, fine_steps=40)
    assert len(g) == 5 and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
    with pytest.raises(ValueError, match="noise batch x_T"):
        boss_schedule(model, proc, 2)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 60\]"):
        res.schedule(61)


def test_refinement_loss_vanishes_for_the_teacher_on_its_own_fine_grid():
    """With K equal to the fine grid, the Euler reference steps are exactly the teacher's DDIM
    jumps, so the target x0* is the teacher's own prediction and the loss is zero; on a
    coarser BOSS schedule the teacher is not exact and the loss is positive."""
    d = ToyDomain(dataset="pointset", teacher="exact")
    proc, model = d.process(), d.load_teacher()
    gb = d.generation_batch(16, generator=per_sample_generators(0, 16))
    ts = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)
    traj, _, _ = reference_trajectories(model, proc, gb.x_T.double(), timesteps=ts, mask=gb.mask)
    for weighting in ("velocity", "x0"):
        obj = BossRefinement(proc, ts, weighting=weighting)
        batch = Batch(x=traj[:, -1], mask=gb.mask, extra={"trajectory": traj})
        loss = obj({"student": model}, batch, torch.Generator().manual_seed(0))
        assert loss.shape == (16,) and float(loss.max()) < 1e-16
        coarse = BossRefinement(proc, ts[[0, 4, 8]], weighting=weighting)
        lc = coarse({"student": model}, Batch(x=traj[:, -1], mask=gb.mask, extra={"trajectory": traj[:, [0, 4, 8]]}),
                    torch.Generator().manual_seed(0))
        assert float(lc.mean()) > 1e-4
    with pytest.raises(ValueError, match="unknown weighting 'l1'; valid: velocity, x0"):
        BossRefinement(proc, ts, weighting="l1")
    with pytest.raises(ValueError, match=r"trajectory'\] \[B, 9, ...\]"):
        BossRefinement(proc, ts)({"student": model}, Batch(x=traj[:, -1], mask=gb.mask), None)


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_boss_recipe_conformance(dataset, tmp_path):
    d = ToyDomain(dataset=dataset)
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=2, out_dir=tmp_path)
    opts = {"fine_steps": 12, "n_search": 16, "n_pairs": 48, "backbone": TINY[dataset]}
    setup = setup_method("boss", ctx, opts)
    ts = torch.tensor(setup.spec["timesteps"], dtype=torch.float64)
    assert setup.spec["kind"] == "flow" and setup.spec["sampler"] == "euler"
    assert len(ts) == 3 and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all())
    assert (tmp_path / "pairs.pt").exists() and (tmp_path / "boss_search.pt").exists()
    assert setup.data(4, torch.Generator().manual_seed(0)).extra["trajectory"].shape[1] == 3
    out = check_recipe(setup, d, decrease_steps=40, gen_steps=2)
    assert out["loss_end"] < out["loss_start"]
    # the generator samples on the searched grid at K steps: DDIM on that grid with the student
    gen = setup.make_generator(setup.nets).eval()
    gb = d.generation_batch(3, generator=per_sample_generators(5, 3))
    with torch.no_grad():
        x = gen.generate(gb.x_T, 2, mask=gb.mask)
    y = workbench.sample(setup.nets["student"], d.process(), gb.x_T, sampler="euler", steps=2, timesteps=ts,
                         prediction=setup.nets["student"].prediction, mask=gb.mask)
    assert torch.allclose(x, y, atol=1e-6)
    # a second set-up reuses the cached search and pool
    again = setup_method("boss", ctx, opts)
    assert again.spec["timesteps"] == setup.spec["timesteps"]


def test_boss_recipe_errors():
    d = ToyDomain(dataset="gmm")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=20)
    with pytest.raises(ValueError, match=r"student_steps=20 must lie in \[1, fine_steps=10\]"):
        setup_method("boss", ctx, {"fine_steps": 10})
    ctx.student_steps = 2
    with pytest.raises(ValueError, match="unknown weighting 'huber'; valid: velocity, x0"):
        setup_method("boss", ctx, {"weighting": "huber"})
