"""Processes: schedules against independent formulas and diffusers, conversions, projection."""
import math

import pytest
import torch

from workbench.processes import (VE, PREDICTIONS, RectifiedFlow, VPCosine, VPDiscrete, VPLinear, from_diffusers,
                                 project)

PROCS = [VPLinear(), VPCosine(), VE(), RectifiedFlow(), from_diffusers({"beta_schedule": "linear"})]
T = torch.tensor([0.002, 0.05, 0.3, 0.6, 0.9, 0.98], dtype=torch.float64)


@pytest.mark.parametrize("p", PROCS, ids=lambda p: type(p).__name__)
def test_schedule_basics(p):
    a, s, lam = p.alpha(T), p.sigma(T), p.lambda_(T)
    assert torch.allclose(lam, torch.log(a / s))
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"
    assert float(p.sigma(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert torch.allclose(p.t_of_lambda(lam), T, atol=1e-9)
    if not isinstance(p, (VE, RectifiedFlow)):
        assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12), "VP must preserve variance"


@pytest.mark.parametrize("p", PROCS, ids=lambda p: type(p).__name__)
def test_derivatives_match_finite_differences(p):
    t = T + 3.7e-4  # off the knots of the piecewise-linear discrete schedule
    da, ds = p.d_alpha_sigma(t)
    h = 1e-7
    assert torch.allclose(da, (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ds, (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-4, atol=1e-6)


def test_closed_forms():
    t = T
    vp = VPLinear(0.1, 20.0)
    la = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    assert torch.allclose(vp.alpha(t), torch.exp(la))
    cos = VPCosine(0.008)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2)  # noqa: E731
    assert torch.allclose(cos.alpha(t), f(t) / f(torch.zeros(1, dtype=torch.float64)))
    ve = VE(0.002, 80.0)
    assert torch.allclose(ve.sigma(t), 80.0 * t) and torch.allclose(ve.alpha(t), torch.ones_like(t))
    rf = RectifiedFlow()
    assert torch.allclose(rf.alpha(t), 1 - t) and torch.allclose(rf.sigma(t), t)


@pytest.mark.parametrize("p", PROCS, ids=lambda p: type(p).__name__)
def test_prediction_conversions_round_trip_and_agree_with_definitions(p):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = T
    xt = p.add_noise(x0, t, eps)
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    da, ds = p.d_alpha_sigma(t)
    truth = {"x0": x0, "epsilon": eps, "v": a * eps - s * x0, "velocity": da[:, None] * x0 + ds[:, None] * eps, "score": -eps / s}
    for name in PREDICTIONS:
        assert torch.allclose(p.from_x0_eps(x0, eps, name, xt, t), truth[name], atol=1e-9)
        for other in PREDICTIONS:
            got = p.convert(truth[name], name, other, xt, t)
            assert torch.allclose(got, truth[other], rtol=1e-7, atol=1e-7), (name, other)


@pytest.mark.parametrize("schedule,kw", [("linear", {}), ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
                                         ("squaredcos_cap_v2", {})])
def test_from_diffusers_matches_diffusers_alphas(schedule, kw):
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(beta_schedule=schedule, prediction_type="v_prediction", **kw)
    p = from_diffusers(sch.config)
    assert isinstance(p, VPDiscrete) and p.prediction == "v"
    i = torch.arange(1000)
    t = p.t_of_timestep(i)
    assert torch.allclose(p.alpha(t) ** 2, sch.alphas_cumprod.double(), rtol=1e-5)
    assert torch.allclose(p.timestep(t), i.double())
    # x_t built by the process equals diffusers' add_noise at every integer timestep
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ts = torch.tensor([0, 10, 500, 999])
    ours = p.add_noise(x0.double(), p.t_of_timestep(ts), eps.double())
    assert torch.allclose(ours.float(), sch.add_noise(x0, eps, ts), atol=1e-5)
    # and the v target equals diffusers' get_velocity
    v = p.from_x0_eps(x0.double(), eps.double(), "v", ours, p.t_of_timestep(ts))
    assert torch.allclose(v.float(), sch.get_velocity(x0, eps, ts), atol=1e-5)


def test_from_diffusers_errors():
    with pytest.raises(ValueError, match="beta_schedule"):
        from_diffusers({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="valid"):
        from_diffusers({"prediction_type": "banana"})


def test_project_masks_and_centres():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 3, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.float32)
    y = project(x, mask, zero_com=True)
    assert torch.equal(y[mask == 0], torch.zeros_like(y[mask == 0]))
    com = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-6
    assert torch.allclose(project(y, mask, zero_com=True), y, atol=1e-6), "projection must be idempotent"
    with pytest.raises(ValueError, match="mask shape"):
        project(x, mask[:, :5], zero_com=True)


def test_project_centres_only_the_leading_channels_with_com_dims():
    """A product state ``[positions (3), features]`` (EDM's ``[x, h]``): ``com_dims=3`` centres
    the positions and leaves the features as they are; the process carries it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g) + 3.0
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.float32)
    y = project(x, mask, zero_com=True, com_dims=3)
    com = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com[:, :3].abs().max() < 1e-6 and com[:, 3:].abs().min() > 1.0
    assert torch.equal(y[..., 3:], x[..., 3:] * mask[..., None])
    p = VPLinear(zero_com=True, com_dims=3)
    assert torch.equal(p.project(x, mask), y)
    with pytest.raises(ValueError, match="com_dims=9 needs a state"):
        project(x, mask, zero_com=True, com_dims=9)
    with pytest.raises(ValueError, match="com_dims must be a positive integer"):
        VPLinear(zero_com=True, com_dims=0)


def test_prior_is_projected_and_per_sample_reproducible():
    p = VPLinear(zero_com=True)
    mask = torch.ones(4, 6)
    mask[2, 3:] = 0
    gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    x = p.prior((4, 6, 3), generator=gens, mask=mask)
    assert torch.equal(x[2, 3:], torch.zeros(3, 3))
    x2 = p.prior((2, 6, 3), generator=[torch.Generator().manual_seed(10 + i) for i in range(2)], mask=mask[:2])
    assert torch.allclose(x[:2], x2)
    ve = VE()
    assert abs(ve.prior_std() - 80.0) < 1e-9
