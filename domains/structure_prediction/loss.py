"""Training objective of the structure predictor: AlphaFold 3's diffusion loss (Abramson et al.
2024, Suppl. sec. 3.7.1, eq. 2-6 and Alg. 27) for CA atoms.

For a batch of crops ``x0`` ``[B, N, 3]`` (in units of ``unit`` = 16 A, zero centre of mass,
random rotation from the data sampler) the trunk runs ONCE per crop and the diffusion module sees ``K =
diffusion_samples`` independently rotated and noised copies of each crop (AF3 trains with 48
per trunk run, Suppl. sec. 3.7.1; here 4 by default):

    sigma = sigma_data exp(p_mean + p_std n),  n ~ N(0, 1)       (AF3: -1.2, 1.5, sigma_data = 16 A)
    x_t   = R_k x0 + sigma eps                                     (zero-CoM eps, masked)
    L     = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 * mean_i |x0^_i - x0_i^aligned|^2
            + lddt_weight * (1 - smooth_lDDT(x0^, x0))
    (+ bond_weight * w * mean_i (|x0^_{i+1} - x0^_i| - |x0_{i+1} - x0_i|)^2 inside the weighted term)

with ``x0_i^aligned`` the ground truth rigidly superposed on the (detached) prediction, as
AF3's weighted rigid alignment (``align=True``; the MSE is then invariant to a global rotation
of the prediction), and the smooth lDDT of Alg. 27 (pairs with true CA-CA distance < 15 A,
``0.25 sum_c sigmoid(c - |d^ - d|)``, ``c in {0.5, 1, 2, 4}``). The weighting is EDM's
(Karras et al. 2022, Table 1), which the supplement's eq. 6 writes with ``(sigma +
sigma_data)^2`` in the denominator; we use the EDM form. The loss per crop is the mean over its
``K`` copies (one value per batch element, as the shared training loop needs).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from workbench.losses import Batch, tree_map
from workbench.processes import GaussianProcess, append_dims
from workbench.utils import Generator, first_generator

LDDT_CUTOFF = 15.0
LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def random_rotations(n: int, generator: Optional[torch.Generator] = None, dtype=torch.float32) -> Tensor:
    """``n`` rotation matrices ``[n, 3, 3]`` uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(n, 3, 3)
    return R.to(dtype)


