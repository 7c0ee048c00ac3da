"""Accuracy and overhead against the peer libraries: workbench samplers at their DEFAULT settings
(process default grid, default options) next to every applicable diffusers scheduler and every
k-diffusion ODE sampler, on an exact Gaussian mixture (no network error: only discretisation
error is measured).

Problem (one run, the same initial noise for every method):

* data: a ``K``-component isotropic Gaussian mixture in ``D`` dimensions
  (:class:`workbench.analytic.GaussianMixture`; means ``~ N(0, I)``, component stds uniform
  in ``[0.1, 0.5]``, Dirichlet(1) weights, all drawn from a fixed seed); the model is its
  exact denoiser in float64.
* schedules: ``vp_linear``, DDPM linear betas ``1e-4 .. 0.02`` over 1000 steps
  (:func:`workbench.processes.from_diffusers`, a :class:`~workbench.processes.VPDiscrete`),
  and ``edm``, :class:`~workbench.processes.VE` with ``sigma in [0.002, 80]`` (EDM's rho = 7
  grid is the workbench default there, and every EDM peer uses it).
* reference: the float64 adaptive (dopri5, rtol = atol = 1e-10) PF-ODE solution of
  :func:`workbench.reference.reference_run`, run down to ``t_end = 1e-9`` (``sigma ~ 1e-6``
  on VP, ``8e-8`` on EDM) and denoised there: the exact endpoint at ``sigma = 0`` that every
  method converges to. (Stopping at the process's ``t_min`` instead would favour grids that
  end with ``[t_min, 0]``.)
* error: mean over samples of the per-sample RMS distance to the reference.

Rows:

* workbench: every registered deterministic sampler, default options, the process's
  ``default_grid`` (``extra_grids`` adds rows on other grids, labelled ``name@grid``).
* diffusers (VP): DDIM (``trailing``), DPMSolverMultistep 2M / 3M (``dpmsolver++``), UniPC
  (bh2, orders 2 and 3), DEIS (orders 2 and 3), EulerDiscrete, HeunDiscrete, every one with
  the class's defaults (``linspace`` spacing) and the exact betas; (EDM): EDMEuler and
  EDMDPMSolverMultistep 2M / 3M.
* k-diffusion (``k_diffusion/sampling.py`` loaded by file path, see :func:`load_kdiffusion`):
  euler, heun, dpm_2, lms, dpmpp_2m, dpmpp_2s_ancestral (eta = 0), dpmpp_3m_sde (eta = 0)
  on its default Karras sigmas (rho = 7 between the schedule's smallest and largest sigma)
  and, on VP, on the sigmas of diffusers' EulerDiscreteScheduler (diffusers' port of the
  k-diffusion samplers). On EDM the two coincide, so only the Karras rows are run.
  ``sample_dpm_fast`` / ``sample_dpm_adaptive`` choose their own step count and are excluded.

Every model call is counted, so NFE is exact for every library; a method that cannot spend
exactly a given NFE (Heun-type: ``2 steps - 1``) has no cell there.

Bookkeeping per step: a zero-cost model (``zeros_like``) on ``[64, 3, 32, 32]`` and ``[1024, 2]``
float32 tensors, VP schedule, epsilon prediction; the CPU time of the whole sampling loop
(``time.thread_time`` on one torch thread, grid / ``set_timesteps`` included, scheduler
construction excluded) minus that of the same number of bare model calls, divided by the
number of steps; the two sides interleaved (alternating order), median of ``repeats``. Pairs
(:func:`bookkeeping_pairs`): euler / DDIM and EulerDiscrete, DPM-Solver++ 2M / 3M,
UniPC-2, DEIS-2 (log-rho and tAB) and Heun / HeunDiscrete.

Run it with ``workbench bench peers threads=1 out=DIR`` (keys ``bench_peers.*`` of
``workbench/configs/config.yaml``; ``workbench bench peers --help`` lists them).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import math
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import api
from .analytic import GaussianMixture
from .processes import VE, GaussianProcess, VPDiscrete, from_diffusers
from .reference import reference_run
from .samplers import SAMPLERS
from .utils import write_json, write_text

__all__ = ["bench_peers", "make_problem", "load_kdiffusion", "run_workbench", "run_diffusers_peer", "run_kdiffusion",
           "bookkeeping", "SCHEDULES", "DIFFUSERS_VP", "DIFFUSERS_EDM", "KDIFFUSION_SAMPLERS"]

SCHEDULES = ("vp_linear", "edm")
DIFFUSERS_VP = ("ddim", "dpmsolver_2m", "dpmsolver_3m", "unipc_2", "unipc_3", "deis_2", "deis_3", "euler", "heun")
DIFFUSERS_EDM = ("edm_euler", "edm_dpmsolver_2m", "edm_dpmsolver_3m")
#: k-diffusion ODE samplers: name -> (function name, fixed keyword arguments, NFE of ``steps``)
KDIFFUSION_SAMPLERS = {
    "euler": ("sample_euler", {}, lambda n: n),
    "heun": ("sample_heun", {}, lambda n: 2 * n - 1),
    "dpm_2": ("sample_dpm_2", {}, lambda n: 2 * n - 1),
    "lms": ("sample_lms", {}, lambda n: n),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, lambda n: n),
    "dpmpp_2s_ancestral_eta0": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, lambda n: 2 * n - 1),
    "dpmpp_3m_sde_eta0": ("sample_dpmpp_3m_sde", {"eta": 0.0}, lambda n: n),
}
REF_T_END = 1e-9
REF_TOL = 1e-10
_F64 = torch.float64


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[bench peers] {msg}", file=sys.stderr, flush=True)


# -- the problem ----------------------------------------------------------------------------------
def make_process(schedule: str) -> GaussianProcess:
    """``vp_linear`` (DDPM linear betas 1e-4..0.02, 1000 steps, diffusers' discrete VP) or
    ``edm`` (VE, sigma in [0.002, 80])."""
    if schedule == "vp_linear":
        return from_diffusers({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000})
    if schedule == "edm":
        return VE(0.002, 80.0)
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_problem(dim: int = 16, components: int = 8, seed: int = 0) -> GaussianMixture:
    """The fixed mixture: means ``[K, D] ~ N(0, I)``, stds ``[K]`` uniform in [0.1, 0.5],
    Dirichlet(1) weights ``[K]``, all from ``torch.Generator().manual_seed(seed)``."""
    if dim < 1 or components < 1:
        raise ValueError(f"dim and components must be positive, got dim={dim}, components={components}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=_F64)
    stds = 0.1 + 0.4 * torch.rand(components, generator=g, dtype=_F64)
    w = -torch.log(torch.rand(components, generator=g, dtype=_F64))
    return GaussianMixture(means, stds, w)


class _Counted:
    """Wrap a model and count its calls (the NFE of any library's loop)."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt().mean())


def _t_of_sigma_tilde(process: GaussianProcess, sig: float) -> float:
    """Process time of the scale-free noise level ``sigma~ = sigma / alpha = exp(-lambda)``."""
    return float(process.t_of_lambda(torch.tensor(-math.log(float(sig)), dtype=_F64)))


def _alpha(process: GaussianProcess, t: float) -> float:
    return math.exp(float(process.log_alpha_sigma(torch.tensor(t, dtype=_F64))[0]))


# -- workbench --------------------------------------------------------------------------------------
def run_workbench(name: str, model: Callable, process: GaussianProcess, x_T: Tensor, nfe: int, grid: Optional[str] = None):
    """Workbench sampler ``name`` at default options on ``grid`` (``None``: the process
    default) with exactly ``nfe`` model calls, or ``None`` if it cannot spend that NFE.
    ``model`` predicts epsilon. Returns ``(x [B, D], nfe)``."""
    steps = SAMPLERS[name].steps_for_nfe(nfe)
    if steps is None:
        return None
    with torch.no_grad():
        out = api.run_sampler(model, process, x_T, sampler=name, steps=steps, prediction="epsilon", timesteps=grid)
    return out.x, out.nfe


# -- diffusers --------------------------------------------------------------------------------------
def _betas(process: VPDiscrete) -> list:
    ac = torch.exp(2 * process._log_alpha[1:])
    return (1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])).tolist()


