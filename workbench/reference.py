"""Float64 adaptive reference solution of the probability-flow ODE.

The PF-ODE of any Gaussian process ``x_t = alpha(t) x_0 + sigma(t) eps`` (Song et al. 2021,
eq. 13) is ``dx/dt = alpha'(t) x0(x, t) + sigma'(t) eps(x, t)`` with the model's
``(x0, eps)``. In ``t`` it is stiff or singular at the ends for some processes (``sigma'``
blows up at ``t = 0`` for VP, ``alpha(1) = 0`` for rectified flow / cosine VP). We integrate
it instead in the rectified-flow coordinates of the same process (the change of variables
behind "every Gaussian process is a reparameterised flow", Kingma et al. 2021 (VDM),
appendix; Lee et al. 2023)::

    z = x / (alpha + sigma),    u = sigma / (alpha + sigma)  in [0, 1],
    z = (1 - u) x0 + u eps,     dz/du = eps(x, t) - x0(x, t),
    x = (alpha(t) + sigma(t)) z,  t = process.t_of_lambda(log((1 - u) / u)),

which is smooth on the whole of ``[0, 1]`` for every process (``u = 1`` is pure noise even
when ``alpha(1) = 0``; ``u = 0`` is the data). The solve runs from ``u(t_start = 1)`` to
``u(t_end)`` with ``torchdiffeq.odeint`` (Dormand-Prince 5(4) by default, Chen et al. 2018)
at ``rtol = atol = 1e-10`` in float64; the state is projected (padding, zero CoM) through
the :class:`~workbench.samplers.base.ModelFn` that wraps the model, exactly as the samplers
see it. With ``denoise_final`` the result is the model's data prediction at ``t_end``: the
limit that every sampler grid ``[..., t_end, 0]`` converges to as its steps go to zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .processes import GaussianProcess, canonical_prediction
from .samplers.base import ModelFn

__all__ = ["ReferenceResult", "reference_run", "reference_solve", "u_of_t", "t_of_u"]

_F64 = torch.float64


@dataclass
class ReferenceResult:
    """Output of :func:`reference_run`: ``x`` ``[B, ...]`` (the data prediction at ``t_end`` if
    ``denoise_final``, else the ODE state ``x_{t_end}``), ``x_t_end`` the ODE state at
    ``t_end`` ``[B, ...]``, ``nfe`` the number of model evaluations (the final denoising one
    included), ``t_end`` the end time."""

    x: Tensor
    x_t_end: Tensor
    nfe: int
    t_end: float


def u_of_t(process: GaussianProcess, t: float) -> float:
    """:meth:`GaussianProcess.u_of_t` at a scalar ``t``, as a float."""
    return 0.0 if float(t) <= 0.0 else float(process.u_of_t(float(t)))


def t_of_u(process: GaussianProcess, u: float) -> float:
    """:meth:`GaussianProcess.t_of_u` at a scalar ``u``, as a float."""
    return float(process.t_of_u(float(u)))


def reference_run(model: Callable, process: GaussianProcess, x_T: Tensor, *, prediction: str = "epsilon",
                  t_end: Optional[float] = None, t_start: float = 1.0, mask: Optional[Tensor] = None, cond: Any = None,
                  rtol: float = 1e-10, atol: float = 1e-10, method: str = "dopri5", denoise_final: bool = True,
                  options: Optional[dict] = None, progress: bool = False) -> ReferenceResult:
    """Solve the PF-ODE from ``t_start`` (default 1) to ``t_end`` (default
    ``process.t_min``) to tolerance, in float64.

    Args:
        model: ``model(x_t [B, ...], t [B], **kw) -> prediction [B, ...]`` (as for
            :func:`workbench.sample`).
        process: a :class:`~workbench.processes.GaussianProcess`.
        x_T: ``[B, ...]`` state at ``t_start`` (cast to float64, projected).
        prediction: the model's parameterization.
        t_end: end time ``> 0`` (default ``process.t_min``).
        mask, cond: as for :func:`workbench.sample`.
        rtol, atol: tolerances of the adaptive solver (on ``z``, whose scale is that of the
            data).
        method: a ``torchdiffeq`` adaptive method (``dopri5``, ``dopri8``, ...).
        denoise_final: return the data prediction at ``t_end`` (one more NFE).
        options: extra ``torchdiffeq.odeint`` options.
        progress: a tqdm bar on stderr: the share of the ``u`` interval solved, with an ETA.
    Returns:
        :class:`ReferenceResult` (float64 tensors).
    """
    from torchdiffeq import odeint

    t_end = float(process.t_min if t_end is None else t_end)
    if not 0.0 < t_end < float(t_start) <= 1.0:
        raise ValueError(f"need 0 < t_end < t_start <= 1, got t_end={t_end}, t_start={t_start}")
    mf = ModelFn(model, process, canonical_prediction(prediction), mask=mask, cond=cond)
    x = mf.project(x_T.to(_F64))

    def coef(t: float) -> float:
        la, ls = process.log_alpha_sigma(torch.tensor(t, dtype=_F64))
        return math.exp(float(la)) + math.exp(float(ls))

    u0, u1 = u_of_t(process, t_start), u_of_t(process, t_end)
    z0 = x / coef(t_start)

    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=f"reference ODE ({x.shape[0]} samples)", disable=not progress, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {postfix}]")
    span = (u0 - u1) or 1.0

    def field(u: Tensor, z: Tensor) -> Tensor:
        done = int(1000 * min(1.0, max(0.0, (u0 - float(u)) / span)))
        if done > bar.n:
            bar.update(done - bar.n)
        bar.set_postfix_str(f"NFE {mf.nfe}", refresh=False)
        t = t_of_u(process, float(u))
        pred = mf(coef(t) * z, t)
        return mf.project(pred.eps - pred.x0)

    grid = torch.tensor([u0, u1], dtype=_F64)
    with torch.no_grad():  # a ground-truth solve, never differentiated
        z1 = odeint(field, z0, grid, rtol=rtol, atol=atol, method=method, options=options)[-1]
        x_end = mf.project(coef(t_end) * z1)
        out = mf.project(mf(x_end, t_end).x0) if denoise_final else x_end
    bar.close()
    return ReferenceResult(x=out, x_t_end=x_end, nfe=mf.nfe, t_end=t_end)


def reference_solve(model: Callable, process: GaussianProcess, x_T: Tensor, *, prediction: str = "epsilon",
                    t_end: Optional[float] = None, mask: Optional[Tensor] = None, cond: Any = None, rtol: float = 1e-10,
                    atol: float = 1e-10, method: str = "dopri5", denoise_final: bool = True, progress: bool = False) -> Tensor:
    """The reference sample ``[B, ...]`` (float64): :func:`reference_run` ``(...).x``. See there
    for the arguments; use :func:`reference_run` for the NFE count."""
    return reference_run(model, process, x_T, prediction=prediction, t_end=t_end, mask=mask, cond=cond, rtol=rtol,
                         atol=atol, method=method, denoise_final=denoise_final, progress=progress).x
