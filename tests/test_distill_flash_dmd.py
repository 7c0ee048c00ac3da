"""Flash-DMD: conformance, timestep-aware loss assignment, the reward term (reaches the
generator only, ascends the reward), the generator-to-fake-score blend, bad options."""
import pytest
import torch

from workbench.distill import flash_dmd as fd  # noqa: F401  (registers the recipe)
from workbench.distill import setup_method
from workbench.distill.base import FewStepGenerator
from workbench.distill.conformance import check_recipe
from workbench.distill.score_distill import rollout
from workbench.domain import Domain
from workbench.losses import Batch
from domains.toy.domain import ToyDomain
from distill_helpers import Recorder, toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


def grad_sums(nets):
    return {n: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None) for n, m in nets.items()}


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_flash_dmd_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("flash_dmd", ctx, {"student": TINY[dataset], "reward_weight": 0.01})  # 2 steps: GAN by default
    assert setup.objective.phases == [("fake", ["fake_score", "disc"], 1), ("generator", ["student"], 2)]
    assert setup.objective.dm_steps == 1 and setup.spec["kind"] == "consistency"
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30)
    d, ctx = ctx_for(dataset, steps=1)  # one step: distribution matching (and reward) only, no GAN
    setup = setup_method("flash_dmd", ctx, {"student": TINY[dataset], "reward_weight": 0.01})
    assert "disc" not in setup.nets and setup.objective.dm_steps == 1
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30, gen_steps=1)


def test_reward_term_reaches_only_the_generator_and_ascends_the_reward():
    d, ctx = ctx_for("gmm", teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "reward_weight": 1.0, "reward_steps": 2, "gan_weight": 0.0})
    obj, nets = setup.objective, setup.nets
    plain = fd.FlashDMD(obj.process, obj.grid, reward_weight=0.0)
    b = d.train_data()(16, torch.Generator().manual_seed(0))

    def reward_term(seed):  # same random draws in both: the difference is exactly the reward term
        return (obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
                - plain(nets, b, torch.Generator().manual_seed(seed), phase="generator"))

    diff = reward_term(3)
    g = torch.Generator().manual_seed(3)
    k = obj._draw(0, obj.K, g)
    x0_g, _, _ = rollout(nets["student"], obj.process, obj.grid, b, g, step=k)
    assert torch.allclose(diff, -d.reward(Batch(x=x0_g.detach())), atol=1e-4)
    for m in nets.values():
        m.zero_grad(set_to_none=True)
    diff.sum().backward()
    g = grad_sums(nets)
    assert g["student"] > 0 and g["fake_score"] == 0 and g["teacher"] == 0
    # a few steps on the reward term alone raise the mean reward of the generator's samples
    gen = FewStepGenerator(nets["student"], obj.process, timesteps=obj.grid)
    x_T = d.generation_batch(256, generator=torch.Generator().manual_seed(9)).x_T

    def mean_reward():
        with torch.no_grad():
            return float(d.reward(Batch(x=gen.generate(x_T, generator=torch.Generator().manual_seed(1)))).mean())

    r0 = mean_reward()
    opt = torch.optim.Adam(nets["student"].parameters(), lr=2e-3)
    for i in range(15):
        term = reward_term(10 + i)
        opt.zero_grad()
        term.mean().backward()
        opt.step()
    assert mean_reward() > r0 + 0.1


def test_timestep_aware_assignment_of_the_losses():
    """K = 4 with a GAN: steps 0, 1 get distribution matching (and the reward) only, steps 2, 3
    the adversarial loss only, on re-noised clean generator samples at their own grid time."""
    d, ctx = ctx_for("gmm", steps=4, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "gan_weight": 0.1, "reward_weight": 0.1})
    obj = setup.objective
    assert obj.dm_steps == 2 and obj.reward_steps == 2
    assert [obj.is_dm_step(k) for k in range(4)] == [True, True, False, False]
    assert [obj.gets_reward(k) for k in range(4)] == [True, True, False, False]
    teacher, student, disc = Recorder(setup.nets["teacher"]), Recorder(setup.nets["student"]), Recorder(setup.nets["disc"])
    nets = {**setup.nets, "teacher": teacher, "student": student, "disc": disc}
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    grid = obj.grid.tolist()
    seen = set()
    for seed in range(12):
        for r in (teacher, student, disc):
            r.calls.clear()
        k = obj._draw(0, 4, torch.Generator().manual_seed(seed))
        seen.add(k)
        obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        last = float(student.calls[-1][0])  # the call whose output is trained
        assert last == pytest.approx(grid[k], rel=1e-6)
        if k < 2:
            assert len(teacher.calls) == 1 and len(disc.calls) == 0
            assert len(student.calls) == k + 1  # backward simulation to step k, then step k
        else:
            assert len(teacher.calls) == 0 and len(disc.calls) == 1
            assert len(student.calls) == 4 + 1  # a clean sample (4 steps), re-noised to t_k and denoised
    assert seen == {0, 1, 2, 3}


