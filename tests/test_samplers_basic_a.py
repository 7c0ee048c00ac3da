"""Basic contract tests of every deterministic registered sampler: exact NFE, the clean-end contract,
mask / zero-CoM preservation, finiteness on every process type, and a convergence smoke
test on a Gaussian data distribution with an exact denoiser. (Formal order-of-convergence
tests live elsewhere.)"""
from __future__ import annotations

import math

import pytest
import torch

import workbench
from workbench import timegrids
from workbench.processes import VE, RectifiedFlow, VPCosine, VPDiscrete, VPLinear, from_diffusers
from workbench.samplers import get

#: every deterministic sampler of the registry (a new sampler file is checked with no edit here)
SAMPLERS = [n for n in workbench.samplers.available() if not get(n).stochastic]
#: exemptions by design, with the reason (a new sampler is held to every check unless listed here)
MIXED_LAST_X0 = {"dualfast": "the last step uses the mixed prediction x0~ = x0 - (sigma/alpha) c (eps - eps_tau), not the model's x0"}
NOT_REFINING = {"dualfast": "the mixing term c_i (eps_i - eps_tau) stays on at every step: no convergence as the grid is refined",
                "time_shift": "feeds the network a variance-matched time t' != t, a bias that does not vanish with more steps"}

M, S = 0.7, 0.3  # data distribution N(M, S^2 I)


def _processes(zero_com: bool = False):
    sd_betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {
        "vp_linear": VPLinear(zero_com=zero_com),
        "vp_cosine": VPCosine(zero_com=zero_com),
        "vp_discrete": VPDiscrete(torch.cumprod(1 - sd_betas, 0), zero_com=zero_com),
        "ve": VE(zero_com=zero_com),
        "flow": RectifiedFlow(zero_com=zero_com),
    }


PROCESSES = _processes()


def gaussian_x0_model(process):
    """Exact denoiser of N(M, S^2 I) data: E[x0 | x_t] = M + a S^2 / (a^2 S^2 + s^2) (x_t - a M).
    Well defined at alpha = 0 (returns M)."""

    def model(x, t, **kw):
        a = process.alpha(t).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        s = process.sigma(t).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return M + a * S**2 / (a * a * S**2 + s * s) * (x - a * M)

    return model


def exact_solution(process, x_start, t_start: float, t_end: float):
    """Probability-flow ODE solution for N(M, S^2 I) data: the standardised
    ``z = (x_t - a M) / sqrt(a^2 S^2 + s^2)`` is constant along the flow."""
    tt = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    a0, s0 = float(process.alpha(tt(t_start))), float(process.sigma(tt(t_start)))
    a1, s1 = float(process.alpha(tt(t_end))), float(process.sigma(tt(t_end)))
    z = (x_start - a0 * M) / math.sqrt(a0**2 * S**2 + s0**2)
    return a1 * M + math.sqrt(a1**2 * S**2 + s1**2) * z


