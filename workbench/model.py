"""Model wrapper: a backbone plus its declared parameterization, optional EDM
preconditioning and the map from process time ``t`` to what the backbone expects.

``Denoiser(backbone, process, prediction=...)`` is the callable
``f(x_t [B, ...], t [B], *, mask=None, cond=None) -> prediction [B, ...]`` that samplers,
losses and distillers use.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .processes import GaussianProcess, append_dims, canonical_prediction

TIME_MAPS = ("identity", "scaled", "diffusers", "log_sigma")


def time_input(process: GaussianProcess, t: Tensor, time_map: str) -> Tensor:
    """Backbone time input for process time ``t`` ``[B]``.

    * ``identity``: ``t``;  * ``scaled``: ``1000 t`` (DDPM-style embeddings);
    * ``diffusers``: the diffusers timestep ``t N - 1`` of a :class:`VPDiscrete` process;
    * ``log_sigma``: EDM's ``c_noise = log(sigma~) / 4`` with ``sigma~ = sigma / alpha``.
    """
    if time_map == "identity":
        return t
    if time_map == "scaled":
        return 1000.0 * t
    if time_map == "diffusers":
        if not hasattr(process, "timestep"):
            raise ValueError("time_map='diffusers' needs a VPDiscrete process (workbench.processes.from_diffusers)")
        return process.timestep(t)
    if time_map == "log_sigma":
        return -0.25 * process.lambda_(t)
    raise ValueError(f"unknown time_map {time_map!r}; valid: {', '.join(TIME_MAPS)}")


class Denoiser(nn.Module):
    """A backbone with a declared parameterization.

    Args:
        backbone: ``backbone(x [B, ...], t_in [B], **kw) -> [B, ...]`` (``kw``: ``mask``,
            ``cond`` when given).
        process: the Gaussian process the model is trained for.
        prediction: what ``forward`` returns: ``x0 / epsilon / v / velocity / score``.
        precond: ``None`` or ``"edm"``: EDM preconditioning (Karras et al. 2022, Table 1,
            eq. 7) on ``y = x / alpha``, ``sigma~ = sigma / alpha``:
            ``D = c_skip y + c_out F(c_in y, c_noise)`` with ``c_in = 1/sqrt(sigma~^2 +
            sigma_data^2)``, ``c_skip = sigma_data^2 / (sigma~^2 + sigma_data^2)``,
            ``c_out = sigma~ sigma_data / sqrt(sigma~^2 + sigma_data^2)``,
            ``c_noise = log(sigma~) / 4``; the prediction is then ``x0``.
        time_map: see :func:`time_input` (ignored with ``precond="edm"``).
    """

    def __init__(self, backbone: nn.Module, process: GaussianProcess, prediction: str = "epsilon", *,
                 precond: Optional[str] = None, sigma_data: float = 0.5, time_map: str = "identity"):
        super().__init__()
        if precond not in (None, "edm"):
            raise ValueError(f"unknown precond {precond!r}; valid: None, 'edm'")
        if time_map not in TIME_MAPS:
            raise ValueError(f"unknown time_map {time_map!r}; valid: {', '.join(TIME_MAPS)}")
        self.backbone = backbone
        self.process = process
        self.prediction = "x0" if precond == "edm" else canonical_prediction(prediction)
        self.precond = precond
        self.sigma_data = float(sigma_data)
        self.time_map = time_map

    def forward(self, x: Tensor, t: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
        kw = {}
        if mask is not None:
            kw["mask"] = mask
        if cond is not None:
            kw["cond"] = cond
        if self.precond == "edm":
            t64 = t.to(torch.float64)
            la, ls = self.process.log_alpha_sigma(t64)
            alpha = la.exp()
            sig = (ls - la).exp()  # sigma~ = sigma / alpha
            sd = self.sigma_data
            c_in = 1.0 / torch.sqrt(sig**2 + sd**2)
            c_skip = sd**2 / (sig**2 + sd**2)
            c_out = sig * sd / torch.sqrt(sig**2 + sd**2)
            c_noise = 0.25 * torch.log(sig)
            y = x / append_dims(alpha.to(x.dtype), x.ndim)
            f = self.backbone(y * append_dims(c_in.to(x.dtype), x.ndim), c_noise.to(x.dtype), **kw)
            out = append_dims(c_skip.to(x.dtype), x.ndim) * y + append_dims(c_out.to(x.dtype), x.ndim) * f
        else:
            out = self.backbone(x, time_input(self.process, t, self.time_map).to(x.dtype), **kw)
        if mask is not None or self.process.zero_com:
            out = self.process.project(out, mask)
        return out

    def prepare_cond(self, cond: Any, *, mask: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Any:
        """Delegate to ``backbone.prepare_cond`` (see :func:`prepare_cond`); identity otherwise."""
        return prepare_cond(self.backbone, cond, mask=mask, batch_size=batch_size)


def prepare_cond(model, cond: Any, *, mask: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Any:
    """Run ``model.prepare_cond`` (if the model has one) once before a sampling trajectory.

    The hook lets a model (a) compute expensive conditioning once per sample instead of once
    per step (a structure-prediction trunk run on the sequence), and (b) attach per-trajectory
    state to ``cond`` (self-conditioning on the previous step's prediction). Samplers stay
    pure functions: :func:`workbench.api.run_sampler` and the distilled generators call this
    once per call; training losses call the model on raw ``cond`` and never see the state.
    """
    fn = getattr(model, "prepare_cond", None)
    return cond if fn is None else fn(cond, mask=mask, batch_size=batch_size)


def prepare_cond_all(module: nn.Module, cond: Any, *, mask: Optional[Tensor] = None, batch_size: Optional[int] = None) -> Any:
    """:func:`prepare_cond` of every :class:`Denoiser` inside ``module`` in turn (a distilled
    generator holding one or several students); identity when none defines the hook."""
    for m in module.modules():
        if isinstance(m, Denoiser):
            cond = m.prepare_cond(cond, mask=mask, batch_size=batch_size)
    return cond


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal embedding of a ``[B]`` tensor -> ``[B, dim]``."""
    half = dim // 2
    dt = t.dtype if t.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dt) / half)
    args = t.to(dt)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def linear_view_time(process: GaussianProcess, u: Tensor) -> Tensor:
    """Process time ``t`` ``[B]`` (float64) whose linear-view time ``sigma / (alpha + sigma)``
    is ``u`` ``[B]`` (see :func:`workbench.distill.generators.linear_view`), differentiable in
    ``u`` to first order in forward mode (``torch.func.jvp``) and reverse mode whatever
    ``process.t_of_lambda`` is (closed form or bisection): the value is ``t_of_lambda(log((1 -
    u) / u))`` of the detached ``u`` and the derivative ``dt/du = 1 / (du/dt)`` is attached by
    implicit differentiation, ``du/dt`` a forward-mode derivative of the schedule."""
    u64 = torch.as_tensor(u).to(torch.float64)
    u0 = u64.detach()
    t0 = process.t_of_u(u0).detach()

    def lin(s: Tensor) -> Tensor:
        return process.u_of_t(s)

    ts = t0.clamp_min(float(getattr(process, "t_min", 1e-3)) * 1e-3)
    dudt = torch.func.jvp(lin, (ts,), (torch.ones_like(ts),))[1].detach()
    dudt = torch.where(torch.isfinite(dudt) & (dudt > 0), dudt, torch.ones_like(dudt))
    return t0 + (u64 - u0) / dudt