def diffusers_peer(name: str, process: GaussianProcess):
    """The diffusers scheduler ``name`` (:data:`DIFFUSERS_VP` on a :class:`VPDiscrete`,
    :data:`DIFFUSERS_EDM` on a :class:`VE`) with the class's default options and the process's
    exact betas / sigma range; DDIM uses 'trailing' spacing (its update assumes equal strides)."""
    try:
        import diffusers
    except ImportError as e:
        raise ValueError("the diffusers peers need diffusers: pip install -e '.[images]'") from e

    if isinstance(process, VPDiscrete):
        if name not in DIFFUSERS_VP:
            raise ValueError(f"unknown diffusers VP peer {name!r}; valid: {', '.join(DIFFUSERS_VP)}")
        common = dict(num_train_timesteps=process.num_train_timesteps, trained_betas=_betas(process), prediction_type="epsilon")
        if name == "ddim":
            return diffusers.DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
        kind, _, order = name.partition("_")
        if kind == "dpmsolver":
            return diffusers.DPMSolverMultistepScheduler(**common, solver_order=int(order[0]), algorithm_type="dpmsolver++")
        if kind == "unipc":
            return diffusers.UniPCMultistepScheduler(**common, solver_order=int(order))
        if kind == "deis":
            return diffusers.DEISMultistepScheduler(**common, solver_order=int(order))
        if kind == "euler":
            return diffusers.EulerDiscreteScheduler(**common)
        return diffusers.HeunDiscreteScheduler(**common)
    if isinstance(process, VE):
        if name not in DIFFUSERS_EDM:
            raise ValueError(f"unknown diffusers EDM peer {name!r}; valid: {', '.join(DIFFUSERS_EDM)}")
        common = dict(sigma_min=process.sigma_min, sigma_max=process.sigma_max, prediction_type="epsilon")
        if name == "edm_euler":
            return diffusers.EDMEulerScheduler(**common)
        return diffusers.EDMDPMSolverMultistepScheduler(**common, solver_order=int(name[-2]), algorithm_type="dpmsolver++")
    raise ValueError(f"diffusers peers need a VPDiscrete or VE process, got {type(process).__name__}")


_SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")


def run_diffusers_peer(name: str, model: Callable, process: GaussianProcess, x_T: Tensor, steps: int):
    """Sample with diffusers scheduler ``name`` for ``steps`` steps. ``model(x, t)`` predicts
    epsilon in the workbench convention (``x = alpha x0 + sigma eps`` at process time ``t``);
    ``x_T`` ``[B, ...]`` is the state at ``t = 1``. The model is called at the noise level the
    scheduler uses: integer timesteps map exactly to ``t = (i + 1) / N``; sigma-based
    schedulers (Euler/Heun discrete, EDM) map ``sigma~`` to ``t`` exactly and their scaled
    state ``x / alpha`` back to ``x``. EDM schedulers receive the raw output that their
    preconditioning turns into the exact denoiser. Returns ``(x [B, ...], nfe)``."""
    sch = diffusers_peer(name, process)
    cls = type(sch).__name__
    calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sch.set_timesteps(steps)
        if cls in _SIGMA_SCHEDULERS:
            x = x_T / _alpha(process, 1.0)  # the scale-free state x / alpha (= x on VE)
        else:
            x = x_T
        for ts in sch.timesteps:
            if cls in _SIGMA_SCHEDULERS:
                if sch.step_index is None:
                    sch._init_step_index(ts)
                sch.scale_model_input(x, ts)  # only marks the step as scaled; the model takes a * x below
                sig = float(sch.sigmas[sch.step_index])
                t = _t_of_sigma_tilde(process, sig)
                a = _alpha(process, t)
                eps = model(a * x, torch.full((x.shape[0],), t, dtype=_F64))
                if cls.startswith("EDM"):
                    sd = sch.config.sigma_data
                    c_skip, c_out = sd**2 / (sig**2 + sd**2), sig * sd / (sig**2 + sd**2) ** 0.5
                    out = ((x - sig * eps) - c_skip * x) / c_out
                else:
                    out = eps
            else:
                t = float(process.t_of_timestep(ts))
                out = model(x, torch.full((x.shape[0],), t, dtype=_F64))
            calls += 1
            x = sch.step(out.to(x.dtype), ts, x).prev_sample
    return x, calls