def _x1(process, shape=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * process.prior_std()


# -- NFE and the clean-end contract ------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS)
def test_nfe_exact_and_clean_end_returns_last_x0(name):
    spec = get(name)
    for pname, proc in PROCESSES.items():
        for steps in (1, 2, 3, 5, 16):
            seen = []
            out = workbench.run_sampler(gaussian_x0_model(proc), proc, _x1(proc), sampler=name, steps=steps, prediction="x0",
                                        callback=lambda info: seen.append(info["x0"]))
            assert out.nfe == spec.nfe(steps) == len(seen), (name, pname, steps)
            assert float(out.timesteps[-1]) == 0.0
            # the step into t = 0 returns the data prediction of the last model call
            if name not in MIXED_LAST_X0:
                torch.testing.assert_close(out.x, seen[-1], rtol=0, atol=1e-12)


def test_registered_metadata():
    assert get("deis_2").options == {"solver_order": 2} and get("deis_2").order == 2
    assert get("unipc_3").options == {"solver_order": 3}
    assert get("dpm_solver_pp_2s").nfe(5) == 9
    for name in SAMPLERS:
        spec = get(name)
        assert spec.reference and not spec.stochastic
        assert spec.fn.__doc__ and "Args:" in spec.fn.__doc__


def test_bad_options_raise():
    proc = PROCESSES["vp_linear"]
    model = gaussian_x0_model(proc)
    with pytest.raises(ValueError, match="variant"):
        workbench.sample(model, proc, _x1(proc), sampler="unipc_2", steps=3, prediction="x0", variant="bh3")
    with pytest.raises(ValueError, match="solver_order"):
        workbench.sample(model, proc, _x1(proc), sampler="deis_2", steps=3, prediction="x0", solver_order=7)
    with pytest.raises(ValueError, match="r must"):
        workbench.sample(model, proc, _x1(proc), sampler="dpm_solver_pp_2s", steps=3, prediction="x0", r=1.5)
    with pytest.raises(ValueError, match="max_order"):
        workbench.sample(model, proc, _x1(proc), sampler="ipndm", steps=3, prediction="x0", max_order=5)


# -- constraints ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS)
def test_mask_and_zero_com_preserved(name):
    B, N = 3, 7
    mask = torch.ones(B, N, dtype=torch.float64)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    g = torch.Generator().manual_seed(3)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def model(x, t, mask=None):  # ignores the mask and the CoM on purpose
        return torch.tanh(x @ W) + 0.5 + t.reshape(-1, 1, 1)

    for pname, proc in _processes(zero_com=True).items():
        x_T = proc.prior((B, N, 3), generator=g, mask=mask, dtype=torch.float64)
        pred = "velocity" if pname == "flow" else "x0"
        for steps in (2, 5):
            x = workbench.sample(model, proc, x_T, sampler=name, steps=steps, prediction=pred, mask=mask)
            assert torch.isfinite(x).all()
            assert bool((x[mask == 0] == 0).all()), (name, pname)
            com = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            assert com.abs().max() < 1e-10, (name, pname, float(com.abs().max()))
        # also on a grid that stops before the clean end (the last state is a solver state)
        ts = timegrids.uniform_t(proc, 4, t_end=0.2)
        x = workbench.sample(model, proc, x_T, sampler=name, timesteps=ts, prediction=pred, mask=mask)
        assert bool((x[mask == 0] == 0).all())
        assert ((x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).abs().max() < 1e-10


# -- every process type, several parameterizations ---------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS)
def test_finite_on_all_processes(name):
    for pname, proc in PROCESSES.items():
        x0_model = gaussian_x0_model(proc)
        preds = ["x0", "v", "velocity"] if pname in ("flow", "vp_cosine") else ["x0", "epsilon", "v", "score"]

        for pred in preds:
            def model(x, t, _pred=pred, _proc=proc):
                return _proc.convert(x0_model(x, t), "x0", _pred, x, t)

            for grid in (None, "uniform_t", "edm"):
                for steps in (1, 4):
                    x = workbench.sample(model, proc, _x1(proc), sampler=name, steps=steps, prediction=pred, timesteps=grid)
                    assert torch.isfinite(x).all(), (name, pname, pred, grid, steps)
                    assert x.abs().max() < 10, (name, pname, pred, grid, steps)


def test_float32_state_keeps_dtype():
    proc = PROCESSES["vp_linear"]
    x = _x1(proc).float()
    for name in SAMPLERS:
        out = workbench.sample(gaussian_x0_model(proc), proc, x, sampler=name, steps=4, prediction="x0")
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


# -- convergence smoke test ---------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS)
def test_error_decreases_with_steps(name):
    """Against the exact flow of Gaussian data on a grid from t = 1 to t_end = 0.05
    (uniform in log-SNR): the error shrinks with more steps and is small at 48 steps."""
    if name in NOT_REFINING:
        pytest.skip(NOT_REFINING[name])
    t_end = 0.05
    for pname in ("vp_linear", "vp_cosine", "ve", "flow"):
        proc = PROCESSES[pname]
        x1 = _x1(proc)
        exact = exact_solution(proc, x1, 1.0, t_end)
        errs = []
        for steps in (6, 12, 48):
            ts = timegrids.uniform_lambda(proc, steps + 1, t_end=t_end)[:-1]  # drop the clean end
            x = workbench.sample(gaussian_x0_model(proc), proc, x1, sampler=name, timesteps=ts, prediction="x0")
            errs.append(float((x - exact).abs().max()))
        # (not strictly monotone: fixed-coefficient iPNDM has lucky cancellations at 6-12 steps)
        assert errs[2] < errs[0] / 4, (name, pname, errs)
        assert errs[2] < (5e-2 if get(name).order == 1 else 1e-2), (name, pname, errs)


def test_exact_third_order_option_improves_3m():
    """``exact_third_order=True`` (2 phi_3 weight on D2) converges faster than the reference
    coefficient that diffusers uses."""
    proc = PROCESSES["ve"]
    x1 = _x1(proc)
    exact = exact_solution(proc, x1, 1.0, 0.05)
    errs = {}
    for flag in (False, True):
        ts = timegrids.uniform_lambda(proc, 129, t_end=0.05)[:-1]
        x = workbench.sample(gaussian_x0_model(proc), proc, x1, sampler="dpm_solver_pp_3m", timesteps=ts, prediction="x0",
                             exact_third_order=flag)
        errs[flag] = float((x - exact).abs().max())
    assert errs[True] < errs[False] / 3, errs


def test_from_diffusers_process_runs():
    proc = from_diffusers(dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"))
    x0_model = gaussian_x0_model(proc)

    def model(x, t):
        return proc.convert(x0_model(x, t), "x0", "v", x, t)

    for name in SAMPLERS:
        x = workbench.sample(model, proc, _x1(proc), sampler=name, steps=8, prediction=proc.prediction)
        assert torch.isfinite(x).all()
