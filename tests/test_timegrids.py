import pytest
import torch

from workbench import timegrids
from workbench.processes import VE, RectifiedFlow, VPCosine, VPLinear, from_diffusers

PROCS = [VPLinear(), VPCosine(), VE(), RectifiedFlow(), from_diffusers({})]


@pytest.mark.parametrize("p", PROCS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("name", timegrids.available())
@pytest.mark.parametrize("steps", [1, 2, 5, 17])
def test_grids_are_decreasing_and_end_clean(p, name, steps):
    t = timegrids.get_grid(name, p, steps)
    assert t.dtype == torch.float64 and t.shape == (steps + 1,)
    assert float(t[0]) == 1.0 and float(t[-1]) == 0.0
    assert bool((t[1:] < t[:-1]).all())


def test_uniform_lambda_is_uniform_in_lambda():
    p = VPLinear()
    t = timegrids.uniform_lambda(p, 6)
    lam = p.lambda_(t[:-1])
    d = lam[1:] - lam[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9)
    assert abs(float(t[-2]) - p.t_min) < 1e-12


def test_edm_matches_karras_formula():
    p = VE(0.002, 80.0)
    t = timegrids.edm(p, 4, rho=7.0)
    i = torch.arange(4, dtype=torch.float64) / 3
    sig = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(p.sigma(t[:-1]), sig)


def test_flow_shift_and_quadratic():
    p = RectifiedFlow()
    t = timegrids.flow_shift(p, 4, shift=3.0)
    u = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(t, 3 * u / (1 + 2 * u))
    q = timegrids.quadratic(p, 4)
    assert torch.allclose(q, u**2)


def test_custom_and_errors():
    assert torch.equal(timegrids.custom([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="decreasing"):
        timegrids.custom([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        timegrids.custom([2.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="valid: edm"):
        timegrids.get_grid("nope", VPLinear(), 3)
    with pytest.raises(ValueError, match="positive integer"):
        timegrids.uniform_t(VPLinear(), 0)
