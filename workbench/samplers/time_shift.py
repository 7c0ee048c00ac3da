"""Time-Shift Sampler on DDIM (Li et al. 2024, "Alleviating Exposure Bias in Diffusion Models
through Sampling with Shifted Time Steps", ICLR; TS-DDIM, Alg. 2; authors' code
github.com/Mingxiao-Li/TS-DPM).

Exposure bias: at inference the state ``x_t`` a sampler reaches does not have exactly the
noise level of grid time ``t``. TS-DPM estimates the noise level of each sample from its
variance and feeds the network the time ``t'`` in a window around ``t`` whose noise level
matches best:

    var_b  = Var over the real coordinates of x_b (per sample, unbiased, as torch.var),
    t'_b   = argmin over t' in W(t) of | var_b - (alpha(t')^2 data_var + sigma(t')^2) |,
    W(t)   = window_points points uniformly spaced in [t - window/2, t + window/2] clipped to (0, 1],

only while ``t > cutoff`` (``t'_b = t`` below). With ``data_var = 0`` (the default) the
target is ``sigma(t')^2`` (the authors' code compares against ``1 - alphabar``); setting
``data_var`` to the per-coordinate data variance gives the exact ``Var[x_t]`` of
``x_t = alpha x_0 + sigma eps``. In the authors' 1000-step units, ``window = 0.03`` and
``cutoff = 0.3`` are their CIFAR-10 DPM-Solver setting (window 30, cut-off 300).

The base update is DDIM and stays on the grid: with ``(x0, eps)`` predicted at ``t'_b``,
``x_{t_next} = alpha(t_next) x0 + sigma(t_next) eps`` (the DDIM step from ``t'_b`` to the
next grid time); a step into the clean end returns ``x0``. One NFE per step.

Not a convergent ODE solver: the shift does not vanish as the number of steps grows (the
window is fixed), so the registry lists no order; with ``window = 0`` or ``cutoff >= 1`` it
is exactly DDIM (``euler``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..processes import append_dims
from .base import ModelFn, is_clean, register


def _sample_variance(model: ModelFn, x: Tensor) -> Tensor:
    """Unbiased variance over the real coordinates of each sample ``[B]`` (float64)."""
    B = x.shape[0]
    xf = x.to(torch.float64)
    if model.mask is None:
        return xf.reshape(B, -1).var(dim=1)
    m = append_dims(model.mask.to(torch.float64), x.ndim).expand_as(xf).reshape(B, -1)
    v = xf.reshape(B, -1)
    n = m.sum(dim=1)
    mean = (v * m).sum(dim=1) / n.clamp_min(1.0)
    return (((v - mean[:, None]) ** 2) * m).sum(dim=1) / (n - 1.0).clamp_min(1.0)


def shifted_times(model: ModelFn, x: Tensor, t: float, *, window: float, window_points: int, data_var: float) -> Tensor:
    """Per-sample time ``t'`` ``[B]`` (float64) whose noise level best matches ``Var[x_b]``."""
    lo, hi = max(t - 0.5 * window, 1e-6), min(t + 0.5 * window, 1.0)
    cand = torch.linspace(lo, hi, max(2, int(window_points)), dtype=torch.float64)
    la, ls = model.process.log_alpha_sigma(cand)
    target = torch.exp(2 * la) * data_var + torch.exp(2 * ls)  # [C]
    var = _sample_variance(model, x).cpu()
    idx = torch.argmin((var[:, None] - target[None, :]).abs(), dim=1)
    return cand[idx]


@register("time_shift", nfe=lambda n: n, order=None,
          reference="Li et al. 2024 (Time-Shift Sampler, TS-DDIM), ICLR; github.com/Mingxiao-Li/TS-DPM")
def time_shift(model: ModelFn, x: Tensor, ts: Tensor, *, window: float = 0.03, cutoff: float = 0.3, window_points: int = 31,
               data_var: float = 0.0) -> Tensor:
    """TS-DDIM: DDIM whose network time is shifted per sample to match the state's variance.

    Args:
        model: the wrapped model (one call per step).
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        window: width of the search window around the grid time, in ``t`` units (0 = DDIM).
        cutoff: the shift is active only at grid times ``t > cutoff``.
        window_points: number of candidate times in the window.
        data_var: per-coordinate data variance in the noise-level target
            ``alpha^2 data_var + sigma^2`` (0 = the authors' ``sigma^2``).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if window < 0 or data_var < 0:
        raise ValueError(f"window and data_var must be >= 0, got {window}, {data_var}")
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        if window > 0 and s > cutoff:
            t_shift = shifted_times(model, x, s, window=window, window_points=window_points, data_var=data_var)
            pred = model(x, t_shift)  # one NFE at per-sample shifted times
            x0, eps = pred.x0, pred.eps
        else:
            pred = model(x, s)
            x0, eps = pred.x0, pred.eps
        if is_clean(t):
            return model.project(x0)
        a_t, s_t = model.coef(t)
        x = model.project(a_t * x0 + s_t * eps)
    return x
