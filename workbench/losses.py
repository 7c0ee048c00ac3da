"""Training objectives for teachers. An objective is an object: hyper-parameters in
``__init__``, ``__call__(nets, batch, generator) -> per-sample loss [B]`` (as NVlabs/edm's
loss classes). The shared training loop (:mod:`workbench.training`) reduces and
optimises it; distillation methods follow the same protocol. Continuous state:
:class:`DenoisingLoss`; discrete state (token ids): :class:`MaskedDiffusionELBO`. Both live
here because they are the two teacher objectives, called the same way by the same loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .processes import DiscreteProcess, GaussianProcess, append_dims, canonical_prediction
from .utils import Generator, first_generator, randn

def tree_map(fn, v):
    """Apply ``fn`` to every tensor in ``v`` (a tensor, or a dict / list / tuple nesting
    tensors); other leaves are returned unchanged."""
    if isinstance(v, Tensor):
        return fn(v)
    if isinstance(v, dict):
        return {k: tree_map(fn, a) for k, a in v.items()}
    if isinstance(v, (list, tuple)):
        out = [tree_map(fn, a) for a in v]
        return type(v)(*out) if hasattr(v, "_fields") else type(v)(out)  # namedtuples too
    return v


def tree_cat(parts: list):
    """Concatenate along dim 0 the tensors at the same place in each of ``parts`` (tensors, or
    equal dict / list / tuple nestings of them); non-tensor leaves come from ``parts[0]``."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: tree_cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tree_cat([p[i] for p in parts]) for i in range(len(first)))
    return first


WEIGHTINGS = ("uniform", "min_snr", "edm")
TIME_SAMPLERS = ("uniform", "logit_normal", "edm")


@dataclass
class Batch:
    """A batch of states: ``x`` ``[B, ...]``, optional ``mask`` ``[B, N]`` and ``cond``
    (e.g. class labels ``[B]``); ``extra`` holds per-sample tensors ``[B, ...]`` some
    objectives need beside the data (e.g. the noise of a teacher pair, ``extra["noise"]``)."""

    x: Tensor
    mask: Optional[Tensor] = None
    cond: Any = None
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "Batch":
        mv = lambda v: tree_map(lambda a: a.to(device), v)  # noqa: E731
        return Batch(mv(self.x), mv(self.mask), mv(self.cond), {k: mv(v) for k, v in self.extra.items()})

    def index(self, idx) -> "Batch":
        """The sub-batch ``idx`` (an index tensor or slice) of every per-sample field (tensors,
        and tensors inside a dict / list / tuple ``cond``, e.g. ``{"aatype": [B, N]}``)."""
        sel = lambda v: tree_map(lambda a: a[idx], v)  # noqa: E731
        return Batch(sel(self.x), sel(self.mask), sel(self.cond), {k: sel(v) for k, v in self.extra.items()})

    def __len__(self) -> int:
        return self.x.shape[0]


