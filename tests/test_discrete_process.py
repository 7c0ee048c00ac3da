"""Discrete processes (workbench/processes/discrete.py) and the MDLM ELBO objective, against
closed forms written here from the definitions, Monte-Carlo frequencies, Bayes' rule and the
exact law of a small Markov chain (tests/discrete_helpers.py)."""
import math

import pytest
import torch
from discrete_helpers import L, V, ChainDenoiser, ExactDenoiser, entropy_per_token, sample_chain

from workbench.losses import Batch, MaskedDiffusionELBO
from workbench.processes import DiscreteProcess, MaskedProcess, UniformProcess, categorical, rand64
from workbench.training import TrainConfig, train
from workbench.utils import per_sample_generators

F64 = torch.float64
PROCS = [MaskedProcess(5), MaskedProcess(5, "cosine"), UniformProcess(5), UniformProcess(5, "cosine", eps=0.01)]
IDS = ["masked-loglinear", "masked-cosine", "uniform-loglinear", "uniform-cosine"]


def test_interface_attributes():
    m, u = MaskedProcess(7), UniformProcess(7)
    assert isinstance(m, DiscreteProcess) and not m.continuous and m.mask_id == 7 and m.n_states == 8 and m.pad_id == 0
    assert isinstance(u, DiscreteProcess) and u.mask_id is None and u.n_states == 7 and u.vocab_size == 7
    with pytest.raises(ValueError, match="unknown discrete noise schedule 'linear'; valid: loglinear, cosine"):
        MaskedProcess(4, "linear")


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_schedules_match_mdlm_closed_forms(eps):
    t = torch.linspace(0, 1, 101, dtype=F64)
    ll, cs = MaskedProcess(4, "loglinear", eps), MaskedProcess(4, "cosine", eps)
    assert torch.allclose(ll.alpha(t), 1 - (1 - eps) * t, atol=1e-15)
    # MDLM CosineNoise: total noise -log(eps + (1 - eps) cos(pi t / 2)), alpha = exp(-total noise)
    assert torch.allclose(cs.alpha(t), torch.exp(torch.log(eps + (1 - eps) * torch.cos(t * math.pi / 2))), atol=1e-14)
    for p in (ll, cs):
        assert float(p.alpha(torch.tensor(0.0))) == 1.0 and abs(float(p.alpha(torch.tensor(1.0))) - eps) < 1e-15
        h = 1e-6
        tt = torch.linspace(0.01, 0.99, 50, dtype=F64)
        fd = (p.alpha(tt + h) - p.alpha(tt - h)) / (2 * h)
        assert torch.allclose(p.d_alpha(tt), fd, atol=1e-8)
        assert torch.allclose(p.t_of_alpha(p.alpha(tt)), tt, atol=1e-10)
    # MDLM's loss weight dsigma / expm1(sigma) of the log-linear schedule is 1 / t
    tt = torch.linspace(0.01, 1, 20, dtype=F64)
    assert torch.allclose(-ll.d_alpha(tt) / (1 - ll.alpha(tt)), 1 / tt, rtol=1e-12)


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_forward_marginal_matches_closed_form_and_monte_carlo(proc):
    """``marginal`` equals the definition written here, and ``add_noise`` frequencies over 6000
    draws per time match it (every cell within 5 standard errors)."""
    x0 = torch.tensor([[0, 1, 2, 3, 4, 2]])
    n = 6000
    for tv in (0.1, 0.5, 0.9):
        a = float(proc.alpha(torch.tensor(tv, dtype=F64)))
        want = torch.zeros(6, proc.n_states, dtype=F64)
        for i, k in enumerate(x0[0].tolist()):
            if proc.mask_id is not None:
                want[i, k], want[i, proc.mask_id] = a, 1 - a
            else:
                want[i] = (1 - a) / proc.vocab_size
                want[i, k] += a
        got = proc.marginal(x0, torch.tensor([tv]))[0]
        assert torch.allclose(got, want, atol=1e-14) and torch.allclose(got.sum(-1), torch.ones(6, dtype=F64))
        xt = proc.add_noise(x0.expand(n, 6), torch.full((n,), tv), torch.Generator().manual_seed(int(tv * 10)))
        freq = torch.nn.functional.one_hot(xt, proc.n_states).to(F64).mean(0)
        se = (want * (1 - want) / n).sqrt().clamp_min(1e-12)
        assert bool(((freq - want).abs() <= 5 * se + 1e-12).all()), (tv, (freq - want).abs().max())