# -- k-diffusion ------------------------------------------------------------------------------------
def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """Stub of ``k_diffusion.utils.append_dims``: trailing singleton dims up to ``target_dims``."""
    n = target_dims - x.ndim
    if n < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * n]


_KD = None


def load_kdiffusion():
    """``k_diffusion/sampling.py`` (k-diffusion 0.1.1.post1) as a module, or ``None`` if it is
    not installed. ``import k_diffusion`` needs scikit-image and torchvision (its ``utils``),
    so the file is loaded by path inside a stand-in package whose ``utils`` holds only what
    the samplers use (``append_dims``). Needs ``torchsde`` and ``scipy``."""
    global _KD
    if _KD is not None:
        return _KD
    try:
        spec = importlib.util.find_spec("k_diffusion")
        import torchsde  # noqa: F401  (sampling.py imports it)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    if not path.exists():
        return None
    pkg_name = "_workbench_kdiffusion_peer"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []  # a package, so `from . import utils` resolves
    utils = types.ModuleType(pkg_name + ".utils")
    utils.append_dims = _append_dims
    pkg.utils = utils
    sys.modules[pkg_name], sys.modules[pkg_name + ".utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location(pkg_name + ".sampling", path)
    mod = importlib.util.module_from_spec(mspec)
    mod.__package__ = pkg_name
    sys.modules[mspec.name] = mod
    mspec.loader.exec_module(mod)
    _KD = mod
    return mod


def kdiffusion_sigmas(process: GaussianProcess, steps: int, which: str) -> Tensor:
    """``[steps + 1]`` float64 sigmas (``sigma~ = sigma / alpha``) ending at 0: ``karras``
    (k-diffusion's ``get_sigmas_karras`` between the schedule's smallest and largest sigma,
    rho = 7) or ``diffusers`` (EulerDiscreteScheduler's sigmas on the same betas)."""
    lo = math.exp(-float(process.lambda_(torch.tensor(process.t_min, dtype=_F64))))
    hi = math.exp(-float(process.lambda_(torch.tensor(min(1.0, process.t_max_finite), dtype=_F64))))
    if which == "karras":
        ramp = torch.linspace(0, 1, steps, dtype=_F64)
        s = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
        return torch.cat([s, s.new_zeros(1)])
    if which == "diffusers":
        sch = diffusers_peer("euler", process)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sch.set_timesteps(steps)
        return sch.sigmas.to(_F64)
    raise ValueError(f"unknown sigma set {which!r}; valid: karras, diffusers")


def run_kdiffusion(kd, name: str, model: Callable, process: GaussianProcess, x_T: Tensor, sigmas: Tensor):
    """k-diffusion sampler ``name`` (:data:`KDIFFUSION_SAMPLERS`) on ``sigmas`` ``[n + 1]``.
    Its denoiser ``D(x~, sigma~)`` is the exact x0 at ``t(sigma~)`` of the scaled state
    ``x~ = x / alpha``; it starts from ``x_T / alpha(1)`` (the same noise). Returns
    ``(x [B, ...], nfe)``."""
    fn_name, kw, _ = KDIFFUSION_SAMPLERS[name]

    def denoiser(xs: Tensor, sig: Tensor) -> Tensor:
        s = float(sig.reshape(-1)[0])
        t = _t_of_sigma_tilde(process, s)
        a = _alpha(process, t)
        eps = model(a * xs, torch.full((xs.shape[0],), t, dtype=_F64))
        return xs - s * eps

    den = _Counted(denoiser)
    if "sde" in fn_name:  # eta = 0: the Brownian noise is never used; skip building the tree
        kw = {**kw, "noise_sampler": lambda *a: torch.zeros_like(x_T)}
    with torch.no_grad():
        x = getattr(kd, fn_name)(den, x_T / _alpha(process, 1.0), sigmas.to(x_T.dtype), disable=True, **kw)
    return x, den.calls


# -- the benchmark -----------------------------------------------------------------------------------
def _deterministic_samplers() -> list[str]:
    return sorted(k for k, v in SAMPLERS.items() if not v.stochastic)


def accuracy_rows(schedule: str, *, gmm: GaussianMixture, nfes: Sequence[int], n: int, seed: int, samplers=None,
                  extra_grids: Sequence[str] = (), kdiffusion: bool = True, progress: bool = True) -> tuple[list, dict]:
    """All accuracy rows of one schedule. Returns ``(rows, info)``."""
    proc = make_process(schedule)
    model = gmm.denoiser(proc, "epsilon")
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, *gmm.event_shape, generator=g, dtype=_F64) * proc.prior_std()
    t0 = time.perf_counter()
    ref = reference_run(model, proc, x_T, prediction="epsilon", t_end=REF_T_END, rtol=REF_TOL, atol=REF_TOL)
    info = {"schedule": schedule, "process": repr(proc), "default_grid": proc.default_grid, "ref_nfe": ref.nfe,
            "ref_seconds": time.perf_counter() - t0}
    _log(f"{schedule}: reference solved ({ref.nfe} NFE, {info['ref_seconds']:.1f} s)", progress)
    rows = []

    def add(source, method, grid, nfe_target, res):
        if res is None:
            return
        x, calls = res
        if calls != nfe_target:
            raise RuntimeError(f"{source}:{method} spent {calls} NFE, expected {nfe_target}")
        rows.append({"schedule": schedule, "source": source, "method": method, "grid": grid, "nfe": calls,
                     "error": _rms(x, ref.x)})

    names = _deterministic_samplers() if samplers in (None, "all") else list(samplers)
    for s in names:
        if s not in SAMPLERS:
            raise ValueError(f"unknown sampler {s!r}; valid: {', '.join(sorted(SAMPLERS))}")
    t1 = time.perf_counter()
    for grid in [None, *extra_grids]:
        label = proc.default_grid if grid is None else grid
        for s in names:
            for k in nfes:
                add("workbench", s if grid is None else f"{s}@{grid}", label, k, run_workbench(s, model, proc, x_T, k, grid))
        _log(f"{schedule}: workbench samplers on {label} done ({time.perf_counter() - t1:.1f} s)", progress)
    peers = DIFFUSERS_VP if isinstance(proc, VPDiscrete) else DIFFUSERS_EDM
    for p in peers:
        for k in nfes:
            if p == "heun":
                if k % 2 == 0:
                    continue
                steps = (k + 1) // 2
            else:
                steps = k
            add("diffusers", p, "diffusers", k, run_diffusers_peer(p, model, proc, x_T, steps))
    _log(f"{schedule}: diffusers done ({time.perf_counter() - t1:.1f} s)", progress)
    kd = load_kdiffusion() if kdiffusion else None
    info["kdiffusion"] = kd is not None
    if kd is None:
        _log("k-diffusion not installed (`make install` adds it): its rows are skipped", progress)
    else:
        sets = ("karras", "diffusers") if isinstance(proc, VPDiscrete) else ("karras",)
        for name, (_, _, nfe_of) in KDIFFUSION_SAMPLERS.items():
            for which in sets:
                for k in nfes:
                    steps = next((s for s in range(1, k + 1) if nfe_of(s) == k), None)
                    if steps is None:
                        continue
                    add("k-diffusion", name, which, k, run_kdiffusion(kd, name, model, proc, x_T, kdiffusion_sigmas(proc, steps, which)))
        _log(f"{schedule}: k-diffusion done ({time.perf_counter() - t1:.1f} s)", progress)
    return rows, info


