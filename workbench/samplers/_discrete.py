"""The model as discrete-state samplers see it.

A discrete sampler is a pure function ``fn(model: DiscreteModelFn, x: LongTensor[B, N],
ts: Tensor[n+1], **opts) -> LongTensor[B, N]``; ``ts`` is float64, strictly decreasing from
``t = 1`` (noise) to ``t = 0`` (data). Each sampler must :meth:`DiscreteModelFn.project` every
state it makes (padding stays ``pad_id``) and draw every random number through
:meth:`DiscreteModelFn.sample` / :meth:`DiscreteModelFn.uniform` (float64, per-sample
generators). The last interval into ``t = 0`` draws the still-noisy positions from the model's
``p(x0 | x_t)`` (the exact posterior there), so no mask survives a full grid.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..processes import DiscreteProcess, categorical, rand64
from ..utils import Generator, model_kwargs

__all__ = ["DiscreteModelFn"]


class DiscreteModelFn:
    """The user's discrete denoiser as samplers see it. One ``__call__`` is one NFE.

    The model is ``model(x_t LongTensor[B, N], t [B], mask=, cond=) -> logits [B, N,
    vocab_size]`` over the CLEAN tokens: MDLM's SUBS parameterisation (Sahoo et al. 2024,
    sec. 3.2.3), so the mask state is never predicted (zero probability by construction) and,
    for an absorbing process, a position already unmasked in ``x_t`` is carried over (its
    probabilities become the one-hot of its token whatever the network says). ``mask=`` /
    ``cond=`` are passed only when given; ``t`` is float32 ``[B]``.

    ``__call__`` checks the output shape, converts the logits to float64 probabilities (a row of
    all ``-inf``, a ``NaN`` or a ``+inf`` is a one-line error naming the time), applies SUBS and
    makes padded positions the one-hot of ``pad_id``.

    Args:
        model: the network (above).
        process: a :class:`~workbench.processes.DiscreteProcess`.
        mask: optional ``[B, N]`` validity mask (1 real, 0 padding).
        cond: optional conditioning passed through to ``model``.
        generator: ``None``, a ``torch.Generator`` or ``B`` per-sample generators.
        callback: optional ``callback(info: dict)`` after every model call
            (``nfe``, ``t``, ``x``, ``probs``).
    """

    def __init__(self, model: Callable, process: DiscreteProcess, *, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, callback: Optional[Callable] = None):
        if not isinstance(process, DiscreteProcess):
            raise TypeError(f"discrete samplers need a DiscreteProcess (MaskedProcess, UniformProcess), got {type(process).__name__}")
        self.model = model
        self.process = process
        self.mask = mask
        self.cond = cond
        self.generator = generator
        self.callback = callback
        self.nfe = 0

    def __call__(self, x: Tensor, t) -> Tensor:
        """``p(x0 | x_t)`` per position: ``x`` ``[B, N]``, ``t`` a float or ``[B]`` -> float64
        ``[B, N, vocab_size]`` (rows sum to 1; SUBS and padding applied)."""
        B = x.shape[0]
        per_sample = isinstance(t, Tensor) and t.ndim == 1
        if per_sample and t.shape != (B,):
            raise ValueError(f"per-sample times must have shape [B] = [{B}], got {tuple(t.shape)}")
        tb = t.to(device=x.device, dtype=torch.float32) if per_sample else torch.full((B,), float(t), device=x.device, dtype=torch.float32)
        kw = model_kwargs(self.mask, self.cond)
        out = self.model(x, tb, **kw) if kw else self.model(x, tb)
        self.nfe += 1
        V = self.process.vocab_size
        if not isinstance(out, Tensor):
            raise TypeError(f"model must return a tensor of logits, got {type(out).__name__}")
        if tuple(out.shape) != (*x.shape, V):
            raise ValueError(f"model returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; a discrete model returns "
                             f"logits [B, N, vocab_size] = {(*x.shape, V)} over the clean tokens (SUBS: the mask state is never predicted)")
        probs = torch.softmax(out.to(torch.float64), dim=-1)
        if not bool(torch.isfinite(probs).all()):
            where = f"per-sample t in [{float(t.min()):.4g}, {float(t.max()):.4g}]" if per_sample else f"t={float(t):.6g}"
            raise FloatingPointError(f"model returned NaN/+Inf (or a row of all -Inf) logits at {where} (model call {self.nfe}); check the checkpoint and the input")
        p = self.process
        if p.absorbing:  # SUBS carry-over: unmasked tokens keep their value
            known = (x != p.mask_id)[..., None]
            probs = torch.where(known, torch.nn.functional.one_hot(x.clamp(max=V - 1).long(), V).to(probs.dtype), probs)
        if self.mask is not None:
            pad = torch.zeros(V, dtype=probs.dtype, device=probs.device)
            pad[p.pad_id] = 1.0
            probs = torch.where(self.mask.to(probs.device).bool()[..., None], probs, pad)
        if self.callback is not None:
            self.callback({"nfe": self.nfe, "t": t, "x": x, "probs": probs})
        return probs

    # -- helpers every discrete sampler uses ---------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Padding := ``pad_id`` under ``self.mask``."""
        return self.process.project(x, self.mask)

    def sample(self, probs: Tensor) -> Tensor:
        """One float64 categorical draw per position (:func:`~workbench.processes.categorical`)
        from ``probs`` ``[B, N, K]`` with the per-sample generators -> ``LongTensor [B, N]``."""
        return categorical(probs, self.generator)

    def uniform(self, like: Tensor) -> Tensor:
        """Float64 uniforms ``[0, 1)`` shaped like ``like`` ``[B, ...]`` (on its device) from the
        per-sample generators."""
        return rand64(like.shape, self.generator, device=like.device)

    def real(self, x: Tensor) -> Tensor:
        """Bool ``[B, N]``: the real (non-padding) positions of ``x``."""
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if self.mask is None else self.mask.to(x.device).bool()
