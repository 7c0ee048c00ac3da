"""Flash-DMD (arXiv 2511.20549): conformance; the generator loss of one update is
L_DMD + lambda L_adv (Algorithm 1, eq. 4) re-derived here; the hinge discriminator loss; the
preference loss -log sigma(beta H(w, l)) re-derived here (LPO / Diffusion-DPO step policy);
the 5:1 alternation with stage 2's reference snapshot; the eq. 11 blend after the generator
update; the fake score trained on outputs of all steps; the named variants; bad options."""
import pytest
import torch
import torch.nn.functional as F

from workbench.distill import flash_dmd as fd  # noqa: F401  (registers the recipe)
from workbench.distill import setup_method
from workbench.distill.conformance import check_recipe
from workbench.distill.score_distill import rollout
from workbench.domain import Domain
from workbench.losses import Batch
from domains.toy.domain import ToyDomain
from distill_helpers import Recorder, perturb, toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


def x0_of(net, process, x, t):
    """The data prediction of ``net`` at ``(x, t)``, written out here (x0 or epsilon nets)."""
    out = net(x, t.to(x.dtype))
    pred = getattr(net, "prediction", "x0")
    if pred == "x0":
        return out
    assert pred == "epsilon", pred
    a, s = process.alpha(t).to(x.dtype)[:, None], process.sigma(t).to(x.dtype)[:, None]
    return (x - s * out) / a


def params_grad(loss, net):
    return torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad], retain_graph=True)


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_flash_dmd_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("flash_dmd", ctx, {"student": TINY[dataset], "score_ema": None, "rl": "preference"})  # 2 steps: GAN
    assert setup.objective.phases == [("fake", ["fake_score", "disc"], 1), ("generator", ["student"], 2)]
    assert setup.objective.dm_steps == 1 and setup.spec["kind"] == "consistency"
    assert "reference" in setup.nets and "reference" not in setup.trainable
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30)
    d, ctx = ctx_for(dataset, steps=1)  # one step: distribution matching only, no GAN
    setup = setup_method("flash_dmd", ctx, {})
    assert "disc" not in setup.nets and setup.objective.dm_steps == 1 and setup.objective.score_ema == 0.99
    check_recipe(setup, d, decrease_phase="fake", decrease_steps=30, gen_steps=1)


def test_generator_loss_is_dmd_plus_lambda_adv():
    """One generator update = L_DMD at a high-noise step + lambda * hinge(-D) at a low-noise
    step, summed (value and gradient), re-derived from the formula on the same inputs."""
    d, ctx = ctx_for("gmm", steps=2, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"gan_weight": 0.3, "score_ema": None})
    obj, nets = setup.objective, setup.nets
    perturb(nets["fake_score"], 0.05, seed=1)
    perturb(nets["disc"], 0.3, seed=2)
    p = obj.process
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    for seed in range(3):
        loss = obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        terms = obj.distillation_terms(nets, b, torch.Generator().manual_seed(seed))  # the same draws
        assert terms["j"] == 0 and terms["k"] == 1  # K = 2: step 0 high-noise, step 1 low-noise
        x0_g, x_t, t = terms["x0_g"], terms["x_t"], terms["t"]
        with torch.no_grad():
            mu_real = x0_of(nets["teacher"], p, x_t, t)
            mu_fake = x0_of(nets["fake_score"], p, x_t, t)
            w = (x0_g - mu_real).abs().mean(1, keepdim=True)
            target = x0_g - (mu_fake - mu_real) / w
        l_dmd = 0.5 * ((x0_g - target) ** 2).mean(1)
        d_fake = nets["disc"](terms["x_lo"], torch.full((16,), p.t_min, dtype=torch.float64).float())
        expected = l_dmd + 0.3 * (-d_fake)
        assert torch.allclose(loss, expected, atol=1e-6, rtol=1e-5), (loss, expected)
        assert float((0.3 * d_fake).detach().abs().mean()) > 1e-3  # the adversarial term is really there
        for ga, gb in zip(params_grad(loss.mean(), nets["student"]), params_grad(expected.mean(), nets["student"])):
            assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-4)
    # the variant gives one loss per update: never the sum
    alt = fd.FlashDMD(p, obj.grid, combine="alternate", gan_weight=0.3)
    for seed in range(4):
        la = alt(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        ls = obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        assert not torch.allclose(la, ls, atol=1e-6)


def test_timestep_aware_assignment_k4():
    """K = 4: every update runs the teacher once (DM at a high-noise step 0/1) AND the
    discriminator once (on a low-noise step 2/3, a full clean sample re-noised and denoised)."""
    d, ctx = ctx_for("gmm", steps=4, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "score_ema": None})
    obj = setup.objective
    assert obj.dm_steps == 2 and [obj.is_dm_step(k) for k in range(4)] == [True, True, False, False]
    teacher, student, disc = Recorder(setup.nets["teacher"]), Recorder(setup.nets["student"]), Recorder(setup.nets["disc"])
    nets = {**setup.nets, "teacher": teacher, "student": student, "disc": disc}
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    grid = obj.grid.tolist()
    seen_j, seen_k = set(), set()
    for seed in range(12):
        for r in (teacher, student, disc):
            r.calls.clear()
        terms = obj.distillation_terms(nets, b, torch.Generator().manual_seed(seed))
        j, k = terms["j"], terms["k"]
        seen_j.add(j), seen_k.add(k)
        assert len(teacher.calls) == 1 and len(disc.calls) == 0  # D is applied by the loss
        times = [float(c[0]) for c in student.calls]
        assert len(times) == (j + 1) + 4 + 1  # backward simulation to j then step j; clean sample (4 steps); step k
        assert times[j] == pytest.approx(grid[j]) and times[-1] == pytest.approx(grid[k])
    assert seen_j == {0, 1} and seen_k == {2, 3}