def summary(rows: list, nfes: Sequence[int], schedules: Sequence[str]) -> list:
    """Per schedule and NFE: the best workbench sampler at default settings, the best
    diffusers scheduler and the best k-diffusion sampler (either sigma set), with ratios and
    whether the workbench is no worse than both."""
    out = []
    for sch in schedules:
        for k in nfes:
            cell = [r for r in rows if r["schedule"] == sch and r["nfe"] == k]
            wb = [r for r in cell if r["source"] == "workbench" and "@" not in r["method"]]
            df = [r for r in cell if r["source"] == "diffusers"]
            kd = [r for r in cell if r["source"] == "k-diffusion"]
            if not wb:
                continue
            b = min(wb, key=lambda r: r["error"])
            s = {"schedule": sch, "nfe": k, "workbench": b["method"], "workbench_error": b["error"]}
            ok = True
            for lib, rr in (("diffusers", df), ("kdiffusion", kd)):
                if rr:
                    c = min(rr, key=lambda r: r["error"])
                    s[lib] = c["method"] + ("" if lib == "diffusers" else f" ({c['grid']})")
                    s[f"{lib}_error"] = c["error"]
                    s[f"ratio_{lib}"] = b["error"] / c["error"]
                    ok = ok and b["error"] <= c["error"]
            s["holds"] = ok
            out.append(s)
    return out