def masked_mean(v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Per-sample mean of ``v`` ``[B, ...]`` over real elements (``mask`` ``[B, N]``) -> ``[B]``."""
    if mask is None:
        return v.flatten(1).mean(1)
    m = append_dims(mask.to(v.dtype), v.ndim).expand_as(v)
    return (v * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def sample_time(n: int, kind: str, *, process: GaussianProcess, generator: Generator = None, device=None,
                t_eps: float = 1e-3, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Training times ``[n]`` in ``(0, 1]``.

    * ``uniform``: ``U(t_eps, 1)``;
    * ``logit_normal``: ``sigmoid(N(0, 1))`` (Esser et al. 2024, SD3 eq. 19);
    * ``edm``: ``log sigma~ ~ N(p_mean, p_std^2)`` mapped through ``t_of_lambda``
      (Karras et al. 2022, Table 1).
    """
    g = first_generator(generator)
    if kind == "uniform":
        u = torch.rand(n, generator=g, device=g.device if g is not None else device, dtype=torch.float64)
        t = t_eps + (1 - t_eps) * u
    elif kind == "logit_normal":
        z = torch.randn(n, generator=g, device=g.device if g is not None else device, dtype=torch.float64)
        t = torch.sigmoid(z).clamp(t_eps, 1.0)
    elif kind == "edm":
        z = torch.randn(n, generator=g, device=g.device if g is not None else device, dtype=torch.float64)
        t = process.t_of_lambda(-(p_mean + p_std * z)).clamp(t_eps, 1.0)
    else:
        raise ValueError(f"unknown time sampler {kind!r}; valid: {', '.join(TIME_SAMPLERS)}")
    return t.to(device) if device is not None else t


class DenoisingLoss:
    """Denoising score matching / flow matching objective (Ho et al. 2020 eq. 14;
    Lipman et al. 2023 eq. 23; Karras et al. 2022 eq. 8).

    ``x_t = alpha x0 + sigma eps``; the net predicts ``prediction`` and the loss is the
    weighted squared error to the exact target in that parameterization, averaged over real
    elements (mask), one value per sample.

    Args:
        process: the Gaussian process.
        prediction: the net's parameterization (must match the :class:`~workbench.model.Denoiser`).
        weighting: ``uniform`` (plain MSE in the prediction space), ``min_snr``
            (Hang et al. 2023: weight ``min(SNR, gamma) / SNR`` in epsilon units, converted
            to the prediction space), ``edm`` (Karras et al. 2022: error in x0 space weighted
            ``(sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2``).
        time_sampler: one of ``uniform``, ``logit_normal``, ``edm``.
    """

    def __init__(self, process: GaussianProcess, prediction: str = "epsilon", *, weighting: str = "uniform",
                 time_sampler: str = "uniform", min_snr_gamma: float = 5.0, sigma_data: float = 0.5, t_eps: float = 1e-3):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(TIME_SAMPLERS)}")
        self.process = process
        self.prediction = canonical_prediction(prediction)
        self.weighting = weighting
        self.time_sampler = time_sampler
        self.min_snr_gamma = min_snr_gamma
        self.sigma_data = sigma_data
        self.t_eps = t_eps

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        net = nets["model"] if isinstance(nets, (dict, torch.nn.ModuleDict)) else nets
        x0 = batch.x
        B = x0.shape[0]
        t = sample_time(B, self.time_sampler, process=self.process, generator=generator, device=x0.device, t_eps=self.t_eps)
        eps = self.process.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), batch.mask)
        x_t = self.process.add_noise(x0, t, eps, batch.mask)
        out = net(x_t, t.to(x0.dtype), mask=batch.mask, cond=batch.cond)
        if self.weighting == "edm":
            x0_hat = self.process.convert(out, getattr(net, "prediction", self.prediction), "x0", x_t, t)
            sig = torch.exp(-self.process.lambda_(t))
            w = (sig**2 + self.sigma_data**2) / (sig * self.sigma_data) ** 2
            return w.to(x0.dtype) * masked_mean((x0_hat - x0) ** 2, batch.mask)
        target = self.process.from_x0_eps(x0, eps, self.prediction, x_t, t)
        err = masked_mean((out - target) ** 2, batch.mask)
        if self.weighting == "min_snr":
            snr = torch.exp(2 * self.process.lambda_(t))
            w_eps = torch.clamp(snr, max=self.min_snr_gamma) / snr  # weight on the epsilon-MSE
            # epsilon-MSE = unit_ratio * prediction-MSE for this parameterization
            ratio = self._eps_per_pred(t)
            return (w_eps * ratio).to(x0.dtype) * err
        return err

    def _eps_per_pred(self, t: Tensor) -> Tensor:
        """Factor r(t) with ||eps_hat - eps||^2 = r(t) ||pred_hat - pred||^2 at fixed x_t: the
        square of the ``eps_out`` coefficient of the prediction (``GaussianProcess.coefficients``)."""
        return self.process.coefficients(t, self.prediction).eps_out ** 2

    def __repr__(self) -> str:
        return f"DenoisingLoss(prediction={self.prediction!r}, weighting={self.weighting!r}, time_sampler={self.time_sampler!r})"


DISCRETE_OBJECTIVES = ("elbo", "cross_entropy")
DISCRETE_TIME_SAMPLERS = ("antithetic", "uniform")