def test_discriminator_hinge_loss_on_clean_real_and_low_noise_samples():
    d, ctx = ctx_for("gmm", teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "gan_weight": 0.1, "score_ema": None})
    obj, nets = setup.objective, setup.nets
    perturb(nets["disc"], 0.5, seed=3)
    outs = []

    class Spy(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.t = net, []

        def forward(self, x, t, **kw):
            y = self.net(x, t, **kw)
            outs.append(y.detach())
            self.t.append(t)
            return y

    spy = Spy(nets["disc"])
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    loss = obj({**nets, "disc": spy}, b, torch.Generator().manual_seed(0), phase="fake")
    no_gan = fd.FlashDMD(obj.process, obj.grid, gan_weight=0.0)  # same fake-score draws come first
    base = no_gan(nets, b, torch.Generator().manual_seed(0), phase="fake")
    d_real, d_fake = outs
    assert torch.allclose(loss, base + F.relu(1 - d_real) + F.relu(1 + d_fake), atol=1e-6)
    assert all(torch.allclose(t, torch.full((8,), d.process().t_min, dtype=t.dtype)) for t in spy.t)


def test_fake_score_sees_outputs_of_all_steps():
    d, ctx = ctx_for("gmm", steps=4, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "score_ema": None})
    obj = setup.objective
    student = Recorder(setup.nets["student"])
    nets = {**setup.nets, "student": student}
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    grid = obj.grid.tolist()
    seen = set()
    for seed in range(16):
        student.calls.clear()
        obj(nets, b, torch.Generator().manual_seed(seed), phase="fake")
        times = [float(c[0]) for c in student.calls]
        first = next((i for i in range(1, len(times)) if times[i] >= times[i - 1]), len(times))  # the fake-score rollout
        seen.add(grid.index(pytest.approx(times[first - 1])))
    assert seen == {0, 1, 2, 3}


def test_score_ema_is_applied_after_the_generator_update():
    d, ctx = ctx_for("gmm", teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"score_ema": 0.9, "gan_weight": 0.0, "dm_steps": 2})
    obj, nets = setup.objective, setup.nets
    assert nets["flash_state"] is obj.state
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    fake0 = {n: q.detach().clone() for n, q in nets["fake_score"].named_parameters()}
    loss = obj(nets, b, torch.Generator().manual_seed(0), phase="generator")
    for n, q in nets["fake_score"].named_parameters():  # not before (nor during) the update
        assert torch.equal(q, fake0[n])
    opt = torch.optim.SGD(nets["student"].parameters(), lr=0.5)  # the loop's optimiser step
    opt.zero_grad()
    loss.mean().backward()
    opt.step()
    theta = {n: q.detach().clone() for n, q in nets["student"].named_parameters()}
    assert any(not torch.equal(theta[n], fake0[n]) for n in theta)
    obj(nets, b, torch.Generator().manual_seed(1), phase="fake")  # next call: blend with the UPDATED generator
    for n, q in nets["fake_score"].named_parameters():
        assert torch.allclose(q, 0.9 * fake0[n] + 0.1 * theta[n], atol=1e-6)
    snap = {n: q.detach().clone() for n, q in nets["fake_score"].named_parameters()}
    obj(nets, b, torch.Generator().manual_seed(2), phase="fake")  # once per generator update
    assert all(torch.equal(q, snap[n]) for n, q in nets["fake_score"].named_parameters())


