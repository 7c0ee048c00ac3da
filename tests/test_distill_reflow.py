"""Reflow (k-rectified flow) and SlimFlow: conformance on the toy domains, ground truth on a
straight (affine) coupling, pool caching / resume of the inner trainings, bad options."""
import copy

import pytest
import torch
from torch import nn

import workbench.distill.reflow as rf  # registers "reflow" and "slimflow"
from domains.toy.domain import ToyDomain
from workbench.checkpoint import load_into, load_state
from workbench.distill.conformance import check_recipe
from workbench.distill.generators import FlowGenerator
from workbench.distill.pairs import build_teacher_pairs
from workbench.distill.recipes import setup_method
from workbench.losses import Batch
from workbench.timegrids import uniform_lambda
from workbench.training import TrainConfig, train
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}
FAST_POOL = {"pairs": 48, "pair_steps": 3}


def inner(steps=4, **kw):
    return {"steps": steps, "batch_size": 8, "progress": False, "ckpt_every": 2, "log_every": 2, **kw}


# -- conformance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_reflow_recipe_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("reflow", ctx, FAST_POOL)
    assert setup.spec["kind"] == "flow" and setup.spec["sampler"] == "euler"
    out = check_recipe(setup, d, decrease_steps=40)
    assert out["loss_end"] < out["loss_start"]


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_slimflow_recipe_conformance(dataset):
    d, ctx = ctx_for(dataset)
    opts = {**FAST_POOL, "student_backbone": TINY[dataset], "reflow_train": inner(6)}
    setup = setup_method("slimflow", ctx, opts)
    assert setup.info["student_params"] < setup.info["teacher_params"]  # a smaller student
    assert set(setup.nets) == {"student", "reflow", "teacher"} and setup.trainable == ["student"]
    # the default guidance target starts from the student's own straight line (stop-gradient),
    # so it moves with the student: not a fixed-target regression, no decrease check here
    check_recipe(setup, d, decrease_phase=None)
    # guide="reflow" (targets independent of the student) is one: it must decrease. The student
    # starts as the stage-1 flow, close to its targets, hence a small step size (at lr 1e-3
    # Adam's first steps overshoot such a small loss)
    setup = setup_method("slimflow", ctx, {**opts, "guide": "reflow"})
    out = check_recipe(setup, d, decrease_steps=40, lr=1e-4)
    assert out["loss_end"] < 0.7 * out["loss_start"]


