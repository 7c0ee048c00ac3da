"""LSD / LSD+ (workbench/samplers/lsd.py, workbench/distill/lsd.py) on the exact denoiser of a
small Markov chain (tests/discrete_helpers.py): identity coefficients are the base sampler
exactly, the transition is a valid distribution whose gradient reaches the coefficients and the
times, training runs on the shared loop and its file works as ``sampler=lsd:PATH``."""
import pytest
import torch
from discrete_helpers import L, V, ChainDenoiser, mean_pair_tv

import workbench
from workbench.checkpoint import CheckpointError
from workbench.distill.lsd import LSDObjective, LSDParams
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
