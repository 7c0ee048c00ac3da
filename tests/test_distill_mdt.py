"""MDT-dist (Zhou et al. 2025): conformance on the toy domains; the default VM loss and VD
gradient equal the official ``FlowMDTTrainer`` formulas (Zanue/MDT-dist,
flow_matching_mdt.py, ``distill_type="discrete"``) re-derived here; ground truths of the two
terms: velocity matching vanishes when the student is the marginal-data transport (exactly
for straight teacher trajectories, where that transport is the teacher itself; to second
order in the finite-difference step for Gaussian data), and velocity distillation has the
value ``||r||^2`` and the gradient ``-2 r`` on the one-step sample."""
import pytest
import torch
from torch import nn

from domains.toy.domain import ToyDomain
from workbench.distill.base import student_x0
from workbench.distill.conformance import check_recipe
from workbench.distill.mdt_dist import MDTDistillation
from workbench.distill.recipes import RecipeContext, setup_method
from workbench.losses import Batch, masked_mean
from workbench.processes import RectifiedFlow
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)

TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


OLD_DEFAULTS = {"form": "implicit", "tangent_norm": None, "lambda_vd": 0.0, "time_sampler": "uniform", "multiphase": 2}


@pytest.mark.parametrize("dataset,opts", [("gmm", {}), ("pointset", {}), ("gmm", OLD_DEFAULTS), ("pointset", {"vd_steps": 2})])
def test_mdt_conformance(dataset, opts):
    d, ctx = ctx_for(dataset)
    s = setup_method("mdt_dist", ctx, {"backbone": TINY[dataset], **opts})
    assert s.spec["kind"] == "flow" and s.spec["sampler"] == "euler" and s.trainable == ["student"]
    if not opts:  # the authors' objective (FlowMDTTrainer defaults)
        o = s.objective
        assert (o.form, o.tangent_norm, o.lambda_vm, o.lambda_vd, o.interval, o.time_sampler, o.logit_mean, o.logit_std,
                o.multiphase, o.vd_steps) == ("explicit", 0.1, 1.0, 1.0, 0.01, "logit_normal", 1.0, 1.0, 1, 1)
    out = check_recipe(s, d, batch_size=16, decrease_steps=40)
    assert out["loss_end"] < out["loss_start"]


class GaussianModel(nn.Module):
    """Analytic x0 models for data ``N(m, s^2 I)`` in the linear view ``z = (1 - u) x0 + u eps``:
    ``kind="posterior"``: the exact denoiser ``E[x0 | z]`` (the teacher); ``kind="transport"``:
    the endpoint of the teacher's probability-flow ODE through ``z``,
    ``m + s (z - (1 - u) m) / sqrt((1 - u)^2 s^2 + u^2)`` (the marginal-data transport).
    ``s = 0`` is a Dirac: both are ``m``."""

    def __init__(self, process, m, s, kind):
        super().__init__()
        self.process, self.m, self.s, self.kind, self.prediction = process, m, float(s), kind, "x0"

    def forward(self, x, t, mask=None, cond=None):
        t = t.to(torch.float64)
        a, sg = self.process.alpha(t), self.process.sigma(t)
        u = (sg / (a + sg))[:, None].to(x.dtype)
        z = x / (a + sg)[:, None].to(x.dtype)
        var = (1 - u) ** 2 * self.s**2 + u**2
        if self.kind == "posterior":
            return self.m + (1 - u) * self.s**2 / var * (z - (1 - u) * self.m)
        return self.m + self.s * (z - (1 - u) * self.m) / var.sqrt()