class TwoTimeDenoiser(nn.Module):
    """An average-velocity network ``u(z [B, ...], r [B], t [B], *, mask=None, cond=None) ->
    [B, ...]`` in the *linear view* of ``process`` (``z = x / (alpha + sigma)``, linear-view
    time ``u = sigma / (alpha + sigma)``, ``z_u = (1 - u) x0 + u eps``; one step is
    ``z_r = z_t - (t - r) u(z_t, r, t)``, Geng et al. 2025, "Mean Flows", eq. 12), built on
    a denoiser backbone with a second time input.

    With ``t_p`` the process time of ``t`` (:func:`linear_view_time`) and
    ``x = (alpha + sigma)(t_p) z``, the backbone gives ``F = backbone(x, t_in,
    dt_in=gap_scale (t - r), **kw)``, read as a ``prediction`` at ``(x, t_p)``; converted to
    ``(x0^, eps^)`` the output is ``u = eps^ - x0^``. The network is conditioned on
    ``(t, t - r)`` as Geng et al. (Sec. 4.3). The first time input is

    * ``time_scale=None``: the teacher's, ``t_in = time_input(t_p)`` (``time_map``). A
      backbone whose second-time branch starts at zero (the toy nets, the images UNet) with
      a teacher's weights (and the teacher's ``prediction``) is then, at initialisation, the
      teacher's velocity in the linear view for every ``r`` (its DDIM step), so a student
      copies every teacher tensor by name (``backbone.*`` as in :class:`Denoiser`);
    * a number: ``t_in = time_scale * t``, smooth in the linear-view time. MeanFlow needs
      this: its target contains ``(t - r) d/dt u``, which multiplies a component of
      frequency ``w`` in ``t`` by ``w (t - r)``; the DDPM timestep map (up to ~1.6e4
      timesteps per unit of ``t`` near ``t = 1``) makes the teacher's time features far too
      fast (measured: training diverges), as does a large ``gap_scale``.

    Outputs are projected with ``process.project`` (masks, zero centre of mass).

    Args:
        backbone: ``backbone(x, t_in, *, dt_in, mask=, cond=) -> [B, ...]``.
        process: the Gaussian process of the teacher.
        prediction: what the backbone output means (``x0 / epsilon / v / velocity / score``);
            ``epsilon`` multiplies errors by ``1 / (1 - t)`` (~160 at the top of the DDPM
            schedule), ``x0`` by ``1 / t``, ``v`` by neither.
        time_map: see :func:`time_input` (the teacher's).
        gap_scale: ``dt_in = gap_scale * (t - r)``.
        time_scale: see above (``None``: the teacher's time input).
    """

    def __init__(self, backbone: nn.Module, process: GaussianProcess, prediction: str = "epsilon", *, time_map: str = "identity",
                 gap_scale: float = 1000.0, time_scale: Optional[float] = None):
        super().__init__()
        if time_map not in TIME_MAPS:
            raise ValueError(f"unknown time_map {time_map!r}; valid: {', '.join(TIME_MAPS)}")
        self.backbone = backbone
        self.process = process
        self.prediction = canonical_prediction(prediction)
        self.time_map = time_map
        self.gap_scale = float(gap_scale)
        self.time_scale = None if time_scale is None else float(time_scale)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        B = z.shape[0]
        r, t = torch.as_tensor(r, device=z.device), torch.as_tensor(t, device=z.device)
        r = r.expand(B) if r.ndim == 0 else r
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,) or r.shape != (B,):
            raise ValueError(f"r and t must have shape [B] = [{B}], got {tuple(r.shape)} and {tuple(t.shape)}")
        kw = {}
        if mask is not None:
            kw["mask"] = mask
        if cond is not None:
            kw["cond"] = cond
        tp = linear_view_time(self.process, t)
        la, ls = self.process.log_alpha_sigma(tp)
        scale = append_dims((la.exp() + ls.exp()).to(z.dtype), z.ndim)
        x = z * scale
        if self.time_scale is None:
            t_in = time_input(self.process, tp, self.time_map).to(z.dtype)
        else:
            t_in = (self.time_scale * t).to(z.dtype)
        out = self.backbone(x, t_in, dt_in=(self.gap_scale * (t - r)).to(z.dtype), **kw)
        x0, eps = self.process.to_x0_eps(out, self.prediction, x, tp)
        u = eps - x0
        if mask is not None or self.process.zero_com:
            u = self.process.project(u, mask)
        return u

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, time_map={self.time_map!r}, gap_scale={self.gap_scale}, time_scale={self.time_scale}"
