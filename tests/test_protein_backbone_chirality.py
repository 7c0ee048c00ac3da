"""Chirality of the protein_backbone network (issue: a denoiser that cannot tell a protein from
its mirror image can never prefer right-handed helices).

* the residue frames are right-handed orthonormal, rotate with the input, and their third axis
  is a pseudo-vector (unchanged under x -> -x);
* with the raw-coordinate embeddings and the linear read-out switched off, the non-chiral
  network is exactly E(3)-equivariant (f(-x) = -f(x): it cannot prefer a hand), while the chiral
  one stays rotation-equivariant but NOT reflection-equivariant;
* the chiral maps start at zero: a non-chiral checkpoint loads into the chiral network as the
  same function (fine-tuning starts from it);
* the mirror test tells a reflection-symmetric model (equal errors) from a chiral one, and the
  shipped teacher denoises native chains better than their mirror images.
"""
from __future__ import annotations

import pytest
import torch

from domains.protein_backbone import ProteinBackboneDomain
from domains.protein_backbone.mirror import mirror_test, natives_batch
from domains.protein_backbone.nets import TINY_NET, ProteinTransformer, local_frames
from domains.proteins.geometry import random_rotation
from workbench.losses import Batch
from workbench.processes import RectifiedFlow

torch.set_num_threads(1)


def _helixish(B=2, N=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(N, dtype=torch.float64)
    x = torch.stack([0.23 * torch.cos(1.75 * i), 0.23 * torch.sin(1.75 * i), 0.15 * i], -1)  # an alpha-helix-like trace (nm)
    x = x[None].repeat(B, 1, 1) + 0.05 * torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    mask = torch.ones(B, N, dtype=torch.float64)
    mask[1, N - 3:] = 0
    return (x * mask[..., None]).float(), mask.float()


def test_frames_are_right_handed_rotate_and_e3_is_a_pseudovector():
    x, mask = _helixish()
    F = local_frames(x, mask)
    real = mask > 0.5
    eye = torch.eye(3).expand(int(real.sum()), 3, 3)
    assert torch.allclose(F[real] @ F[real].transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(F[real]), torch.ones(int(real.sum())), atol=1e-5)
    assert F[~real].abs().max() == 0
    R = random_rotation(torch.Generator().manual_seed(1)).float()
    FR = local_frames(x @ R.T, mask)
    assert torch.allclose(FR[real], F[real] @ R.T, atol=1e-5)  # rows e_a -> R e_a
    Fm = local_frames(-x, mask)
    assert torch.allclose(Fm[real][:, :2], -F[real][:, :2], atol=1e-5)
    assert torch.allclose(Fm[real][:, 2], F[real][:, 2], atol=1e-5)


def _invariant_only(chiral: bool, seed=0, prediction="velocity") -> ProteinTransformer:
    """A tiny network whose raw-coordinate embeddings and linear read-out are zero, so its output
    comes from invariant features + the relative head (+ the chiral maps, randomised)."""
    torch.manual_seed(seed)
    net = ProteinTransformer(**TINY_NET, coord_head="relative", chiral=chiral, prediction=prediction).eval()
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for lin in (net.embed_x, net.embed_sc, net.out):
            lin.weight.zero_()
        for prm in net.rel_head.out.parameters():
            prm.copy_(0.5 * torch.randn(prm.shape, generator=g))
        if chiral:
            for lin in (net.embed_local, net.pair_dir, net.frame_out):
                lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=g))
    return net


def test_chiral_network_is_rotation_but_not_reflection_equivariant():
    x, mask = _helixish()
    t = torch.tensor([0.2, 0.6])
    R = random_rotation(torch.Generator().manual_seed(3)).float()
    with torch.no_grad():
        sym = _invariant_only(False)
        f, fm = sym(x, t, mask), sym(-x, t, mask)
        assert torch.allclose(fm, -f, atol=1e-5)  # E(3): blind to handedness
        chi = _invariant_only(True)
        f, fm, fr = chi(x, t, mask), chi(-x, t, mask), chi(x @ R.T, t, mask)
    assert torch.allclose(fr, f @ R.T, atol=1e-4)  # still rotation-equivariant
    assert (fm + f).norm() > 0.1 * f.norm()  # f(-x) != -f(x): it can tell a hand


def test_chiral_maps_start_at_zero_so_a_nonchiral_checkpoint_is_the_same_function():
    torch.manual_seed(0)
    plain = ProteinTransformer(**TINY_NET, coord_head="relative", chiral=False).eval()
    chi = ProteinTransformer(**TINY_NET, coord_head="relative", chiral=True).eval()
    missing = chi.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["embed_local.bias", "embed_local.weight", "frame_out.weight", "pair_dir.weight"]
    x, mask = _helixish()
    with torch.no_grad():
        assert torch.equal(chi(x, torch.tensor([0.3, 0.3]), mask), plain(x, torch.tensor([0.3, 0.3]), mask))


class _Reflect(torch.nn.Module):
    """x0 'denoiser' pulling toward a fixed chiral template: prefers one hand by construction."""

    prediction = "x0"

    def __init__(self, template):
        super().__init__()
        self.template = template

    def forward(self, x, t, mask=None, cond=None):
        return 0.5 * x + 0.5 * self.template


def test_mirror_test_tells_symmetric_from_chiral_models():
    x, mask = _helixish(B=2)
    batch = Batch(x=x, mask=mask)
    proc = RectifiedFlow(zero_com=True)
    sym = _invariant_only(False, prediction="x0")
    r = mirror_test(sym, proc, batch, times=(0.2, 0.5))
    assert all(abs(g) < 1e-4 for g in r["gap"])  # E(3)-equivariant: identical errors
    chiral = _Reflect(x)
    r = mirror_test(chiral, proc, batch, times=(0.2, 0.5))
    assert all(g > 0.1 for g in r["gap"]) and r["native_better_fraction"] == [1.0, 1.0]


@pytest.mark.slow
def test_shipped_teacher_denoises_natives_better_than_their_mirror_images():
    dom = ProteinBackboneDomain()
    net = dom.load_teacher()
    chains = (dom.chains("val") + dom.chains("test"))[:16]
    r = mirror_test(net, dom.process(), natives_batch(chains, n_max=128), times=(0.1, 0.3))
    assert all(g > 0 for g in r["gap"]), r
    assert all(f > 0.5 for f in r["native_better_fraction"]), r
