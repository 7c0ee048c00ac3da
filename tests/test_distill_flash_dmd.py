"""Flash-DMD: conformance, timestep-aware loss assignment, the reward term (reaches the
generator only, ascends the reward), the generator-to-fake-score blend, bad options."""
import pytest
import torch
from torch import nn

from domains.toy.domain import ToyDomain
from workbench.distill import flash_dmd as fd  # noqa: F401  (registers the recipe)
from workbench.distill import setup_method
from workbench.distill.base import FewStepGenerator
from workbench.distill.conformance import check_recipe
from workbench.distill.recipes import RecipeContext
from workbench.domain import Domain
from workbench.losses import Batch

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


def ctx_for(dataset, steps=2, teacher="mlp", domain_cls=ToyDomain):
    d = domain_cls(dataset=dataset, teacher=teacher)
    return d, RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=steps)


class Recorder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.prediction = getattr(net, "prediction", "x0")
        self.calls = []

    def forward(self, x, t, **kw):
        self.calls.append(torch.as_tensor(t).detach().double().flatten().clone())
        return self.net(x, t, **kw)


def grad_sums(nets):
    return {n: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None) for n, m in nets.items()}


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_flash_dmd_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("flash_dmd", ctx, {"student": TINY[dataset], "reward_weight": 0.01})
    assert setup.objective.phases == [("fake", ["fake_score", "disc"], 1), ("generator", ["student"], 2)]
    assert setup.spec["kind"] == "consistency"
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30)


def test_reward_term_reaches_only_the_generator_and_ascends_the_reward():
    d, ctx = ctx_for("gmm", teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "reward_weight": 1.0, "reward_steps": "all"})
    obj, nets = setup.objective, setup.nets
    plain = fd.FlashDMD(obj.process, obj.grid, t_split=obj.t_split, gan_weight=obj.gan_weight, reward_weight=0.0)
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    # the same random draws: the difference of the two losses is exactly the reward term
    diff = obj(nets, b, torch.Generator().manual_seed(3), phase="generator") - plain(nets, b, torch.Generator().manual_seed(3), phase="generator")
    x0_g, _, _ = obj._generate(nets, b, torch.Generator().manual_seed(3))
    assert torch.allclose(diff, -d.reward(Batch(x=x0_g.detach())), atol=1e-4)
    for m in nets.values():
        m.zero_grad(set_to_none=True)
    diff.sum().backward()
    g = grad_sums(nets)
    assert g["student"] > 0 and g["fake_score"] == 0 and g["disc"] == 0 and g["teacher"] == 0
    # a few steps on the reward term alone raise the mean reward of the generator's samples
    gen = FewStepGenerator(nets["student"], obj.process, timesteps=obj.grid)
    x_T = d.generation_batch(256, generator=torch.Generator().manual_seed(9)).x_T

    def mean_reward():
        with torch.no_grad():
            return float(d.reward(Batch(x=gen.generate(x_T, generator=torch.Generator().manual_seed(1)))).mean())

    r0 = mean_reward()
    opt = torch.optim.Adam(nets["student"].parameters(), lr=2e-3)
    for i in range(15):
        term = obj(nets, b, torch.Generator().manual_seed(10 + i), phase="generator") - plain(nets, b, torch.Generator().manual_seed(10 + i), phase="generator")
        opt.zero_grad()
        term.mean().backward()
        opt.step()
    assert mean_reward() > r0 + 0.1


def test_timestep_aware_assignment_of_the_losses():
    d, ctx = ctx_for("gmm", steps=4, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "t_split": 0.4, "reward_weight": 0.1})
    obj = setup.objective
    teacher, student = Recorder(setup.nets["teacher"]), Recorder(setup.nets["student"])
    nets = {**setup.nets, "teacher": teacher, "student": student}
    b = d.train_data()(64, torch.Generator().manual_seed(0))
    for seed in range(3):
        teacher.calls.clear()
        student.calls.clear()
        obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        # distribution matching: the teacher is queried at high noise only
        assert len(teacher.calls) == 1 and float(teacher.calls[0].min()) >= 0.4 and float(teacher.calls[0].max()) <= 0.98
        # the generator runs on its grid (rollouts) and, for the GAN term, at low noise only
        grid = obj.grid.tolist()[:-1]
        off = [c for c in student.calls if not any(abs(float(c[0]) - g) < 1e-6 for g in grid)]
        assert len(off) == 1 and float(off[0].min()) >= 0.02 and float(off[0].max()) <= 0.4
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert obj.reward_mask(t).tolist() == [1.0, 1.0, 1.0, 0.0]
    obj.reward_steps = "all"
    assert obj.reward_mask(t).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert float(obj.dm_times(1000, torch.Generator().manual_seed(0), "cpu").min()) >= 0.4


def test_discriminator_sees_clean_real_and_low_noise_generator_samples():
    d, ctx = ctx_for("gmm")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"]})
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
    cases = [({"t_split": 0.99}, r"t_split must lie in \(t_min, t_max\)"),
             ({"t_split": 0.01}, r"t_split must lie in \(t_min, t_max\)"),
             ({"reward_weight": -1.0}, "reward_weight must be >= 0"),
             ({"reward_steps": "low"}, "unknown reward_steps 'low'; valid: high, all"),
             ({"score_ema": 1.0}, r"score_ema must be in \[0, 1\) or None"),
             ({"score_ema": 0.9, "student": TINY["gmm"]}, "score_ema blends the student into the fake score"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"gan_weight": -0.1}, "gan_weight must be >= 0")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            setup_method("flash_dmd", ctx, opts)
    _, ctx2 = ctx_for("gmm", domain_cls=NoRewardToy)
    with pytest.raises(ValueError, match="domain 'toy' defines no reward; use reward_weight=0"):
        setup_method("flash_dmd", ctx2, {"reward_weight": 0.1})
    setup_method("flash_dmd", ctx2, {"reward_weight": 0.0})  # distillation alone needs no reward
