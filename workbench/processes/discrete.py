"""Discrete-state processes: masked (absorbing) and uniform noise on token ids.

Time convention of the package: ``t`` in ``[0, 1]``, ``t = 0`` data, ``t = 1`` noise, per
sample ``[B]``. The state is a ``LongTensor [B, N]`` of token ids (any ``[B, ...]`` works for
the forward process), padded positions hold ``pad_id`` under a ``mask [B, N]`` (1 real, 0 pad).
Every position is corrupted independently (Austin et al. 2021, "D3PM"; Sahoo et al. 2024,
"MDLM", sec. 2):

* :class:`MaskedProcess` (absorbing): ``q(x_t | x_0) = Cat(alpha(t) e_{x_0} + (1 - alpha(t)) e_m)``
  over ``vocab_size + 1`` states, the last one (``mask_id = vocab_size``) the mask
  (MDLM eq. 2 / D3PM's absorbing transition).
* :class:`UniformProcess`: ``q(x_t | x_0) = Cat(alpha(t) e_{x_0} + (1 - alpha(t)) / V)`` over the
  ``V = vocab_size`` real tokens (D3PM's uniform transition, Austin et al. 2021, eq. 9 / app. A.2).

``alpha(t)`` is the probability that a token is still clean; two schedules, as MDLM's code
(``noise_schedule.py``; MDLM writes ``alpha = exp(-sigma)``):

* ``loglinear``: ``alpha(t) = 1 - (1 - eps) t`` (MDLM's ``LogLinearNoise``, total noise
  ``sigma(t) = -log(1 - (1 - eps) t)``);
* ``cosine``: ``alpha(t) = eps + (1 - eps) cos(pi t / 2)`` (MDLM's ``CosineNoise``).

Both give ``alpha(0) = 1`` and ``alpha(1) = eps``; ``eps = 0`` makes ``t = 1`` exactly the
prior (all masks / uniform tokens). Samplers start from :meth:`DiscreteProcess.prior` at
``t = 1`` (as MDLM does for its ``eps = 1e-3``).

Models see the state through the SUBS parameterisation (MDLM sec. 3.2.3): the network returns
logits over the ``vocab_size`` CLEAN tokens only (the mask state is never predicted) and, for
the absorbing process, already unmasked tokens are carried over unchanged
(:class:`workbench.samplers.DiscreteModelFn` applies both).

Categorical draws are made in float64 (:func:`categorical`): Zheng et al. 2024 ("Masked
diffusion models are secretly time-agnostic masked models and exploit inaccurate categorical
sampling", sec. 4) show that float32 Gumbel noise is truncated (``-log(-log u)`` with ``u``
a float32 uniform cannot exceed about 16.6), which lowers the effective temperature, reduces
token diversity and makes few-step samples look better under generative perplexity than
they are; in float64 the truncation point is about 36.7 and the bias is negligible.

Per-sample generators: every random draw accepts ``generator`` = ``None``, one
``torch.Generator`` or a list of ``B`` generators (sample ``i`` drawn from ``generator[i]``
only, so it does not depend on the batch size), as :func:`workbench.utils.randn`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .gaussian import Process

__all__ = ["SCHEDULES", "DiscreteProcess", "MaskedProcess", "UniformProcess", "categorical", "rand64"]

SCHEDULES = ("loglinear", "cosine")

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


# -- per-sample float64 random numbers ------------------------------------------------------------
def rand64(shape, generator: Generator = None, device=None) -> Tensor:
    """Float64 uniforms in ``[0, 1)`` of ``shape`` ``[B, ...]``.

    ``generator``: ``None`` (global RNG), one ``torch.Generator``, or a list of ``B``
    generators (entry ``i`` drawn from ``generator[i]`` only: batch-size independent)."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        out = torch.rand(shape, generator=generator, device=gdev, dtype=torch.float64)
        return out.to(device) if device is not None else out
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} per-sample generators for a batch of {shape[0]}")
    out = torch.stack([torch.rand(shape[1:], generator=g, device=g.device, dtype=torch.float64) for g in gens]) if gens \
        else torch.empty(shape, dtype=torch.float64)
    return out.to(device) if device is not None else out