def test_preference_loss_matches_dpo_formula():
    """-log sigma(beta H(w, l)), H the difference of the Gaussian step policy's log-ratios
    against the reference, winner/loser = best/worst reward of G(x^i, t_1), re-derived here."""
    d, ctx = ctx_for("gmm", steps=2, teacher="exact")
    beta = 2.0
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "rl": "preference", "rl_every": 0, "rl_beta": beta,
                                            "score_ema": None})
    obj, nets = setup.objective, setup.nets
    p = obj.process
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    obj(nets, b, torch.Generator().manual_seed(0), phase="generator")  # stage 2 starts: reference = generator
    for q, r in zip(nets["reference"].parameters(), nets["student"].parameters()):
        assert torch.equal(q, r)
    perturb(nets["student"], 0.05, seed=4)  # the policy has moved away from the reference
    for seed in range(1, 4):
        loss = obj(nets, b, torch.Generator().manual_seed(seed), phase="generator")
        terms = obj.preference_terms(nets, b, torch.Generator().manual_seed(seed))
        x_k, t_k, t1, cands = terms["x_k"], terms["t_k"], terms["t_next"], terms["candidates"]
        assert terms["k"] == 0 and cands.shape == (4, 16, 2)
        assert torch.allclose(t1, torch.full_like(t1, float(obj.grid[1])))
        with torch.no_grad():
            scores = torch.stack([d.reward(Batch(x=x0_of(nets["student"], p, c, t1))) for c in cands]).double()
        assert torch.allclose(scores, terms["scores"], atol=1e-5)
        win, lose = scores.argmax(0), scores.argmin(0)
        assert torch.equal(win, terms["win"]) and torch.equal(lose, terms["lose"])
        a, s = p.alpha(t1).float()[:, None], p.sigma(t1).double()
        m = x0_of(nets["student"], p, x_k, t_k)
        with torch.no_grad():
            m_ref = x0_of(nets["reference"], p, x_k, t_k)
        i = torch.arange(16)
        x_w, x_l = cands[win, i], cands[lose, i]

        def logratio(x):
            return -(((x - a * m) ** 2).sum(1) - ((x - a * m_ref) ** 2).sum(1)).double() / (2 * s ** 2)

        h = logratio(x_w) - logratio(x_l)
        valid = scores.max(0).values > scores.min(0).values
        expected = -torch.log(torch.sigmoid(beta * h)) * valid.double() * 16 / int(valid.sum())
        assert torch.allclose(loss.double(), expected, atol=1e-5, rtol=1e-4), (loss, expected)
        assert float(h.detach().abs().max()) > 1e-3
        for ga, gb in zip(params_grad(loss.mean(), nets["student"]), params_grad(expected.float().mean(), nets["student"])):
            assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-3)


def test_preference_updates_alternate_5_to_1_after_stage_2_starts():
    d, ctx = ctx_for("gmm", steps=2, teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "rl": "preference", "rl_start": 3, "score_ema": None})
    obj = setup.objective
    assert obj.rl_every == 5 and obj.rl_candidates == 4
    teacher, reference = Recorder(setup.nets["teacher"]), Recorder(setup.nets["reference"])
    nets = {**setup.nets, "teacher": teacher, "reference": reference}
    b = d.train_data()(8, torch.Generator().manual_seed(0))
    kinds = []
    for n in range(15):
        if n == 3:
            perturb(nets["student"], 0.05, seed=5)  # stage 1 moved the generator
            assert any(not torch.equal(q, r) for q, r in zip(reference.parameters(), nets["student"].parameters()))
        teacher.calls.clear(), reference.calls.clear()
        obj(nets, b, torch.Generator().manual_seed(n), phase="generator")
        if n == 3:  # the reference policy is the generator when stage 2 starts
            assert all(torch.equal(q, r) for q, r in zip(reference.parameters(), nets["student"].parameters()))
        kinds.append("p" if reference.calls else "d")
        assert bool(teacher.calls) != bool(reference.calls)
    assert "".join(kinds) == "ddd" + "dddddp" + "dddddp"
    assert int(setup.nets["flash_state"].generator_updates) == 15


