"""AlphaFold 3 diffusion sampler (Abramson et al. 2024, "Accurate structure prediction of
biomolecular interactions with AlphaFold 3", Supplementary Information, Algorithm 18
"SampleDiffusion"; the same algorithm as ``protenix.model.generator.sample_diffusion`` in
Protenix, bytedance/Protenix).

AF3 works in EDM's variance-exploding parameterization (``x = x0 + c eps``, noise level
``c`` in Angstrom). For each pair of consecutive noise levels ``(c_prev, c)`` of the schedule
it does a churn step followed by a scaled Euler step:

    gamma   = gamma0 if c > gamma_min else 0                        (Alg. 18 line 4)
    t_hat   = c_prev (1 + gamma)                                    (line 5)
    x_noisy = x + lambda sqrt(t_hat^2 - c_prev^2) z,  z ~ N(0, I)   (lines 6-7)
    x0^     = D(x_noisy; t_hat)                                     (line 8)
    x       = x_noisy + eta (c - t_hat) (x_noisy - x0^) / t_hat     (lines 9-11)

with ``gamma0 = 0.8``, ``gamma_min = 1.0``, ``lambda = noise_scale_lambda = 1.003`` and
``eta = step_scale_eta = 1.5`` (the AF3 supplement and Protenix's defaults). Line 9 of the
supplement writes ``delta = (x - x0^) / t_hat``; Protenix (and this file) use ``x_noisy``,
the state the denoiser saw (their comment calls the supplement's ``x`` a typo). Note the gate
compares the *next* level ``c`` with ``gamma_min`` (as both sources do). ``eta > 1``
over-shoots every Euler step and ``lambda > 1`` adds slightly more noise than removed: the
sampler no longer targets the model's exact marginals (AF3 trades diversity for accuracy);
``gamma0 = 0, eta = 1`` is the deterministic Euler method on the probability-flow ODE,
identical to the ``euler`` (DDIM) sampler, and ``gamma0 > 0, eta = 1, lambda = 1`` is EDM's
stochastic sampler (Karras et al. 2022, Alg. 2) with Euler steps, which does target them.

Any Gaussian process: written, like :mod:`.heun`, on ``y = x / alpha`` and ``sigma~ =
sigma / alpha = exp(-lambda)`` (for the VE process, ``alpha = 1``, ``sigma~ = sigma``, it is
the algorithm verbatim): the churned level ``sigma~_hat = (1 + gamma) sigma~`` maps to the
time ``t_hat = t(lambda = -log sigma~_hat)`` (clamped to ``t <= 1``; then the exact level of
``t = 1`` is used and less noise is added, as :mod:`.heun` does), ``gamma_min`` is compared
with ``sigma~`` of the next grid point (EDM sigma units; AF3's Angstrom when the domain works
in Angstrom with ``sigma_data = 16``), and states are mapped back with ``x = alpha y``.
At a point with ``alpha = 0`` (the rectified flow's ``t = 1``) there is no finite
``sigma~``: the step from it is the exact DDIM step ``x = alpha_next x0^ + sigma_next eps^``
(the ``sigma~ -> inf`` limit of the ``eta = 1`` update) with no churn.

Augmentation (Alg. 18 line 3 / Alg. 19 ``CentreRandomAugmentation``, on by default, as in
Protenix): at the start of every step the state is centred on the mean of its real points
(``mask``), rotated by a uniformly random rotation ``R`` (normalised Gaussian quaternion) and
translated by ``s_trans t``, ``t ~ N(0, I_3)``, one ``(R, t)`` per sample:
``y <- R (y - mean(y)) + s_trans t`` on ``y = x / alpha``. ``s_trans`` is in the process's
data units: AF3's ``s_trans = 1 A`` is ``1 / 16`` for a domain that works in units of
``sigma_data = 16 A`` (like ``gamma_min``). On a process with ``zero_com`` the projection that
follows every state removes the translation again (its states are centred by definition), so
only the rotation acts there. Padding (``mask = 0``) stays zero. The draws come from the
ModelFn's generator (per-sample generators: sample ``i`` depends only on its own seed). The
augmentation needs point-set states ``[B, N, 3]``; on any other state shape there is nothing
to rotate and it is skipped. ``augment=False`` switches it off (then the sampler is Alg. 18
without line 3).

Last step: Protenix's update is used on every step, the one into ``c = 0`` included,
``x = x_noisy + eta (0 - t_hat) (x_noisy - x0^) / t_hat = (1 - eta) x_noisy + eta x0^``: with
``eta != 1`` the sample is *not* the data prediction of the last call (the package's usual
clean-end contract, :mod:`.base`, is deliberately not followed here); with ``eta = 1`` it is.
One network call per step.

The AF3 noise schedule ``c_i = sigma_data (s_max^(1/p) + i/N (s_min^(1/p) - s_max^(1/p)))^p``
(``s_max = 160``, ``s_min = 4e-4``, ``p = 7``, last point replaced by 0) is EDM's rho grid in
units of ``sigma_data``; use a :class:`~workbench.processes.VE` process with ``sigma_max =
160 sigma_data`` and the ``edm`` grid (``rho = 7``), or pass the exact AF3 grid as
``timesteps`` (``domains.structure_prediction.af3_grid`` builds it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..utils import randn
from .base import ModelFn, register


def random_rotations(q: Tensor) -> Tensor:
    """Rotation matrices ``[B, 3, 3]`` from Gaussian quaternions ``q`` ``[B, 4]`` (normalised
    here; a standard-normal ``q`` gives the uniform (Haar) distribution on SO(3))."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def centre_random_augmentation(model: ModelFn, x: Tensor, alpha: float, s_trans: float) -> Tensor:
    """AF3 Alg. 19 on ``x = alpha y`` ``[B, N, 3]``: ``y <- R (y - centroid) + s_trans t`` per
    sample (centroid over the real points of ``model.mask``), padding kept zero; the
    draws (``[B, 4]`` quaternion, then ``[B, 3]`` translation) come from ``model.generator``."""
    B = x.shape[0]
    gen = model.generator
    q = randn((B, 4), generator=gen, device=x.device, dtype=torch.float64)
    tr = randn((B, 3), generator=gen, device=x.device, dtype=torch.float64)
    rot = random_rotations(q).to(x.dtype)
    if model.mask is None:
        m = None
        centre = x.mean(dim=1, keepdim=True)
    else:
        m = model.mask.to(x.dtype)[..., None]  # [B, N, 1]
        centre = (x * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
    out = torch.matmul(x - centre, rot.transpose(1, 2)) + (alpha * s_trans) * tr.to(x.dtype)[:, None, :]
    if m is not None:
        out = out * m
    return model.project(out)


@register("af3_edm", nfe=lambda n: n, order=1, stochastic=True,
          reference="Abramson et al. 2024 (AlphaFold 3), Suppl. Alg. 18-19; Protenix sample_diffusion")
def af3_edm(model: ModelFn, x: Tensor, ts: Tensor, *, gamma0: float = 0.8, gamma_min: float = 1.0,
            noise_scale_lambda: float = 1.003, step_scale_eta: float = 1.5, augment: bool = True,
            s_trans: float = 1.0) -> Tensor:
    """AF3 ``SampleDiffusion`` (augmentation + churn + scaled Euler step, one NFE per step).

    Args:
        model: the wrapped model (one call per step).
        x: ``[B, ...]`` state at ``ts[0]`` (``[B, N, 3]`` point sets for the augmentation).
        ts: ``[n + 1]`` decreasing float64 grid.
        gamma0: churn factor ``gamma_0 >= 0`` (AF3: 0.8); 0 disables the noise injection.
        gamma_min: churn only while the next grid point's ``sigma~ = sigma / alpha`` exceeds it
            (AF3: 1.0, in the process's sigma units).
        noise_scale_lambda: ``lambda >= 0``, std of the injected noise relative to the exact
            amount (AF3: 1.003).
        step_scale_eta: ``eta > 0``, Euler step scale (AF3: 1.5; 1 = the plain Euler step).
        augment: AF3 Alg. 19 random rotation + translation before every step (default on, as
            AF3 / Protenix; skipped on states that are not ``[B, N, 3]``).
        s_trans: std of the random translation in the process's data units (AF3: 1 A).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (Protenix's last step; the data prediction of the
        last call only when ``eta = 1``).
    """
    for name, v in (("gamma0", gamma0), ("gamma_min", gamma_min), ("noise_scale_lambda", noise_scale_lambda), ("s_trans", s_trans)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"af3_edm option {name} must be a finite number >= 0, got {v!r}")
    if not (isinstance(step_scale_eta, (int, float)) and math.isfinite(step_scale_eta) and step_scale_eta > 0):
        raise ValueError(f"af3_edm option step_scale_eta must be a finite number > 0, got {step_scale_eta!r}")
    if not isinstance(augment, bool):
        raise ValueError(f"af3_edm option augment must be True or False, got {augment!r}")
    do_aug = augment and x.ndim == 3 and x.shape[-1] == 3
    n = len(ts) - 1
    for i in range(n):
        t_cur, t_next = float(ts[i]), float(ts[i + 1])
        a, s = model.coef(t_cur)
        a_next, s_next = model.coef(t_next)
        if do_aug:
            x = centre_random_augmentation(model, x, a, float(s_trans))
        if a <= 0.0:  # alpha = 0 (sigma~ = inf): exact DDIM step, no churn
            pred = model(x, t_cur)
            x = model.project(a_next * pred.x0 + s_next * pred.eps)
            continue
        sig = s / a
        sig_next = s_next / a_next
        gamma = float(gamma0) if sig_next > gamma_min else 0.0
        t_hat, a_hat, sig_hat = t_cur, a, sig
        x_noisy = x
        if gamma > 0.0:
            t_try = min(1.0, model.t_of_lambda(-math.log((1.0 + gamma) * sig)))
            if t_try > t_cur:
                a_try, s_try = model.coef(t_try)
                if a_try > 0.0:
                    t_hat, a_hat, sig_hat = t_try, a_try, s_try / a_try  # exact level of the (clamped) t_hat
                    add = math.sqrt(max(0.0, sig_hat**2 - sig**2))
                    # y_noisy = y + lambda sqrt(sig_hat^2 - sig^2) z, mapped back with x = alpha y
                    x_noisy = model.project((a_hat / a) * x + (a_hat * noise_scale_lambda * add) * model.noise_like(x))
        pred = model(x_noisy, t_hat)
        # y_next = y_noisy + eta (sig_next - sig_hat) (y_noisy - x0^) / sig_hat with y_noisy = x0^ + sig_hat eps^,
        # i.e. x_next = alpha_next x0^ + (eta sigma_next + (1 - eta) alpha_next sig_hat) eps^ (no cancellation at tiny
        # alpha); into c = 0 (sigma_next = 0) this is Protenix's (1 - eta) y_noisy + eta x0^
        x = model.project(a_next * pred.x0 + (step_scale_eta * s_next + (1.0 - step_scale_eta) * a_next * sig_hat) * pred.eps)
    return x