def categorical(probs: Tensor, generator: Generator = None) -> Tensor:
    """Draw one index per row of ``probs`` ``[B, ..., K]`` (non-negative, need not be
    normalised) -> ``LongTensor [B, ...]``, in float64.

    The draw is the exponential race ``argmax_k p_k / E_k`` with ``E_k ~ Exp(1)``, which is the
    Gumbel-max trick (``argmax_k log p_k + G_k``, ``G = -log E``) without the logarithm of
    ``p`` (MDLM's ``_sample_categorical`` uses the same race). It runs in float64 because float32
    Gumbel noise is truncated near 16.6, lowering the sampling temperature (Zheng et al. 2024,
    sec. 4); ``probs`` of another dtype are converted. Zero-probability entries are never drawn;
    a row with no positive entry is an error. ``generator`` may be a list of ``B`` per-sample
    generators (``K`` uniforms per position are drawn from the row's own generator)."""
    if not isinstance(probs, Tensor) or probs.ndim < 2:
        raise ValueError("probs must be a tensor of shape [B, ..., K]")
    p = probs.to(torch.float64)
    if bool((p < 0).any()) or not bool((p.sum(-1) > 0).all()) or not bool(torch.isfinite(p).all()):
        raise ValueError("categorical needs finite, non-negative probabilities with a positive sum in every row")
    u = rand64(p.shape, generator, device=p.device)
    e = (-torch.log1p(-u)).clamp_min(torch.finfo(torch.float64).tiny)  # Exp(1); u in [0, 1)
    return (p / e).argmax(-1)


