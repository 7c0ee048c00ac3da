"""Tweedie tau-leaping: SEDD's "analytic" sampler (Lou et al. 2024, "Discrete Diffusion
Modeling by Estimating the Ratios of the Data Distribution", sec. 4.2, Theorem 4.2 / eq. 19;
official code ``sampling.py``, ``AnalyticPredictor``).

For a step ``t -> s`` with the one-position forward kernel ``K[z, y] = q(x_t = y | x_s = z)``,
Theorem 4.2 gives the reverse transition from the concrete score ``r_y = p_t(y) / p_t(x_t)``:
``p(x_s = z | x_t) ∝ [(K^T)^{-1} r]_z K[z, x_t]`` (SEDD's ``staggered_score`` times its
``transp_transition``; negative entries of an inexact score are clipped to 0 before the draw).
The ratios here come from the model's ``p(x0 | x_t)`` (``process.ratios``), since this
workbench's discrete models are x0 (SUBS) models. With ratios derived from an x0 distribution
the update equals the ancestral posterior ``sum_x0 p(x0) q(x_s | x_t, x0)`` exactly (for the
absorbing case this is the content of Ou et al. 2024, "Your Absorbing Discrete Diffusion
Secretly Models the Conditional Distributions of Clean Data": the concrete score is a scalar of
``t`` times the clean-data conditionals; a test checks the equality to float64 rounding for
both processes), so with an x0 model this sampler is a second,
independently written route to ``mdlm_ancestral``'s transition. It differs for score
(ratio) networks as SEDD trains them, whose outputs need not come from any x0 distribution;
this workbench has no such parameterisation yet.
"""
from __future__ import annotations

from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import register


@register("tweedie", state="discrete", nfe=lambda n: n, order=None, stochastic=True,
          reference="Lou et al. 2024 (SEDD) Thm 4.2, eq. 19 (analytic / Tweedie tau-leaping)")
def tweedie(model: DiscreteModelFn, x: Tensor, ts: Tensor) -> Tensor:
    """SEDD's analytic (Tweedie) sampler (one NFE per step).

    Args:
        model: the wrapped discrete model.
        x: ``LongTensor [B, N]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]``.
    """
    proc = model.process
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        probs = model(x, t)
        ratios = proc.ratios(probs, x, t)                               # [B, N, S]
        step = proc.staggered_score(ratios, t, s) * proc.transp_transition(x, t, s)
        x = model.project(model.sample(step.clamp_min(0.0)))
    return x
