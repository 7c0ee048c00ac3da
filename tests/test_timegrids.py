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


@pytest.mark.parametrize("steps", [1, 3, 20, 64])
def test_time_quadratic_is_dpm_solvers_spacing_with_a_clean_end(steps):
    """DPM-Solver's official ``get_time_steps(skip_type='time_quadratic')``:
    ``linspace(t_T ** 0.5, t_0 ** 0.5, N + 1) ** 2`` with t_T = 1, t_0 = t_min; the workbench
    moves the last point (t_0) to the clean end 0."""
    p = from_diffusers({})
    t = timegrids.time_quadratic(p, steps)
    t_0 = 1.0 / 1000
    official = [(1.0 + i / steps * (t_0**0.5 - 1.0)) ** 2 for i in range(steps + 1)]
    assert torch.allclose(t[:-1], torch.tensor(official[:-1], dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(t[-1]) == 0.0 and float(t[0]) == 1.0
    assert float(t[:-1].min()) >= t_0  # every model call stays inside the trained range
    with pytest.raises(ValueError, match="t_end"):
        timegrids.time_quadratic(p, 3, t_start=0.5, t_end=0.6)


def test_discrete_vp_default_grid_has_a_short_last_interval():
    """Diffusers-style VP processes default to ``time_quadratic``: the last interval before the
    clean end shrinks like 1 / steps^2 (``uniform_t``'s like 1 / steps)."""
    p = from_diffusers({})
    assert p.default_grid == "time_quadratic"
    for n in (10, 20, 50):
        assert float(timegrids.default_grid(p, n)[-2]) < 0.5 * float(timegrids.uniform_t(p, n)[-2])


def test_cosine_diffusers_config_keeps_the_uniform_grid():
    assert from_diffusers({"beta_schedule": "squaredcos_cap_v2"}).default_grid == "uniform_t"
    assert from_diffusers({"beta_schedule": "scaled_linear"}).default_grid == "time_quadratic"