# -- bookkeeping -------------------------------------------------------------------------------------
def bookkeeping_pairs() -> list:
    """(workbench sampler, diffusers VP peer) pairs implementing the same algorithm. Diffusers'
    DEIS is the log-rho variant, the workbench's ``deis_logrho_2`` when registered; the
    paper's tAB ``deis_2`` is paired with it as well (the same role, other coefficients)."""
    deis = ["deis_logrho_2", "deis_2"] if "deis_logrho_2" in SAMPLERS else ["deis_2"]
    pairs = [("euler", "ddim"), ("euler", "euler"), ("dpm_solver_pp_2m", "dpmsolver_2m"), ("dpm_solver_pp_3m", "dpmsolver_3m"),
             ("unipc_2", "unipc_2"), *[(d, "deis_2") for d in deis], ("heun", "heun")]
    return [p for p in pairs if p[0] in SAMPLERS]


def bookkeeping(shape: Sequence[int], *, steps: int = 20, repeats: int = 15, pairs=None, progress: bool = True) -> list:
    """Per-step bookkeeping (µs of thread CPU time) of each pair on a float32 ``shape`` tensor
    with a zero-cost epsilon model on the ``vp_linear`` schedule. Both sides run ``steps``
    steps (Heun: ``2 steps - 1`` NFE on both); the CPU time of the same number of bare model
    calls is subtracted; sides interleave with alternating order; median of ``repeats``.
    Run with ``torch.set_num_threads(1)`` so all work happens on the timed thread."""
    proc = make_process("vp_linear")
    x_T = torch.randn(*shape, generator=torch.Generator().manual_seed(0))

    def zero(x, t, **kw):
        return torch.zeros_like(x)

    def time_it(fn) -> float:
        t0 = time.thread_time()
        fn()
        return time.thread_time() - t0

    out = []
    for wb, df in (pairs or bookkeeping_pairs()):
        nfe = SAMPLERS[wb].nfe(steps)

        def bare(nfe=nfe):
            t = torch.full((x_T.shape[0],), 0.5)
            for _ in range(nfe):
                zero(x_T, t)

        def run_wb(wb=wb):
            api.run_sampler(zero, proc, x_T, sampler=wb, steps=steps, prediction="epsilon")

        def run_df(df=df):
            sch = diffusers_peer(df, proc)  # construction stays outside the timed region
            t_sch = time.thread_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sch.set_timesteps(steps)
                x = x_T * float(sch.init_noise_sigma)
                for ts in sch.timesteps:
                    m = sch.scale_model_input(x, ts)
                    x = sch.step(zero(m, ts), ts, x).prev_sample
            return time.thread_time() - t_sch

        run_wb(), run_df(), bare()  # warm-up
        tw, td, tb = [], [], []
        for r in range(repeats):
            if r % 2 == 0:
                tw.append(time_it(run_wb))
                td.append(run_df())
            else:
                td.append(run_df())
                tw.append(time_it(run_wb))
            tb.append(time_it(bare))
        base = statistics.median(tb)
        w = 1e6 * (statistics.median(tw) - base) / steps
        d = 1e6 * (statistics.median(td) - base) / steps
        out.append({"shape": list(shape), "steps": steps, "nfe": nfe, "workbench": wb, "diffusers": df, "workbench_us": w,
                    "diffusers_us": d, "ratio": w / d})
        _log(f"bookkeeping {list(shape)}: {wb} {w:.0f} us/step vs diffusers {df} {d:.0f} us/step ({w / d:.2f}x)", progress)
    return out


