"""Time grids as pure functions.

Every function returns a float64 tensor ``[steps + 1]``, strictly decreasing from
``t_start`` (default 1, pure noise) to the clean end ``t = 0``; the point before the end is
the process's ``t_min`` (smallest trained noise level) unless stated otherwise. A sampler
step that lands on ``t = 0`` returns the model's data prediction.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .processes import GaussianProcess

GRIDS: dict[str, Callable] = {}


def _register(name):
    def deco(fn):
        GRIDS[name] = fn
        return fn

    return deco


def _check_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _with_clean_end(t: Tensor) -> Tensor:
    return torch.cat([t.to(torch.float64), torch.zeros(1, dtype=torch.float64)])


@_register("uniform_t")
def uniform_t(process: GaussianProcess, steps: int, *, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """``steps + 1`` points uniform in ``t`` from ``t_start`` to ``t_end`` (default: clean end).
    (DDIM / diffusers 'linspace' spacing.)"""
    steps = _check_steps(steps)
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


@_register("uniform_lambda")
def uniform_lambda(process: GaussianProcess, steps: int, *, t_start: float = 1.0, t_end: Optional[float] = None) -> Tensor:
    """Uniform in log-SNR ``lambda`` between ``t_start`` and ``t_end`` (default ``t_min``),
    then the clean end (DPM-Solver's 'logSNR' spacing, Lu et al. 2022, sec. 3.3).
    The spacing starts at ``min(t_start, process.t_max_finite)`` (processes whose log-SNR
    is ``-inf`` at ``t = 1``) and the grid still starts at ``t_start``."""
    steps = _check_steps(steps)
    t_end = process.t_min if t_end is None else t_end
    lam_hi = process.lambda_(torch.tensor(min(t_start, process.t_max_finite), dtype=torch.float64))
    lam_lo = process.lambda_(torch.tensor(t_end, dtype=torch.float64))
    if steps == 1:
        return torch.tensor([t_start, 0.0], dtype=torch.float64)
    lams = torch.linspace(float(lam_hi), float(lam_lo), steps, dtype=torch.float64)
    t = process.t_of_lambda(lams).to(torch.float64)
    t[0] = t_start
    return _with_clean_end(t)


@_register("edm")
def edm(process: GaussianProcess, steps: int, *, rho: float = 7.0, t_start: float = 1.0, t_end: Optional[float] = None) -> Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): uniform in ``sigma~^(1/rho)`` where
    ``sigma~ = sigma / alpha = exp(-lambda)``, from ``t_start`` to ``t_end`` (default
    ``t_min``), then the clean end."""
    steps = _check_steps(steps)
    t_end = process.t_min if t_end is None else t_end
    lam_hi = process.lambda_(torch.tensor(min(t_start, process.t_max_finite), dtype=torch.float64))
    s_max = float(torch.exp(-lam_hi))
    s_min = float(torch.exp(-process.lambda_(torch.tensor(t_end, dtype=torch.float64))))
    if steps == 1:
        return torch.tensor([t_start, 0.0], dtype=torch.float64)
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    sig = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = process.t_of_lambda(-torch.log(sig)).to(torch.float64)
    t[0] = t_start
    return _with_clean_end(t)


@_register("quadratic")
def quadratic(process: GaussianProcess, steps: int, *, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Quadratic spacing (DDIM 'quad', Song et al. 2021): ``t_i = t_end + (t_start - t_end) u_i^2``
    with ``u`` uniform, so steps get denser near the data."""
    steps = _check_steps(steps)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_end + (t_start - t_end) * u**2


@_register("time_quadratic")
def time_quadratic(process: GaussianProcess, steps: int, *, t_start: float = 1.0, t_end: Optional[float] = None) -> Tensor:
    """DPM-Solver's 'time_quadratic' spacing (Lu et al. 2022; official code
    ``dpm_solver_pytorch.py``, ``DPM_Solver.get_time_steps``): uniform in ``sqrt(t)`` from
    ``t_start`` to ``t_end`` (default ``t_min``), ``t_i = (sqrt(t_start) + i / steps
    (sqrt(t_end) - sqrt(t_start)))^2`` for ``i = 0..steps``, with the last point ``t_end``
    replaced by the clean end ``t = 0``.

    The replacement is this workbench's choice: the official solver stops at ``t_end`` and
    returns the state there, while the workbench's grids end with a step into ``t = 0`` that
    returns the data prediction (one NFE per interval either way). Every interior point stays
    ``>= t_end``, inside the trained range, and the last interval ``[t_{steps-1}, 0]`` shrinks
    like ``1 / steps^2``, so the first-order final jump costs little at any step count. It is
    the default of linear-beta VP processes (:class:`~workbench.processes.VPDiscrete`,
    :class:`~workbench.processes.VPLinear`; not of the cosine schedule, where it loses): on
    an exact 16-D Gaussian mixture with DDPM linear betas it beats ``uniform_t`` (whose last
    interval ``[1/steps, 0]`` is a first-order jump), ``uniform_lambda`` and ``edm`` at every
    NFE from 3 to 50 (``workbench bench peers``, docs/benchmarks.md)."""
    steps = _check_steps(steps)
    t_end = process.t_min if t_end is None else t_end
    if not 0.0 < t_end < t_start:
        raise ValueError(f"need 0 < t_end < t_start, got t_end={t_end}, t_start={t_start}")
    t = torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2
    t[0] = t_start
    t[-1] = 0.0
    return t


@_register("flow_shift")
def flow_shift(process: GaussianProcess, steps: int, *, shift: float = 3.0, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Shifted uniform grid of flow models (SD3, Esser et al. 2024, eq. 23):
    ``t' = shift t / (1 + (shift - 1) t)``; ``shift > 1`` spends more steps at high noise."""
    steps = _check_steps(steps)
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    t = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def custom(timesteps) -> Tensor:
    """Validate a user grid: 1-d, strictly decreasing, within ``[0, 1]``."""
    t = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if t.numel() < 2:
        raise ValueError("timesteps needs at least 2 points (start and end)")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing (t=1 noise -> t=0 data)")
    if float(t.min()) < 0 or float(t.max()) > 1:
        raise ValueError(f"timesteps must lie in [0, 1], got range [{float(t.min())}, {float(t.max())}]")
    return t


def available() -> list[str]:
    return sorted(GRIDS)


def get_grid(name: str, process: GaussianProcess, steps: int, **kwargs) -> Tensor:
    """Build grid ``name`` (one of :func:`available`)."""
    if name not in GRIDS:
        raise ValueError(f"unknown time grid {name!r}; valid: {', '.join(available())}")
    if not getattr(process, "continuous", True) and name not in DISCRETE_GRIDS:
        raise ValueError(f"time grid {name!r} needs a Gaussian process's log-SNR or t_min; valid for {type(process).__name__}: "
                         f"{', '.join(DISCRETE_GRIDS)}")
    return GRIDS[name](process, steps, **kwargs)


#: the grids defined by ``t`` alone, so they apply to discrete processes (which have no log-SNR)
DISCRETE_GRIDS = ("flow_shift", "quadratic", "uniform_t")


def default_grid(process: GaussianProcess, steps: int) -> Tensor:
    """The process's recommended grid (``process.default_grid``)."""
    return get_grid(process.default_grid, process, steps)
