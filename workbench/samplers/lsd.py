"""Learnable Sampler Distillation's student sampler (Fu, Guo & Liu 2025, "Learnable Sampler
Distillation for Discrete Diffusion Models" (LSD / LSD+), NeurIPS 2025; official code
feiyangfu/LSD, ``sampler.py`` ``StudentSolverDiscrete``).

A ``K``-step sampler of a masked (absorbing) discrete diffusion model whose step ``k`` raises
the model's concrete score to a learned power ``c_k`` (one scalar per step, shared by every
position and token) before the usual reverse-CTMC step. With the concrete score at a masked
position ``s_y = alpha_t / (1 - alpha_t) p(x0 = y | x_t)`` (SEDD's ratio, what SEDD's network
outputs in log form and what the official code multiplies by ``coeffs[i]``), the student's
reverse rate is

    R_c(m -> y) = sigma(t) s_y^{c_k},     sigma(t) = -alpha'(t) / alpha(t)

(``c_k = 1`` is the model's own rate ``-alpha'/(1 - alpha) p_y``). Two base steps over
``[s, t]``, ``dt = t - s``:

* ``base="euler"`` (the official code's ``EulerScheduler.step``: ``onehot(x_t) + dt R``):
  unmask to ``y`` with probability ``dt R_c(m -> y)``, stay masked with the rest (clamped at
  0 and renormalised when ``dt sum_y R_c > 1``, which the code leaves to its sampler);
* ``base="tau_leaping"``: the workbench's :func:`~workbench.samplers.tau_leaping.tau_leaping`
  step (jump with probability ``1 - exp(-dt sum_y R_c)``, target ``~ R_c``).

The last interval into ``t = 0`` draws every still-masked position from ``p_y^{c_K}``
(normalised): the official code's last step drops the mask column of ``onehot + dt R``, which
leaves ``s_y^{c}`` normalised, i.e. the same. With every ``c_k = 1`` the sampler is exactly its
base: ``base="tau_leaping"`` draws the same tokens as ``tau_leaping`` from the same
generators (the coefficient enters as a factor ``s^{c - 1}`` that is exactly 1), and
``base="euler"`` on the log-linear schedule is MDLM's ancestral step (``dt R = (t - s) / t =
(alpha_s - alpha_t) / (1 - alpha_t)``).

LSD+ learns the grid as well; a learned grid travels with the sampler file
(``sampler=lsd:PATH``, :func:`load_lsd`), see :mod:`workbench.distill.lsd` for the training.
Deviations from the official code: our grid ends at ``t = 0`` with the exact final step (the
code's ends at ``1e-5``); the code's second ``scheduler.step`` on the freshly drawn state
(``sampler.py`` l. 129-130, two jumps per step) is not reproduced.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import SamplerSpec, get, register, register_loader

__all__ = ["BASES", "lsd", "lsd_transition", "load_lsd"]

#: the base steps LSD can modify
BASES = ("euler", "tau_leaping")


def lsd_transition(process, x0_probs: Tensor, x_t: Tensor, t, s, coeff, base: str = "euler") -> Tensor:
    """The student's one-step transition ``P(x_s | x_t)`` per position, differentiable in
    ``coeff``, ``t`` and ``s`` (float64 tensors or floats).

    Args:
        process: a masked :class:`~workbench.processes.MaskedProcess`.
        x0_probs: ``[B, N, V]`` the model's ``p(x0 | x_t)`` (SUBS applied, rows sum to 1).
        x_t: ``LongTensor [B, N]``.
        t, s: ``1 >= t > s >= 0`` (0-d).
        coeff: ``c_k`` (0-d; 1 = the base sampler).
        base: ``euler`` or ``tau_leaping``.
    Returns:
        float64 ``[B, N, V + 1]`` non-negative (rows need not be normalised: categorical draws
        are scale-free); unmasked positions are the one-hot of their token.
    """
    if base not in BASES:
        raise ValueError(f"unknown LSD base step {base!r}; valid: {', '.join(BASES)}")
    p = x0_probs.to(torch.float64)
    c = torch.as_tensor(coeff, dtype=torch.float64, device=p.device)
    t = torch.as_tensor(t, dtype=torch.float64, device=p.device)
    s = torch.as_tensor(s, dtype=torch.float64, device=p.device)
    V = process.vocab_size
    is_m = (x_t == process.mask_id)[..., None]
    carried = torch.nn.functional.one_hot(x_t.long(), V + 1).to(torch.float64)
    pos = p > 0
    logp = torch.log(torch.where(pos, p, torch.ones_like(p)))
    if float(s.detach()) <= 0.0:  # exact last step: p^c (exactly p at c = 1)
        q = torch.where(pos, p * torch.exp((c - 1.0) * logp), torch.zeros_like(p))
        masked = torch.cat([q, torch.zeros_like(q[..., :1])], dim=-1)
        return torch.where(is_m, masked, carried)
    a_t = process.alpha(t)
    log_ratio = torch.log(a_t) - torch.log1p(-a_t)                       # log alpha / (1 - alpha)
    base_rate = -process.d_alpha(t) / (1.0 - a_t) * p                      # R_1(m -> y), [B, N, V]
    # R_c = R_1 s^{c - 1}: the factor is exactly 1 at c = 1 (bit-identical to the base sampler)
    rate = torch.where(pos, base_rate * torch.exp(((c - 1.0) * (log_ratio + logp)).clamp(max=700.0)), torch.zeros_like(p))
    dt = t - s
    if base == "euler":
        jump = dt * rate
        total = jump.sum(-1, keepdim=True)
        over = total > 1.0
        jump = torch.where(over, jump / total.clamp_min(1e-300), jump)
        stay = torch.where(over, torch.zeros_like(total), 1.0 - total)
    else:
        total = rate.sum(-1, keepdim=True)
        p_jump = -torch.expm1(-total * dt)
        jump = torch.where(total > 0, p_jump * rate / total.clamp_min(1e-300), torch.zeros_like(rate))
        stay = 1.0 - p_jump
    masked = torch.cat([jump, stay], dim=-1)
    return torch.where(is_m, masked, carried)


@register("lsd", state="discrete", requires=("absorbing",), nfe=lambda n: n, order=None, stochastic=True,
          reference="Fu et al. 2025 (LSD), feiyangfu/LSD sampler.py: per-step powers of the concrete score")
def lsd(model: DiscreteModelFn, x: Tensor, ts: Tensor, *, coeffs: Optional[Sequence[float]] = None, base: str = "euler") -> Tensor:
    """LSD student sampler (one NFE per step).

    Args:
        model: the wrapped discrete model (absorbing process).
        x: ``LongTensor [B, N]`` state at ``ts[0]``.
        ts: ``[K + 1]`` decreasing float64 grid (LSD+: the learned one).
        coeffs: ``K`` powers ``c_k`` (``None``: all 1, the base sampler).
        base: ``euler`` (the official code's) or ``tau_leaping``.
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]``.
    """
    K = len(ts) - 1
    c = [1.0] * K if coeffs is None else [float(v) for v in coeffs]
    if len(c) != K:
        raise ValueError(f"LSD has {len(c)} coefficients but the grid has {K} steps; pass steps={len(c)}")
    if base not in BASES:
        raise ValueError(f"unknown LSD base step {base!r}; valid: {', '.join(BASES)}")
    proc = model.process
    for i in range(K):
        t, s = float(ts[i]), float(ts[i + 1])
        probs = model(x, t)
        x = model.project(model.sample(lsd_transition(proc, probs, x, t, s, c[i], base)))
    return x


def load_lsd(path: Union[str, Path]) -> SamplerSpec:
    """The :class:`~workbench.samplers.SamplerSpec` of a trained LSD / LSD+ file (a
    ``generator.safetensors`` written by ``workbench distill method=lsd|lsd_plus``): the
    ``lsd`` sampler with the file's coefficients and base fixed and its grid carried
    (``spec.timesteps``), so it runs with exactly ``K`` steps. Resolves ``sampler=lsd:PATH``."""
    from ..checkpoint import CheckpointError, load_weights

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"LSD sampler file not found: {p} (write one with `workbench distill method=lsd ...`)")
    state, meta = load_weights(p)
    spec = (meta or {}).get("spec") or {}
    if spec.get("class") != "LSDGenerator" or "coeffs" not in state or "timesteps" not in state:
        raise CheckpointError(f"{p} is not an LSD sampler file (no LSD coefficients and grid in it); write one with "
                              "`workbench distill method=lsd ...`")
    coeffs = [float(v) for v in state["coeffs"].double().tolist()]
    ts = tuple(float(v) for v in state["timesteps"].double().tolist())
    base = get("lsd")
    return SamplerSpec(name=f"lsd:{p}", fn=base.fn, nfe=base.nfe, order=None, stochastic=True,
                       reference=f"{base.reference}; {spec.get('method', 'lsd')} file {p.name}",
                       options={"coeffs": coeffs, "base": spec.get("base", "euler")}, state="discrete",
                       requires=("absorbing",), timesteps=ts)


register_loader("lsd", load_lsd)
