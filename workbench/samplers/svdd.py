"""Soft value-based decoding (SVDD-PM) for masked discrete diffusion (``svdd``) and for continuous
(Gaussian) state (``svdd_sde``, at the end of this module) (Li et al. 2024,
"Derivative-Free Guidance in Continuous and Discrete Diffusion Models with Soft Value-Based
Decoding", Alg. 1 with the posterior-mean value; official code masa-ue/SVDD
``diffusion_gosai.py`` ``_ddpm_update_finetune_controlled_twedie``).

Each step ``t -> s``:

1. one model call gives ``p(x0 | x_t)`` and the pretrained ancestral posterior
   ``q(x_s | x_t, x0)`` averaged over it (MDLM eq. 7);
2. ``M = n_candidates`` candidates ``x_s^(m)`` are drawn from it independently;
3. the soft value of a candidate is the reward of its clean estimate
   ``v(x_s^(m)) = r(x0_hat(x_s^(m)))``, ``x0_hat`` the per-position argmax of the model's
   ``p(x0 | x_s^(m))`` at time ``s`` with already unmasked tokens kept (the official code's
   "tweedie" mode: one more model call per candidate, an argmax one-hot rather than a sample);
4. one candidate per sample is kept: the argmax of ``v`` for ``alpha = 0`` (what the official
   code does: its softmax before the argmax is monotone), else a draw from
   ``softmax(v / alpha)`` (the paper's target policy ``p_pre(x_s | x_t) exp(v(x_s) / alpha)``).

At the last interval into ``t = 0`` the candidates are clean, so their value is the reward itself
(no extra model call). The official code runs its guided steps to ``t = 1e-5`` and fills the
few masks left by an unguided argmax; our grid ends at 0 and the last step is guided as well.

Cost: ``1 + M`` model calls per step (``M`` fewer on the last) and ``M`` reward calls;
``nfe(n)`` is registered for the default ``M = 10`` (``run_sampler`` reports the real count).
Report the domain's unguided quality metrics beside the reward it raises (a reward can be
gamed; Inference-Scaling fLaws).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..processes.discrete import rand64
from ._discrete import DiscreteModelFn
from .base import ModelFn, is_clean, register
from .sde import sde_step

DEFAULT_CANDIDATES = 10


@register("svdd", state="discrete", requires=("absorbing",), needs=("reward",), nfe=lambda n: n + DEFAULT_CANDIDATES * (n - 1),
          order=None, stochastic=True, reference="Li et al. 2024 (SVDD-PM), masa-ue/SVDD diffusion_gosai.py (tweedie value)")
def svdd(model: DiscreteModelFn, x: Tensor, ts: Tensor, *, reward: Callable, n_candidates: int = DEFAULT_CANDIDATES,
         alpha: float = 0.0) -> Tensor:
    """SVDD-PM sampler.

    Args:
        model: the wrapped discrete model (absorbing process).
        x: ``LongTensor [B, N]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        reward: ``reward(x0 LongTensor [B, N], mask [B, N] or None) -> [B]`` (higher is
            better; need not be differentiable).
        n_candidates: ``M`` candidates per step (official README commands: 10).
        alpha: temperature of the soft selection; 0 = argmax (the official code).
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]``.
    """
    if int(n_candidates) != n_candidates or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
    if not float(alpha) >= 0.0:
        raise ValueError(f"alpha must be >= 0 (0 = argmax selection), got {alpha!r}")
    if not callable(reward):
        raise TypeError(f"reward must be callable reward(x0 [B, N], mask) -> [B], got {type(reward).__name__}")
    proc = model.process
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        post = proc.posterior(model(x, t), x, t, s)
        cands, values = [], []
        for _ in range(int(n_candidates)):
            c = model.project(model.sample(post))
            x0_hat = c if s <= 0.0 else model.project(model(c, s).argmax(-1))  # SUBS keeps unmasked tokens
            v = torch.as_tensor(reward(x0_hat, model.mask), dtype=torch.float64).reshape(-1).to(x.device)
            if v.shape != (B,):
                raise ValueError(f"reward must return one value per sample, shape [{B}], got {tuple(v.shape)}")
            cands.append(c)
            values.append(v)
        V = torch.stack(values, 1)                                         # [B, M]
        if alpha == 0.0:
            pick = V.argmax(1)
        else:
            w = torch.softmax(torch.nan_to_num(V, nan=-torch.inf) / float(alpha), dim=1)
            pick = model.sample(w[:, None, :])[:, 0]
        x = torch.stack(cands, 1)[rows, pick]
    return x


@register("svdd_sde", nfe=lambda n: n + DEFAULT_CANDIDATES * (n - 1), order=1, stochastic=True, needs=("reward",),
          reference="Li et al. 2024 (SVDD-PM), Alg. 1 on continuous state with the first-order reverse SDE as the proposal")
def svdd_sde(model: ModelFn, x: Tensor, ts: Tensor, *, reward: Callable, n_candidates: int = DEFAULT_CANDIDATES, alpha: float = 0.0,
             noise_scale: float = 1.0, temperature: float = 1.0) -> Tensor:
    """SVDD-PM on a continuous (Gaussian) state: each step ``s -> t > 0`` draws ``M`` candidates
    from the pretrained reverse SDE step (:func:`~workbench.samplers.sde.sde_step`, from the
    same data prediction, independent noises), values each by the reward of its posterior mean
    ``r(x0_hat(x_t^(m)))`` (one model call per candidate) and keeps the argmax (``alpha = 0``)
    or a draw from ``softmax(v / alpha)``. The step into ``t = 0`` is the deterministic data
    prediction (nothing to select). The official repository holds only the discrete code; this
    follows the paper's algorithm, which covers continuous diffusion the same way.

    Args:
        model: the wrapped model. x: ``[B, ...]`` state at ``ts[0]``. ts: ``[n + 1]`` grid.
        reward: ``reward(x0 [B, ...], mask) -> [B]`` (higher is better).
        n_candidates: ``M`` (``1``: exactly :func:`~workbench.samplers.sde.sde`, no value calls).
        alpha: selection temperature (0 = argmax). noise_scale, temperature: of the SDE step.
    Returns:
        ``[B, ...]`` samples.
    """
    if int(n_candidates) != n_candidates or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
    if not float(alpha) >= 0.0:
        raise ValueError(f"alpha must be >= 0 (0 = argmax selection), got {alpha!r}")
    if not callable(reward):
        raise TypeError(f"reward must be callable reward(x0 [B, ...], mask) -> [B], got {type(reward).__name__}")
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        cands, values = [], []
        for _ in range(int(n_candidates)):
            c = sde_step(model, x, pred.x0, s, t, noise_scale=noise_scale, temperature=temperature)
            cands.append(c)
            if n_candidates > 1:
                v = torch.as_tensor(reward(model.project(model(c, t).x0), model.mask), dtype=torch.float64).reshape(-1).to(x.device)
                if v.shape != (B,):
                    raise ValueError(f"reward must return one value per sample, shape [{B}], got {tuple(v.shape)}")
                values.append(v)
        if n_candidates == 1:
            x = cands[0]
            continue
        V = torch.stack(values, 1)                                         # [B, M]
        if alpha == 0.0:
            pick = V.argmax(1)
        else:
            w = torch.softmax(torch.nan_to_num(V, nan=-torch.inf) / float(alpha), dim=1)
            u = rand64((B,), model.generator, device=x.device)
            pick = torch.searchsorted(torch.cumsum(w, 1), u[:, None].to(w.dtype).contiguous(), right=True).squeeze(1).clamp(max=V.shape[1] - 1)
        x = torch.stack(cands, 1)[rows, pick]
    return x
