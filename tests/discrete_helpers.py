"""A discrete law known exactly (a small Markov chain) and its exact denoiser by enumeration.

The chain has ``V = 4`` tokens and length ``L = 6``: all ``4**6 = 4096`` sequences are listed with
their probabilities, and ``p(x0_i | x_t)`` is computed by Bayes' rule over that list,
``p(x0 | x_t) ∝ p(x0) prod_i q(x_t^i | x0^i)``, with the per-position likelihood written here
from the definition of each process (not from the library's ``marginal``).
"""
from __future__ import annotations

import itertools

import torch

V, L = 4, 6
INIT = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
#: a sticky, asymmetric chain: strong dependence between neighbours (1 -> 2, 2 -> 3, 3 -> 0)
TRANS = torch.tensor([[0.80, 0.10, 0.05, 0.05],
                      [0.05, 0.05, 0.85, 0.05],
                      [0.10, 0.10, 0.10, 0.70],
                      [0.60, 0.20, 0.10, 0.10]], dtype=torch.float64)


def all_sequences(v: int = V, n: int = L) -> torch.Tensor:
    """Every sequence ``[v**n, n]`` (long)."""
    return torch.tensor(list(itertools.product(range(v), repeat=n)), dtype=torch.long)


SEQS = all_sequences()


def seq_probs(seqs: torch.Tensor = SEQS) -> torch.Tensor:
    """Chain probability of each sequence ``[S]`` (float64; sums to 1 over all sequences)."""
    p = INIT[seqs[:, 0]]
    for i in range(1, seqs.shape[1]):
        p = p * TRANS[seqs[:, i - 1], seqs[:, i]]
    return p


PROBS = seq_probs()
ONEHOT = torch.nn.functional.one_hot(SEQS, V).reshape(len(SEQS), L * V).to(torch.float64)  # [S, L*V]


def sample_chain(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` exact draws ``[n, L]`` of the chain."""
    idx = torch.multinomial(PROBS, n, replacement=True, generator=generator)
    return SEQS[idx]


def pair_marginal(i: int, j: int) -> torch.Tensor:
    """Exact joint law of positions ``(i, j)``: ``[V, V]``."""
    out = torch.zeros(V, V, dtype=torch.float64)
    out.index_put_((SEQS[:, i], SEQS[:, j]), PROBS, accumulate=True)
    return out


def pair_counts(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    out = torch.zeros(V, V, dtype=torch.float64)
    out.index_put_((x[:, i], x[:, j]), torch.ones(x.shape[0], dtype=torch.float64), accumulate=True)
    return out


def mean_pair_tv(x: torch.Tensor) -> float:
    """Mean over adjacent pairs ``(i, i+1)`` of the total variation between the empirical pair law of
    samples ``x`` ``[n, L]`` and the exact one."""
    tvs = [0.5 * float((pair_counts(x, i, i + 1) / x.shape[0] - pair_marginal(i, i + 1)).abs().sum()) for i in range(L - 1)]
    return sum(tvs) / len(tvs)


def entropy_per_token() -> float:
    """Exact entropy of the chain in nats, divided by ``L``."""
    return float(-(PROBS * PROBS.log()).sum()) / L


def likelihood_table(process, x_t: torch.Tensor, t) -> torch.Tensor:
    """``q(x_t^i | x0^i = k)`` ``[B, L, V]`` from the definition of the process (float64)."""
    B = x_t.shape[0]
    a = process.alpha(torch.as_tensor(t, dtype=torch.float64).expand(B)).reshape(B, 1, 1)
    k = torch.arange(V).reshape(1, 1, V)
    xt = x_t.unsqueeze(-1)
    same = (xt == k).to(torch.float64)
    if process.mask_id is not None:   # kept with prob alpha, else the mask
        return torch.where(xt == process.mask_id, (1 - a).expand(B, x_t.shape[1], V), a * same)
    return a * same + (1 - a) / V     # kept with prob alpha, else a uniform token


class ExactDenoiser:
    """``model(x_t [B, L], t [B]) -> log p(x0_i | x_t)`` ``[B, L, V]`` by enumeration of all 4096
    sequences (chunks of 512 rows). ``calls`` counts evaluations."""

    def __init__(self, process):
        self.process = process
        self.calls = 0

    def __call__(self, x_t, t, mask=None, cond=None):
        self.calls += 1
        outs = []
        for lo in range(0, x_t.shape[0], 512):
            xt = x_t[lo:lo + 512]
            tt = t[lo:lo + 512].to(torch.float64)
            lik = likelihood_table(self.process, xt, tt)                         # [b, L, V]
            loglik = lik.log().clamp_min(-1e30).reshape(len(xt), L * V) @ ONEHOT.T  # [b, S]
            post = torch.softmax(loglik + PROBS.log(), dim=-1)
            outs.append((post @ ONEHOT).reshape(len(xt), L, V).log())
        return torch.cat(outs)


class ChainDenoiser(ExactDenoiser):
    """The same exact ``log p(x0_i | x_t)`` by the forward-backward recursion of the chain (a hidden
    Markov model whose emissions are ``q(x_t^i | x0^i)``): O(L V^2) per sample instead of
    O(V^L), for the many-step sampler tests. ``test_chain_denoiser_equals_enumeration`` checks it
    against :class:`ExactDenoiser`."""

    def __call__(self, x_t, t, mask=None, cond=None):
        self.calls += 1
        e = likelihood_table(self.process, x_t, t.to(torch.float64))          # [B, L, V]
        fwd = [INIT * e[:, 0]]
        fwd[0] = fwd[0] / fwd[0].sum(-1, keepdim=True)
        for i in range(1, L):
            f = (fwd[-1] @ TRANS) * e[:, i]
            fwd.append(f / f.sum(-1, keepdim=True))
        bwd = [torch.ones_like(fwd[0])]
        for i in range(L - 2, -1, -1):
            b = (e[:, i + 1] * bwd[0]) @ TRANS.T
            bwd.insert(0, b / b.sum(-1, keepdim=True))
        post = torch.stack([f * b for f, b in zip(fwd, bwd)], dim=1)
        return (post / post.sum(-1, keepdim=True)).log()


def tiny_dna_teacher(path, seed: int = 0, seq_len: int = 16):
    """``(domain, path)``: an untrained one-layer sequences/dna network saved at ``path`` as a
    teacher checkpoint (the plumbing tests of LSD, SDTT, SVDD and the discrete benchmark)."""
    from domains.sequences.domain import SequencesDomain
    from workbench.checkpoint import save_weights

    dom = SequencesDomain(dataset="dna", seq_len=seq_len, d_model=16, n_layers=1, n_heads=2)
    torch.manual_seed(seed)
    save_weights(path, dom.build_backbone(), {"config": dom.config})
    return dom, path