def test_default_slim_backbone_halves_the_width():
    d, ctx = ctx_for("gmm")
    assert rf.slim_backbone(ctx) == {"hidden": d.build_backbone().backbone.hidden // 2}
    d, ctx = ctx_for("gmm", teacher="exact")  # weightless teacher: the domain's default backbone
    assert rf.slim_backbone(ctx) == {"hidden": 64}


# -- ground truth: an affine (straight) coupling --------------------------------------------------
M, S = torch.tensor([1.0, -0.5]), 0.3


class GaussTeacher(nn.Module):
    """Exact denoiser of data N(M, S^2 I): the posterior mean (x0 prediction)."""

    prediction = "x0"

    def __init__(self, process):
        super().__init__()
        self.process = process

    def forward(self, x, t, mask=None, cond=None):
        t = t.to(torch.float64)
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        x = x.to(torch.float64)
        return (M + a * S**2 / (a * a * S**2 + s * s) * (x - a * M)).to(torch.float32)


def ode_map(process):
    """The exact probability-flow map x_T -> x0 = A + C x_T of N(M, S^2 I) (the flow keeps
    (x_t - alpha_t M) / std_t fixed)."""
    one = torch.tensor(1.0, dtype=torch.float64)
    a1, s1 = float(process.alpha(one)), float(process.sigma(one))
    c = S / (a1 * a1 * S**2 + s1 * s1) ** 0.5
    return M * (1 - c * a1), c


class StraightFlow(nn.Module):
    """The perfectly trained reflow student of the coupling x0 = A + C x_T: at (x_t, t) on the
    straight path of a pair it returns the pair's x0 (found by inverting the path)."""

    prediction = "x0"

    def __init__(self, process, A, C):
        super().__init__()
        self.process, self.A, self.C = process, A, C
        one = torch.tensor(1.0, dtype=torch.float64)
        self.a1, self.s1 = float(process.alpha(one)), float(process.sigma(one))

    def forward(self, x, t, mask=None, cond=None):
        t = t.to(torch.float64)
        a, s = self.process.alpha(t)[:, None], self.process.sigma(t)[:, None]
        coef_a = a - s * self.a1 / self.s1
        coef_c = a * self.C + s * (1 - self.a1 * self.C) / self.s1
        x_T = (x.to(torch.float64) - coef_a * self.A) / coef_c
        return (self.A + self.C * x_T).to(torch.float32)


@pytest.fixture(scope="module")
def gauss():
    d = ToyDomain(dataset="gmm")
    p = d.process()
    teacher = GaussTeacher(p)
    pool = build_teacher_pairs(d, teacher, 256, sampler="dpm_solver_pp_3m", steps=80, timesteps=uniform_lambda(p, 80), seed=5,
                               progress=False)
    A, C = ode_map(p)
    return d, p, teacher, pool, StraightFlow(p, A, C)


def test_pool_of_exact_gaussian_teacher_is_the_affine_ode_map(gauss):
    d, p, teacher, pool, straight = gauss
    A, C = ode_map(p)
    assert torch.allclose(pool.x0, A + C * pool.noise, atol=1e-3)


@pytest.mark.parametrize("loss", rf.LOSSES)
@pytest.mark.parametrize("time_sampler", rf.TIME_SAMPLERS)
def test_perfect_straight_student_has_zero_reflow_loss(gauss, loss, time_sampler):
    d, p, teacher, pool, straight = gauss
    obj = rf.Reflow(p, loss=loss, time_sampler=time_sampler, grid_steps=4)
    batch = pool.batch(torch.arange(len(pool)))
    g = torch.Generator().manual_seed(1)
    assert float(obj({"student": straight}, batch, g).max()) < 1e-6
    # the teacher's own flow is curved (its x0 prediction changes along a trajectory)
    assert float(obj({"student": teacher}, batch, torch.Generator().manual_seed(1)).mean()) > 1e-3


def test_one_euler_step_of_the_perfect_student_reproduces_the_coupling(gauss):
    d, p, teacher, pool, straight = gauss
    gen = FlowGenerator(straight, p, sampler="euler")
    for k in (1, 2, 4):
        assert torch.allclose(gen.generate(pool.noise, k), pool.x0, atol=1e-3), k
    # the curved teacher flow does not do it in one Euler step
    one = FlowGenerator(teacher, p, sampler="euler").generate(pool.noise, 1)
    assert float((one - pool.x0).abs().max()) > 0.05


def test_flow_guided_distillation_is_zero_for_a_straight_reflow(gauss):
    d, p, teacher, pool, straight = gauss
    batch = pool.batch(torch.arange(64))
    for guide in rf.GUIDES:
        for steps in (1, 3):
            obj = rf.FlowGuidedDistillation(p, guide=guide, guide_steps=steps)
            loss = obj({"student": straight, "reflow": straight}, batch, torch.Generator().manual_seed(2))
            assert loss.shape == (64,) and float(loss.max()) < 1e-6
    obj = rf.FlowGuidedDistillation(p)
    assert float(obj({"student": teacher, "reflow": straight}, batch, torch.Generator().manual_seed(2)).mean()) > 1e-3


def test_reflow_training_straightens_the_mlp_teacher():
    """Trained on the MLP teacher's own couplings, the student's few Euler steps land much
    closer to the coupled samples (held-out pairs) than the teacher's; with the ``grid`` time
    sampler (k-step distillation, K = 1) so does its ONE step."""
    d, ctx = ctx_for("gmm", steps=1)
    p = d.process()
    held = build_teacher_pairs(d, ctx.teacher, 128, sampler="dpm_solver_pp_3m", steps=8, timesteps=uniform_lambda(p, 8), seed=99,
                               progress=False)

    def err(net, k):
        with torch.no_grad():
            return float((FlowGenerator(net.eval(), p, sampler="euler").generate(held.noise, k) - held.x0).pow(2).mean())

    cfg = TrainConfig(steps=150, batch_size=128, lr=3e-4, progress=False, log_every=50)
    for time_sampler, ks in (("uniform", (2, 4)), ("grid", (1,))):
        setup = setup_method("reflow", ctx, {"pairs": 512, "pair_steps": 8, "time_sampler": time_sampler})
        before = [err(copy.deepcopy(setup.nets["student"]), k) for k in ks]
        res = train(setup.objective, setup.nets, setup.data, cfg, trainable=["student"], ema=[])
        after = [err(res.nets["student"], k) for k in ks]
        assert all(a < 0.35 * b for a, b in zip(after, before)), (time_sampler, before, after)


# -- annealing ------------------------------------------------------------------------------------
def test_anneal_beta_schedules():
    for sched in rf.ANNEAL_SCHEDULES:
        vals = [rf.anneal_beta(k, 100, sched) for k in (0, 25, 50, 99, 100, 500)]
        assert vals[0] == 1.0 and vals[-2] == 0.0 and vals[-1] == 0.0
        assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert rf.anneal_beta(0, 0) == 0.0 and rf.anneal_beta(30, 100, "linear") == pytest.approx(0.7)


def test_annealed_coupling_starts_independent_and_ends_at_the_teacher(gauss):
    d, p, teacher, pool, straight = gauss
    batch = pool.batch(torch.arange(32))
    other = Batch(x=batch.x, extra={"noise": torch.randn_like(batch.x)})
    obj = rf.Reflow(p, anneal_steps=10)
    for step, same in ((0, True), (10, False)):  # beta = 1: the pool's noise is not used at all
        losses = []
        for b in (batch, other):
            clock = rf.StepClock()
            clock.count.fill_(step)
            losses.append(obj({"student": teacher, "clock": clock}, b, torch.Generator().manual_seed(3)))
        assert torch.allclose(losses[0], losses[1]) == same
    # at beta = 0 the straight student is perfect again
    clock = rf.StepClock()
    clock.count.fill_(10)
    assert float(obj({"student": straight, "clock": clock}, batch, torch.Generator().manual_seed(3)).max()) < 1e-6
    with pytest.raises(ValueError, match="needs nets\\['clock'\\]"):
        obj({"student": straight}, batch)


def test_clock_is_checkpointed_and_resumes(tmp_path, gauss):
    d, p, teacher, pool, straight = gauss
    obj = rf.Reflow(p, anneal_steps=10)
    torch.manual_seed(0)
    nets = {"student": d.build_backbone(**TINY["gmm"]), "clock": rf.StepClock()}
    cfg = TrainConfig(steps=3, batch_size=8, progress=False, ckpt_every=3)
    train(obj, nets, pool, cfg, out_dir=tmp_path, trainable=["student"], ema=[])
    nets2 = {"student": d.build_backbone(**TINY["gmm"]), "clock": rf.StepClock()}
    train(obj, nets2, pool, TrainConfig(steps=5, batch_size=8, progress=False), out_dir=tmp_path, trainable=["student"], ema=[])
    assert int(nets2["clock"].count) == 5


# -- pool cache, rounds, resume --------------------------------------------------------------------
def _no_sampling(monkeypatch):
    import workbench.api

    def boom(*a, **k):
        raise AssertionError("the teacher was sampled again instead of reloading pairs.pt")

    monkeypatch.setattr(workbench.api, "run_sampler", boom)


def test_reflow_pool_is_cached_and_reloaded(tmp_path, monkeypatch):
    d, ctx = ctx_for("gmm", out_dir=tmp_path)
    s1 = setup_method("reflow", ctx, FAST_POOL)
    assert (tmp_path / "pairs.pt").exists()
    with monkeypatch.context() as m:
        _no_sampling(m)
        s2 = setup_method("reflow", ctx, FAST_POOL)
        assert torch.equal(s1.data.x0, s2.data.x0) and torch.equal(s1.data.noise, s2.data.noise)
        with pytest.raises(AssertionError, match="sampled again"):  # other settings: a new pool
            setup_method("reflow", ctx, {**FAST_POOL, "pairs": 40})


def test_reflow_rounds_train_inside_the_recipe_and_resume(tmp_path, monkeypatch):
    d, ctx = ctx_for("gmm", out_dir=tmp_path)
    opts = {**FAST_POOL, "rounds": 2, "round_train": inner(4)}
    setup = setup_method("reflow", ctx, opts)
    r1 = tmp_path / "round1"
    assert (r1 / "pairs.pt").exists() and (r1 / "state.pt").exists() and (tmp_path / "pairs.pt").exists()
    assert load_state(r1 / "state.pt")["step"] == 4
    # the final pool is the ODE coupling of round 1's (EMA) student, which the final student starts from
    st1 = d.build_backbone()
    load_into(st1, r1 / "student.safetensors")
    from workbench.api import run_sampler

    with torch.no_grad():
        x0 = run_sampler(st1.eval(), d.process(), setup.data.noise, sampler="dpm_solver_pp_3m", steps=3, prediction="epsilon",
                         timesteps=uniform_lambda(d.process(), 3)).x
    assert torch.allclose(x0, setup.data.x0, atol=1e-5)
    for a, b in zip(st1.parameters(), setup.nets["student"].parameters()):
        assert torch.equal(a, b)
    # resume: nothing is trained or sampled again
    with monkeypatch.context() as m:
        _no_sampling(m)
        setup2 = setup_method("reflow", ctx, opts)
    assert load_state(r1 / "state.pt")["step"] == 4
    for a, b in zip(setup.nets["student"].parameters(), setup2.nets["student"].parameters()):
        assert torch.equal(a, b)
    # round 1 trained further: its student changed, so the final pool is rebuilt from it
    setup3 = setup_method("reflow", ctx, {**opts, "round_train": inner(6)})
    assert load_state(r1 / "state.pt")["step"] == 6
    assert not torch.equal(setup3.data.x0, setup.data.x0) and torch.equal(setup3.data.noise, setup.data.noise)


def test_reflow_rounds_end_to_end_with_the_runner(tmp_path):
    from workbench.runner import distill, load_generator, sample_generator

    d = ToyDomain(dataset="gmm")
    res = distill(d, method="reflow", student_steps=2, out_dir=tmp_path, train={"steps": 3, "batch_size": 8, "progress": False},
                  method_options={**FAST_POOL, "rounds": 2, "round_train": inner(2)})
    gen, meta = load_generator(d, res["generator"])
    assert meta["method"] == "reflow" and meta["spec"]["kind"] == "flow" and meta["info"]["rounds"] == 2
    s, info = sample_generator(d, gen, steps=1, n=8, seed=0)
    assert s.x.shape == (8, 2) and bool(torch.isfinite(s.x).all()) and info["nfe"] == 1


def test_slimflow_stage1_resumes_and_stage2_uses_the_reflow_coupling(tmp_path, monkeypatch):
    d, ctx = ctx_for("gmm", out_dir=tmp_path)
    opts = {**FAST_POOL, "student_backbone": TINY["gmm"], "reflow_train": inner(4)}
    setup = setup_method("slimflow", ctx, opts)
    sdir = tmp_path / "reflow"
    assert (sdir / "pairs.pt").exists() and (sdir / "state.pt").exists() and (tmp_path / "pairs.pt").exists()
    st = load_state(sdir / "state.pt")
    assert st["step"] == 4 and int(st["nets"]["clock"]["count"]) == 4
    assert setup.info["anneal_steps"] == 1  # 40% of stage 1's 4 steps
    from workbench.api import run_sampler

    with torch.no_grad():
        x0 = run_sampler(setup.nets["reflow"], d.process(), setup.data.noise, sampler="dpm_solver_pp_3m", steps=3,
                         prediction="epsilon", timesteps=uniform_lambda(d.process(), 3)).x
    assert torch.allclose(x0, setup.data.x0, atol=1e-5)
    with monkeypatch.context() as m:
        _no_sampling(m)
        setup2 = setup_method("slimflow", ctx, opts)
    for a, b in zip(setup.nets["reflow"].parameters(), setup2.nets["reflow"].parameters()):
        assert torch.equal(a, b)
    # distill_pairs="teacher" reuses the teacher's pool of stage 1
    setup3 = setup_method("slimflow", ctx, {**opts, "distill_pairs": "teacher"})
    from workbench.distill.pairs import TeacherPairs

    assert torch.equal(setup3.data.x0, TeacherPairs.load(sdir / "pairs.pt").x0)


# -- bad options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,opts,match", [
    ("reflow", {"rounds": 0}, "rounds"),
    ("reflow", {"pairs": 0}, "pairs"),
    ("reflow", {"pair_steps": 0}, "pair_steps"),
    ("reflow", {"pair_grid": "log"}, "unknown pair_grid 'log'; valid: default, .*uniform_lambda"),
    ("reflow", {"pair_sampler": "nope"}, "unknown pair_sampler 'nope'; valid: .*euler"),
    ("reflow", {"loss": "l1"}, "unknown reflow loss 'l1'; valid: velocity, x0"),
    ("reflow", {"time_sampler": "lognormal"}, "unknown time sampler .lognormal.; valid: uniform, u_shaped, grid, mixed"),
    ("reflow", {"anneal_schedule": "step"}, "unknown anneal schedule 'step'; valid: linear, cosine, exp"),
    ("reflow", {"anneal_steps": -1}, "anneal_steps"),
    ("reflow", {"rounds": 2, "round_train": {"stepz": 3}}, "unknown round_train key\\(s\\) 'stepz'; valid: steps"),
    ("reflow", {"rounds": 2, "round_train": 5}, "round_train must be a dict"),
    ("slimflow", {"guide": "teacher"}, "unknown guide 'teacher'; valid: student, reflow"),
    ("slimflow", {"distill_pairs": "x"}, "unknown distill_pairs 'x'; valid: reflow, teacher"),
    ("slimflow", {"student_init": "random"}, "unknown student_init 'random'; valid: scratch, teacher"),
    ("slimflow", {"guide_min": 0.9, "guide_max": 0.1}, "guide_min <= guide_max"),
    ("slimflow", {"guide_steps": 0}, "guide_steps"),
    ("slimflow", {"guide_weight": -1.0}, "guide_weight"),
    ("slimflow", {"student_backbone": "half"}, "student_backbone must be a dict"),
    ("slimflow", {"student_backbone": {"widthz": 3}, "reflow_train": inner(1), **FAST_POOL}, "student_backbone .* does not fit"),
    ("slimflow", {"reflow_train": {"lr_": 1}}, "unknown reflow_train key\\(s\\) 'lr_'"),
    ("slimflow", {"pairs": -3}, "pairs"),
])
def test_bad_options_give_one_line_errors(method, opts, match):
    d, ctx = ctx_for("gmm")
    with pytest.raises(ValueError, match=match) as e:
        setup_method(method, ctx, opts)
    assert "\n" not in str(e.value)
