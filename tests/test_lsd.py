"""LSD / LSD+ (workbench/samplers/lsd.py, workbench/distill/lsd.py) on the exact denoiser of a
small Markov chain (tests/discrete_helpers.py): identity coefficients are the base sampler
exactly, the transition is a valid distribution whose gradient reaches the coefficients and the
times, training runs on the shared loop and its file works as ``sampler=lsd:PATH``."""
import pytest
import torch
from discrete_helpers import L, PROBS, SEQS, V, ChainDenoiser, mean_pair_tv

import workbench
from workbench.checkpoint import CheckpointError
from workbench.distill.lsd import LSDObjective, LSDParams, LSDPathKLObjective
from workbench.losses import Batch
from workbench.processes import MaskedProcess
from workbench.samplers import DiscreteModelFn, get
from workbench.samplers.lsd import lsd_transition

PROC = MaskedProcess(V)


def _run(sampler, steps, seed=0, n=300, **kw):
    g = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return workbench.run_sampler(ChainDenoiser(PROC), PROC, PROC.prior((n, L)), sampler=sampler, steps=steps, generator=g, **kw).x


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_identity_coefficients_are_the_base_sampler_exactly(steps):
    """c = 1: base tau_leaping draws the same tokens as the tau_leaping sampler; base euler on the
    log-linear schedule is MDLM's ancestral step (dt R = (t - s) / t)."""
    assert torch.equal(_run("lsd", steps, base="tau_leaping", coeffs=[1.0] * steps), _run("tau_leaping", steps))
    a, b = _run("lsd", steps), _run("mdlm_ancestral", steps)
    assert (a == b).float().mean() > 0.999


def test_coefficients_change_the_sampler_and_the_transition_is_a_distribution():
    x = PROC.prior((50, L))
    x[:, :3] = torch.randint(0, V, (50, 3))
    probs = DiscreteModelFn(ChainDenoiser(PROC), PROC)(x, 0.6)
    for c in (0.5, 1.0, 2.0):
        for base in ("euler", "tau_leaping"):
            P = lsd_transition(PROC, probs, x, 0.6, 0.3, c, base)
            assert bool((P >= 0).all()) and torch.allclose(P.sum(-1), torch.ones(50, L, dtype=torch.float64))
            assert torch.equal(P[:, :3].argmax(-1), x[:, :3])                 # unmasked tokens are carried
    last = lsd_transition(PROC, probs, x, 0.2, 0.0, 2.0)
    q = probs[:, 3:] ** 2
    assert torch.allclose(last[:, 3:, :V] / last[:, 3:, :V].sum(-1, keepdim=True), q / q.sum(-1, keepdim=True))
    assert not torch.equal(_run("lsd", 4, coeffs=[3.0] * 4), _run("lsd", 4))
    with pytest.raises(ValueError, match="LSD has 2 coefficients but the grid has 4 steps; pass steps=2"):
        _run("lsd", 4, coeffs=[1.0, 1.0])


def test_euler_step_is_the_official_formula():
    """The official ``EulerScheduler.step`` with ``coeffs[i]`` on the log-score: at a masked
    position ``P(y) = dt sigma(t) exp(c (log(alpha / (1 - alpha)) + log p_y))`` for real ``y``,
    ``P(mask) = 1 - sum``, ``sigma = -alpha' / alpha``; re-derived here from the schedule."""
    x = PROC.prior((20, L))
    x[:, :2] = torch.randint(0, V, (20, 2))
    probs = DiscreteModelFn(ChainDenoiser(PROC), PROC)(x, 0.7)
    t, s, eps = 0.7, 0.55, PROC.eps
    alpha, d_alpha = 1 - (1 - eps) * t, -(1 - eps)
    for c in (0.7, 1.0, 1.3):
        score = alpha / (1 - alpha) * probs[:, 2:]
        jump = (t - s) * (-d_alpha / alpha) * score ** c
        want = torch.cat([jump, 1 - jump.sum(-1, keepdim=True)], -1)
        got = lsd_transition(PROC, probs, x, t, s, c, "euler")
        assert torch.allclose(got[:, 2:], want, rtol=1e-10, atol=1e-14), c
        tau = lsd_transition(PROC, probs, x, t, s, c, "tau_leaping")[:, 2:]
        rate = jump / (t - s)
        p_jump = 1 - torch.exp(-(t - s) * rate.sum(-1, keepdim=True))
        assert torch.allclose(tau[..., :V], p_jump * rate / rate.sum(-1, keepdim=True), rtol=1e-10)


