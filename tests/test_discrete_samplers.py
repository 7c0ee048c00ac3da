"""Discrete samplers (workbench/samplers: mdlm_ancestral, mdlm_cached, tau_leaping, tweedie,
maskgit) against the exact law of a small Markov chain (tests/discrete_helpers.py; exact
denoiser by enumeration / forward-backward), plus padding, seeding, NFE and dispatch."""
import math

import pytest
import torch
from discrete_helpers import L, V, ChainDenoiser, mean_pair_tv, pair_counts, pair_marginal
from scipy.stats import chisquare

import workbench
from workbench.processes import MaskedProcess, UniformProcess, VPLinear
from workbench.samplers import REGISTRY, SAMPLERS, DiscreteModelFn, available, get
from workbench.samplers.maskgit import mask_ratio

MASKED, UNIFORM = MaskedProcess(V), UniformProcess(V)
#: samplers that need nothing from the caller (svdd needs a reward: tests/test_svdd.py)
CASES = [(MASKED, s) for s in available(process=MASKED) if not get(s).needs] + \
    [(UNIFORM, s) for s in available(process=UNIFORM) if not get(s).needs]
IDS = [f"{'masked' if p.absorbing else 'uniform'}-{s}" for p, s in CASES]
#: the samplers that sample the model's law as steps grow (maskgit's confidence order does not)
LAW = [(p, s) for p, s in CASES if s != "maskgit"]
LAW_IDS = [f"{'masked' if p.absorbing else 'uniform'}-{s}" for p, s in LAW]
PAIRS = [(0, 1), (2, 3), (4, 5), (1, 4)]


def _run(proc, name, n, steps, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    model = ChainDenoiser(proc)
    out = workbench.run_sampler(model, proc, proc.prior((n, L), generator=g), sampler=name, steps=steps, generator=g, **kw)
    assert out.nfe == model.calls
    return out


def test_registry_lists_discrete_samplers_by_state():
    assert available(state="discrete") == ["lsd", "maskgit", "mdlm_ancestral", "mdlm_cached", "svdd", "tau_leaping", "tweedie"]
    assert not set(available()) & set(available(state="discrete"))           # the default stays continuous
    assert set(available(None)) == set(REGISTRY) and set(SAMPLERS) == set(available())
    assert available(process=UNIFORM) == ["mdlm_ancestral", "tau_leaping", "tweedie"]
    assert get("maskgit").state == "discrete" and get("maskgit").requires == ("absorbing",) and get("euler").state == "continuous"
    assert "euler" not in available(process=MASKED) and "mdlm_ancestral" not in available(process=VPLinear())


@pytest.mark.parametrize("proc,name", LAW, ids=LAW_IDS)
def test_many_step_samplers_recover_the_markov_chain(proc, name):
    """64 steps, 2000 samples: chi-square of four pair laws (three adjacent, one at distance 3)
    against the exact chain, Bonferroni level 1e-3; the negative control below shows power."""
    x = _run(proc, name, 2000, 64).x
    assert x.dtype == torch.long and bool((x < V).all())
    for i, j in PAIRS:
        obs, exp = pair_counts(x, i, j).flatten(), pair_marginal(i, j).flatten() * x.shape[0]
        p = chisquare(obs.numpy(), exp.numpy()).pvalue
        assert p > 1e-3 / len(PAIRS), f"{name}: pair {(i, j)} chi-square p = {p:.2e}"


def test_chi_square_has_power_against_the_one_step_sampler():
    """One step draws every position independently from its marginal: the pair test rejects it."""
    x = _run(MASKED, "mdlm_ancestral", 2000, 1).x
    obs, exp = pair_counts(x, 0, 1).flatten(), pair_marginal(0, 1).flatten() * 2000
    assert chisquare(obs.numpy(), exp.numpy()).pvalue < 1e-10


@pytest.mark.parametrize("proc,name", [(MASKED, "mdlm_ancestral"), (MASKED, "tau_leaping"), (UNIFORM, "mdlm_ancestral"),
                                       (UNIFORM, "tau_leaping")], ids=["masked-ancestral", "masked-tau", "uniform-ancestral", "uniform-tau"])
def test_few_step_error_is_measured_and_falls_with_steps(proc, name):
    """Mean total variation of the adjacent-pair laws (4000 samples, exact denoiser) at 2, 4, 8
    steps: the factorised few-step error is large at 2 steps and halves with each doubling
    (measured: masked ancestral about 0.17 / 0.08 / 0.04; the Monte-Carlo floor is about 0.02)."""
    tv = {k: mean_pair_tv(_run(proc, name, 4000, k, seed=k).x) for k in (2, 4, 8)}
    print(f"{name} on {type(proc).__name__}: pair TV {tv}")
    assert tv[2] > 0.1 and tv[2] > 1.4 * tv[4] and tv[4] > 1.2 * tv[8], tv


@pytest.mark.parametrize("proc,name", CASES, ids=IDS)
def test_padding_stays_padding_and_every_real_token_is_clean(proc, name):
    proc = type(proc)(V, pad_id=3)
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2, [1] + [0] * 8])
    table = torch.randn(9, V, generator=torch.Generator().manual_seed(0))

    def model(x_t, t, mask=None, cond=None):
        assert bool((x_t[mask == 0] == 3).all()), "the model saw a padded position that is not pad_id"
        return table.expand(x_t.shape[0], 9, V) + 0.1 * x_t[..., None].float()

    g = [torch.Generator().manual_seed(i) for i in range(4)]
    for steps in (1, 3, 10):
        x = workbench.sample(model, proc, proc.prior((4, 9), generator=g, mask=mask), sampler=name, steps=steps, mask=mask, generator=g)
        assert bool((x[mask == 0] == 3).all()) and bool((x[mask == 1] < V).all()), (name, steps, x)