def rigid_align(mobile: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Superpose ``mobile`` ``[B, N, 3]`` onto ``target`` (Kabsch, masked, no reflection) and
    return the moved ``mobile`` (zero padding). Gradients are not propagated through the
    rotation (AF3 Alg. 28 uses a stop-gradient alignment)."""
    m = mask.to(mobile.dtype)[..., None]
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    mc = (mobile * m).sum(1, keepdim=True) / n
    tc = (target * m).sum(1, keepdim=True) / n
    P, Q = (mobile - mc) * m, (target - tc) * m
    with torch.no_grad():
        H = (P.transpose(1, 2) @ Q).double()  # [B, 3, 3]
        U, _, Vh = torch.linalg.svd(H)
        d = torch.sign(torch.linalg.det(Vh.transpose(1, 2) @ U.transpose(1, 2)))
        D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
        R = (Vh.transpose(1, 2) @ D @ U.transpose(1, 2)).to(mobile.dtype)  # maps P onto Q
    return ((P @ R.transpose(1, 2)) + tc) * m


def smooth_lddt(pred: Tensor, true: Tensor, mask: Tensor, cutoff: float = LDDT_CUTOFF) -> Tensor:
    """Smooth CA-lDDT (AF3 Suppl. Alg. 27) per sample ``[B]`` of ``pred``, ``true`` ``[B, N, 3]``."""
    dp = torch.cdist(pred, pred)
    dt = torch.cdist(true, true)
    m = mask.to(pred.dtype)
    pair = m[:, :, None] * m[:, None, :] * (dt < cutoff).to(pred.dtype)
    pair = pair * (1 - torch.eye(pred.shape[1], dtype=pred.dtype, device=pred.device))
    diff = (dp - dt).abs()
    eps = sum(0.25 * torch.sigmoid(c - diff) for c in LDDT_THRESHOLDS)
    return (eps * pair).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1.0)


class StructureDiffusionLoss:
    """AF3 diffusion loss (see the module docstring) for a :class:`~workbench.model.Denoiser`
    around a :class:`~domains.structure_prediction.network.StructureBackbone`.

    Args:
        process: the domain's VE process (``sigma(t) = sigma_max t``, zero CoM).
        sigma_data: EDM / AF3 ``sigma_data`` in state units (1: the domain's states are in units
            of AF3's 16 A).
        unit: Angstrom per state unit (the smooth lDDT's 15 A radius and 0.5-4 A thresholds).
        p_mean, p_std: log-normal noise-level distribution (AF3: -1.2, 1.5).
        diffusion_samples: noisy copies per crop per trunk run (``K >= 1``).
        lddt_weight: weight of the smooth-lDDT term (AF3: 1; 0 disables it).
        bond_weight: weight of the CA-CA bond term inside the weighted MSE (AF3 eq. 6 ``alpha_bond``:
            0 in the initial training stage, 1 in fine-tuning).
        align: align the ground truth to the prediction before the MSE (AF3: yes).
    """

    def __init__(self, process: GaussianProcess, *, sigma_data: float = 1.0, unit: float = 16.0, p_mean: float = -1.2, p_std: float = 1.5,
                 diffusion_samples: int = 4, lddt_weight: float = 1.0, align: bool = True, bond_weight: float = 0.0):
        if int(diffusion_samples) != diffusion_samples or diffusion_samples < 1:
            raise ValueError(f"diffusion_samples must be a positive integer, got {diffusion_samples!r}")
        if not (sigma_data > 0 and p_std > 0 and lddt_weight >= 0 and bond_weight >= 0):
            raise ValueError(f"need sigma_data > 0, p_std > 0, lddt_weight >= 0 and bond_weight >= 0, got {sigma_data}, {p_std}, {lddt_weight}, {bond_weight}")
        self.process = process
        self.prediction = "x0"
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
        self.K = int(diffusion_samples)
        self.lddt_weight = float(lddt_weight)
        self.align = bool(align)
        self.unit = float(unit)
        self.bond_weight = float(bond_weight)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        net = nets["model"] if isinstance(nets, (dict, torch.nn.ModuleDict)) else nets
        g = first_generator(generator)
        x0, B, K = batch.x, batch.x.shape[0], self.K
        mask = batch.mask if batch.mask is not None else torch.ones(x0.shape[:2], dtype=x0.dtype, device=x0.device)
        cond = net.prepare_cond(batch.cond, mask=mask, batch_size=B)  # the trunk, once per crop (with gradients)
        rep = lambda v: v.repeat_interleave(K, dim=0)  # noqa: E731
        cond = tree_map(rep, cond)
        maskK = rep(mask)
        R = random_rotations(B * K, g, dtype=x0.dtype).to(x0.device)
        xK = self.process.project(rep(x0) @ R.transpose(1, 2), maskK)
        z = torch.randn(B * K, generator=g, dtype=torch.float64)
        sigma = self.sigma_data * torch.exp(self.p_mean + self.p_std * z)
        t = self.process.t_of_lambda(-torch.log(sigma)).clamp(1e-12, 1.0).to(x0.device)
        sigma = torch.exp(-self.process.lambda_(t))  # exact level of the (clamped) time
        eps = self.process.project(torch.randn(xK.shape, generator=g, dtype=x0.dtype).to(x0.device), maskK)
        x_t = self.process.add_noise(xK, t, eps, maskK)
        x0_hat = net(x_t, t.to(x0.dtype), mask=maskK, cond=cond)
        target = rigid_align(xK, x0_hat.detach(), maskK) if self.align else xK
        w = ((sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2).to(x0.dtype)
        m3 = append_dims(maskK, 3)
        mse = (((x0_hat - target) ** 2) * m3).sum((1, 2)) / (3 * maskK.sum(1).clamp_min(1.0))
        if self.bond_weight > 0:  # CA-CA virtual bonds of consecutive residues (AF3 eq. 5 bond loss, here for CA i, i+1)
            ri = batch.cond.get("residue_index") if isinstance(batch.cond, dict) else None
            pair = maskK[:, 1:] * maskK[:, :-1]
            if ri is not None:
                pair = pair * (rep(ri)[:, 1:] - rep(ri)[:, :-1] == 1).to(pair.dtype)
            d_hat = (x0_hat[:, 1:] - x0_hat[:, :-1]).norm(dim=-1)
            d_true = (xK[:, 1:] - xK[:, :-1]).norm(dim=-1)
            mse = mse + self.bond_weight * (((d_hat - d_true) ** 2) * pair).sum(1) / pair.sum(1).clamp_min(1.0)
        loss = w * mse
        if self.lddt_weight > 0:
            loss = loss + self.lddt_weight * (1.0 - smooth_lddt(x0_hat * self.unit, xK * self.unit, maskK))
        return loss.view(B, K).mean(1)

    def __repr__(self) -> str:
        return (f"StructureDiffusionLoss(sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}, "
                f"diffusion_samples={self.K}, lddt_weight={self.lddt_weight}, align={self.align}, bond_weight={self.bond_weight})")


__all__ = ["StructureDiffusionLoss", "random_rotations", "rigid_align", "smooth_lddt"]