def test_reward_ascent_variant_reaches_only_the_generator():
    d, ctx = ctx_for("gmm", teacher="exact")
    setup = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "rl": "reward_ascent", "reward_weight": 1.0, "reward_steps": 2,
                                            "gan_weight": 0.0, "score_ema": None})
    obj, nets = setup.objective, setup.nets
    plain = fd.FlashDMD(obj.process, obj.grid)
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    diff = obj(nets, b, torch.Generator().manual_seed(3), phase="generator") - plain(nets, b, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    k = obj._draw(0, obj.K, g)
    x0_g, _, _ = rollout(nets["student"], obj.process, obj.grid, b, g, step=k)
    assert torch.allclose(diff, -d.reward(Batch(x=x0_g.detach())), atol=1e-4)
    for m in nets.values():
        m.zero_grad(set_to_none=True)
    diff.sum().backward()
    sums = {n: sum(float(q.grad.abs().sum()) for q in m.parameters() if q.grad is not None) for n, m in nets.items()}
    assert sums["student"] > 0 and sums["fake_score"] == 0 and sums["teacher"] == 0


def test_without_gan_ema_and_rl_it_is_dmd2():
    """gan_weight = 0, no blend, DMD2's two time-scale ratio: the losses equal DMD2's, draw for draw."""
    d, ctx = ctx_for("gmm", steps=3)
    ref = setup_method("dmd2", ctx, {"student": TINY["gmm"]})
    flash = setup_method("flash_dmd", ctx, {"student": TINY["gmm"], "generator_every": 5, "gan_weight": 0.0, "score_ema": None})
    assert flash.objective.dm_steps == 3 and flash.spec == ref.spec
    with torch.no_grad():
        for q in ref.nets["fake_score"].parameters():
            q.add_(0.01)
    b = d.train_data()(16, torch.Generator().manual_seed(0))
    for phase in ("fake", "generator"):
        for seed in range(3):
            la = ref.objective(ref.nets, b, torch.Generator().manual_seed(seed), phase=phase)
            lb = flash.objective(ref.nets, b, torch.Generator().manual_seed(seed), phase=phase)
            assert torch.allclose(la, lb, atol=1e-6, rtol=1e-5), (phase, la, lb)


class NoRewardToy(ToyDomain):
    reward = Domain.reward


def test_flash_dmd_bad_options():
    d, ctx = ctx_for("gmm")
    cases = [({"dm_steps": 0}, "dm_steps must be an integer in 1..2"),
             ({"dm_steps": 3}, "dm_steps must be an integer in 1..2"),
             ({"dm_steps": 1, "gan_weight": 0.0}, "with gan_weight=0 steps 1..1 would receive no loss"),
             ({"gan_weight": 0.1, "dm_steps": 2}, "gan_weight > 0 needs a low-noise step"),
             ({"combine": "mean"}, "unknown combine 'mean'; valid: sum, alternate"),
             ({"gan_loss": "wgan"}, "unknown gan_loss 'wgan'; valid: hinge, non_saturating"),
             ({"rl": "ppo"}, "unknown rl 'ppo'; valid: none, preference, reward_ascent"),
             ({"rl": "preference", "rl_steps": 2}, "rl_steps must be an integer in 1..1"),
             ({"rl": "preference", "rl_candidates": 1}, "rl_candidates must be an integer >= 2"),
             ({"rl": "preference", "rl_every": -1}, "rl_every must be an integer >= 0"),
             ({"rl": "preference", "rl_beta": 0.0}, "rl_beta must be > 0"),
             ({"rl": "preference", "rl_ratio_clip": 1.5}, r"rl_ratio_clip must be in \(0, 1\) or None"),
             ({"reward_weight": 0.1}, "reward_weight is the weight of rl='reward_ascent'"),
             ({"rl": "reward_ascent", "reward_steps": 0}, "reward_steps must be an integer in 1..2"),
             ({"score_ema": 1.0}, r"score_ema must be in \[0, 1\) or None"),
             ({"student": TINY["gmm"]}, "score_ema blends the student into the fake score"),
             ({"generator_every": 0}, "generator_every must be a positive integer"),
             ({"gan_weight": -0.1}, "gan_weight must be >= 0")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            setup_method("flash_dmd", ctx, opts)
    _, ctx1 = ctx_for("gmm", steps=1)
    with pytest.raises(ValueError, match="gan_weight > 0 needs a low-noise step"):
        setup_method("flash_dmd", ctx1, {"gan_weight": 0.1})
    with pytest.raises(ValueError, match="rl='preference' needs student_steps >= 2"):
        setup_method("flash_dmd", ctx1, {"rl": "preference"})
    _, ctx2 = ctx_for("gmm", domain_cls=NoRewardToy)
    with pytest.raises(ValueError, match="domain 'toy' defines no reward; use rl='none'"):
        setup_method("flash_dmd", ctx2, {"rl": "preference"})
    setup_method("flash_dmd", ctx2, {})  # distillation alone needs no reward
