"""Few-step students and what every distiller shares.

A *student* is a :class:`~workbench.model.Denoiser` (or any module
``student(x_t [B, ...], t [B], *, mask=None, cond=None) -> prediction [B, ...]`` with a
``prediction`` attribute) trained to map a noisy state straight to (an estimate of) the
clean end of its trajectory. :class:`FewStepGenerator` turns it into a K-step generator by
multistep consistency sampling (Song et al. 2023, Algorithm 1):

    x0_k = f(x_{t_k}, t_k);   x_{t_{k+1}} = alpha(t_{k+1}) x0_k + sigma(t_{k+1}) z,  z ~ N(0, I)

The consistency function ``f`` is built on top of the student's x0 output with a boundary
condition (:func:`consistency_output`), so ``f(x, t_low) = x`` exactly at the lower end
``t_low`` of its segment (``t_low = 0`` for plain consistency models; the segment starts for
multi-segment / phased consistency models, Wang et al. 2024 "Phased Consistency Model";
Ding et al. 2025 "Efficient-vDiT").

Time convention as everywhere in the package: ``t`` in ``[0, 1]``, ``t = 0`` data,
``x_t = alpha(t) x_0 + sigma(t) eps``.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, randn_like
from .generators import BaseGenerator, _floats, default_grid, start_state
from .students import build_student, student_config_of

__all__ = ["PARAMETERIZATIONS", "consistency_output", "student_x0", "FewStepGenerator", "student_from_teacher"]

#: how ``f(x, t)`` is built on the student's x0 output (see :func:`consistency_output`)
PARAMETERIZATIONS = ("x0", "edm")


def _per_sample(t, x: Tensor) -> Tensor:
    """``t`` (float, 0-d or ``[B]``) -> float64 ``[B]`` on ``x``'s device."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
    return t