def test_without_gan_and_reward_it_is_dmd2():
    """gan_weight = 0, reward_weight = 0 and DMD2's two time-scale ratio: every step is a
    distribution-matching step and the losses equal DMD2's, draw for draw (the reuse is exact)."""
    d, ctx = ctx_for("gmm", steps=3)
    ref = setup_method("dmd2", ctx, {"student": TINY["gmm"]})
    flash = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "generator_every": 5, "gan_weight": 0.0})
    assert flash.objective.dm_steps == 3 and flash.spec == ref.spec
    with torch.no_grad():
        for p in ref.nets["fake_score"].parameters():
            p.add_(0.01)
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    for phase in ("fake", "generator"):
        for seed in range(3):
            la = ref.objective(ref.nets, b, torch.Generator().manual_seed(seed), phase=phase)
            lb = flash.objective(ref.nets, b, torch.Generator().manual_seed(seed), phase=phase)
            assert torch.allclose(la, lb, atol=1e-6, rtol=1e-5), (phase, la, lb)


def test_discriminator_sees_clean_real_and_low_noise_generator_samples():
    d, ctx = ctx_for("gmm")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "gan_weight": 0.1})
    disc = Recorder(setup.nets["disc"])
    nets = {**setup.nets, "disc": disc}
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    loss = setup.objective(nets, b, torch.Generator().manual_seed(0), phase="fake")
    assert loss.shape == (8,) and len(disc.calls) == 2
    assert all(torch.allclose(c, torch.full((8,), d.process().t_min, dtype=torch.float64)) for c in disc.calls)


def test_score_ema_blends_the_generator_into_the_fake_score():
    d, ctx = ctx_for("gmm")
    setup = setup_method("flash_dmd", ctx, {"score_ema": 0.9, "gan_weight": 0.0})
    nets = setup.nets
    with torch.no_grad():
        for p in nets["student"].parameters():
            p.add_(0.1)
    before = {n: p.detach().clone() for n, p in nets["fake_score"].named_parameters()}
    st = {n: p.detach().clone() for n, p in nets["student"].named_parameters()}
    setup.objective.blend_score(nets)
    for n, p in nets["fake_score"].named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * st[n], atol=1e-6)


class NoRewardToy(ToyDomain):
    reward = Domain.reward


def test_flash_dmd_bad_options():
    d, ctx = ctx_for("gmm")
    cases = [({"dm_steps": 0}, "dm_steps must be an integer in 1..2"),
             ({"dm_steps": 3}, "dm_steps must be an integer in 1..2"),
             ({"dm_steps": 1, "gan_weight": 0.0}, "with gan_weight=0 steps 1..1 would receive no loss"),
             ({"gan_weight": 0.1, "dm_steps": 2}, "gan_weight > 0 needs a low-noise step"),
             ({"reward_steps": 0}, "reward_steps must be an integer in 1..2"),
             ({"reward_weight": -1.0}, "reward_weight must be >= 0"),
             ({"score_ema": 1.0}, r"score_ema must be in \[0, 1\) or None"),
             ({"score_ema": 0.9, "student": TINY["gmm"]}, "score_ema blends the student into the fake score"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"gan_weight": -0.1}, "gan_weight must be >= 0")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            setup_method("flash_dmd", ctx, opts)
    _, ctx1 = ctx_for("gmm", steps=1)
    with pytest.raises(ValueError, match="gan_weight > 0 needs a low-noise step"):
        setup_method("flash_dmd", ctx1, {"gan_weight": 0.1})
    _, ctx2 = ctx_for("gmm", domain_cls=NoRewardToy)
    with pytest.raises(ValueError, match="domain 'toy' defines no reward; use reward_weight=0"):
        setup_method("flash_dmd", ctx2, {"reward_weight": 0.1})
    setup_method("flash_dmd", ctx2, {"reward_weight": 0.0})  # distillation alone needs no reward
