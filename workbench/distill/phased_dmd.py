"""Phased DMD (Fan et al. 2025, "Phased DMD: Few-step Distribution Matching Distillation via
Score Matching within Subintervals").

The time axis is split into ``K`` phases by boundaries ``t_0 = b_0 > b_1 > ... > b_K = 0`` (one
phase per generator step; uniform in ``t`` or in log-SNR, or given; ``t_0 = 1`` or, as DMD2
here, the time where ``sigma / alpha = init_sigma``, where the generator starts from
``sigma(t_0) z``). Phase ``k`` owns one expert ``E_k`` (an x0 student, net ``"expert_k"``)
and one fake score ``F_k`` (net ``"fake_k"``), both initialised from the teacher. The few-step generator is the
:class:`~workbench.distill.generators.ExpertsGenerator`: at step ``k`` expert ``k`` predicts
``x0_k = E_k(x_{b_k}, b_k)`` and the state is re-noised to the phase's lower edge
``s = b_{k+1}``::

    x_s = alpha_s x0_k + sigma_s z,  z ~ N(0, I)           (x_s = x0_k for the last phase)

so expert ``k`` maps the distribution at the phase's upper edge ``b_k`` onto a distribution
at its lower edge ``s`` (*progressive distribution matching*, paper Sec. 3.1; the paper's
experts output ``x_s`` with a deterministic Euler step, here the ``x0`` + re-noise form that
the ``experts`` generator kind samples, see the module notes below).

Training of phase ``k`` (inputs ``x_{b_k}`` by backward simulation through experts
``0..k-1`` without gradients, :func:`~.score_distill.rollout`):

* generator (distribution matching only at times *inside the phase's subinterval*,
  ``t ~ U(max(s, t_min), t_hi)`` with ``t_hi = t_max`` (``dm_range="upper"``, the paper's
  choice ``t in (t_k, 1)``) or ``t_hi = b_k`` (``dm_range="phase"``)): diffuse the expert's
  output from ``s`` to ``t``::

      x_t = alpha_{t|s} x_s + sigma_{t|s} eps,   alpha_{t|s} = alpha_t / alpha_s,
      sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2

  and follow the DMD gradient ``(mu_fake_k - mu_real) / mean|x0_k - mu_real|`` of
  :func:`~.score_distill.dmd_loss` (teacher and ``F_k`` x0 predictions at ``(x_t, t)``);
* fake score ``F_k`` (*score matching within the subinterval*, paper Sec. 3.2, eq. 11-13):
  ``F_k`` must model the marginals of the diffused generator output ``x_s`` at ``t > s``
  without clean samples. With only ``(x_s, eps)`` the unbiased regression target of
  ``E[x0 | x_t]`` is (Tweedie's formula applied to ``p(x_t | x_s)``)::

      x0* = x_s / alpha_s - alpha_t sigma_s^2 / (alpha_s^2 sigma_{t|s}) eps,
      eps* = (sigma_t / sigma_{t|s}) eps          (so x_t = alpha_t x0* + sigma_t eps*)

  (in the rectified-flow velocity ``eps* - x0*`` this is the paper's eq. 13 target
  ``(alpha_s^2 sigma_t + alpha_t sigma_s^2) / (alpha_s^2 sigma_{t|s}) eps - x_s / alpha_s``);
  the loss is the squared error in ``F_k``'s own parameterization. The target's variance
  grows like ``(sigma_t / sigma_{t|s})^2`` as ``t -> s``; the paper clamps its
  ``1 / sigma_{t|s}^2`` factor to ``[0, 10]``, here the per-sample weight
  ``min(1, weight_clamp (sigma_{t|s} / sigma_t)^2)`` caps that amplification at
  ``weight_clamp`` (a weighting in ``t`` only, so the minimiser is unchanged). For the last
  phase (``s = 0``) the target is the usual denoising target
  (:func:`~.score_distill.fake_score_loss`). ``fake_target="x0"`` instead denoises the
  expert's ``x0_k`` at ``t > s`` (valid only because the transition re-noises with fresh
  noise, lower variance; not the paper's objective).

All experts train in ONE run of the shared loop: phases ``fake`` (all ``F_k``, every step) and
``generator`` (all ``E_k``, every ``generator_every`` steps, DMD2's two time-scale rule; the
paper uses 5). Every batch is split among the phases (``phase_weights``, default equal
shares, random assignment), so each expert and each fake score receives gradients only from
the samples of its own phase. (The paper trains the phases one after the other and freezes
the finished experts; joint training with backward simulation through the *current* earlier
experts is the one-run form.)

Note on the transition. The paper's deterministic Euler/DDIM transition
``x_s = alpha_s x0_k + sigma_s eps_hat`` (``eps_hat`` the expert's own noise estimate) is the
consistency function ``FewStepGenerator.consistency(x, b_k, s)``; the
``ExpertsGenerator`` re-noises with fresh noise (``noise_scale``), so that form is not
expressible there without a generator change. The subinterval objective above uses only
``x_s`` and holds for either transition.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, model_kwargs
from .recipes import DistillSetup, RecipeContext, make_student, register_method, student_spec
from .score_distill import dmd_loss, fake_score_loss, noise_like, rollout, sample_t, teacher_x0

__all__ = ["PhasedDMD", "phase_boundaries", "subinterval_noise", "subinterval_targets", "BOUNDARY_KINDS", "DM_RANGES",
           "FAKE_TARGETS"]

BOUNDARY_KINDS = ("uniform_t", "uniform_lambda")
DM_RANGES = ("upper", "phase")
FAKE_TARGETS = ("subinterval", "x0")


def phase_boundaries(process: GaussianProcess, phases: int, kind: Union[str, Sequence[float]] = "uniform_t", *,
                     t_start: float = 1.0) -> Tensor:
    """Phase edges ``[K + 1]`` float64, ``t_start = b_0 > ... > b_K = 0``.

    * ``"uniform_t"``: uniform in ``t`` from ``t_start`` to 0;
    * ``"uniform_lambda"``: the interior edges uniform in log-SNR between
      ``lambda(min(t_start, process.t_max_finite))`` and ``lambda(process.t_min)``, i.e.
      ``b_j = t(lambda_hi + j / K (lambda_lo - lambda_hi))``, ``j = 1..K-1``;
    * a sequence of ``K + 1`` floats: validated (strictly decreasing in ``(0, 1]``, ending at
      0; ``t_start`` is then ignored).
    """
    K = int(phases)
    if K != phases or K < 1:
        raise ValueError(f"the number of phases must be a positive integer, got {phases!r}")
    if not isinstance(kind, str):
        from ..timegrids import custom

        b = custom(kind)
        if len(b) != K + 1 or float(b[-1]) != 0.0:
            raise ValueError(f"boundaries must be {K + 1} decreasing times in [0, 1] ending at 0.0 for {K} phases, got {b.tolist()}")
        return b
    if not 0.0 < float(t_start) <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if kind == "uniform_t":
        return torch.linspace(float(t_start), 0.0, K + 1, dtype=torch.float64)
    if kind == "uniform_lambda":
        lam_hi = process.lambda_(torch.tensor(min(float(t_start), process.t_max_finite), dtype=torch.float64))
        lam_lo = process.lambda_(torch.tensor(process.t_min, dtype=torch.float64))
        j = torch.arange(1, K, dtype=torch.float64)
        inner = process.t_of_lambda(lam_hi + j / K * (lam_lo - lam_hi)).to(torch.float64)
        b = torch.cat([torch.full((1,), float(t_start), dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])
        if not bool((b[1:] < b[:-1]).all()):
            raise ValueError(f"log-SNR boundaries are not strictly decreasing for {K} phases: {b.tolist()}")
        return b
    raise ValueError(f"unknown boundaries {kind!r}; valid: {', '.join(BOUNDARY_KINDS)} or a list of K + 1 times")


def _coeffs(process: GaussianProcess, s: Tensor, t: Tensor) -> tuple[Tensor, ...]:
    """float64 ``[B]`` ``(alpha_s, sigma_s, alpha_t, sigma_t, alpha_{t|s}, sigma_{t|s})``."""
    s, t = s.to(torch.float64), t.to(torch.float64)
    a_s, s_s = process.alpha(s), process.sigma(s)
    a_t, s_t = process.alpha(t), process.sigma(t)
    a_ts = a_t / a_s
    s_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(1e-20).sqrt()
    return a_s, s_s, a_t, s_t, a_ts, s_ts


def subinterval_noise(process: GaussianProcess, x_s: Tensor, s: Tensor, t: Tensor, eps: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Diffuse ``x_s`` ``[B, ...]`` at time ``s`` ``[B]`` forward to ``t > s`` ``[B]``:
    ``x_t = alpha_{t|s} x_s + sigma_{t|s} eps`` (projected). For ``s = 0`` this is
    ``process.add_noise(x_s, t, eps)``."""
    _, _, _, _, a_ts, s_ts = _coeffs(process, s, t)
    return process.project(append_dims(a_ts.to(x_s.dtype), x_s.ndim) * x_s + append_dims(s_ts.to(x_s.dtype), x_s.ndim) * eps, mask)