@pytest.mark.parametrize("proc,name", CASES, ids=IDS)
def test_sample_i_depends_only_on_its_generator(proc, name):
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    mask = torch.ones(5, L)
    mask[1, 4:] = 0
    x_T = proc.prior((5, L), generator=gens(range(5)), mask=mask)
    a = workbench.sample(ChainDenoiser(proc), proc, x_T, sampler=name, steps=5, mask=mask, generator=gens(range(5)))
    b = workbench.sample(ChainDenoiser(proc), proc, x_T[1:3], sampler=name, steps=5, mask=mask[1:3], generator=gens(range(1, 3)))
    assert torch.equal(a[1:3], b)


@pytest.mark.parametrize("proc,name", CASES, ids=IDS)
def test_nfe_is_counted_exactly(proc, name):
    spec = get(name)
    for steps in (1, 3, 8):
        out = _run(proc, name, 16, steps)
        assert (out.nfe <= spec.nfe(steps)) if name == "mdlm_cached" else (out.nfe == spec.nfe(steps)), (name, steps, out.nfe)
        assert out.timesteps[0] == 1.0 and out.timesteps[-1] == 0.0 and len(out.timesteps) == steps + 1


def test_cached_equals_ancestral_with_fewer_calls():
    """The exact denoiser of an absorbing process is time-agnostic, so caching is exact: same
    generators -> identical samples; one sample over 64 steps needs at most L + 1 = 7 calls."""
    for seed in range(5):
        a, c = _run(MASKED, "mdlm_ancestral", 1, 64, seed=seed), _run(MASKED, "mdlm_cached", 1, 64, seed=seed)
        assert torch.equal(a.x, c.x) and a.nfe == 64 and c.nfe <= L + 1
    a, c = _run(MASKED, "mdlm_ancestral", 300, 16, seed=9), _run(MASKED, "mdlm_cached", 300, 16, seed=9)
    assert torch.equal(a.x, c.x) and c.nfe <= a.nfe


@pytest.mark.parametrize("proc", [MASKED, UNIFORM], ids=["masked", "uniform"])
def test_tweedie_is_the_ancestral_transition_for_an_x0_model(proc):
    """SEDD's analytic update built from ratios equals the averaged posterior (tested as
    probabilities in test_discrete_process.py): same generators, same samples."""
    a, t = _run(proc, "mdlm_ancestral", 500, 8, seed=4), _run(proc, "tweedie", 500, 8, seed=4)
    assert torch.equal(a.x, t.x)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [5, 12])
def test_maskgit_unmasks_on_its_schedule(schedule, steps):
    """Before call ``i + 1`` the number of masked real tokens is MaskGIT's
    ``clamp(floor(n0 gamma((i+1)/T)), 1, n_unknown - 1)``, recomputed here; none is left at the end."""
    N = 16
    mask = torch.ones(3, N)
    mask[1, 10:] = 0
    mask[2, 3:] = 0
    table = torch.randn(N, V, generator=torch.Generator().manual_seed(1))
    seen = []
    proc = MASKED
    x_T = proc.prior((3, N), mask=mask)
    x = workbench.sample(lambda x_t, t, mask=None: table.expand(3, N, V), proc, x_T, sampler="maskgit", steps=steps, mask=mask,
                         generator=torch.Generator().manual_seed(0), schedule=schedule,
                         callback=lambda info: seen.append(((info["x"] == proc.mask_id) & mask.bool()).sum(1)))
    n0 = mask.sum(1).long()
    want = n0.clone()
    gamma = (lambda r: math.cos(math.pi / 2 * r)) if schedule == "cosine" else (lambda r: 1 - r)  # noqa: E731
    for i, got in enumerate(seen):
        assert torch.equal(got, want), (i, got, want)
        keep = torch.floor(n0.double() * gamma((i + 1) / steps)).long()
        want = torch.where(want > 0, torch.minimum(keep, want - 1).clamp_min(1), torch.zeros_like(want))
    assert len(seen) == steps and abs(mask_ratio(0.5, schedule) - gamma(0.5)) < 1e-15
    assert bool((x[mask == 1] < V).all()) and bool((x[mask == 0] == 0).all())