def _per_sample(t, batch: int, device=None) -> Tensor:
    """``t`` (float, 0-d or ``[B]``) -> float64 ``[B]``."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a float or have shape [B] = [{batch}], got {tuple(t.shape)}")
    return t


def _bcast(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


class DiscreteProcess(Process, ABC):
    """Base class of discrete-state processes (``continuous = False``).

    Attributes:
        vocab_size: number of real tokens ``V`` (ids ``0..V-1``).
        mask_id: the mask token (``== vocab_size``) of an absorbing process, ``None`` otherwise.
        n_states: states a position can take (``V + 1`` absorbing, ``V`` uniform).
        pad_id: what :meth:`project` writes at padded positions (0 by default).
        schedule, eps: the ``alpha(t)`` schedule (module docstring).

    Shapes: ``x`` ``LongTensor [B, N]``; ``t``, ``s`` a float or float64 ``[B]``; probability
    tensors ``float64 [B, N, K]`` with ``K = vocab_size`` for model (x0) probabilities and
    ``K = n_states`` for distributions of ``x_t``.
    """

    continuous = False
    zero_com = False
    #: a grid of :mod:`workbench.timegrids` that needs no log-SNR: uniform in ``t`` (MDLM)
    default_grid = "uniform_t"
    mask_id: Optional[int] = None

    def __init__(self, vocab_size: int, schedule: str = "loglinear", eps: float = 1e-3, *, pad_id: int = 0):
        if int(vocab_size) != vocab_size or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown discrete noise schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0.0 <= float(eps) < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps!r}")
        if int(pad_id) != pad_id or not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be a token id in [0, {vocab_size}), got {pad_id!r}")
        self.vocab_size, self.schedule, self.eps, self.pad_id = int(vocab_size), schedule, float(eps), int(pad_id)

    @property
    def absorbing(self) -> bool:
        """True for the masked (absorbing) process."""
        return self.mask_id is not None

    @property
    def n_states(self) -> int:
        return self.vocab_size + (1 if self.absorbing else 0)

    # -- schedule (float64) ------------------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        """Probability that a token is still clean at ``t`` (float64, shape of ``t``)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "loglinear":
            return 1.0 - (1.0 - self.eps) * t
        return self.eps + (1.0 - self.eps) * torch.cos(t * (math.pi / 2))

    def d_alpha(self, t) -> Tensor:
        """``alpha'(t)`` (float64, shape of ``t``; negative)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "loglinear":
            return torch.full_like(t, -(1.0 - self.eps))
        return -(1.0 - self.eps) * (math.pi / 2) * torch.sin(t * (math.pi / 2))

    def t_of_alpha(self, a) -> Tensor:
        """Inverse of :meth:`alpha`, clamped to ``[0, 1]`` (``alpha < eps`` maps to ``t = 1``)."""
        a = torch.as_tensor(a, dtype=torch.float64)
        if self.schedule == "loglinear":
            t = (1.0 - a) / (1.0 - self.eps)
        else:
            t = torch.arccos(((a - self.eps) / (1.0 - self.eps)).clamp(-1.0, 1.0)) * (2 / math.pi)
        return t.clamp(0.0, 1.0)

    def default_timesteps(self, steps: int) -> Tensor:
        """``[steps + 1]`` float64 times uniform from 1 to 0 (MDLM's sampling grid, ending at the
        clean end ``t = 0`` where the posterior is the model's x0 distribution)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)

    # -- constraints -----------------------------------------------------------------------------
    def project(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Write ``pad_id`` at padded positions: ``x`` ``[B, N, ...]``, ``mask`` ``[B, N]`` (1 real)."""
        if mask is None:
            return x
        if x.ndim < 2 or tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match state shape {tuple(x.shape)} (expected [B, N] = {tuple(x.shape[:2])})")
        m = mask.to(device=x.device).bool().reshape(*mask.shape, *([1] * (x.ndim - 2)))
        return torch.where(m, x, torch.full_like(x, self.pad_id))

    def _check_tokens(self, x: Tensor, what: str, states: Optional[int] = None) -> None:
        if not isinstance(x, Tensor) or x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"{what} must be an integer (token id) tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        k = self.vocab_size if states is None else states
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= k):
            raise ValueError(f"{what} holds ids outside [0, {k}) (range [{int(x.min())}, {int(x.max())}])")

    def _check_probs(self, x0_probs: Tensor, x_t: Tensor) -> Tensor:
        if tuple(x0_probs.shape) != (*x_t.shape, self.vocab_size):
            raise ValueError(f"x0_probs must have shape [*x_t.shape, vocab_size] = {(*x_t.shape, self.vocab_size)}, got {tuple(x0_probs.shape)}")
        return x0_probs.to(torch.float64)

    def _alphas(self, t, s, x: Tensor):
        """``alpha(t)``, ``alpha(s)`` as float64 ``[B, 1, ..., 1]`` broadcasting over ``[B, N, K]``."""
        B = x.shape[0]
        a_t = _bcast(self.alpha(_per_sample(t, B, x.device)), x.ndim + 1)
        a_s = None if s is None else _bcast(self.alpha(_per_sample(s, B, x.device)), x.ndim + 1)
        return a_t, a_s

    # -- the interface every discrete process implements ------------------------------------------
    @abstractmethod
    def prior(self, shape, generator: Generator = None, mask: Optional[Tensor] = None, device=None) -> Tensor:
        """``x_1`` ``LongTensor`` of ``shape`` ``[B, N]``, padding := ``pad_id``."""

    @abstractmethod
    def add_noise(self, x0: Tensor, t, generator: Generator = None, mask: Optional[Tensor] = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` independently per position: ``x0`` ``[B, N]``, ``t`` ``[B]``."""

    @abstractmethod
    def marginal(self, x0: Tensor, t) -> Tensor:
        """Closed-form ``q(x_t | x0)``: ``x0`` ``[B, N]`` -> float64 ``[B, N, n_states]``."""

    @abstractmethod
    def posterior(self, x0_probs: Tensor, x_t: Tensor, t, s) -> Tensor:
        """``sum_{x0} p(x0) q(x_s | x_t, x0)`` for ``0 <= s < t``: float64 ``[B, N, n_states]``."""

    @abstractmethod
    def ratios(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """Concrete score ``p_t(y) / p_t(x_t)`` per position implied by ``x0_probs`` (SEDD's ratios)."""

    @abstractmethod
    def reverse_rates(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """Reverse-time CTMC rates ``R_t(x_t -> y)`` per position, 0 at ``y = x_t``."""

    @abstractmethod
    def staggered_score(self, ratios: Tensor, t, s) -> Tensor:
        """``(K^T)^{-1} r`` with ``K[z, y] = q(x_t = y | x_s = z)`` (SEDD's ``staggered_score``)."""

    @abstractmethod
    def transp_transition(self, x_t: Tensor, t, s) -> Tensor:
        """``K[z, x_t] = q(x_t | x_s = z)`` over ``z`` (SEDD's ``transp_transition``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, schedule={self.schedule!r}, eps={self.eps!r}, pad_id={self.pad_id})"


class MaskedProcess(DiscreteProcess):
    """Masked (absorbing-state) diffusion (Austin et al. 2021; Sahoo et al. 2024, MDLM).

    ``mask_id = vocab_size``; ``n_states = vocab_size + 1``. Forward: each real token is kept with
    probability ``alpha(t)`` and otherwise replaced by the mask (MDLM eq. 2). Reverse
    (MDLM eq. 7, SUBS): a masked token at ``t`` is, at ``s < t``, unmasked to ``x0 ~ p`` with
    probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` and stays masked with probability
    ``(1 - alpha_s) / (1 - alpha_t)``; an unmasked token never changes.

    Args:
        vocab_size: number of real tokens.
        schedule: ``loglinear`` (default, MDLM's) or ``cosine``.
        eps: ``alpha(1) = eps`` (MDLM's 1e-3); 0 makes ``t = 1`` exactly all masks.
        pad_id: token written at padded positions.
    """

    def __init__(self, vocab_size: int, schedule: str = "loglinear", eps: float = 1e-3, *, pad_id: int = 0):
        super().__init__(vocab_size, schedule, eps, pad_id=pad_id)
        self.mask_id = self.vocab_size

    def prior(self, shape, generator: Generator = None, mask: Optional[Tensor] = None, device=None) -> Tensor:
        """All masks ``LongTensor`` of ``shape`` (padding := ``pad_id``); ``generator`` is unused
        (the prior is deterministic) and accepted for a uniform interface."""
        return self.project(torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device), mask)

    def add_noise(self, x0: Tensor, t, generator: Generator = None, mask: Optional[Tensor] = None) -> Tensor:
        """``x_t``: each real token of ``x0`` ``[B, N]`` masked independently with probability
        ``1 - alpha(t)`` (``t`` float or ``[B]``); one float64 uniform per position from the
        sample's own generator; padding := ``pad_id``."""
        self._check_tokens(x0, "x0")
        a = _bcast(self.alpha(_per_sample(t, x0.shape[0], x0.device)), x0.ndim)
        keep = rand64(x0.shape, generator, device=x0.device) < a
        return self.project(torch.where(keep, x0, torch.full_like(x0, self.mask_id)), mask)

    def marginal(self, x0: Tensor, t) -> Tensor:
        """``q(x_t | x0) = alpha e_{x0} + (1 - alpha) e_m``: float64 ``[B, N, V + 1]``."""
        self._check_tokens(x0, "x0")
        a, _ = self._alphas(t, None, x0)
        oh = torch.nn.functional.one_hot(x0.long(), self.n_states).to(torch.float64)
        em = torch.zeros(self.n_states, dtype=torch.float64, device=x0.device)
        em[self.mask_id] = 1.0
        return a * oh + (1.0 - a) * em

    def posterior(self, x0_probs: Tensor, x_t: Tensor, t, s) -> Tensor:
        """MDLM eq. 7 averaged over the model's ``p(x0 | x_t)``: for ``x_t = m``,
        ``[(alpha_s - alpha_t) p, 1 - alpha_s] / (1 - alpha_t)``; for ``x_t != m``, ``e_{x_t}``.

        Args: ``x0_probs`` ``[B, N, V]`` (rows sum to 1), ``x_t`` ``[B, N]``, ``t > s >= 0``
        (floats or ``[B]``). Returns float64 ``[B, N, V + 1]``."""
        p = self._check_probs(x0_probs, x_t)
        a_t, a_s = self._alphas(t, s, x_t)
        masked = torch.cat([(a_s - a_t) / (1.0 - a_t) * p, ((1.0 - a_s) / (1.0 - a_t)).expand(*p.shape[:-1], 1)], dim=-1)
        carried = torch.nn.functional.one_hot(x_t.long(), self.n_states).to(torch.float64)
        return torch.where((x_t == self.mask_id)[..., None], masked, carried)

    def ratios(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """``r_y = sum_k w_k q_t(y | k)`` with ``w_k = p_k / q_t(x_t | k)`` (0 where ``q_t = 0``):
        at a mask, ``r_y = alpha p_y / (1 - alpha)`` for real ``y`` and ``r_m = 1`` (the concrete
        score of Lou et al. 2024, eq. 5, of the distribution implied by ``x0_probs``). At an
        unmasked position SUBS makes ``p`` the one-hot of the token, so only ``r_{x_t} = 1`` is
        identified there; the other entries are what that one-hot implies and enter no
        transition (no forward rate leads from another state into a real token, and
        ``transp_transition`` vanishes off ``x_t``). Float64 ``[B, N, V + 1]``."""
        p = self._check_probs(x0_probs, x_t)
        a, _ = self._alphas(t, None, x_t)
        is_m = (x_t == self.mask_id)[..., None]
        at_mask = torch.cat([a / (1.0 - a) * p, torch.ones_like(p[..., :1])], dim=-1)
        # x_t = j real: q_t(j | k) = alpha [k = j], so w = p_j / alpha at k = j only
        pj = p.gather(-1, x_t.clamp(max=self.vocab_size - 1).long()[..., None])
        at_token = torch.cat([torch.nn.functional.one_hot(x_t.clamp(max=self.vocab_size - 1).long(), self.vocab_size).to(p.dtype) * pj,
                              pj * (1.0 - a) / a], dim=-1)
        return torch.where(is_m, at_mask, at_token)

    def reverse_rates(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """``R_t(m -> y) = -alpha'(t) / (1 - alpha(t)) p_y`` for real ``y`` at masked positions,
        0 elsewhere (time reversal of the forward rate ``-alpha'/alpha`` into the mask; Campbell
        et al. 2022, prop. 1; Sun et al. 2023). Float64 ``[B, N, V + 1]``."""
        p = self._check_probs(x0_probs, x_t)
        B = x_t.shape[0]
        tt = _per_sample(t, B, x_t.device)
        rate = _bcast(-self.d_alpha(tt) / (1.0 - self.alpha(tt)), x_t.ndim + 1)
        out = torch.cat([rate * p, torch.zeros_like(p[..., :1])], dim=-1)
        return torch.where((x_t == self.mask_id)[..., None], out, torch.zeros_like(out))

    def staggered_score(self, ratios: Tensor, t, s) -> Tensor:
        """``(K^T)^{-1} r`` for the absorbing kernel over ``[s, t]`` (``a = alpha_t / alpha_s``):
        ``r_y / a`` for real ``y``, ``r_m - (1 - a) / a sum_{y != m} r_y`` at the mask (SEDD's
        ``Absorbing.staggered_score`` with ``exp(-dsigma) = a``). ``ratios`` ``[B, N, V + 1]``."""
        B = ratios.shape[0]
        a = _bcast(self.alpha(_per_sample(t, B, ratios.device)) / self.alpha(_per_sample(s, B, ratios.device)), ratios.ndim)
        real = ratios[..., :-1]
        return torch.cat([real / a, ratios[..., -1:] - (1.0 - a) / a * real.sum(-1, keepdim=True)], dim=-1)

    def transp_transition(self, x_t: Tensor, t, s) -> Tensor:
        """``q(x_t | x_s = z)`` over ``z``: ``a e_{x_t}`` for a real ``x_t``; ``(1 - a)`` at real
        ``z`` and 1 at the mask for ``x_t = m`` (SEDD's ``Absorbing.transp_transition``). Float64
        ``[B, N, V + 1]``."""
        B = x_t.shape[0]
        a = _bcast(self.alpha(_per_sample(t, B, x_t.device)) / self.alpha(_per_sample(s, B, x_t.device)), x_t.ndim + 1)
        oh = torch.nn.functional.one_hot(x_t.long(), self.n_states).to(torch.float64)
        from_mask = torch.cat([(1.0 - a).expand(*x_t.shape, self.vocab_size), torch.ones(*x_t.shape, 1, dtype=torch.float64, device=x_t.device)], dim=-1)
        return torch.where((x_t == self.mask_id)[..., None], from_mask, a * oh)


class UniformProcess(DiscreteProcess):
    """Uniform-noise discrete diffusion (Austin et al. 2021, D3PM uniform; Lou et al. 2024,
    SEDD "uniform" graph): each token is kept with probability ``alpha(t)``, otherwise redrawn
    uniformly from the ``V`` real tokens (which may redraw the same token), so
    ``q(x_t | x0) = alpha e_{x0} + (1 - alpha) / V``. ``mask_id = None``; ``n_states = V``.
    Samplers that need a mask state (``mdlm_cached``, ``maskgit``) refuse it.
    """

    def prior(self, shape, generator: Generator = None, mask: Optional[Tensor] = None, device=None) -> Tensor:
        """Uniform tokens ``LongTensor`` of ``shape`` (one float64 uniform per position from the
        sample's own generator), padding := ``pad_id``."""
        u = rand64(tuple(shape), generator, device=device)
        return self.project((u * self.vocab_size).long().clamp(max=self.vocab_size - 1), mask)

    def add_noise(self, x0: Tensor, t, generator: Generator = None, mask: Optional[Tensor] = None) -> Tensor:
        """``x_t``: each real token of ``x0`` ``[B, N]`` kept with probability ``alpha(t)``, else
        a uniform token (two float64 uniforms per position, per-sample generators)."""
        self._check_tokens(x0, "x0")
        a = _bcast(self.alpha(_per_sample(t, x0.shape[0], x0.device)), x0.ndim)
        u = rand64((x0.shape[0], 2, *x0.shape[1:]), generator, device=x0.device)
        fresh = (u[:, 1] * self.vocab_size).long().clamp(max=self.vocab_size - 1)
        return self.project(torch.where(u[:, 0] < a, x0, fresh), mask)

    def marginal(self, x0: Tensor, t) -> Tensor:
        """``q(x_t | x0) = alpha e_{x0} + (1 - alpha) / V``: float64 ``[B, N, V]``."""
        self._check_tokens(x0, "x0")
        a, _ = self._alphas(t, None, x0)
        oh = torch.nn.functional.one_hot(x0.long(), self.vocab_size).to(torch.float64)
        return a * oh + (1.0 - a) / self.vocab_size

    def _w(self, p: Tensor, x_t: Tensor, a_t: Tensor) -> Tensor:
        """``w_k = p_k / q_t(x_t | k)``, ``q_t(x_t | k) = alpha_t [k = x_t] + (1 - alpha_t) / V``."""
        oh = torch.nn.functional.one_hot(x_t.long(), self.vocab_size).to(torch.float64)
        return p / (a_t * oh + (1.0 - a_t) / self.vocab_size)

    def posterior(self, x0_probs: Tensor, x_t: Tensor, t, s) -> Tensor:
        """``sum_k p_k q(x_s | x_t, x0 = k)`` with D3PM's per-``x0`` posterior (Austin et al. 2021,
        eq. 3) ``q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0)``. In closed form, with
        ``w_k = p_k / q_t(x_t | k)``, ``W = sum_k w_k`` and ``a = alpha_t / alpha_s``:
        ``out_j = (a [j = x_t] + (1 - a) / V) (alpha_s w_j + (1 - alpha_s) W / V)``.

        This is the exact per-position reverse marginal when ``p`` is the true ``p(x0_i | x_t)``.
        D3PM's own ``p_theta`` (eq. 4) instead normalises ``sum_k q(x_s, x_t | k) p_k``, which
        weights each ``x0`` by ``q(x_t | x0)`` a second time; the two agree only when
        ``q(x_t | x0)`` does not depend on ``x0`` (always for the absorbing process at a mask).

        Args: ``x0_probs`` ``[B, N, V]``, ``x_t`` ``[B, N]``, ``t > s >= 0``. Returns float64 ``[B, N, V]``."""
        p = self._check_probs(x0_probs, x_t)
        a_t, a_s = self._alphas(t, s, x_t)
        w = self._w(p, x_t, a_t)
        a = a_t / a_s
        oh = torch.nn.functional.one_hot(x_t.long(), self.vocab_size).to(torch.float64)
        fwd = a * oh + (1.0 - a) / self.vocab_size
        return fwd * (a_s * w + (1.0 - a_s) / self.vocab_size * w.sum(-1, keepdim=True))

    def ratios(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """``r_y = alpha w_y + (1 - alpha) W / V`` (``w``, ``W`` as in :meth:`posterior`): the
        concrete score ``p_t(y) / p_t(x_t)`` (Lou et al. 2024, eq. 5); ``r_{x_t} = 1``. Float64
        ``[B, N, V]``."""
        p = self._check_probs(x0_probs, x_t)
        a, _ = self._alphas(t, None, x_t)
        w = self._w(p, x_t, a)
        return a * w + (1.0 - a) / self.vocab_size * w.sum(-1, keepdim=True)

    def reverse_rates(self, x0_probs: Tensor, x_t: Tensor, t) -> Tensor:
        """``R_t(x_t -> y) = (beta / V) r_y`` for ``y != x_t`` with ``beta = -alpha'/alpha`` the
        forward redraw rate (time reversal, Campbell et al. 2022, prop. 1). Float64 ``[B, N, V]``."""
        r = self.ratios(x0_probs, x_t, t)
        tt = _per_sample(t, x_t.shape[0], x_t.device)
        beta = _bcast(-self.d_alpha(tt) / self.alpha(tt), r.ndim)
        oh = torch.nn.functional.one_hot(x_t.long(), self.vocab_size).bool()
        return torch.where(oh, torch.zeros_like(r), beta / self.vocab_size * r)

    def staggered_score(self, ratios: Tensor, t, s) -> Tensor:
        """``K^{-1} r = r / a - (1 - a) / (a V) sum(r)`` (``K = a I + (1 - a) / V`` is symmetric;
        SEDD's ``Uniform.staggered_score``)."""
        B = ratios.shape[0]
        a = _bcast(self.alpha(_per_sample(t, B, ratios.device)) / self.alpha(_per_sample(s, B, ratios.device)), ratios.ndim)
        return ratios / a - (1.0 - a) / (a * self.vocab_size) * ratios.sum(-1, keepdim=True)

    def transp_transition(self, x_t: Tensor, t, s) -> Tensor:
        """``q(x_t | x_s = z) = a [z = x_t] + (1 - a) / V`` over ``z``. Float64 ``[B, N, V]``."""
        B = x_t.shape[0]
        a = _bcast(self.alpha(_per_sample(t, B, x_t.device)) / self.alpha(_per_sample(s, B, x_t.device)), x_t.ndim + 1)
        oh = torch.nn.functional.one_hot(x_t.long(), self.vocab_size).to(torch.float64)
        return a * oh + (1.0 - a) / self.vocab_size