def test_gradient_reaches_coefficients_and_times():
    params = LSDParams(4, learn_times=True)
    ts = params.grid()
    assert torch.allclose(ts, torch.linspace(1, 0, 5, dtype=torch.float64)) and ts[0] == 1 and ts[-1] == 0
    obj = LSDObjective(PROC, teacher_steps=16, base="euler")
    nets = {"teacher": ChainDenoiser(PROC), "sampler": params}
    loss = obj(nets, Batch(x=PROC.prior((64, L)), mask=None), torch.Generator().manual_seed(0))
    assert loss.shape == (64,) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert params.coeffs.grad is not None and bool(params.coeffs.grad.abs().sum() > 0)
    assert params.time_logits.grad is not None and bool(params.time_logits.grad.abs().sum() > 0)


def test_training_lowers_the_objective_and_the_few_step_error():
    """Adam on the coefficients of a 2-step sampler of the exact chain denoiser against a 32-step
    teacher: the objective falls and the samples' pair-law error does not grow."""
    torch.manual_seed(0)
    params = LSDParams(2, learn_times=True)
    obj = LSDObjective(PROC, teacher_steps=32, base="euler")
    nets = {"teacher": ChainDenoiser(PROC), "sampler": params}
    opt = torch.optim.Adam(params.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        loss = obj(nets, Batch(x=PROC.prior((256, L)), mask=None), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first, (first, last)
    base = mean_pair_tv(_run("lsd", 2, n=4000))
    tuned = mean_pair_tv(_run("lsd", 2, n=4000, coeffs=params.coeffs.tolist(), timesteps=params.grid().tolist()))
    print(f"LSD+ 2 steps: objective {first:.4f} -> {last:.4f}; pair TV base {base:.4f}, tuned {tuned:.4f}")
    assert tuned < base + 0.01


def _path_kl(params, teacher_steps, B=64, seed=0):
    obj = LSDPathKLObjective(PROC, teacher_steps=teacher_steps, base="euler")
    return obj({"teacher": ChainDenoiser(PROC), "sampler": params}, Batch(x=PROC.prior((B, L)), mask=None), torch.Generator().manual_seed(seed))


def test_path_kl_is_exactly_zero_when_the_teacher_is_the_student():
    """``loss=path_kl`` with c = 1 and one teacher sub-step per student step: the student's
    transition IS the teacher's, so every sampled log-ratio, the loss and its gradient are 0."""
    params = LSDParams(3, learn_times=True)
    loss = _path_kl(params, teacher_steps=3)
    loss.mean().backward()
    assert float(loss.detach().abs().max()) < 1e-12
    assert float(params.coeffs.grad.abs().max()) < 1e-12 and float(params.time_logits.grad.abs().max()) < 1e-12
    loss = _path_kl(LSDParams(3), teacher_steps=24)              # a many-step teacher: a positive KL
    assert float(loss.detach().mean()) > 0.01


def test_token_path_kl_with_a_tempered_teacher():
    """``token_path_kl`` scores only the tokens given the student's unmasked set: zero (loss and
    gradient) when the student's power equals the teacher's (``teacher_coeff``) and one teacher
    sub-step per student step; positive for a many-step teacher; ``path_kl`` refuses a tempered
    teacher, whose unmasking times have no closed form."""
    params = LSDParams(3, learn_times=True)
    params.coeffs.data.fill_(1.15)
    obj = LSDPathKLObjective(PROC, teacher_steps=3, base="euler", tokens_only=True, teacher_coeff=1.15)
    loss = obj({"teacher": ChainDenoiser(PROC), "sampler": params}, Batch(x=PROC.prior((64, L)), mask=None), torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert float(loss.detach().abs().max()) < 1e-12 and float(params.coeffs.grad.abs().max()) < 1e-12
    obj = LSDPathKLObjective(PROC, teacher_steps=24, base="euler", tokens_only=True, teacher_coeff=1.15)
    assert float(obj({"teacher": ChainDenoiser(PROC), "sampler": LSDParams(3)}, Batch(x=PROC.prior((64, L)), mask=None),
                     torch.Generator().manual_seed(0)).detach().mean()) > 0.01
    with pytest.raises(ValueError, match="path_kl needs teacher_coeff=1"):
        LSDPathKLObjective(PROC, teacher_steps=24, base="euler", teacher_coeff=1.15)
    from workbench.distill.lsd import LSDOptions

    with pytest.raises(ValueError, match="use loss=token_path_kl or cross_entropy"):
        LSDOptions(loss="path_kl", teacher_coeff=1.15)
    with pytest.raises(ValueError, match="loss"):
        LSDOptions(loss="kl")


def test_cross_entropy_teacher_is_tempered_by_teacher_coeff():
    """The cross-entropy objective's teacher runs the ``lsd`` step with ``c = teacher_coeff``:
    with one sub-step per student step and the same power in the student, the target IS the
    student's own draw distribution, so the objective equals the entropy of that transition and
    its gradient vanishes in expectation; a different teacher power moves it."""
    torch.manual_seed(0)
    x = Batch(x=PROC.prior((2000, L)), mask=None)
    same = LSDObjective(PROC, teacher_steps=2, base="euler", teacher_coeff=1.5)
    params = LSDParams(2)
    params.coeffs.data.fill_(1.5)
    same(dict(teacher=ChainDenoiser(PROC), sampler=params), x, torch.Generator().manual_seed(0)).mean().backward()
    g_same = params.coeffs.grad.clone()
    params.coeffs.grad = None
    other = LSDObjective(PROC, teacher_steps=2, base="euler", teacher_coeff=1.0)
    other(dict(teacher=ChainDenoiser(PROC), sampler=params), x, torch.Generator().manual_seed(0)).mean().backward()
    assert float(g_same.abs().max()) < 0.02 and float(params.coeffs.grad[0]) > 0.02, (g_same, params.coeffs.grad)


def test_path_kl_teacher_probability_is_the_exact_joint_transition():
    """The teacher's ``log p_k(y | x)`` (many sub-steps, revealed tokens conditioning later ones)
    averaged in probability over its sub-step draws equals the exact reverse transition of the
    chain, enumerated here: ``p(y | x) = u^a (1 - u)^b P(x0_U = y_U | x)``."""
    obj = LSDPathKLObjective(PROC, teacher_steps=512, base="euler")
    x = torch.full((1, L), PROC.mask_id)
    x[0, 0] = 1
    y = x.clone()
    y[0, 1], y[0, 2], y[0, 4] = 2, 3, 0                          # unmask 3 positions, keep 2 masked
    t, s = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    u = (t - s) / t
    ok = (SEQS[:, 0] == 1)
    cond = PROBS[ok].sum()
    hit = ok & (SEQS[:, 1] == 2) & (SEQS[:, 2] == 3) & (SEQS[:, 4] == 0)
    exact = u ** 3 * (1 - u) ** 2 * PROBS[hit].sum() / cond
    n = 400
    xs, ys = x.expand(n, L).clone(), y.expand(n, L).clone()
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    model = DiscreteModelFn(ChainDenoiser(PROC), PROC, generator=gens)
    lp = obj._teacher_logp(model, xs, ys, t, s, 512 // 1, xs == PROC.mask_id)
    est = lp.exp().mean()
    assert abs(float(est / exact) - 1) < 0.03, (float(est), float(exact))
    factorised = u ** 3 * (1 - u) ** 2 * torch.exp(model(x, 0.8)[0, [1, 2, 4], [2, 3, 0]].log().sum())
    assert abs(float(factorised / exact) - 1) > 0.1                # what a one-step student would say


def test_path_kl_training_sharpens_and_lowers_the_few_step_error():
    """The joint objective finds what the per-position one cannot: on the strongly correlated
    chain, 2-step LSD+ trained with ``path_kl`` raises a coefficient above 1 and lowers the pair-law
    error of the samples clearly; the cross-entropy objective keeps c ~ 1."""
    torch.manual_seed(0)
    params = LSDParams(2, learn_times=True)
    obj = LSDPathKLObjective(PROC, teacher_steps=32, base="euler")
    opt = torch.optim.Adam(params.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = obj({"teacher": ChainDenoiser(PROC), "sampler": params}, Batch(x=PROC.prior((128, L)), mask=None), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    base = mean_pair_tv(_run("lsd", 2, n=4000))
    tuned = mean_pair_tv(_run("lsd", 2, n=4000, coeffs=params.coeffs.tolist(), timesteps=params.grid().tolist()))
    print(f"path_kl LSD+ 2 steps: coeffs {params.coeffs.tolist()}, pair TV base {base:.4f}, tuned {tuned:.4f}")
    assert float(params.coeffs.detach().max()) > 1.1
    assert tuned < base - 0.02, (base, tuned)


def test_distill_writes_a_small_sampler_file_usable_as_lsd_path(tmp_path):
    """`distill method=lsd_plus` on the sequences domain with a tiny untrained teacher: the file
    holds only the coefficients and the grid, and `sampler=lsd:PATH` reproduces the generator."""
    pytest.importorskip("pyrodigal", reason="the DNA data set ships with pip pyrodigal (the `sequences` extra)")
    from discrete_helpers import tiny_dna_teacher
    from workbench.runner import distill, generate

    dom, teacher = tiny_dna_teacher(tmp_path / "teacher.safetensors")
    res = distill(dom, method="lsd_plus", student_steps=3, out_dir=tmp_path / "lsd", teacher=str(teacher),
                  method_options={"teacher_steps": 6}, train={"steps": 3, "batch_size": 4, "progress": False})
    path = res["generator"]
    from safetensors.torch import load_file

    assert set(load_file(path)) == {"coeffs", "timesteps"} and (tmp_path / "lsd" / "generator.safetensors").stat().st_size < 2000
    spec = get(f"lsd:{path}")
    assert spec.timesteps[0] == 1.0 and spec.timesteps[-1] == 0.0 and len(spec.options["coeffs"]) == 3
    a = generate(dom, sampler=f"lsd:{path}", steps=3, n=4, out_dir=tmp_path / "g1", teacher=str(teacher), progress=False)
    b = generate(dom, steps=3, n=4, out_dir=tmp_path / "g2", generator=path, progress=False)
    x1 = (tmp_path / "g1" / "samples" / "samples.fasta").read_text()
    assert x1 == (tmp_path / "g2" / "samples" / "samples.fasta").read_text() and a["nfe"] == b["nfe"] == 3
    with pytest.raises(ValueError, match="carries its learned 3-step grid; pass steps=3"):
        generate(dom, sampler=f"lsd:{path}", steps=5, n=2, out_dir=tmp_path / "g3", teacher=str(teacher), progress=False)
    with pytest.raises(CheckpointError, match="LSD sampler file not found"):
        get(f"lsd:{tmp_path / 'nope.safetensors'}")
    with pytest.raises(CheckpointError, match="is not an LSD sampler file"):
        get(f"lsd:{teacher}")