@pytest.mark.parametrize("cls", [MaskedProcess, UniformProcess])
def test_add_noise_endpoints_identity_and_prior(cls):
    proc = cls(4, eps=0.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 4, (3000, 6), generator=g)
    assert torch.equal(proc.add_noise(x0, torch.zeros(3000), g), x0)                  # t = 0: identity
    x1 = proc.add_noise(x0, torch.ones(3000), g)                                       # t = 1: the prior
    if proc.mask_id is not None:
        assert torch.equal(x1, proc.prior((3000, 6)))
    else:  # uniform tokens, independent of x0: every (x0, x1) cell near 1/16 (3 s.e.)
        joint = torch.zeros(4, 4, dtype=F64)
        joint.index_put_((x0.flatten(), x1.flatten()), torch.ones(x0.numel(), dtype=F64), accumulate=True)
        joint /= x0.numel()
        assert bool(((joint - 1 / 16).abs() < 3 * math.sqrt(1 / 16 * 15 / 16 / x0.numel())).all())
        prior = proc.prior((3000, 6), generator=g)
        freq = torch.bincount(prior.flatten(), minlength=4) / prior.numel()
        assert bool(((freq - 0.25).abs() < 3 * math.sqrt(0.25 * 0.75 / prior.numel())).all())


def _kernel(proc, t, s):
    """``K[z, y] = q(x_t = y | x_s = z)`` written from the definition of the process."""
    a = float(proc.alpha(torch.tensor(t, dtype=F64)) / proc.alpha(torch.tensor(s, dtype=F64)))
    S = proc.n_states
    if proc.mask_id is not None:
        K = torch.zeros(S, S, dtype=F64)
        for z in range(S - 1):
            K[z, z], K[z, S - 1] = a, 1 - a
        K[S - 1, S - 1] = 1.0
        return K
    return a * torch.eye(S, dtype=F64) + (1 - a) / S