def student_x0(net, process: GaussianProcess, x: Tensor, t: Tensor, *, prediction: Optional[str] = None,
               mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
    """The data prediction of ``net`` at ``(x [B, ...], t [B])``, whatever its parameterization
    (``prediction``, default ``net.prediction``), projected (padding zero, zero CoM)."""
    t = _per_sample(t, x)
    kw = {}
    if mask is not None:
        kw["mask"] = mask
    if cond is not None:
        kw["cond"] = cond
    out = net(x, t.to(x.dtype), **kw)
    pred = canonical_prediction(prediction or getattr(net, "prediction", "x0"))
    if pred != "x0":
        out = process.convert(out, pred, "x0", x, t).to(x.dtype)
    return process.project(out, mask)


def consistency_output(process: GaussianProcess, x: Tensor, x0_hat: Tensor, t: Tensor, t_low: Tensor, *,
                       parameterization: str = "x0", sigma_data: float = 0.5) -> Tensor:
    """Consistency function ``f(x_t, t) -> x_{t_low}`` built on an x0 estimate, with the boundary
    condition ``f(x, t_low) = x`` exactly.

    In ``y = x / alpha`` units with ``sigma~ = sigma / alpha`` (so ``y_t = x0 + sigma~_t eps``):

    * ``parameterization="x0"``: the DDIM / first-order exponential jump from ``t`` to
      ``t_low`` with the student's x0: ``c_skip = sigma~_low / sigma~_t``,
      ``c_out = 1 - c_skip`` (for ``t_low = 0`` this is the plain x0 prediction);
    * ``parameterization="edm"``: Song et al. 2023, eq. 7 / Appendix C, with
      ``sigma_data`` and the offset at the segment start:
      ``c_skip = sigma_data^2 / ((sigma~_t - sigma~_low)^2 + sigma_data^2)``,
      ``c_out = sigma_data (sigma~_t - sigma~_low) / sqrt(sigma~_t^2 + sigma_data^2)``.

    Then ``f = alpha_low (c_skip y_t + c_out x0_hat)``; where ``t <= t_low`` the output is ``x``.

    Args:
        x: ``[B, ...]`` state at ``t``; ``x0_hat``: ``[B, ...]`` the student's x0 output.
        t, t_low: ``[B]`` (or scalars) with ``t >= t_low``.
    Returns:
        ``[B, ...]`` the estimate of ``x_{t_low}`` on the probability-flow trajectory.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
    t, t_low = _per_sample(t, x), _per_sample(t_low, x)
    la, ls = process.log_alpha_sigma(t)
    la_lo, ls_lo = process.log_alpha_sigma(t_low)
    sig = (ls - la).exp()  # sigma~_t (0 at t = 0)
    sig_lo = torch.where(t_low > 0, (ls_lo - la_lo).exp(), torch.zeros_like(t_low))
    at_boundary = t <= t_low
    safe_sig = torch.where(at_boundary | (sig <= 0), torch.ones_like(sig), sig)
    if parameterization == "x0":
        c_skip = sig_lo / safe_sig
        c_out = 1.0 - c_skip
    else:
        sd = float(sigma_data)
        d = (sig - sig_lo).clamp_min(0.0)
        c_skip = sd**2 / (d**2 + sd**2)
        # sd d / sqrt(sig^2 + sd^2), written to stay finite (-> sd) as sig -> inf (alpha_t = 0)
        c_out = sd * (1.0 - sig_lo / safe_sig).clamp_min(0.0) / torch.sqrt(1.0 + (sd / safe_sig) ** 2)
    # the coefficient of x, alpha_low c_skip / alpha_t, in a form finite where alpha_t = 0 (a rectified
    # flow at t = 1): for "x0" it is sigma_low / sigma_t; for "edm", c_skip / alpha_t -> 0 as alpha_t -> 0
    if parameterization == "x0":
        coef_x = torch.where(t_low > 0, (ls_lo - ls).exp(), torch.zeros_like(ls))
    else:
        coef_x = torch.where(torch.isfinite(la), la_lo.exp() * c_skip / la.exp().clamp_min(1e-300), torch.zeros_like(la))
    f = (append_dims(coef_x.to(x.dtype), x.ndim) * x
         + append_dims((la_lo.exp() * c_out).to(x.dtype), x.ndim) * x0_hat)
    return torch.where(append_dims(at_boundary, x.ndim), x, f)


def student_from_teacher(teacher: nn.Module) -> nn.Module:
    """A trainable student initialised from the teacher: a deep copy with gradients enabled
    (the usual initialisation of consistency distillation, Song et al. 2023, Sec. 5)."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    return student.train()


class FewStepGenerator(BaseGenerator):
    """A student predicting x0 from ``(x_t, t)`` as a few-step generator.

    Args:
        student: ``student(x_t [B, ...], t [B], *, mask=None, cond=None) -> [B, ...]`` in the
            parameterization ``prediction`` (default ``student.prediction``, else ``x0``).
        process: the Gaussian process of the student.
        parameterization: how the consistency function is built on the x0 output (``"x0"``
            or ``"edm"``; must match the :class:`~workbench.distill.ConsistencyDistillation`
            objective it was trained with), see :func:`consistency_output`.
        sigma_data: for ``parameterization="edm"``.
        timesteps: ``[K + 1]`` default sampling grid (decreasing to 0); ``None``: uniform in ``t``.
        noise_scale: default ``gamma`` of :meth:`generate` (see there).
        scale_initial_noise: ``False`` (default, every domain's consistency sampler): ``gamma``
            scales only the noise re-injected between steps; ``True``: it scales *every* noise
            term, the first input included, as Proteina-SiD's inference-time noise modulation
            (Xie et al. 2025; authors' ``training/sid_utils.py`` ``generator_step``:
            ``x_t = interpolate(gamma eps, x_prev, t)`` with ``x_prev = 0`` at the first step).
    """

    kind = "consistency"

    def __init__(self, student: nn.Module, process: GaussianProcess, *, prediction: Optional[str] = None,
                 parameterization: str = "x0", sigma_data: float = 0.5, timesteps=None, noise_scale: float = 1.0,
                 scale_initial_noise: bool = False):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
        self.student = student
        self.process = process
        self.prediction = canonical_prediction(prediction or getattr(student, "prediction", "x0"))
        self.parameterization = parameterization
        self.sigma_data = float(sigma_data)
        #: default sampling grid ``[K + 1]`` (``None``: uniform in ``t`` with the requested steps)
        self.timesteps = None if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        #: default inference noise scale (recorded by the method, e.g. SiD's ``sample_noise_scale``, else its ``train_noise_scale``)
        self.noise_scale = float(noise_scale)
        if not isinstance(scale_initial_noise, bool):
            raise ValueError(f"scale_initial_noise must be True or False, got {scale_initial_noise!r}")
        #: whether ``noise_scale`` also scales the first input (Proteina-SiD's noise modulation)
        self.scale_initial_noise = scale_initial_noise

    def _config(self) -> dict:
        return {"student": student_config_of(self.student), "prediction": self.prediction,
                "parameterization": self.parameterization, "sigma_data": self.sigma_data, "timesteps": _floats(self.timesteps),
                "noise_scale": self.noise_scale, "scale_initial_noise": self.scale_initial_noise}

    @classmethod
    def from_config(cls, domain, config: dict) -> "FewStepGenerator":
        return cls(build_student(domain, config["student"]), domain.process(), prediction=config["prediction"],
                   parameterization=config["parameterization"], sigma_data=config["sigma_data"], timesteps=config["timesteps"],
                   noise_scale=config["noise_scale"], scale_initial_noise=bool(config["scale_initial_noise"]))

    def nfe(self, steps: Optional[int] = None) -> int:
        """Network evaluations of :meth:`generate` with ``steps`` steps (one per step)."""
        return len(self.timesteps) - 1 if steps is None and self.timesteps is not None else int(steps)

    def consistency(self, x: Tensor, t, t_low=0.0, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        """``f(x [B, ...], t) -> x_{t_low}`` (``[B, ...]``, projected); ``f(x, t_low) = x``."""
        x0 = student_x0(self.student, self.process, x, _per_sample(t, x), prediction=self.prediction, mask=mask, cond=cond)
        out = consistency_output(self.process, x, x0, t, t_low, parameterization=self.parameterization, sigma_data=self.sigma_data)
        return self.process.project(out, mask)

    def forward(self, x: Tensor, t, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        """The generator's data estimate ``f(x_t, t) -> x0`` ``[B, ...]`` (an x0-prediction model)."""
        return self.consistency(x, t, 0.0, mask=mask, cond=cond)

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, noise_scale: Optional[float] = None) -> Tensor:
        """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

        Args:
            x_T: ``[B, ...]`` prior noise (``process.prior(shape)``); a grid starting below
                ``t = 1`` starts from ``sigma(t_0) / sigma(1) x_T``
                (:func:`~workbench.distill.generators.start_state`).
            steps: ``K`` steps on a uniform grid in ``t`` (or on the generator's own
                ``timesteps`` when it has ``K`` steps).
            timesteps: ``[K + 1]`` float64, strictly decreasing, ending at ``0``: ``K`` network
                evaluations (overrides ``steps``).
            mask: ``[B, N]`` validity mask for set states ``[B, N, ...]``.
            generator: ``None``, a ``torch.Generator`` or ``B`` per-sample generators (fresh noise).
            noise_scale: ``gamma``, the scale of the fresh noise re-injected between steps
                (``1`` is the consistency-model sampler, ``0`` a deterministic DDIM-like jump
                with ``eps = 0``); with ``self.scale_initial_noise`` it also scales the first
                input, ``x_{t_0} = gamma sigma(t_0) / prior_std x_T`` (Proteina-SiD's
                inference-time noise modulation: every input is
                ``alpha(t_k) x0_{k-1} + gamma sigma(t_k) z``, ``x0_{-1} = 0``); ``None``
                (default) uses ``self.noise_scale``, the generator's recorded default.
        Returns:
            ``[B, ...]`` the sample (the x0 of the last step), projected.
        """
        if timesteps is None and self.timesteps is not None and (steps is None or int(steps) == len(self.timesteps) - 1):
            timesteps = self.timesteps
        if timesteps is None:
            t0 = float(self.timesteps[0]) if self.timesteps is not None else 1.0  # keep the trained start time
            timesteps = default_grid(self.process, steps, t_start=t0)
        ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("timesteps must be a strictly decreasing grid of at least 2 points")
        if float(ts[-1]) != 0.0:
            raise ValueError(f"timesteps must end at the clean end t=0, got {float(ts[-1])}")
        p = self.process
        gamma = float(self.noise_scale if noise_scale is None else noise_scale)
        x = start_state(p, x_T, float(ts[0]))
        if self.scale_initial_noise:
            x = x * gamma
        x = p.project(x, mask)
        x0 = x
        K = len(ts) - 1
        for k in range(K):
            x0 = self(x, float(ts[k]), mask=mask, cond=cond)
            if k == K - 1:
                break
            t_next = torch.full((x.shape[0],), float(ts[k + 1]), dtype=torch.float64, device=x.device)
            a = append_dims(p.alpha(t_next).to(x.dtype), x.ndim)
            s = append_dims(p.sigma(t_next).to(x.dtype), x.ndim)
            z = p.project(randn_like(x, generator), mask)
            x = p.project(a * x0 + s * gamma * z, mask)
        return p.project(x0, mask)

    def generate_segments(self, x_T: Tensor, boundaries, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        """Deterministic multi-segment sampling: ``x <- f(x, b_j, b_{j+1})`` along
        ``boundaries`` ``[S + 1]`` (decreasing to 0, the segment edges the student was
        distilled with): one network evaluation per segment."""
        bs = torch.as_tensor(boundaries, dtype=torch.float64).flatten()
        if len(bs) < 2 or not bool((bs[1:] < bs[:-1]).all()):
            raise ValueError("boundaries must be strictly decreasing")
        x = self.process.project(x_T, mask)
        for j in range(len(bs) - 1):
            x = self.consistency(x, float(bs[j]), float(bs[j + 1]), mask=mask, cond=cond)
        return x
