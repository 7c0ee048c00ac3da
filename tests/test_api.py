"""The public sampling API and its error messages."""
import pytest
import torch

import workbench
from workbench.processes import VPLinear, from_diffusers

NAMES = workbench.samplers.available()


def test_every_sampler_file_registers_and_the_registry_refuses_duplicates():
    """Discovery: each public module of ``workbench/samplers`` registers at least one sampler,
    every registered function lives in one of them, and a second registration of a name fails
    (so a new file cannot silently replace an existing sampler)."""
    import pkgutil

    from workbench.samplers import REGISTRY, SAMPLERS, register

    mods = {f"workbench.samplers.{m.name}" for m in pkgutil.iter_modules(workbench.samplers.__path__)
            if m.name != "base" and not m.name.startswith("_")}
    owners = {spec.fn.__module__ for spec in REGISTRY.values()}  # continuous and discrete samplers: one registry
    assert owners == mods
    assert all(spec.name == name and spec.nfe(3) >= 3 for name, spec in REGISTRY.items())
    with pytest.raises(ValueError, match="euler"):
        register("euler")(lambda mf, x, ts: x)
    assert SAMPLERS["euler"].fn.__module__ == "workbench.samplers.euler"


def gauss_x0(m=0.5, s=0.7, p=None):
    """Exact x0-denoiser of data N(m, s^2 I) under process p."""
    def model(x, t, **kw):
        a = p.alpha(t.double()).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        sg = p.sigma(t.double()).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return m + a * s**2 / (a**2 * s**2 + sg**2) * (x - a * m)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_counts_nfe_exactly_and_returns_finite(name):
    p = VPLinear()
    spec = workbench.samplers.get(name)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    extra = {"reward": lambda x, mask=None: x[:, 0].double()} if "reward" in spec.needs else {}  # reward-guided samplers
    for steps in (1, 2, 5):
        out = workbench.run_sampler(gauss_x0(p=p), p, x, sampler=name, steps=steps, prediction="x0",
                                    generator=torch.Generator().manual_seed(1), **extra)
        assert out.nfe == spec.nfe(steps), (name, steps)
        assert out.x.shape == x.shape and bool(torch.isfinite(out.x).all())


def test_default_sampler_and_grid():
    p = from_diffusers({})
    x = torch.randn(4, 2)
    out = workbench.run_sampler(gauss_x0(p=p), p, x, prediction="x0")
    assert out.sampler == "dpm_solver_pp_2m" and out.nfe == 5
    assert float(out.timesteps[0]) == 1.0 and float(out.timesteps[-1]) == 0.0


def test_bad_input_errors():
    p = VPLinear()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="unknown sampler 'nope'; valid: .*euler"):
        workbench.sample(gauss_x0(p=p), p, x, sampler="nope")
    with pytest.raises(ValueError, match="unknown option.*'bogus'.*valid: eta"):
        workbench.sample(gauss_x0(p=p), p, x, sampler="euler", bogus=1)
    with pytest.raises(ValueError, match=r"model returned shape \(4, 3\)"):
        workbench.sample(lambda x, t: torch.zeros(4, 3), p, x, sampler="euler")
    with pytest.raises(FloatingPointError, match="NaN/Inf at t=1"):
        workbench.sample(lambda x, t: torch.full_like(x, float("nan")), p, x, sampler="euler")
    with pytest.raises(ValueError, match="unknown prediction type 'eps2'"):
        workbench.sample(gauss_x0(p=p), p, x, prediction="eps2")
    with pytest.raises(ValueError, match=r"mask must have shape \[B, N\]"):
        workbench.sample(gauss_x0(p=p), p, torch.randn(4, 5, 3), mask=torch.ones(4, 6))
    with pytest.raises(TypeError, match="continuous Gaussian process"):
        workbench.sample(gauss_x0(p=p), object(), x)


def test_sample_i_depends_only_on_seed_i():
    p = VPLinear()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    a = workbench.sample(gauss_x0(p=p), p, x, sampler="euler", steps=4, eta=1.0, generator=gens(range(6)))
    b = workbench.sample(gauss_x0(p=p), p, x[2:4], sampler="euler", steps=4, eta=1.0, generator=gens(range(2, 4)))
    assert torch.allclose(a[2:4], b)


def test_ddim_converges_to_closed_form_ode_solution_at_first_order():
    """Data N(m, s^2): the PF-ODE solution is x_t = a_t m + sqrt(a_t^2 s^2 + sigma_t^2) z with
    z = (x_1 - a_1 m) / sqrt(a_1^2 s^2 + sigma_1^2). DDIM must converge to it at order 1."""
    p = VPLinear()
    m, s = 0.5, 0.7
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t_end = 1e-3
    f = lambda t: torch.tensor(t, dtype=torch.float64)  # noqa: E731
    a1, s1, ae, se = p.alpha(f(1.0)), p.sigma(f(1.0)), p.alpha(f(t_end)), p.sigma(f(t_end))
    exact = ae * m + torch.sqrt(ae**2 * s**2 + se**2) * (x1 - a1 * m) / torch.sqrt(a1**2 * s**2 + s1**2)
    errs = []
    for steps in (50, 100, 200):
        ts = workbench.timegrids.uniform_lambda(p, steps, t_end=t_end)[:-1]  # stop at t_end, no final jump
        got = workbench.sample(gauss_x0(m, s, p), p, x1, sampler="euler", timesteps=ts, prediction="x0")
        errs.append(float((got - exact).abs().max()))
    assert errs[-1] < 0.05, errs
    assert 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3, errs
