"""The protein_backbone teacher's auxiliary local-distance loss (FrameDiff's L_2D on CA atoms,
gated to low noise, scaled like the velocity loss): checked against a direct re-derivation."""
import itertools

import pytest
import torch

from domains.protein_backbone.objective import SelfCondFlowLoss
from workbench.processes import RectifiedFlow


def l2d_reference(x_hat, x, mask, cutoff):
    """Loop form of FrameDiff's L_2D for one chain: mean of (d_hat - d)^2 over ordered pairs
    i != j of real residues with true distance < cutoff."""
    num, den = 0.0, 0
    n = int(mask.sum())
    for i, j in itertools.product(range(n), range(n)):
        if i == j:
            continue
        d = float((x[i] - x[j]).norm())
        if d < cutoff:
            num += (float((x_hat[i] - x_hat[j]).norm()) - d) ** 2
            den += 1
    return num / max(den, 1)


def test_local_distance_loss_matches_the_loop_form_and_its_gate():
    g = torch.Generator().manual_seed(0)
    B, N = 3, 12
    x = torch.cumsum(torch.randn(B, N, 3, generator=g, dtype=torch.float64) * 0.22, dim=1)  # ~0.38 nm steps
    x_hat = x + 0.03 * torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(B, N, dtype=torch.float64)
    mask[1, 9:] = 0  # padding never counts
    loss = SelfCondFlowLoss(RectifiedFlow(), "velocity", local_distance_weight=1.0)
    t = torch.tensor([0.02, 0.1, 0.5], dtype=torch.float64)
    got = loss.local_distance_loss(x_hat, x, t, mask)
    for b in range(B):
        want = l2d_reference(x_hat[b], x[b], mask[b], 0.6)
        w = 0.0 if t[b] >= 0.25 else 1.0 / max(float(t[b]), 0.05) ** 2
        assert float(got[b]) == pytest.approx(w * want, rel=1e-9, abs=1e-12)
    assert float(got[2]) == 0.0 and float(got[0]) > 0  # t >= t_max: off
    # padded residues moved arbitrarily change nothing
    x_hat2 = x_hat.clone()
    x_hat2[1, 9:] += 5.0
    assert torch.allclose(loss.local_distance_loss(x_hat2, x, t, mask), got)
    # exact prediction: zero
    assert torch.all(loss.local_distance_loss(x, x, t, mask) == 0)


def test_local_distance_term_is_added_to_the_flow_loss_and_off_by_default():
    from domains.protein_backbone.domain import ProteinBackboneDomain

    assert ProteinBackboneDomain().objective().local_distance_weight == 0.0
    assert ProteinBackboneDomain(local_distance_weight=1.0).objective().local_distance_weight == 1.0
    with pytest.raises(ValueError, match="local_distance_weight"):
        SelfCondFlowLoss(RectifiedFlow(), "velocity", local_distance_weight=-1.0)
