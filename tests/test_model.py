import pytest
import torch
from torch import nn

from workbench.model import Denoiser, time_input
from workbench.processes import VE, VPLinear, from_diffusers


class Zero(nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x)


class Echo(nn.Module):
    """Returns its time input broadcast, to inspect the time map."""

    def forward(self, x, t, **kw):
        return t.view(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()


def test_edm_preconditioning_matches_karras_table1():
    p = VE(0.002, 80.0)
    d = Denoiser(Zero(), p, precond="edm", sigma_data=0.5)
    assert d.prediction == "x0"
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    sig = 80.0 * t
    c_skip = 0.25 / (sig**2 + 0.25)
    assert torch.allclose(d(x, t), c_skip[:, None] * x)
    e = Denoiser(Echo(), p, precond="edm", sigma_data=0.5)
    c_out = sig * 0.5 / torch.sqrt(sig**2 + 0.25)
    assert torch.allclose(e(x, t) - c_skip[:, None] * x, c_out[:, None] * (0.25 * torch.log(sig))[:, None])


def test_time_maps():
    p = from_diffusers({})
    t = p.t_of_timestep(torch.tensor([0, 499, 999]))
    assert torch.allclose(time_input(p, t, "diffusers"), torch.tensor([0.0, 499.0, 999.0], dtype=torch.float64))
    assert torch.allclose(time_input(VPLinear(), t, "scaled"), 1000 * t)
    with pytest.raises(ValueError, match="needs a VPDiscrete"):
        time_input(VPLinear(), t, "diffusers")
    with pytest.raises(ValueError, match="valid: identity"):
        Denoiser(Zero(), p, time_map="bogus")


def test_shape_errors_and_masking():
    d = Denoiser(Echo(), VPLinear(zero_com=True), "epsilon")
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        d(x, torch.rand(3))
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    out = d(x, torch.rand(2), mask=mask)
    assert torch.equal(out[1, 3:], torch.zeros(2, 3))
    assert (out * mask[..., None]).sum(1).abs().max() < 1e-5