class MaskedDiffusionELBO:
    """MDLM's continuous-time ELBO for discrete (token) state (Sahoo et al. 2024, eq. 10-11):

        L(x0) = E_{t ~ U[t_eps, 1]} E_{x_t ~ q(.|x0)} [ alpha'(t) / (1 - alpha(t)) * sum_{i masked in x_t} log p(x0_i | x_t) ]

    (``alpha' < 0``, so ``L >= 0`` and is minimised; for the log-linear schedule the weight is
    ``1 / t``, MDLM's ``dsigma / expm1(sigma)``). The network is SUBS-parameterised (logits
    ``[B, N, vocab_size]`` over the clean tokens; unmasked positions are carried over, so they
    contribute ``log 1 = 0`` and only masked positions enter the sum). Padding (``batch.mask``
    = 0) never enters. One value per sample: the sum divided by the sample's number of real
    tokens, i.e. the per-token negative ELBO in nats of a one-draw Monte-Carlo estimate
    (``exp`` of its average over many draws bounds the per-token perplexity; MDLM divides by
    the batch's token count instead, which weights long sequences more when lengths vary).

    ``objective="cross_entropy"`` is a named variant, NOT MDLM's ELBO: the unweighted
    cross-entropy ``-sum_{i real} log p(x0_i | x_t) / n_real`` over every real position (the
    ``x0``-prediction auxiliary loss of D3PM, Austin et al. 2021, eq. 5, without its
    variational term). It is the default, and the only choice, for a uniform-noise process,
    where the mask-only ELBO above does not apply.

    Args:
        process: a :class:`~workbench.processes.DiscreteProcess`.
        objective: ``elbo`` (absorbing processes; their default) or ``cross_entropy``
            (the default for :class:`~workbench.processes.UniformProcess`).
        time_sampler: ``antithetic`` (MDLM's low-discrepancy draw: ``t_i = (u_i / B + i / B) mod 1``,
            mapped to ``[t_eps, 1]``) or ``uniform``.
        t_eps: smallest training time (MDLM's ``sampling_eps = 1e-3``; the weight ``1/t``
            diverges at 0).

    Called by :func:`workbench.training.train` as ``objective(nets, batch, generator) -> [B]``
    with ``nets["model"]`` (or a bare module) ``net(x_t LongTensor [B, N], t float32 [B],
    mask=, cond=) -> logits [B, N, vocab_size]`` and ``batch.x`` the clean tokens ``[B, N]``.
    """

    def __init__(self, process: DiscreteProcess, objective: Optional[str] = None, *, time_sampler: str = "antithetic",
                 t_eps: float = 1e-3):
        if not isinstance(process, DiscreteProcess):
            raise TypeError(f"MaskedDiffusionELBO needs a DiscreteProcess (MaskedProcess, UniformProcess), got {type(process).__name__}; "
                            "use DenoisingLoss for Gaussian processes")
        objective = objective or ("elbo" if process.absorbing else "cross_entropy")
        if objective not in DISCRETE_OBJECTIVES:
            raise ValueError(f"unknown discrete objective {objective!r}; valid: {', '.join(DISCRETE_OBJECTIVES)}")
        if objective == "elbo" and not process.absorbing:
            raise ValueError(f"the MDLM ELBO needs an absorbing (masked) process, got {type(process).__name__}; valid objective here: cross_entropy")
        if time_sampler not in DISCRETE_TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {', '.join(DISCRETE_TIME_SAMPLERS)}")
        if not 0.0 < t_eps < 1.0:
            raise ValueError(f"t_eps must be in (0, 1), got {t_eps}")
        self.process, self.objective, self.time_sampler, self.t_eps = process, objective, time_sampler, float(t_eps)

    def sample_time(self, n: int, generator: Generator = None, device=None) -> Tensor:
        """Training times float64 ``[n]`` in ``[t_eps, 1]`` (one ``torch.Generator``: the first of a list)."""
        g = first_generator(generator)
        u = torch.rand(n, generator=g, device=g.device if g is not None else device, dtype=torch.float64)
        if self.time_sampler == "antithetic":
            u = (u / n + torch.arange(n, dtype=torch.float64, device=u.device) / n) % 1.0
        t = self.t_eps + (1.0 - self.t_eps) * u
        return t.to(device) if device is not None else t

    def weight(self, t: Tensor) -> Tensor:
        """``-alpha'(t) / (1 - alpha(t))`` (float64, shape of ``t``; ``1/t`` for log-linear)."""
        return -self.process.d_alpha(t) / (1.0 - self.process.alpha(t))

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        net = nets["model"] if isinstance(nets, (dict, torch.nn.ModuleDict)) else nets
        x0, mask, p = batch.x, batch.mask, self.process
        B = x0.shape[0]
        t = self.sample_time(B, generator, device=x0.device)
        x_t = p.add_noise(x0, t, generator, mask)
        logits = net(x_t, t.to(torch.float32), mask=mask, cond=batch.cond)
        if tuple(logits.shape) != (*x0.shape, p.vocab_size):
            raise ValueError(f"model returned shape {tuple(logits.shape)}; a discrete model returns logits [B, N, vocab_size] = {(*x0.shape, p.vocab_size)}")
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, x0.long()[..., None])[..., 0]   # [B, N]
        real = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.to(x0.device).bool()
        n_real = real.flatten(1).sum(1).clamp_min(1).to(nll.dtype)
        if self.objective == "cross_entropy":
            return torch.where(real, nll, torch.zeros_like(nll)).flatten(1).sum(1) / n_real
        masked = (x_t == p.mask_id) & real
        return self.weight(t).to(nll.dtype) * torch.where(masked, nll, torch.zeros_like(nll)).flatten(1).sum(1) / n_real

    def __repr__(self) -> str:
        return f"MaskedDiffusionELBO(process={self.process!r}, objective={self.objective!r}, time_sampler={self.time_sampler!r})"