def _clean_marginals(proc, t):
    """``M[k, y] = q(x_t = y | x0 = k)`` for every real ``k`` (``[V, S]``)."""
    return proc.marginal(torch.arange(proc.vocab_size)[None], torch.tensor([t], dtype=F64))[0]


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_posterior_is_bayes_rule_averaged_over_x0(proc):
    """``posterior(p, x_t, t, s)`` = ``sum_k p_k q(x_t | x_s) q(x_s | x0=k) / q(x_t | x0=k)`` with
    every factor built here (Chapman-Kolmogorov checked first), sums to 1, and SEDD's Tweedie form
    ``staggered_score(ratios) * transp_transition`` gives the same transition."""
    g = torch.Generator().manual_seed(1)
    B, N, Vv, S = 3, 7, proc.vocab_size, proc.n_states
    for t, s in ((0.9, 0.6), (0.5, 0.1), (0.3, 0.0)):
        Ms, Mt, K = _clean_marginals(proc, s), _clean_marginals(proc, t), _kernel(proc, t, s)
        assert torch.allclose(Ms @ K, Mt, atol=1e-14)
        p = torch.softmax(torch.randn(B, N, Vv, generator=g, dtype=F64) * 2, -1)
        x_t = torch.randint(0, S, (B, N), generator=g)
        if proc.mask_id is not None:   # consistent SUBS input: an unmasked x_t has p = its one-hot
            p = torch.where((x_t < Vv)[..., None], torch.nn.functional.one_hot(x_t.clamp(max=Vv - 1), Vv).to(F64), p)
        want = torch.zeros(B, N, S, dtype=F64)
        for b in range(B):
            for i in range(N):
                y = int(x_t[b, i])
                for k in range(Vv):
                    if Mt[k, y] > 0:
                        want[b, i] += p[b, i, k] * Ms[k] * K[:, y] / Mt[k, y]
        got = proc.posterior(p, x_t, t, s)
        assert got.dtype == F64 and torch.allclose(got, want, atol=1e-12)
        assert torch.allclose(got.sum(-1), torch.ones(B, N, dtype=F64), atol=1e-12)
        tweedie = proc.staggered_score(proc.ratios(p, x_t, t), t, s) * proc.transp_transition(x_t, t, s)
        assert torch.allclose(tweedie, want, atol=1e-12)


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_ratios_and_reverse_rates_reverse_the_master_equation(proc):
    """One position with data law ``pi``: ``p_t = pi M_t``; with the exact ``p(x0 | x_t = x)``,
    ``ratios`` are ``p_t(y) / p_t(x)`` and ``reverse_rates`` satisfy the reverse-time master
    equation ``-dp_t(x)/dt = sum_y R(y -> x) p_t(y) - R(x -> y) p_t(x)`` (finite differences)."""
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=F64)
    S = proc.n_states
    xs = torch.arange(S)[None]                                                  # every state, N = S
    for t in (0.2, 0.5, 0.8):
        pt = pi @ _clean_marginals(proc, t)
        post = pi[:, None] * _clean_marginals(proc, t) / pt                     # [V, S]: p(x0=k | x_t=y)
        p = post.T[None]                                                        # [1, S, V]
        r, want = proc.ratios(p, xs, t)[0], pt[None, :] / pt[:, None]
        if proc.mask_id is None:
            assert torch.allclose(r, want, atol=1e-12)
        else:  # SUBS: an unmasked position's x0 is its token, so only r at x_t itself is identified there
            assert torch.allclose(r[-1], want[-1], atol=1e-12) and torch.allclose(r.diagonal(), torch.ones(S, dtype=F64))
        R = proc.reverse_rates(p, xs, t)[0]                                     # R[x, y]
        assert torch.allclose(R.diagonal(), torch.zeros(S, dtype=F64)) and bool((R >= 0).all())
        h = 1e-6
        dp = (pi @ _clean_marginals(proc, t + h) - pi @ _clean_marginals(proc, t - h)) / (2 * h)
        inflow, outflow = (R * pt[:, None]).sum(0), R.sum(1) * pt
        assert torch.allclose(-dp, inflow - outflow, atol=1e-7)