def subinterval_targets(process: GaussianProcess, x_s: Tensor, s: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Unbiased denoising targets ``(x0*, eps*)`` ``[B, ...]`` for ``x_t`` =
    :func:`subinterval_noise` ``(x_s, s, t, eps)`` when only ``x_s`` (not its clean sample) is
    known (Phased DMD eq. 11-13): ``E[x0* | x_t] = E[x0 | x_t]`` for ``x_s = alpha_s x0 +
    sigma_s z``, and ``x_t = alpha_t x0* + sigma_t eps*``."""
    a_s, s_s, a_t, s_t, _, s_ts = _coeffs(process, s, t)
    c = append_dims((a_t * s_s**2 / (a_s**2 * s_ts)).to(x_s.dtype), x_s.ndim)
    x0 = x_s / append_dims(a_s.to(x_s.dtype), x_s.ndim) - c * eps
    e = append_dims((s_t / s_ts).to(x_s.dtype), x_s.ndim) * eps
    return x0, e


class _PhaseRouter(nn.Module):
    """``(x [B, ...], t [B]) -> experts[k](x, t)`` for the grid index ``k`` of ``t`` (all
    samples of a call share ``t``, as in :func:`~.score_distill.rollout`)."""

    def __init__(self, experts: Sequence[nn.Module], grid: Tensor):
        super().__init__()
        self._experts = list(experts)  # not registered: the router owns no parameters
        self.grid = grid
        self.prediction = getattr(self._experts[0], "prediction", "x0")

    def forward(self, x: Tensor, t: Tensor, **kw) -> Tensor:
        k = int(torch.argmin((self.grid[:-1] - float(t.flatten()[0])).abs()))
        return self._experts[k](x, t, **kw)


class PhasedDMD:
    """Phased DMD objective (module docstring) with phases ``fake`` (nets ``fake_0..``) and
    ``generator`` (nets ``expert_0..``); ``nets`` also holds the frozen ``teacher``.

    Args:
        process: the Gaussian process of teacher and experts.
        boundaries: ``[K + 1]`` phase edges from ``t_0 <= 1`` to 0 (:func:`phase_boundaries`); also the
            generator's sampling grid.
        teacher_prediction: the teacher's parameterization (``None``: ``teacher.prediction``).
        t_min, t_max: overall range of the distribution-matching / fake-score times.
        dm_range: ``"upper"`` (``t in (s, t_max)``) or ``"phase"`` (``t in (s, b_k)``).
        fake_target: ``"subinterval"`` (paper eq. 13) or ``"x0"`` (denoise the expert's x0).
        weight_clamp: cap of the subinterval target's variance amplification (``None``: no
            weighting).
        backward_simulation: phase inputs ``x_{b_k}`` from the earlier experts (else noised data).
        generator_every: fake-score updates per expert update.
        phase_weights: ``K`` non-negative shares of each batch per phase (default equal).
    """

    def __init__(self, process: GaussianProcess, boundaries, *, teacher_prediction: Optional[str] = None, t_min: float = 0.02,
                 t_max: float = 0.98, dm_range: str = "upper", fake_target: str = "subinterval", weight_clamp: Optional[float] = 10.0,
                 backward_simulation: bool = True, generator_every: int = 5, phase_weights: Optional[Sequence[float]] = None):
        b = torch.as_tensor(boundaries, dtype=torch.float64).flatten()
        if len(b) < 2 or float(b[0]) > 1.0 or float(b[-1]) != 0.0 or not bool((b[1:] < b[:-1]).all()):
            raise ValueError(f"boundaries must decrease strictly from at most 1.0 to 0.0, got {b.tolist()}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if dm_range not in DM_RANGES:
            raise ValueError(f"unknown dm_range {dm_range!r}; valid: {', '.join(DM_RANGES)}")
        if fake_target not in FAKE_TARGETS:
            raise ValueError(f"unknown fake_target {fake_target!r}; valid: {', '.join(FAKE_TARGETS)}")
        if weight_clamp is not None and not float(weight_clamp) > 0:
            raise ValueError(f"weight_clamp must be positive or None, got {weight_clamp}")
        if int(generator_every) != generator_every or int(generator_every) < 1:
            raise ValueError(f"generator_every must be a positive integer, got {generator_every}")
        self.K = len(b) - 1
        if phase_weights is None:
            w = torch.ones(self.K, dtype=torch.float64)
        else:
            w = torch.as_tensor([float(v) for v in phase_weights], dtype=torch.float64)
            if len(w) != self.K or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError(f"phase_weights must be {self.K} non-negative numbers with a positive sum, got {list(phase_weights)}")
        self.process = process
        self.boundaries = b
        self.teacher_prediction = teacher_prediction
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.dm_range, self.fake_target = dm_range, fake_target
        self.weight_clamp = None if weight_clamp is None else float(weight_clamp)
        self.backward_simulation = bool(backward_simulation)
        self.generator_every = int(generator_every)
        self.phase_weights = w / w.sum()
        self.ranges = [self.time_range(k) for k in range(self.K)]
        for k, (lo, hi) in enumerate(self.ranges):
            if not lo < hi:
                raise ValueError(f"phase {k} has an empty time range ({lo}, {hi}]; widen t_min/t_max or move the boundaries")
        self.experts = [f"expert_{k}" for k in range(self.K)]
        self.fakes = [f"fake_{k}" for k in range(self.K)]
        self.phases = [("fake", list(self.fakes), 1), ("generator", list(self.experts), self.generator_every)]

    # -- phase bookkeeping -------------------------------------------------------------------
    def time_range(self, k: int) -> tuple[float, float]:
        """``(lo, hi)``: the distribution-matching / fake-score times of phase ``k`` are
        ``U(lo, hi)``, ``lo = max(b_{k+1}, t_min)`` (``t_min`` for the last phase)."""
        s = float(self.boundaries[k + 1])
        lo = max(s, self.t_min)
        hi = self.t_max if self.dm_range == "upper" else min(float(self.boundaries[k]), self.t_max)
        return lo, hi

    def assign(self, B: int, generator: Generator) -> Tensor:
        """The phase of each of ``B`` samples ``[B]`` (int64): shares ``phase_weights``
        (largest remainder), in random order."""
        exact = self.phase_weights * B
        counts = exact.floor().long()
        rest = int(B - int(counts.sum()))
        if rest > 0:
            counts[torch.argsort(exact - counts, descending=True)[:rest]] += 1
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
        perm = torch.randperm(B, generator=g, device=g.device if g is not None else None).cpu()
        out = torch.empty(B, dtype=torch.long)
        out[perm] = torch.repeat_interleave(torch.arange(self.K), counts)
        return out

    def phase_output(self, nets, batch: Batch, k: int, generator: Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Phase ``k`` on ``batch``: ``(x0_k [B, ...] (gradient to expert k only), x_s [B, ...],
        s [B] float64)``, ``x_s = alpha_s x0_k + sigma_s z`` at the lower edge ``s = b_{k+1}``."""
        router = _PhaseRouter([nets[n] for n in self.experts], self.boundaries)
        x0, _, _ = rollout(router, self.process, self.boundaries, batch, generator, backward_simulation=self.backward_simulation,
                           step=k)
        s = self.boundaries[k + 1].expand(x0.shape[0]).to(x0.device)
        if float(self.boundaries[k + 1]) == 0.0:
            return x0, x0, s
        x_s = self.process.add_noise(x0, s, noise_like(self.process, x0, batch.mask, generator), batch.mask)
        return x0, x_s, s

    # -- losses ----------------------------------------------------------------------------
    def fake_loss(self, fake: nn.Module, x0: Tensor, x_s: Tensor, s: Tensor, k: int, mask, cond, generator: Generator) -> Tensor:
        """Per-sample loss ``[B]`` of ``F_k`` within phase ``k``'s subinterval (module docstring)."""
        lo, hi = self.ranges[k]
        if float(s[0]) == 0.0 or self.fake_target == "x0":
            return fake_score_loss(fake, self.process, x0, mask, cond, generator, t_min=lo, t_max=hi)
        x_s = x_s.detach()
        B = x_s.shape[0]
        t = sample_t(B, generator, x_s.device, lo, hi)
        eps = noise_like(self.process, x_s, mask, generator)
        x_t = subinterval_noise(self.process, x_s, s, t, eps, mask)
        x0_t, eps_t = subinterval_targets(self.process, x_s, s, t, eps)
        pred = canonical_prediction(getattr(fake, "prediction", "epsilon"))
        target = self.process.from_x0_eps(x0_t, eps_t, pred, x_t, t).to(x_s.dtype)
        out = fake(x_t, t.to(x_s.dtype), **model_kwargs(mask, cond))
        loss = masked_mean((out - target) ** 2, mask)
        if self.weight_clamp is not None:
            _, _, _, s_t, _, s_ts = _coeffs(self.process, s, t)
            loss = loss * (self.weight_clamp * (s_ts / s_t) ** 2).clamp(max=1.0).to(loss.dtype)
        return loss

    def generator_loss(self, nets, x0: Tensor, x_s: Tensor, s: Tensor, k: int, mask, cond, generator: Generator) -> Tensor:
        """Per-sample DMD loss ``[B]`` of expert ``k`` at ``t ~ U(lo_k, hi_k)``: the gradient in
        ``x0_k`` is ``(mu_fake - mu_real) / mean|x0_k - mu_real|`` (:func:`~.score_distill.dmd_loss`)."""
        lo, hi = self.ranges[k]
        p = self.process
        t = sample_t(x0.shape[0], generator, x0.device, lo, hi)
        x_t = subinterval_noise(p, x_s.detach(), s, t, noise_like(p, x_s, mask, generator), mask)
        mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        mu_fake = teacher_x0(nets[self.fakes[k]], p, x_t, t, mask, cond)
        return dmd_loss(x0, mu_real, mu_fake, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        if phase not in ("fake", "generator"):
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        B = len(batch)
        which = self.assign(B, generator)
        parts, order = [], []
        for k in range(self.K):
            idx = (which == k).nonzero().flatten()
            if len(idx) == 0:
                continue
            sub = batch.index(idx.to(batch.x.device))
            if phase == "fake":
                with torch.no_grad():
                    x0, x_s, s = self.phase_output(nets, sub, k, generator)
                parts.append(self.fake_loss(nets[self.fakes[k]], x0, x_s, s, k, sub.mask, sub.cond, generator))
            else:
                x0, x_s, s = self.phase_output(nets, sub, k, generator)
                parts.append(self.generator_loss(nets, x0, x_s, s, k, sub.mask, sub.cond, generator))
            order.append(idx)
        order = torch.cat(order).to(parts[0].device)
        return torch.cat(parts)[torch.argsort(order)]

    def __repr__(self) -> str:
        return (f"PhasedDMD(phases={self.K}, boundaries={[round(float(v), 4) for v in self.boundaries]}, dm_range={self.dm_range!r}, "
                f"fake_target={self.fake_target!r}, weight_clamp={self.weight_clamp}, generator_every={self.generator_every})")


@register_method("phased_dmd", kind="experts", paper="Fan et al. 2025 (Phased DMD)",
                 description="one expert and one fake score per SNR phase; DMD and subinterval score matching inside each phase")
def phased_dmd_recipe(ctx: RecipeContext, *, boundaries: Union[str, list] = "uniform_t", t_min: float = 0.02, t_max: float = 0.98,
                      dm_range: str = "upper", fake_target: str = "subinterval", weight_clamp: Optional[float] = 10.0,
                      backward_simulation: bool = True, generator_every: int = 5, phase_weights: Optional[list] = None,
                      student: Optional[dict] = None, init_sigma: Optional[float] = 2.5) -> DistillSetup:
    """Phased DMD with ``K = student_steps`` phases on ``boundaries`` (``uniform_t``,
    ``uniform_lambda`` from ``t(init_sigma)`` to 0, see
    :func:`~workbench.distill.generators.t_of_init_sigma`, as DMD2; or ``K + 1`` times);
    every expert (``student``: backbone kwargs of a smaller expert) and every fake score starts
    from the teacher."""
    from .base import FewStepGenerator
    from .generators import ExpertsGenerator, t_of_init_sigma

    K = int(ctx.student_steps)
    b = phase_boundaries(ctx.process, K, boundaries, t_start=t_of_init_sigma(ctx.process, init_sigma))
    obj = PhasedDMD(ctx.process, b, teacher_prediction=ctx.prediction, t_min=t_min, t_max=t_max, dm_range=dm_range,
                    fake_target=fake_target, weight_clamp=weight_clamp, backward_simulation=backward_simulation,
                    generator_every=generator_every, phase_weights=phase_weights)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=student)
    fspec = student_spec(ctx.teacher, ctx.domain)
    nets = {"teacher": ctx.teacher}
    for k in range(K):
        nets[obj.experts[k]] = make_student(ctx, sspec)
        nets[obj.fakes[k]] = make_student(ctx, fspec)
    inner = {"kind": "consistency", "student": sspec, "parameterization": "x0", "sigma_data": 0.5, "timesteps": None}
    spec = {"kind": "experts", "n": K, "boundaries": [float(v) for v in b], "inner": inner}

    def make_generator(n):
        return ExpertsGenerator(nn.ModuleList([FewStepGenerator(n[e], ctx.process, prediction=sspec["prediction"], parameterization="x0")
                                               for e in obj.experts]), ctx.process, b)

    info = {"phases": K, "boundaries": [float(v) for v in b]}
    return DistillSetup(obj, nets, obj.experts + obj.fakes, list(obj.experts), spec, make_generator,
                        train_defaults={"lr": 1e-4, "ema_decay": 0.99}, info=info)
