"""Reward-guided samplers on continuous state (workbench/samplers/svdd.py ``svdd_sde``,
workbench/samplers/fk_steering.py) with the exact denoiser of a 2-D Gaussian mixture: with one
candidate / particle they ARE the reverse-SDE sampler (same draws), with more they raise a reward
(the rarer mode) and the tilted-mode fraction, they keep masks and zero CoM, and bad options give
one-line errors."""
import pytest
import torch

import workbench
from workbench.analytic import GaussianMixture
from workbench.processes import VPCosine
from workbench.samplers import get

PROC = VPCosine()
GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor([0.4, 0.4]), weights=torch.tensor([0.8, 0.2]))


def reward(x, mask=None):
    """Higher on the rare (right) mode: its first coordinate, clipped."""
    return x[:, 0].clamp(-3, 3).double()


def _run(sampler, n=400, steps=20, seed=0, **kw):
    g = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    x = PROC.prior((n, 2), generator=[torch.Generator().manual_seed(10_000 + seed + i) for i in range(n)])
    return workbench.run_sampler(GMM.denoiser(PROC), PROC, x, sampler=sampler, steps=steps, prediction="x0", generator=g, **kw)


def right(x):
    return float((x[:, 0] > 0).double().mean())


def test_one_candidate_or_particle_is_the_sde_sampler():
    base = _run("sde").x
    assert torch.equal(_run("svdd_sde", reward=reward, n_candidates=1).x, base)
    assert torch.equal(_run("fk_steering", reward=reward, particles=1).x, base)


def test_svdd_sde_raises_the_reward():
    base, guided = _run("sde"), _run("svdd_sde", reward=reward, n_candidates=4)
    soft = _run("svdd_sde", reward=reward, n_candidates=4, alpha=1.0)
    print(f"right-mode fraction: sde {right(base.x):.3f}, svdd argmax {right(guided.x):.3f}, alpha=1 {right(soft.x):.3f}")
    assert abs(right(base.x) - 0.2) < 0.07                            # the unguided sampler keeps the 0.8 / 0.2 law
    assert right(guided.x) > right(base.x) + 0.2 and right(base.x) < right(soft.x) < right(guided.x) + 0.05
    assert guided.nfe == 20 + 4 * 19                                   # 1 + M calls per step, none on the last


@pytest.mark.parametrize("potential", ["diff", "max", "add", "rt"])
def test_fk_steering_raises_the_reward(potential):
    base = _run("sde")
    fk = _run("fk_steering", reward=reward, particles=4, potential=potential, lmbda=2.0, start=0.0, end=1.0, every=0.1)
    rnd = _run("fk_steering", reward=reward, particles=4, potential=potential, lmbda=2.0, start=0.0, end=1.0, every=0.1, select="random")
    print(f"{potential}: right-mode fraction sde {right(base.x):.3f}, fk best {right(fk.x):.3f}, fk random {right(rnd.x):.3f}")
    assert right(fk.x) > right(base.x) + 0.2 and right(rnd.x) > right(base.x) + 0.2
    assert fk.nfe == 4 * 20


def test_fk_tilted_target_with_many_particles():
    """With the ``diff`` potential resampled at every step the weights of a lineage telescope to
    ``exp(lmbda r(x))``, so FK targets the sampler's own law tilted by it: for ``r = 1[x_0 > 0]``
    the right mode with probability ``p e^lmbda / (p e^lmbda + 1 - p)``, ``p`` the unguided
    sampler's right-mode fraction (measured here on the same seeds). 16 particles, 300 samples,
    a random particle per sample."""
    lam = float(torch.log(torch.tensor(4.0)))
    ind = lambda x, mask=None: (x[:, 0] > 0).double()  # noqa: E731
    p = right(_run("sde", n=2000).x)
    target = 4 * p / (4 * p + 1 - p)
    out = _run("fk_steering", n=300, reward=ind, particles=16, potential="diff", lmbda=lam, start=0.0, end=1.0, every=0.05,
               select="random").x
    print(f"tilted right-mode fraction {right(out):.3f} (target {target:.3f} from the unguided {p:.3f})")
    assert abs(right(out) - target) < 0.08