@pytest.mark.parametrize("cls", [MaskedProcess, UniformProcess])
def test_padding_and_per_sample_generators(cls):
    proc = cls(6, pad_id=2)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6, [1] * 7 + [0]])
    gens = lambda idx: [torch.Generator().manual_seed(50 + i) for i in idx]  # noqa: E731
    x1 = proc.prior((4, 8), generator=gens(range(4)), mask=mask)
    assert bool((x1[mask == 0] == 2).all())
    x0 = torch.randint(0, 6, (4, 8), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    xt = proc.add_noise(x0, t, gens(range(4)), mask)
    assert bool((xt[mask == 0] == 2).all()) and bool((xt[mask == 1] < proc.n_states).all())
    # sample i depends only on generator i, whatever the batch
    assert torch.equal(proc.add_noise(x0[1:3], t[1:3], gens(range(1, 3)), mask[1:3]), xt[1:3])
    assert torch.equal(proc.prior((2, 8), generator=gens(range(1, 3)), mask=mask[1:3]), x1[1:3])


def test_categorical_is_exact_float64_and_per_sample():
    probs = torch.tensor([0.5, 0.3, 0.0, 0.199, 0.001], dtype=F64)
    n = 40000
    draws = categorical(probs.expand(n, 5).clone(), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).to(F64) / n
    assert int((draws == 2).sum()) == 0                                         # zero mass: never drawn
    assert bool(((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-12).all())
    # unnormalised input is fine
    assert torch.equal(categorical(3 * probs.expand(n, 5).clone(), torch.Generator().manual_seed(0)), draws)
    # the uniforms behind the Gumbel / exponential race have float64 resolution: float32 uniforms are all
    # multiples of 2^-24 (Gumbel noise capped near 16.6, Zheng et al. 2024), these are not
    u = rand64((1000,), torch.Generator().manual_seed(1))
    assert u.dtype == F64 and float(((u * 2**24) % 1 != 0).double().mean()) > 0.99
    # per-sample generators
    p = torch.softmax(torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(2), dtype=F64), -1)
    gens = lambda idx: [torch.Generator().manual_seed(10 + i) for i in idx]  # noqa: E731
    assert torch.equal(categorical(p, gens(range(4)))[1:3], categorical(p[1:3], gens(range(1, 3))))
    with pytest.raises(ValueError, match="non-negative probabilities with a positive sum"):
        categorical(torch.zeros(2, 3), None)


# -- the MDLM ELBO objective -------------------------------------------------------------------------
def _uniform_logits(x_t, t, mask=None, cond=None):
    return torch.zeros(*x_t.shape, V)


def test_elbo_of_exact_denoiser_is_the_entropy_and_beats_uniform_logits():
    """With the exact denoiser the masked-diffusion ELBO is tight: its Monte-Carlo mean over chain
    samples is the chain's entropy per token (0.8815 nats, by enumeration; the any-order
    autoregressive identity), below the uniform-logits model's log V = 1.386."""
    proc = MaskedProcess(V, eps=0.0)
    obj = MaskedDiffusionELBO(proc, t_eps=1e-4)
    g = torch.Generator().manual_seed(0)
    n = 32000
    x0 = sample_chain(n, g)
    exact = obj({"model": ChainDenoiser(proc)}, Batch(x=x0), torch.Generator().manual_seed(1))
    unif = obj({"model": _uniform_logits}, Batch(x=x0), torch.Generator().manual_seed(1))
    assert exact.shape == (n,) and bool(torch.isfinite(exact).all())
    H, se = entropy_per_token(), float(exact.std()) / math.sqrt(n)
    assert abs(float(exact.mean()) - H) < 4 * se + 2e-3, (float(exact.mean()), H, se)
    assert abs(float(unif.mean()) - math.log(V)) < 4 * float(unif.std()) / math.sqrt(n) + 2e-3
    assert float(exact.mean()) < float(unif.mean()) - 0.3


def test_elbo_masks_padding_and_matches_its_formula():
    proc = MaskedProcess(V)
    obj = MaskedDiffusionELBO(proc)
    x0 = sample_chain(16, torch.Generator().manual_seed(0))
    mask = torch.ones(16, L)
    mask[::2, 4:] = 0
    seen = {}

    def model(x_t, t, mask=None, cond=None):
        seen["x_t"], seen["t"] = x_t, t
        out = torch.randn(*x_t.shape, V, generator=torch.Generator().manual_seed(3))
        return torch.where(mask.bool()[..., None], out, torch.full_like(out, 1e4)) if mask is not None else out

    loss = obj(model, Batch(x=x0, mask=mask), torch.Generator().manual_seed(5))
    x_t, t = seen["x_t"], seen["t"].double()
    assert bool((x_t[mask == 0] == proc.pad_id).all())
    # the formula, recomputed: weight * sum over masked real positions of -log p(x0) / number of real tokens
    logp = torch.log_softmax(torch.randn(16, L, V, generator=torch.Generator().manual_seed(3)), -1).gather(-1, x0[..., None])[..., 0]
    masked = (x_t == proc.mask_id) & mask.bool()
    want = (1 / t) * (1 - 1e-3) / (1 - 1e-3) * (-(logp * masked).sum(1)) / mask.sum(1)
    assert torch.allclose(loss.double(), want, rtol=1e-5)
    # padded tokens of x0 do not matter
    x0b = torch.where(mask.bool(), x0, (x0 + 1) % V)
    assert torch.equal(obj(model, Batch(x=x0b, mask=mask), torch.Generator().manual_seed(5)), loss)
    # uniform process: the named cross-entropy variant (not MDLM's ELBO), over every real position
    ce = MaskedDiffusionELBO(UniformProcess(V))
    assert ce.objective == "cross_entropy" and ce(model, Batch(x=x0, mask=mask), torch.Generator().manual_seed(5)).shape == (16,)
    with pytest.raises(ValueError, match="needs an absorbing"):
        MaskedDiffusionELBO(UniformProcess(V), "elbo")


class TinyNet(torch.nn.Module):
    """Embedding + time + a bidirectional context of the neighbours -> logits over V clean tokens."""

    def __init__(self, width=32):
        super().__init__()
        self.emb = torch.nn.Embedding(V + 1, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3 * width + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, V))

    def forward(self, x_t, t, mask=None, cond=None):
        h = self.emb(x_t)
        left = torch.nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]
        right = torch.nn.functional.pad(h, (0, 0, 0, 1))[:, 1:]
        tt = t[:, None, None].expand(*x_t.shape, 1)
        return self.mlp(torch.cat([h, left, right, tt], -1))