def test_maskgit_commits_the_most_confident_tokens_first():
    """Temperature 0, linear schedule, 4 steps, 8 tokens; position ``i`` predicts token 0 with
    probability ``e^{3i} / (e^{3i} + 3)``: the first step unmasks positions 6, 7, the second 4..7."""
    logits = torch.zeros(8, V)
    logits[:, 0] = 3.0 * torch.arange(8)
    states = []
    workbench.sample(lambda x_t, t: logits.expand(x_t.shape[0], 8, V), MASKED, MASKED.prior((2, 8)), sampler="maskgit", steps=4,
                     generator=[torch.Generator().manual_seed(i) for i in range(2)], temperature=0.0, schedule="linear",
                     callback=lambda info: states.append(info["x"].clone()))
    known = [(s != MASKED.mask_id) for s in states]
    assert not bool(known[0].any())
    assert torch.equal(known[1], torch.tensor([[False] * 6 + [True] * 2] * 2))
    assert torch.equal(known[2], torch.tensor([[False] * 4 + [True] * 4] * 2))


def test_model_fn_applies_subs_padding_and_float64():
    proc = MaskedProcess(V, pad_id=2)
    x = torch.tensor([[V, 1, V, 3, 0], [V, V, 0, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mf = DiscreteModelFn(lambda x_t, t, mask=None: torch.randn(*x_t.shape, V, generator=torch.Generator().manual_seed(0)), proc, mask=mask)
    p = mf(x, 0.5)
    assert p.dtype == torch.float64 and torch.allclose(p.sum(-1), torch.ones(2, 5, dtype=torch.float64)) and mf.nfe == 1
    oh = lambda k: torch.nn.functional.one_hot(torch.tensor(k), V).double()  # noqa: E731
    assert torch.equal(p[0, 1], oh(1)) and torch.equal(p[0, 3], oh(3)) and torch.equal(p[1, 2], oh(0))   # carried over
    assert torch.equal(p[1, 3], oh(2)) and torch.equal(p[1, 4], oh(2))                                   # padding
    assert bool((p[0, 0] > 0).all()) and bool((p[1, 1] > 0).all())                                      # masked: the model's


def test_dispatch_and_model_errors_are_one_line():
    x = MASKED.prior((2, L))
    model = ChainDenoiser(MASKED)
    with pytest.raises(TypeError) as e:
        workbench.sample(model, MASKED, x, sampler="euler")
    assert "\n" not in str(e.value) and "needs a continuous Gaussian process, got MaskedProcess" in str(e.value)
    assert "valid for this process: lsd, maskgit, mdlm_ancestral, mdlm_cached, svdd, tau_leaping, tweedie" in str(e.value)
    with pytest.raises(TypeError, match=r"'mdlm_ancestral' needs a discrete process, got VPLinear; valid for this process: .*euler"):
        workbench.sample(lambda x, t: x, VPLinear(), torch.randn(2, 3), sampler="mdlm_ancestral")
    for name in ("maskgit", "mdlm_cached"):
        with pytest.raises(TypeError, match=f"'{name}' needs an absorbing \\(masked\\) discrete process, got UniformProcess; "
                                            "valid for this process: mdlm_ancestral, tau_leaping, tweedie$"):
            workbench.sample(ChainDenoiser(UNIFORM), UNIFORM, UNIFORM.prior((2, L)), sampler=name)
    with pytest.raises(ValueError, match=r"model returned shape \(2, 6, 5\).*logits \[B, N, vocab_size\] = \(2, 6, 4\)"):
        workbench.sample(lambda x_t, t: torch.zeros(*x_t.shape, V + 1), MASKED, x, sampler="mdlm_ancestral")
    with pytest.raises(FloatingPointError, match="NaN/\\+Inf .* at t=1"):
        workbench.sample(lambda x_t, t: torch.full((*x_t.shape, V), float("nan")), MASKED, x, sampler="mdlm_ancestral")
    with pytest.raises(ValueError, match="token ids LongTensor"):
        workbench.sample(model, MASKED, x.float(), sampler="mdlm_ancestral")
    with pytest.raises(ValueError, match="time grid 'edm' needs .*; valid for MaskedProcess: flow_shift, quadratic, uniform_t"):
        workbench.sample(model, MASKED, x, sampler="mdlm_ancestral", timesteps="edm")
    with pytest.raises(ValueError, match="unknown maskgit schedule 'square'; valid: cosine, linear"):
        workbench.sample(model, MASKED, x, sampler="maskgit", schedule="square")
    with pytest.raises(ValueError, match="unknown option.*'eta'.*mdlm_ancestral"):
        workbench.sample(model, MASKED, x, sampler="mdlm_ancestral", eta=1.0)