def vm(obj, student, teacher, x0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = obj.sample_u(x0.shape[0], g).to(x0.device)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return obj.vm_loss({"student": student, "teacher": teacher}, x0, eps, u)


@pytest.mark.parametrize("tangent_norm,form,multiphase", [(None, "explicit", 1), (0.1, "explicit", 1), (None, "implicit", 1),
                                                          (None, "explicit", 3)])
def test_vm_is_exactly_zero_for_straight_trajectories_with_student_equal_teacher(tangent_norm, form, multiphase):
    """Dirac data: the teacher's trajectories are straight lines, so the teacher is its own
    marginal-data transport; with the student equal to the teacher VM and VD are 0."""
    p = ToyDomain(dataset="gmm").process()
    m = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    net = GaussianModel(p, m, 0.0, "posterior")
    obj = MDTDistillation(p, "x0", tangent_norm=tangent_norm, form=form, multiphase=multiphase, lambda_vd=1.0,
                          time_sampler="uniform")
    x0 = m.expand(64, 2).clone()
    assert float(vm(obj, net, net, x0).abs().max()) < 1e-20
    b = Batch(x=x0)
    loss = obj({"student": net, "teacher": net}, b, torch.Generator().manual_seed(1))
    assert loss.shape == (64,) and float(loss.abs().max()) < 1e-20


def test_vm_fixed_point_is_the_marginal_data_transport():
    """Gaussian data (curved trajectories): the exact transport has VM -> 0 as Delta^2
    (finite-difference tangent), the teacher itself (the posterior mean, not a transport)
    does not; the implicit form has the same fixed point and the residual scaled by
    Delta / (u + Delta)."""
    p = ToyDomain(dataset="gmm").process()
    m, s = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.4
    teacher = GaussianModel(p, m, s, "posterior")
    transport = GaussianModel(p, m, s, "transport")
    x0 = m + s * torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = {}
    for delta in (1e-2, 1e-3):
        obj = MDTDistillation(p, "x0", interval=delta, tangent_norm=None, form="explicit", time_sampler="uniform")
        losses[delta] = float(vm(obj, transport, teacher, x0).mean())
    explicit = MDTDistillation(p, "x0", interval=1e-3, tangent_norm=None, form="explicit", time_sampler="uniform")
    as_teacher = float(vm(explicit, teacher, teacher, x0).mean())
    ratio = losses[1e-2] / losses[1e-3]
    assert 30 < ratio < 300, (losses, ratio)  # second order in Delta
    assert losses[1e-3] < 1e-4 * as_teacher and as_teacher > 1e-3, (losses, as_teacher)
    implicit = MDTDistillation(p, "x0", interval=1e-3, tangent_norm=None, form="implicit", time_sampler="uniform")
    assert float(vm(implicit, transport, teacher, x0).mean()) < 1e-4 * float(vm(implicit, teacher, teacher, x0).mean())
    g = torch.Generator().manual_seed(1)
    u = implicit.sample_u(64, g)
    z = (1 - u[:, None]) * x0[:64] + u[:, None] * torch.randn(64, 2, generator=g, dtype=torch.float64)
    v_s = implicit.velocity(teacher, z, u)
    r_exp = v_s - explicit.vm_target(teacher, teacher, z, u, v_s)
    r_imp = v_s - implicit.vm_target(teacher, teacher, z, u, v_s)
    assert torch.allclose(r_imp, r_exp * (1e-3 / (u + 1e-3))[:, None], rtol=1e-9, atol=1e-12)


class PhaseTransport(nn.Module):
    """The exact ``K``-phase transport of ``N(m, s^2 I)`` as an x0 model: the velocity
    ``(z - z_lo) / (u - u_lo)`` onto the teacher's ODE solution ``z_lo`` at the lower phase
    edge ``u_lo`` (largest edge below ``u``), returned as ``x0 = z - u v``."""

    def __init__(self, process, m, s, edges_u):
        super().__init__()
        self.process, self.m, self.s, self.edges_u, self.prediction = process, m, float(s), edges_u, "x0"

    def forward(self, x, t, mask=None, cond=None):
        t = t.to(torch.float64)
        a, sg = self.process.alpha(t), self.process.sigma(t)
        u = (sg / (a + sg))
        z = x / (a + sg)[:, None]
        lo = self.edges_u[(torch.searchsorted(self.edges_u, u, right=False) - 1).clamp_min(0)]
        sd = lambda w: ((1 - w) ** 2 * self.s**2 + w**2).sqrt()[:, None]  # noqa: E731
        z_lo = (1 - lo)[:, None] * self.m + sd(lo) / sd(u) * (z - (1 - u)[:, None] * self.m)
        v = (z - z_lo) / (u - lo)[:, None]
        return z - u[:, None] * v


def test_multiphase_vm_fixed_point_is_the_phase_transport():
    """With K phases the exact transport onto the phase edges has VM -> 0 (states away from
    the edges), the 1-phase transport does not; its K-step Euler samples are exact."""
    p = ToyDomain(dataset="gmm").process()
    m, s = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.4
    teacher = GaussianModel(p, m, s, "posterior")
    obj = MDTDistillation(p, "x0", interval=1e-3, tangent_norm=None, form="explicit", multiphase=3)
    student = PhaseTransport(p, m, s, obj.edges_u)
    g = torch.Generator().manual_seed(0)
    x0 = m + s * torch.randn(300, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(300, 2, generator=g, dtype=torch.float64)
    e = obj.edges_u
    u = torch.cat([e[k] + (e[k + 1] - e[k]) * torch.linspace(0.2, 0.8, 100, dtype=torch.float64) for k in range(3)])
    ok = float(obj.vm_loss({"student": student, "teacher": teacher}, x0, eps, u).mean())
    one = float(obj.vm_loss({"student": GaussianModel(p, m, s, "transport"), "teacher": teacher}, x0, eps, u).mean())
    assert ok < 1e-5 * one, (ok, one)
    from workbench.distill.generators import FlowGenerator

    x_T = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    out = FlowGenerator(student, p, prediction="x0").generate(x_T, 3)
    assert torch.allclose(out.mean(0), m[0], atol=0.03) and abs(float(out.std(0).mean()) - s) < 0.02


def test_vd_value_and_gradient_on_the_one_step_sample():
    """``L_VD`` has the value ``||r||^2`` (mean over elements) and the gradient ``-2 r / d`` on
    the one-step sample ``x_f`` (here the bias of a student that outputs ``x0 = b``)."""
    p = ToyDomain(dataset="gmm").process()

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
            self.prediction = "x0"

        def forward(self, x, t, mask=None, cond=None):
            return self.b.expand_as(x) + 0.1 * x

    student = Const()
    teacher = GaussianModel(p, torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.4, "posterior")
    obj = MDTDistillation(p, "x0", lambda_vm=0.0, lambda_vd=1.0, time_sampler="uniform")
    g = torch.Generator().manual_seed(0)
    B = 32
    x_T = torch.randn(B, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 2, generator=g, dtype=torch.float64)
    u = obj.sample_u(B, g)
    loss = obj.vd_loss({"student": student, "teacher": teacher}, x_T, eps, u)
    # r recomputed from the documented pieces
    with torch.no_grad():
        x_f = student_x0(student, p, x_T, torch.ones(B, dtype=torch.float64))
        z = (1 - u[:, None]) * x_f + u[:, None] * eps
        v_s = obj.velocity(student, z, u)
        r = v_s - obj.vm_target(student, teacher, z, u, v_s)
    assert torch.allclose(loss, masked_mean(r**2, None), rtol=1e-10, atol=1e-14)
    loss.sum().backward()
    expected = (-2 * r / 2).sum(0)  # d x_f / d b = identity for every sample; d = 2 elements
    assert torch.allclose(student.b.grad, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_vd_sample_is_the_generator_sample(steps):
    """``vd_steps=K`` (project variant) trains the generator's own K-step Euler (DDIM) sample;
    the default is the one-step sample at t = 1."""
    d = ToyDomain(dataset="gmm")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=steps)
    s = setup_method("mdt_dist", ctx, {"backbone": TINY["gmm"], "vd_steps": steps})
    gen = s.make_generator(s.nets).eval()
    gb = d.generation_batch(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = gen.generate(gb.x_T, steps)
        b = s.objective.fake_sample(s.nets["student"], gb.x_T)
    assert torch.allclose(a, b, atol=1e-5)


class VelocityNet(nn.Module):
    """A rectified-flow velocity model ``v(x, t) = tanh(x W) + t a + c`` (parameters ``W, a, c``)
    exposed as an x0 model ``x0 = x - t v`` (rectified flow: ``x_t = (1 - t) x0 + t eps``,
    ``v = eps - x0``), so the project's linear-view velocity of it is exactly ``v``."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.a = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))
        self.prediction = "x0"

    def v(self, x, t):
        tt = t.to(x.dtype).view(-1, *[1] * (x.ndim - 1))
        return torch.tanh(x @ self.W) + tt * self.a + self.c

    def forward(self, x, t, mask=None, cond=None):
        return x - t.to(x.dtype).view(-1, *[1] * (x.ndim - 1)) * self.v(x, t)


def official_v_pred_tgt(student, teacher, x_0, noise, t, interval=0.01, d_norm=True):
    """``FlowMDTTrainer.get_v_pred_tgt`` with ``distill_type="discrete"`` (sigma_min = 0, no CFG)."""
    tr = t.view(-1, *[1] * (x_0.ndim - 1))
    x_t = (1 - tr) * x_0 + tr * noise
    with torch.no_grad():
        v_teacher = teacher.v(x_t, t)
    v_pred = student.v(x_t, t)
    with torch.no_grad():
        t_prev = t - interval
        x_prev = x_t - (t - t_prev).view_as(tr) * v_teacher
        v_prev = student.v(x_prev, t_prev)
        dv_dt = (v_pred.detach() - v_prev) / interval
    if d_norm:  # per-sample norm over every non-batch axis
        dv_dt = dv_dt / (torch.linalg.vector_norm(dv_dt, dim=tuple(range(1, x_0.ndim)), keepdim=True) + 0.1)
    return v_pred, v_teacher - tr * dv_dt


def test_defaults_equal_the_official_vm_and_vd():
    """On a rectified flow (linear view = identity), the default objective's VM loss and the
    gradient of its VD loss in the student's parameters equal the official formulas:
    ``(v_pred - v_tgt)^2`` and ``(v_pred - v_tgt + v_fake - sg(v_fake))^2`` with
    ``x_fake = noise_fake - v_fake(noise_fake, 1)``, ``(v_pred, v_tgt)`` at ``x_fake`` without grad."""
    p = RectifiedFlow()
    student, teacher = VelocityNet(0), VelocityNet(1).requires_grad_(False)
    obj = MDTDistillation(p, "x0")
    g = torch.Generator().manual_seed(2)
    B = 64
    x0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 2, generator=g, dtype=torch.float64)
    x_T = torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=torch.float64)
    nets = {"student": student, "teacher": teacher}
    # VM: value and gradient
    vm = obj.vm_loss(nets, x0, eps, t)
    v_pred, v_tgt = official_v_pred_tgt(student, teacher, x0, eps, t)
    ref = ((v_pred - v_tgt) ** 2).mean(1)
    assert torch.allclose(vm, ref, rtol=1e-9, atol=1e-12), float((vm - ref).abs().max())
    ga = torch.autograd.grad(vm.sum(), list(student.parameters()))
    gb = torch.autograd.grad(ref.sum(), list(student.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-11) for a, b in zip(ga, gb))
    # VD: value and gradient
    vd = obj.vd_loss(nets, x_T, eps, t)
    v_fake = student.v(x_T, torch.ones(B, dtype=torch.float64))
    x_fake = x_T - v_fake
    with torch.no_grad():
        vp, vt = official_v_pred_tgt(student, teacher, x_fake, eps, t)
    ref_vd = ((vp - vt + v_fake - v_fake.detach()) ** 2).mean(1)
    assert torch.allclose(vd, ref_vd, rtol=1e-9, atol=1e-12), float((vd - ref_vd).abs().max())
    ga = torch.autograd.grad(vd.sum(), list(student.parameters()))
    gb = torch.autograd.grad(ref_vd.sum(), list(student.parameters()))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-11), float((a - b).abs().max())
    assert float(sum(a.abs().sum() for a in ga)) > 0
    # the K-phase transport (project variant) is a different target
    vm4 = MDTDistillation(p, "x0", multiphase=4).vm_loss(nets, x0, eps, t)
    assert float((vm4 - ref).detach().abs().max()) > 1e-3
    # the whole objective is lambda_vm VM + lambda_vd VD, sampling u logit-normal(1, 1) on [u_min + Delta, 1]
    u = obj.sample_u(20000, torch.Generator().manual_seed(0))
    lo = obj.u_min + obj.interval
    sfrac = (u - lo) / (1.0 - lo)
    logit = torch.log(sfrac / (1 - sfrac))
    assert abs(float(logit.mean()) - 1.0) < 0.03 and abs(float(logit.std()) - 1.0) < 0.03


def test_default_vm_matches_official_on_multi_axis_states():
    """States ``[B, 3, 2]``: the official ``d_norm`` is one norm per sample over every
    non-batch axis (``vector_norm(dim=(1, 2))``), and the default VM loss equals the official
    ``(v_pred - v_tgt)^2`` averaged per sample."""
    p = RectifiedFlow()
    student, teacher = VelocityNet(3), VelocityNet(4).requires_grad_(False)
    obj = MDTDistillation(p, "x0")
    g = torch.Generator().manual_seed(5)
    B = 32
    x0 = 2.0 * torch.randn(B, 3, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 3, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=torch.float64)
    vm = obj.vm_loss({"student": student, "teacher": teacher}, x0, eps, t)
    v_pred, v_tgt = official_v_pred_tgt(student, teacher, x0, eps, t)
    ref = ((v_pred - v_tgt) ** 2).mean((1, 2))
    assert torch.allclose(vm, ref, rtol=1e-9, atol=1e-12), float((vm - ref).abs().max())


def test_student_starts_at_the_teacher_only_in_the_teachers_parameterization():
    """The authors' student is a copy of the teacher. ``prediction=None`` (the teacher's
    parameterization) reproduces the teacher's x0 at init exactly; the default ``v`` student
    loads the epsilon teacher's weights but reads them as ``v`` (documented deviation), so its
    x0 differs."""
    d, ctx = ctx_for("gmm")
    teacher = ctx.teacher
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(64, 2, generator=g)
    t = torch.linspace(0.05, 0.95, 64)
    p = d.process()
    with torch.no_grad():
        ref = student_x0(teacher, p, x, t)
        same = setup_method("mdt_dist", ctx, {"prediction": None}).nets["student"]
        assert same.prediction == teacher.prediction
        assert torch.allclose(student_x0(same, p, x, t), ref, rtol=0, atol=1e-6)
        default = setup_method("mdt_dist", ctx, {}).nets["student"]
        assert default.prediction == "v" and teacher.prediction == "epsilon"
        assert float((student_x0(default, p, x, t) - ref).norm(dim=1).mean()) > 0.1


def test_bad_options_raise_one_line_errors():
    d, ctx = ctx_for("gmm")
    cases = [({"time_sampler": "beta"}, "unknown time sampler 'beta'; valid: logit_normal, uniform"),
             ({"form": "mixed"}, "unknown form 'mixed'; valid: explicit, implicit"),
             ({"multiphase": 0}, "multiphase must be a positive integer"),
             ({"vd_steps": 0}, "vd_steps must be a positive integer"),
             ({"interval": 0.0}, "interval must lie in"), ({"interval": 2.0}, "interval must lie in"),
             ({"tangent_norm": -1.0}, "tangent_norm must be positive or None"),
             ({"lambda_vm": 0.0, "lambda_vd": 0.0}, "lambda_vm and lambda_vd must be >= 0 and not both 0"),
             ({"lambda_vd": -1.0}, "lambda_vm and lambda_vd must be >= 0"),
             ({"logit_std": 0.0}, "logit_std must be positive"),
             ({"prediction": "noise"}, "unknown prediction type 'noise'"),
             ({"init": "random"}, "unknown student init 'random'; valid: teacher, scratch"),
             ({"lambda_vdd": 1.0}, "unknown option\\(s\\) 'lambda_vdd' for method 'mdt_dist'")]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            setup_method("mdt_dist", ctx, {"backbone": TINY["gmm"], **opts})
        assert "\n" not in str(e.value), str(e.value)
