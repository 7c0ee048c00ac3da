"""The mirror test: does a backbone denoiser prefer natural proteins over their mirror images?

Natural proteins are chiral (right-handed alpha-helices, left-handed beta-sheet twist); their
mirror images (``x -> -x``) are not proteins. A denoiser that cannot tell the two apart (one
whose inputs and updates are all reflection-invariant / -equivariant, e.g. pair distances plus
an E(n)-style update along difference vectors) denoises both equally well and samples helices
of either hand. This diagnostic noises each native chain and its exact mirror image with the
SAME (mirrored) noise at a few flow times and compares the x0 errors::

    x_t = (1 - t) x0 + t eps,     x_t' = (1 - t)(-x0) + t(-eps) = -x_t
    err(x0) = RMS_i |x0_hat_i - x0_i|           (Angstrom, real residues)

A chiral model that learned natural proteins has ``err(native) < err(mirror)``, most clearly at
low and intermediate noise; a reflection-symmetric model has equal errors (to float noise).
Each call is one self-conditioned evaluation as in training (a first pass without
self-conditioning, its x0 estimate fed back as ``cond["x_sc"]``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from workbench.losses import Batch

#: the default flow times of the test (t = 0 data, t = 1 noise)
MIRROR_TIMES = (0.1, 0.3, 0.5, 0.7)


def _x0(net, process, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pred = getattr(net, "prediction", "velocity")
    first = net(x_t, t, mask=mask, cond={})
    x_sc = process.convert(first, pred, "x0", x_t, t.double())
    out = net(x_t, t, mask=mask, cond={"x_sc": x_sc})
    return process.convert(out, pred, "x0", x_t, t.double())


@torch.no_grad()
def mirror_test(net, process, batch: Batch, *, times: Sequence[float] = MIRROR_TIMES, seed: int = 0,
                unit: float = 0.1) -> dict:
    """x0 errors of ``net`` on native chains and their mirror images.

    Args:
        net: a denoiser ``net(x [B, N, 3], t [B], mask=, cond=)`` with a ``prediction`` attribute
            (the domain's :class:`~workbench.model.Denoiser`).
        process: the domain's process (``add_noise``, ``project``, ``convert``).
        batch: natives, ``x [B, N, 3]`` in model units, zero CoM, ``mask [B, N]``.
        times: flow times to test.
        unit: Angstrom per model unit is ``1 / unit`` (nm: 0.1); errors are reported in A.

    Returns:
        ``{"times": [...], "native_rmsd": [...], "mirror_rmsd": [...], "native_better_fraction":
        [...] (per-chain fraction with the lower native error), "gap": [...] (mirror - native, A)}``.
    """
    x0, mask = batch.x, batch.mask
    B = x0.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    res = {"times": [float(t) for t in times], "native_rmsd": [], "mirror_rmsd": [], "native_better_fraction": [], "gap": []}
    m = mask[..., None]
    n_real = mask.sum(1).clamp_min(1.0)
    for t in times:
        eps = process.project(torch.randn(x0.shape, generator=g, dtype=x0.dtype), mask)
        tt = torch.full((B,), float(t), dtype=x0.dtype)
        errs = []
        for sign in (1.0, -1.0):
            xs = sign * x0
            x_t = process.add_noise(xs, tt.double(), sign * eps, mask)
            est = _x0(net, process, x_t, tt, mask)
            per = (((est - xs) ** 2 * m).sum((1, 2)) / n_real).sqrt() / unit  # [B] A
            errs.append(per)
        nat, mir = errs
        res["native_rmsd"].append(float(((nat ** 2).mean()).sqrt()))
        res["mirror_rmsd"].append(float(((mir ** 2).mean()).sqrt()))
        res["native_better_fraction"].append(float((nat < mir).double().mean()))
        res["gap"].append(res["mirror_rmsd"][-1] - res["native_rmsd"][-1])
    return res


def natives_batch(chains, *, n_max: Optional[int] = None, scale: float = 0.1) -> Batch:
    """Whole chains (cropped to their first ``n_max`` residues) as a centred, unrotated, padded
    batch in model units (``scale`` per Angstrom)."""
    L = [len(c) if n_max is None else min(len(c), int(n_max)) for c in chains]
    N = max(L)
    x = torch.zeros(len(chains), N, 3)
    mask = torch.zeros(len(chains), N)
    for b, (c, n) in enumerate(zip(chains, L)):
        ca = np.asarray(c.ca[:n], dtype=np.float64)
        ca = ca - ca.mean(0)
        x[b, :n] = torch.from_numpy(ca * scale).float()
        mask[b, :n] = 1.0
    return Batch(x=x, mask=mask)