def test_tiny_model_trains_through_the_shared_loop():
    """100 steps of ``workbench.training.train`` on chain data: the ELBO falls (first 20 vs last
    20 logged steps) and ends below the uniform-logits value log V."""
    torch.manual_seed(0)
    proc = MaskedProcess(V)
    data = lambda n, g: Batch(x=sample_chain(n, g))  # noqa: E731
    cfg = TrainConfig(steps=100, batch_size=64, lr=3e-3, log_every=5, ema_decay=0.9, progress=False, ckpt_minutes=None)
    res = train(MaskedDiffusionELBO(proc), {"model": TinyNet()}, data, cfg)
    losses = [h["main"] for h in res.history]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    assert sum(losses[-4:]) / 4 < math.log(V), losses


def test_chain_denoiser_equals_enumeration():
    """The forward-backward denoiser used by the sampler tests equals brute-force enumeration."""
    for proc in (MaskedProcess(V), UniformProcess(V)):
        g = torch.Generator().manual_seed(0)
        x0 = sample_chain(300, g)
        t = torch.rand(300, generator=g, dtype=F64)
        xt = proc.add_noise(x0, t, g)
        assert torch.allclose(ExactDenoiser(proc)(xt, t).exp(), ChainDenoiser(proc)(xt, t).exp(), atol=1e-12)


def test_per_sample_generator_list_helpers():
    gens = per_sample_generators(0, 3)
    assert rand64((3, 4), gens).shape == (3, 4)
    with pytest.raises(ValueError, match="got 3 per-sample generators for a batch of 2"):
        rand64((2, 4), gens)


def test_discrete_process_is_an_abstract_interface():
    """The base class declares the interface (abstract methods), so a subclass missing a piece
    cannot be built; both shipped processes implement all of it."""
    import pytest as _pytest

    from workbench.processes import DiscreteProcess, MaskedProcess, UniformProcess

    with _pytest.raises(TypeError, match="abstract"):
        DiscreteProcess(4)
    assert not MaskedProcess.__abstractmethods__ and not UniformProcess.__abstractmethods__
    assert {"prior", "add_noise", "marginal", "posterior", "reverse_rates"} <= DiscreteProcess.__abstractmethods__