# -- output -------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.3g}"


def markdown(rows, summ, overhead, infos, nfes, cfg) -> str:
    s = [f"Exact {cfg['dim']}-D Gaussian mixture ({cfg['components']} components, mixture seed {cfg['mixture_seed']}), "
         f"{cfg['n']} samples from the same noise (seed {cfg['seed']}); error = mean per-sample RMS distance to the float64 "
         f"adaptive reference (dopri5, rtol = atol = {REF_TOL:g}, solved to t = {REF_T_END:g} and denoised). Workbench rows: "
         "every deterministic sampler at default options on the process default grid; diffusers: each scheduler class's "
         "defaults (DDIM 'trailing'); k-diffusion: on its Karras sigmas (`karras`) and, on VP, on diffusers' "
         "EulerDiscrete sigmas (`diffusers`). '-' = that NFE cannot be spent exactly. diffusers rows: `ddim` = DDIMScheduler, "
         "`dpmsolver_2m/3m` = DPMSolverMultistepScheduler (dpmsolver++, order 2/3), `unipc_2/3` = UniPCMultistepScheduler "
         "(bh2, order 2/3), `deis_2/3` = DEISMultistepScheduler (log-rho, order 2/3), `euler` / `heun` = Euler/HeunDiscreteScheduler, "
         "`edm_*` = EDMEulerScheduler / EDMDPMSolverMultistepScheduler.", ""]
    for info in infos:
        sch = info["schedule"]
        s += [f"### {sch}: best workbench sampler at default settings vs the best peer", "",
              f"Process `{info['process']}`, default grid `{info['default_grid']}`; reference {info['ref_nfe']} NFE." +
              ("" if info.get("kdiffusion") else " k-diffusion not installed: its columns are empty."), "",
              "| NFE | workbench (default) | error | best diffusers | error | best k-diffusion | error | wb/diffusers | wb/k-diffusion | holds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in summ if r["schedule"] == sch):
            cells = [str(r["nfe"]), r["workbench"], _fmt(r["workbench_error"])]
            for lib in ("diffusers", "kdiffusion"):
                cells += [r.get(lib, "-"), _fmt(r[f"{lib}_error"]) if f"{lib}_error" in r else "-"]
            cells += [f"{r[k]:.2f}" if k in r else "-" for k in ("ratio_diffusers", "ratio_kdiffusion")]
            cells.append("yes" if r["holds"] else "**no**")
            s.append("| " + " | ".join(cells) + " |")
        s += ["", f"#### {sch}: every row (error)", "", "| source | method | grid | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
              "|---" * (len(nfes) + 3) + "|"]
        keys = list(dict.fromkeys((r["source"], r["method"], r["grid"]) for r in rows if r["schedule"] == sch))
        for src, m, gr in keys:
            cells = []
            for k in nfes:
                r = next((r for r in rows if r["schedule"] == sch and (r["source"], r["method"], r["grid"]) == (src, m, gr) and r["nfe"] == k), None)
                cells.append(_fmt(r["error"]) if r else "-")
            s.append(f"| {src} | {m} | {gr} | " + " | ".join(cells) + " |")
        s.append("")
    if overhead:
        s += ["### Bookkeeping per step vs diffusers (zero-cost model, thread CPU time, 1 thread, median)", "",
              "| tensor | steps | workbench | us/step | diffusers | us/step | ratio | <= 1.0 |", "|---|---|---|---|---|---|---|---|"]
        for r in overhead:
            s.append(f"| {r['shape']} | {r['steps']} | {r['workbench']} | {r['workbench_us']:.0f} | {r['diffusers']} | "
                     f"{r['diffusers_us']:.0f} | {r['ratio']:.2f} | {'yes' if r['ratio'] <= 1.0 else '**no**'} |")
        s.append("")
    return "\n".join(s) + "\n"


def _csv(rows: list) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def bench_peers(*, out_dir, dim: int = 16, components: int = 8, mixture_seed: int = 0, nfes: Sequence[int] = (3, 4, 5, 6, 8, 10, 20, 50),
                schedules: Sequence[str] = SCHEDULES, n: int = 256, seed: int = 0, samplers=None, extra_grids: Sequence[str] = (),
                kdiffusion: bool = True, overhead: bool = True, overhead_shapes=((64, 3, 32, 32), (1024, 2)), overhead_steps: int = 20,
                overhead_repeats: int = 15, progress: bool = True) -> dict:
    """Run the peer benchmark; write ``peers.csv`` (accuracy rows), ``peers_summary.csv``,
    ``overhead.csv``, ``peers.md`` and ``peers.json`` under ``out_dir`` (atomic writes).
    Returns ``{"rows", "summary", "overhead", "markdown", ...paths}``."""
    for s in schedules:
        if s not in SCHEDULES:
            raise ValueError(f"unknown schedule {s!r}; valid: {', '.join(SCHEDULES)}")
    from .timegrids import available as grids

    for g in extra_grids:
        if g not in grids():
            raise ValueError(f"unknown time grid {g!r}; valid: {', '.join(grids())}")
    nfes = [int(k) for k in nfes]
    if not nfes or min(nfes) < 1:
        raise ValueError(f"nfes must be positive integers, got {nfes}")
    gmm = make_problem(dim, components, mixture_seed)
    rows, infos = [], []
    for sch in schedules:
        r, info = accuracy_rows(sch, gmm=gmm, nfes=nfes, n=n, seed=seed, samplers=samplers, extra_grids=extra_grids,
                                kdiffusion=kdiffusion, progress=progress)
        rows += r
        infos.append(info)
    summ = summary(rows, nfes, schedules)
    ovh = []
    if overhead:
        for shape in overhead_shapes:
            ovh += bookkeeping(tuple(shape), steps=overhead_steps, repeats=overhead_repeats, progress=progress)
    cfg = {"dim": dim, "components": components, "mixture_seed": mixture_seed, "n": n, "seed": seed, "nfes": nfes,
           "threads": torch.get_num_threads()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, summ, ovh, infos, nfes, cfg)
    paths = {"csv": write_text(out / "peers.csv", _csv(rows)), "summary_csv": write_text(out / "peers_summary.csv", _csv(summ)),
             "markdown": write_text(out / "peers.md", md)}
    if ovh:
        paths["overhead_csv"] = write_text(out / "overhead.csv", _csv(ovh))
    write_json(out / "peers.json", {"config": cfg, "info": infos, "summary": summ, "overhead": ovh})
    paths["json"] = out / "peers.json"
    return {"rows": rows, "summary": summ, "overhead": ovh, "info": infos, "text": md, **paths}