def test_masks_zero_com_and_errors():
    from workbench.analytic import PointSetMixture

    proc = VPCosine(zero_com=True)
    psm = PointSetMixture([1.0, 2.0], [0.1, 0.1])
    mask = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2])
    x = proc.prior((2, 6, 3), generator=torch.Generator().manual_seed(0), mask=mask)
    spread = lambda x, mask=None: x.norm(dim=-1).sum(1).double()  # noqa: E731
    for sampler, kw in (("svdd_sde", {"n_candidates": 3}), ("fk_steering", {"particles": 3, "start": 0.0, "end": 1.0})):
        out = workbench.run_sampler(psm.denoiser(proc), proc, x, sampler=sampler, steps=6, prediction="x0", mask=mask, reward=spread, **kw).x
        assert float(out[1, 4:].abs().max()) == 0.0
        com = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert float(com.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="sampler 'fk_steering' needs the option\\(s\\) reward"):
        _run("fk_steering", n=2)
    with pytest.raises(ValueError, match="unknown FK potential 'sum'; valid: diff, max, add, rt"):
        _run("fk_steering", n=2, reward=reward, potential="sum")
    with pytest.raises(ValueError, match="reward must return one value per sample"):
        _run("svdd_sde", n=2, reward=lambda x, m=None: x.sum(), n_candidates=2)
    assert get("svdd_sde").needs == ("reward",) and get("fk_steering").needs == ("reward",)


def test_fk_weights_replay_the_official_resample():
    """``fk_weights`` against the official ``FKD.resample`` re-derived here line by line
    (``fkd_class.py``): the potential per type, the last-step division by the product of the
    potentials for ``max`` / ``add`` / ``rt``, the clamp and NaN handling."""
    import math

    from workbench.samplers.fk_steering import fk_weights

    g = torch.Generator().manual_seed(0)
    r = torch.rand(3, 4, generator=g, dtype=torch.float64)
    r_prev = torch.rand(3, 4, generator=g, dtype=torch.float64)
    prod = 1 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    lam = 2.5
    for pot in ("diff", "max", "add", "rt"):
        for last in (False, True):
            rs = r.clone()
            if pot == "max":
                rs = torch.max(rs, r_prev)
                want = torch.exp(lam * rs)
            elif pot == "add":
                rs = rs + r_prev
                want = torch.exp(lam * rs)
            elif pot == "diff":
                want = torch.exp(lam * (rs - r_prev))
            else:
                want = torch.exp(lam * rs)
            if last and pot in ("max", "add", "rt"):
                want = torch.exp(lam * rs) / prod
            want = torch.clamp(want, 0, 1e10)
            got_r, got_w = fk_weights(r, r_prev, prod, potential=pot, lmbda=lam, last=last)
            assert torch.allclose(got_w, want, rtol=1e-14) and torch.allclose(got_r, rs), (pot, last)
    big = fk_weights(torch.full((1, 2), 100.0, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64),
                     potential="rt", lmbda=1.0, last=False)[1]
    assert float(big.max()) == 1e10 and math.isfinite(float(big.sum()))
    nan = fk_weights(torch.tensor([[float("nan"), 1.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                     torch.ones(1, 2, dtype=torch.float64), potential="diff", lmbda=1.0, last=False)[1]
    assert float(nan[0, 0]) == 0.0


def test_svdd_sde_step_replays_the_algorithm():
    """One guided step ``s = 0.8 -> t = 0.4`` of ``svdd_sde`` against Alg. 1 written out here on the
    same noise draws: ``M`` candidates from the first-order reverse SDE step
    ``x_t = (sigma_t / sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) x0 + sigma_t sqrt(1 - e^{-2h}) z``
    (``h = lambda_t - lambda_s``), each valued by the reward of the exact posterior mean at ``t``,
    the argmax kept."""
    import math

    s, t, M, n = 0.8, 0.4, 3, 6
    x = PROC.prior((n, 2), generator=torch.Generator().manual_seed(5)).double()
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(n)]  # noqa: E731
    got = workbench.run_sampler(GMM.denoiser(PROC), PROC, x, sampler="svdd_sde", timesteps=[s, t], prediction="x0", generator=gens(),
                                reward=reward, n_candidates=M).x
    a_s, a_t = (float(PROC.alpha(torch.tensor(v, dtype=torch.float64))) for v in (s, t))
    s_s, s_t = (float(PROC.sigma(torch.tensor(v, dtype=torch.float64))) for v in (s, t))
    h = math.log(a_t / s_t) - math.log(a_s / s_s)
    x0 = GMM.x0(x, s, PROC)
    g = gens()
    cands, vals = [], []
    for _ in range(M):
        z = torch.stack([torch.randn(2, generator=gi, dtype=torch.float64) for gi in g])
        c = (s_t / s_s) * math.exp(-h) * x + a_t * (1 - math.exp(-2 * h)) * x0 + s_t * math.sqrt(1 - math.exp(-2 * h)) * z
        cands.append(c)
        vals.append(reward(GMM.x0(c, t, PROC)))
    pick = torch.stack(vals, 1).argmax(1)
    assert len(set(pick.tolist())) > 1                                # the selection matters on these draws
    want = torch.stack(cands, 1)[torch.arange(n), pick]
    assert torch.allclose(got, want, atol=1e-8), (got - want).abs().max()
