"""Ancestral sampling of masked / discrete diffusion (Sahoo et al. 2024, "Simple and Effective
Masked Diffusion Language Models" (MDLM), eq. 7 and Alg. 2; Austin et al. 2021, "Structured
Denoising Diffusion Models in Discrete State-Spaces" (D3PM), eq. 3-4).

Each step ``t -> s`` evaluates the model once and draws every position independently from
``process.posterior``: the exact reverse transition ``q(x_s | x_t, x0)`` averaged over the
model's ``p(x0 | x_t)``. For the masked process this is MDLM's eq. 7 with SUBS (a masked
token unmasks with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``, unmasked tokens stay);
for the uniform process D3PM's posterior (see ``UniformProcess.posterior``). The last step into
``t = 0`` draws every remaining noisy position from ``p(x0 | x_t)`` (MDLM's final step takes
the argmax instead; drawing is the exact posterior at ``alpha = 1``).
"""
from __future__ import annotations

from torch import Tensor

from ._discrete import DiscreteModelFn
from .base import register


@register("mdlm_ancestral", state="discrete", nfe=lambda n: n, order=None, stochastic=True,
          reference="Sahoo et al. 2024 (MDLM) eq. 7; Austin et al. 2021 (D3PM) eq. 3-4")
def mdlm_ancestral(model: DiscreteModelFn, x: Tensor, ts: Tensor) -> Tensor:
    """MDLM / D3PM ancestral sampler (one NFE per step).

    Args:
        model: the wrapped discrete model.
        x: ``LongTensor [B, N]`` state at ``ts[0]`` (the prior: all masks, or uniform tokens).
        ts: ``[n + 1]`` decreasing float64 grid.
    Returns:
        ``LongTensor [B, N]`` at ``ts[-1]`` (clean tokens when ``ts[-1] = 0``).
    """
    proc = model.process
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        probs = model(x, t)
        x = model.project(model.sample(proc.posterior(probs, x, t, s)))
    return x
