"""Cross-check against diffusers' schedulers: where the algorithms coincide, the workbench
samplers reproduce diffusers on the same model and the same timesteps (relative error
``max|a - b| / max|b| < 1e-4``).

Setup: a deterministic smooth toy network in float64 that takes diffusers' integer timestep;
the workbench model wraps it with ``process.timestep(t)`` (``t = (i + 1) / N``). The process
is ``workbench.processes.from_diffusers(scheduler.config)``; the grid is the scheduler's
``timesteps`` after ``set_timesteps(n)`` mapped by ``process.t_of_timestep`` plus the
scheduler's final point: ``t = 0`` for ``final_sigmas_type="zero"`` (DPM-Solver++, UniPC)
and DDIM with ``set_alpha_to_one=True``; ``t = 1 / N`` (timestep 0) for
``final_sigmas_type="sigma_min"`` and for DEIS, whose last sigma is always the smallest
trained one.

Coinciding pairs:
  * ``euler`` (eta = 0)       <-> ``DDIMScheduler`` (eta = 0, ``timestep_spacing="leading"``,
    ``set_alpha_to_one=True``, ``clip_sample=False``). Other spacings make DDIM's implicit
    ``prev_timestep = t - N // n`` differ from the next listed timestep, so the grids differ.
  * ``dpm_solver_pp_2m`` / ``dpm_solver_pp_3m`` <-> ``DPMSolverMultistepScheduler``
    (``algorithm_type="dpmsolver++"``, ``solver_type="midpoint"``, orders 2 and 3, final
    sigma zero or sigma_min, with and without ``lower_order_final``).
  * ``unipc_1/2/3`` <-> ``UniPCMultistepScheduler`` (``predict_x0=True``, bh2 and bh1).
  * ``unipc_*`` bh1 only on grids ending at sigma_min: diffusers' bh1 returns NaN on the step
    into sigma = 0 (``B(h) = h = -inf`` times an empty correction).
  * ``deis_logrho_1/2/3`` <-> ``DEISMultistepScheduler`` (``logrho``); the cosine-schedule case on
    float64 schedules (see ``test_deis``).
  * ``dpm_solver_pp_2s`` <-> ``DPMSolverSinglestepScheduler`` (order 2, midpoint,
    ``lower_order_final=False``, ``final_sigmas_type="sigma_min"``) run on ``2 n`` sub-steps
    whose sigmas are overridden with our grid and our log-SNR midpoints: diffusers'
    singlestep solver places the intermediate point on its own (integer) grid, so it only
    coincides when given the same intermediate times (order list ``[1, 2] * n``).

Not compared: ``ipndm`` (not in diffusers).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import workbench
from workbench.processes import VPDiscrete, from_diffusers

import diffusers

# diffusers' set_timesteps calls np.array on a torch tensor (numpy 2 copy-keyword warning)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-4
STEPS = (3, 5, 8, 20)
SHAPE = (3, 4, 5)  # diffusers' UniPC needs [B, C, ...]


def _toy_net():
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(5, 5, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(5, generator=g, dtype=torch.float64)
    c = torch.randn(4, 1, generator=g, dtype=torch.float64) * 0.3

    def net(x: torch.Tensor, timestep) -> torch.Tensor:
        """Smooth deterministic 'network' in diffusers' convention: x [B, 4, 5], integer
        timestep (scalar or [B])."""
        ts = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1, 1, 1) / 1000.0
        return torch.tanh(x @ W + b * ts + c * torch.sin(3.0 * ts))

    return net


NET = _toy_net()


def _x_T():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _run_diffusers(sched, n: int, *, float64_sigmas: bool = False) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sched.set_timesteps(n)
    if float64_sigmas:  # undo diffusers' float32 rounding of the (exactly computed) sigmas
        sched.sigmas = sched.sigmas.to(torch.float64)
    x = _x_T() * float(getattr(sched, "init_noise_sigma", 1.0))
    for ts in sched.timesteps:
        out = NET(x, ts)
        x = sched.step(out, ts, x).prev_sample
    return x


def _run_workbench(sched, sampler: str, *, end_t0: bool, same_schedule: bool = False, **options) -> torch.Tensor:
    proc = from_diffusers(sched.config)
    if same_schedule:  # diffusers' own (float32) alphas_cumprod instead of the float64 rebuild
        proc = VPDiscrete(sched.alphas_cumprod.to(torch.float64), prediction=proc.prediction)
    t = proc.t_of_timestep(sched.timesteps.to(torch.float64))
    t_end = torch.zeros(1, dtype=torch.float64) if end_t0 else proc.t_of_timestep(torch.zeros(1))
    grid = torch.cat([t, t_end])

    def model(x, tt):
        return NET(x, proc.timestep(tt))

    out = workbench.run_sampler(model, proc, _x_T(), sampler=sampler, timesteps=grid, prediction=proc.prediction, **options)
    assert out.nfe == workbench.samplers.get(sampler).nfe(len(grid) - 1) or not end_t0
    assert out.nfe == len(sched.timesteps)
    return out.x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return float((a - b).abs().max() / b.abs().max())


def _check(sched, sampler, n, *, end_t0, same_schedule=False, **options):
    """Run both and compare. ``same_schedule``: run diffusers with its sigmas upcast to
    float64 and the workbench on diffusers' own alphas_cumprod, i.e. compare the algorithms
    on bit-identical schedules (see test_deis)."""
    ref = _run_diffusers(sched, n, float64_sigmas=same_schedule)
    ours = _run_workbench(sched, sampler, end_t0=end_t0, same_schedule=same_schedule, **options)
    err = _rel(ours, ref)
    assert err < TOL, f"{sampler} vs {type(sched).__name__} n={n}: rel err {err:.3e}"
    return err


PREDICTIONS = ("epsilon", "v_prediction", "sample")
# one beta schedule per prediction type keeps the matrix small while covering all three
BETAS = {
    "epsilon": dict(beta_schedule="linear"),
    "v_prediction": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "sample": dict(beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_matches_euler(prediction):
    for n in STEPS:
        sched = diffusers.DDIMScheduler(prediction_type=prediction, clip_sample=False, set_alpha_to_one=True,
                                        timestep_spacing="leading", steps_offset=0, **BETAS[prediction])
        _check(sched, "euler", n, end_t0=True)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_multistep(order, prediction):
    for n in STEPS:
        sched = diffusers.DPMSolverMultistepScheduler(solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint",
                                                      prediction_type=prediction, final_sigmas_type="zero", **BETAS[prediction])
        _check(sched, f"dpm_solver_pp_{order}m", n, end_t0=True, **({"exact_third_order": False} if order == 3 else {}))


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_multistep_sigma_min(order, lower_order_final):
    """Grid ending at the smallest trained noise level (``final_sigmas_type="sigma_min"``):
    the last step is a regular multistep step unless ``lower_order_final`` and ``n < 15``."""
    for n in (5, 14, 15):
        sched = diffusers.DPMSolverMultistepScheduler(solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint",
                                                      final_sigmas_type="sigma_min", lower_order_final=lower_order_final)
        _check(sched, f"dpm_solver_pp_{order}m", n, end_t0=False, lower_order_final=lower_order_final,
               **({"exact_third_order": False} if order == 3 else {}))


@pytest.mark.parametrize("variant", ["bh2", "bh1"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc(order, prediction, variant):
    # diffusers' bh1 returns NaN on a step into sigma = 0 (B(h) = -inf times an empty
    # correction), so bh1 is compared on the grid ending at sigma_min (ours is finite at 0).
    final = "zero" if variant == "bh2" else "sigma_min"
    for n in STEPS if variant == "bh2" else (3, 10):
        sched = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant, predict_x0=True,
                                                  prediction_type=prediction, final_sigmas_type=final, **BETAS[prediction])
        _check(sched, f"unipc_{order}", n, end_t0=final == "zero", variant=variant)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_sigma_min_and_options(order):
    for n in (5, 20):
        sched = diffusers.UniPCMultistepScheduler(solver_order=order, final_sigmas_type="sigma_min")
        _check(sched, f"unipc_{order}", n, end_t0=False)
        sched = diffusers.UniPCMultistepScheduler(solver_order=order, lower_order_final=False, final_sigmas_type="sigma_min")
        _check(sched, f"unipc_{order}", n, end_t0=False, lower_order_final=False)


def test_unipc_without_corrector_is_unip():
    """``use_corrector=False`` equals diffusers with the corrector disabled at every step."""
    for n in (5, 10):
        sched = diffusers.UniPCMultistepScheduler(solver_order=2, disable_corrector=list(range(n)))
        _check(sched, "unipc_2", n, end_t0=True, use_corrector=False)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis(order, prediction):
    # DEIS is a noise-prediction integrator, x_t = (alpha_t / alpha_s) x - sigma_t expm1(h) eps,
    # and an x0-predicting model's eps = (x - alpha x0) / sigma: near timestep 999 of the
    # cosine schedule (alpha ~ 1e-2) this amplifies schedule rounding. Diffusers' float32
    # storage of sigma alone moves its own result by ~1e-3 (relative), and its float32
    # alphas_cumprod (1e-5 off the float64 rebuild of from_diffusers) by ~1e-4. On identical
    # float64 schedules the two agree to ~2e-7, so the cosine case is compared that way.
    cosine = BETAS[prediction]["beta_schedule"] == "squaredcos_cap_v2"
    for n in STEPS:
        sched = diffusers.DEISMultistepScheduler(solver_order=order, prediction_type=prediction, **BETAS[prediction])
        _check(sched, f"deis_logrho_{order}", n, end_t0=False, same_schedule=cosine)


def test_deis_lower_order_final_off():
    for n in (6, 20):
        sched = diffusers.DEISMultistepScheduler(solver_order=3, lower_order_final=False)
        _check(sched, "deis_logrho_3", n, end_t0=False, lower_order_final=False)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpm_solver_pp_2s_matches_singlestep(prediction):
    for n in (3, 8):
        sched = diffusers.DPMSolverSinglestepScheduler(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                                       lower_order_final=False, final_sigmas_type="sigma_min",
                                                       prediction_type=prediction)
        proc = from_diffusers(sched.config)
        steps = torch.linspace(999, 0, n + 1, dtype=torch.float64).round()
        grid = proc.t_of_timestep(steps)  # ends at timestep 0 (t = 1/N): every step is a full 2S step
        calls = []

        def model(x, tt):
            calls.append(float(tt[0]))
            return NET(x, proc.timestep(tt))

        out = workbench.run_sampler(model, proc, _x_T(), sampler="dpm_solver_pp_2s", timesteps=grid, prediction=prediction)
        assert out.nfe == 2 * n == len(calls)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sched.set_timesteps(2 * n)
        assert sched.order_list == [1, 2] * n
        times = torch.tensor(calls + [float(grid[-1])], dtype=torch.float64)
        sched.sigmas = proc.sigma(times) / proc.alpha(times)  # diffusers' sigma = sigma / alpha
        x = _x_T()
        for k, tk in enumerate(calls):
            x = sched.step(NET(x, proc.timestep(torch.tensor(tk))), sched.timesteps[k], x).prev_sample
        err = _rel(out.x, x)
        assert err < TOL, f"dpm_solver_pp_2s n={n}: rel err {err:.3e}"


def test_from_diffusers_matches_scheduler_schedule():
    """The process built from a config reproduces the scheduler's alphas_cumprod at the knots
    (float32 in diffusers, float64 here)."""
    for kw in BETAS.values():
        sched = diffusers.DDPMScheduler(**kw)
        proc = from_diffusers(sched.config)
        i = torch.arange(0, 1000, 37)
        a2 = proc.alpha(proc.t_of_timestep(i)) ** 2
        assert torch.allclose(a2, sched.alphas_cumprod[i].double(), rtol=2e-5, atol=0)
