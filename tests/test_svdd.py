"""SVDD (workbench/samplers/svdd.py) on the exact denoiser of a small Markov chain: it raises a
toy reward over the unguided sampler, argmax selection (alpha = 0) beats soft selection, it
keeps padding and clean outputs, and the runner passes the domain's reward."""
import pytest
import torch
from discrete_helpers import L, V, ChainDenoiser

import workbench
from workbench.processes import MaskedProcess
from workbench.samplers import get

PROC = MaskedProcess(V)


def count_reward(token: int):
    return lambda x, mask=None: (x == token).double().sum(1)


def _run(sampler, n=400, steps=6, **kw):
    g = [torch.Generator().manual_seed(i) for i in range(n)]
    model = ChainDenoiser(PROC)
    out = workbench.run_sampler(model, PROC, PROC.prior((n, L)), sampler=sampler, steps=steps, generator=g, **kw)
    assert out.nfe == model.calls
    return out


def test_svdd_raises_the_reward():
    """Reward = number of token 3 (prior mass 0.1 at the chain's start): SVDD with 4 candidates
    raises it well above the unguided ancestral sampler; a softer selection raises it less."""
    r = count_reward(3)
    base = r(_run("mdlm_ancestral").x).mean()
    greedy = _run("svdd", reward=r, n_candidates=4)
    soft = _run("svdd", reward=r, n_candidates=4, alpha=2.0)
    g, s = r(greedy.x).mean(), r(soft.x).mean()
    print(f"reward: ancestral {base:.3f}, svdd alpha=0 {g:.3f}, alpha=2 {s:.3f}")
    assert g > base + 0.5 and base < s < g
    assert greedy.nfe == 6 + 4 * 5                                   # 1 + M calls per step, M fewer on the last
    assert bool((greedy.x < V).all())                                # no mask survives


def test_one_candidate_is_the_ancestral_sampler():
    a = _run("svdd", reward=count_reward(0), n_candidates=1).x
    b = _run("mdlm_ancestral").x
    assert torch.equal(a, b)


def test_padding_and_errors():
    proc = MaskedProcess(V, pad_id=2)
    mask = torch.tensor([[1] * L, [1] * 4 + [0] * (L - 4)])
    out = workbench.run_sampler(ChainDenoiser(proc), proc, proc.prior((2, L), mask=mask), sampler="svdd", steps=4, mask=mask,
                                reward=count_reward(1), n_candidates=3).x
    assert bool((out[1, 4:] == 2).all()) and bool((out < V).all())
    with pytest.raises(ValueError, match="sampler 'svdd' needs the option\\(s\\) reward"):
        workbench.run_sampler(ChainDenoiser(PROC), PROC, PROC.prior((2, L)), sampler="svdd", steps=2)
    with pytest.raises(ValueError, match="reward must return one value per sample"):
        workbench.run_sampler(ChainDenoiser(PROC), PROC, PROC.prior((2, L)), sampler="svdd", steps=2, reward=lambda x, m: x.sum())
    assert get("svdd").needs == ("reward",)


def test_runner_passes_the_domain_reward(tmp_path):
    """generate(sampler=svdd) on DNA with a tiny untrained network: the runner supplies the
    domain's JASPAR-motif reward; the text data set has none (one-line error)."""
    pytest.importorskip("pyjaspar", reason="the DNA reward reads JASPAR matrices from pip pyjaspar (the `sequences` extra)")
    from discrete_helpers import tiny_dna_teacher
    from domains.sequences.domain import SequencesDomain
    from workbench.losses import Batch
    from workbench.runner import generate

    dom, teacher = tiny_dna_teacher(tmp_path / "t.safetensors", seq_len=24)
    m = generate(dom, sampler="svdd", steps=3, n=4, out_dir=tmp_path / "g", teacher=str(teacher), progress=False,
                 options={"n_candidates": 2})
    assert m["nfe"] == 3 + 2 * 2 and "reward_mean" in m and "kmer_js" in m      # the reward beside the unguided metrics
    tata = torch.tensor([[3, 0, 3, 0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]])  # TATAAAA + GC repeat
    gc = torch.tensor([[1, 2] * 12])
    r = dom.reward(Batch(x=torch.cat([tata, gc]), mask=None))
    assert r[0] > r[1] + 5
    from domains.sequences.metrics import gravy

    # GRAVY (Kyte & Doolittle): IRK = (4.5 - 4.5 - 3.9) / 3; padding is left out; hydrophobic > charged
    ids = {a: i for i, a in enumerate("ACDEFGHIKLMNPQRSTVWY")}
    irk = torch.tensor([[ids["I"], ids["R"], ids["K"], 0]])
    assert torch.allclose(gravy(irk, torch.tensor([[1, 1, 1, 0]])), torch.tensor([-1.3], dtype=torch.float64))
    assert float(gravy(torch.tensor([[ids["I"]] * 5]))) == 4.5 > float(gravy(torch.tensor([[ids["D"]] * 5])))
    with pytest.raises(ValueError, match="the text data set defines no reward; .* runs on domain.dataset=dna"):
        SequencesDomain(dataset="text").reward(Batch(x=torch.zeros(1, 4, dtype=torch.long), mask=None))
