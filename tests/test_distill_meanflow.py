"""MeanFlow and SplitMeanFlow on any process (linear view): exact ground truth for a single
Gaussian (closed-form average velocity) and for the exact toy GMM (integrated ODE), JVP vs
finite differences, two-time students of every domain, the recipes' conformance."""
import pytest
import torch
from torch import nn

from domains.toy.domain import ToyDomain
from workbench.analytic import GaussianMixture
from workbench.distill import MeanFlow, setup_method
from workbench.distill.conformance import check_recipe
from workbench.distill.generators import linear_view
from workbench.distill.meanflow import linear_time_range, sample_linear_times, teacher_velocity
from workbench.distill.recipes import RecipeContext
from workbench.distill.splitmeanflow import SplitMeanFlow
from workbench.losses import Batch
from workbench.model import linear_view_time
from workbench.processes import RectifiedFlow, VPLinear

torch.set_num_threads(1)
F64 = torch.float64

MU = torch.tensor([1.5, -0.5], dtype=F64)
S = 0.3


class GaussianTeacher(nn.Module):
    """Exact posterior mean of N(MU, S^2 I) data under ``process`` (prediction x0)."""

    prediction = "x0"

    def __init__(self, process):
        super().__init__()
        self.f = GaussianMixture(MU[None], torch.tensor([S], dtype=F64)).denoiser(process, "x0")

    def forward(self, x, t, mask=None, cond=None):
        return self.f(x, t)


def _sig(u):
    return torch.sqrt((1 - u) ** 2 * S**2 + u**2)


def exact_velocity(z, u):
    """v(z, u) of N(MU, S^2 I) data in the linear view: -MU + (sigma_u' / sigma_u) (z - m_u)."""
    m = (1 - u)[:, None] * MU
    ds = (u - (1 - u) * S**2) / _sig(u)
    return -MU + (ds / _sig(u))[:, None] * (z - m)


class ExactGaussianU(nn.Module):
    """The exact average velocity u(z, r, t) of N(MU, S^2 I) data in the linear view: the flow
    map is affine, z_r = m_r + sigma_r / sigma_t (z_t - m_t), m_u = (1 - u) MU,
    sigma_u^2 = (1 - u)^2 S^2 + u^2; ``scale`` != 1 or ``instantaneous`` give wrong fields."""

    def __init__(self, scale=1.0, instantaneous=False):
        super().__init__()
        self.scale, self.instantaneous = scale, instantaneous

    def forward(self, z, r, t, mask=None, cond=None):
        r, t = r.to(z.dtype), t.to(z.dtype)
        v = exact_velocity(z, t)
        if self.instantaneous:
            return v
        gap = t - r
        safe = torch.where(gap > 0, gap, torch.ones_like(gap))
        zr = (1 - r)[:, None] * MU + (_sig(r) / _sig(t))[:, None] * (z - (1 - t)[:, None] * MU)
        u = torch.where((gap > 0)[:, None], (z - zr) / safe[:, None], v)
        return self.scale * u


def gaussian_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(x=MU + S * torch.randn(n, 2, generator=g, dtype=F64))


PROCESSES = {"rectified_flow": RectifiedFlow(), "vp_linear": VPLinear(), "toy_ddpm": ToyDomain().process()}


# -- ground truth ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSES))
def test_teacher_velocity_is_the_exact_linear_view_velocity(name):
    """A teacher of any process, read in the linear view, gives the exact velocity eps - x0
    of the linear interpolant (the linear view is exact for every Gaussian path)."""
    p = PROCESSES[name]
    u_lo, u_hi = linear_time_range(p)
    u = torch.linspace(max(u_lo, 0.02), u_hi, 9, dtype=F64)
    z = torch.randn(9, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    v = teacher_velocity(GaussianTeacher(p), p, z, u)
    assert torch.allclose(v, exact_velocity(z, u), atol=1e-8)
    # linear_view_time inverts sigma / (alpha + sigma) and its JVP is du/dt's inverse
    tp, dtp = torch.func.jvp(lambda a: linear_view_time(p, a), (u,), (torch.ones_like(u),))
    la, ls = p.log_alpha_sigma(tp)
    assert torch.allclose(torch.sigmoid(ls - la), u, atol=1e-9)
    h = 1e-6
    fd = (linear_view_time(p, u + h) - linear_view_time(p, u - h)) / (2 * h)
    assert torch.allclose(dtp[:-1], fd[:-1], rtol=1e-3)  # (the last point is the end of the schedule)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_meanflow_objective_vanishes_at_the_exact_average_velocity(name):
    """u = v - (t - r) du/dt holds for the exact u (loss ~ 0 from the teacher); the
    instantaneous velocity or a rescaled u violate it (loss clearly > 0)."""
    p = PROCESSES[name]
    b = gaussian_batch()
    nets = {"teacher": GaussianTeacher(p)}
    obj = MeanFlow(p, ratio_r_neq_t=0.75, source="teacher")
    exact = obj({**nets, "student": ExactGaussianU()}, b, torch.Generator().manual_seed(2))
    assert exact.shape == (64,) and float(exact.max()) < 1e-12, float(exact.max())
    for wrong in (ExactGaussianU(instantaneous=True), ExactGaussianU(scale=1.1)):
        bad = obj({**nets, "student": wrong}, b, torch.Generator().manual_seed(2))
        assert float(bad.mean()) > 1e-3, float(bad.mean())


@pytest.mark.parametrize("name", list(PROCESSES))
def test_splitmeanflow_identity_holds_for_the_exact_average_velocity(name):
    """(t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t) with
    z_s = z_t - (t - s) u(z_t, s, t) for the exact u; the objective (boundary rows from the
    teacher) is ~0 there and clearly positive for wrong fields."""
    p = PROCESSES[name]
    obj = SplitMeanFlow(p, boundary_ratio=0.3, source="teacher")
    r, s, t = obj.sample_times(64, torch.Generator().manual_seed(3))
    assert bool(((r <= s) & (s <= t)).all())
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    u = ExactGaussianU()
    assert torch.allclose(obj.split_target(u, z, r, s, t), u(z, r, t), atol=1e-10)
    b, nets = gaussian_batch(), {"teacher": GaussianTeacher(p)}
    assert float(obj({**nets, "student": u}, b, torch.Generator().manual_seed(5)).max()) < 1e-12
    for wrong in (ExactGaussianU(instantaneous=True), ExactGaussianU(scale=1.1)):
        assert float(obj({**nets, "student": wrong}, b, torch.Generator().manual_seed(5)).mean()) > 1e-3


class IntegratedU(nn.Module):
    """u(z, r, t) = (z - z_r) / (t - r) with z_r the RK4 solution (``n`` steps) of the exact
    teacher's linear-view ODE from t to r (differentiable, so the JVP runs through it)."""

    def __init__(self, teacher, process, n=16):
        super().__init__()
        self.teacher, self.process, self.n = teacher, process, n

    def forward(self, z, r, t, mask=None, cond=None):
        def vel(zz, uu):
            tp = linear_view_time(self.process, uu)
            a, s = self.process.alpha(tp), self.process.sigma(tp)
            x = zz * (a + s)[:, None]
            x0 = self.teacher(x, tp)
            return (x - a[:, None] * x0) / s[:, None] - x0

        h = ((r - t) / self.n)[:, None]
        zz, uu = z, t
        for _ in range(self.n):
            k1 = vel(zz, uu)
            k2 = vel(zz + 0.5 * h * k1, uu + 0.5 * h[:, 0])
            k3 = vel(zz + 0.5 * h * k2, uu + 0.5 * h[:, 0])
            k4 = vel(zz + h * k3, uu + h[:, 0])
            zz, uu = zz + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6, uu + h[:, 0]
        return (z - zz) / (t - r)[:, None]


def test_gmm_exact_teacher_average_velocity_satisfies_both_identities():
    """The toy GMM with its exact teacher: the average velocity from integrating the exact ODE
    (16 RK4 steps) satisfies interval splitting and the MeanFlow identity to solver accuracy
    (measured 3e-7 and 1e-6); the instantaneous velocity violates both (measured 0.64 and
    3.3). Times kept in [0.2, 0.8] (a smooth stretch of the path)."""
    d = ToyDomain(dataset="gmm", teacher="exact")
    p, teacher = d.process(), d.load_teacher()
    U = IntegratedU(teacher, p, n=16)
    g = torch.Generator().manual_seed(6)
    B = 4
    a = 0.2 + 0.6 * torch.rand(2, B, generator=g, dtype=F64)
    r, t = a.min(0).values, a.max(0).values
    lam = torch.rand(B, generator=g, dtype=F64)
    s = (1 - lam) * t + lam * r
    x0 = d.train_data()(B, g).x.double()
    eps = torch.randn(B, 2, generator=g, dtype=F64)
    z = (1 - t)[:, None] * x0 + t[:, None] * eps
    v = teacher_velocity(teacher, p, z, t)
    inst = lambda zz, rr, tt: teacher_velocity(teacher, p, zz, tt)  # noqa: E731
    split, mf = SplitMeanFlow(p), MeanFlow(p)
    assert float((split.split_target(U, z, r, s, t) - U(z, r, t)).abs().max()) < 1e-5
    assert float((split.split_target(inst, z, r, s, t) - inst(z, r, t)).abs().max()) > 0.1
    uu, u_tgt = mf.target(U, z, r, t, v)
    assert float((uu - u_tgt).abs().max()) < 1e-4
    uu, u_tgt = mf.target(inst, z, r, t, v)
    assert float((uu - u_tgt).abs().max()) > 0.1


# -- JVP in the linear view ------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_two_time_student_jvp_matches_finite_differences(dataset):
    """The MeanFlow JVP d/dt u(z_t, r, t) = v . grad_z u + d_t u of a toy two-time student
    (linear-view times through the process time map) equals the central difference along
    (z + h v, r, t + h) (float64)."""
    d = ToyDomain(dataset=dataset)
    torch.manual_seed(0)
    kw = {"hidden": 32, "depth": 1, "freq_dim": 16} if dataset == "gmm" else {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}
    st = d.build_backbone(two_time=True, **kw).double()
    nn.init.normal_(st.backbone.temb2.mlp[-1].weight, std=0.3)  # make the t - r branch matter
    nn.init.normal_(st.backbone.out.weight, std=0.3)
    gb = d.generation_batch(4, generator=torch.Generator().manual_seed(1))
    p = d.process()
    z = gb.x_T.double()
    v = p.project(torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=F64), gb.mask)
    t = torch.tensor([0.95, 0.7, 0.4, 0.1], dtype=F64)
    r = 0.3 * t
    mask = gb.mask.double() if gb.mask is not None else None

    def f(a, b, c):
        return st(a, b, c, mask=mask)

    _, du = torch.func.jvp(f, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    h = 1e-6
    with torch.no_grad():
        fd = (f(z + h * v, r, t + h) - f(z - h * v, r, t - h)) / (2 * h)
    assert float((du.detach() - fd).norm() / fd.norm()) < 1e-5


# -- two-time students ---------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_toy_two_time_student_starts_as_the_teacher(dataset):
    """build_backbone(two_time=True) has every teacher tensor under the same name; with them,
    the teacher's prediction and time input it is the teacher's linear-view velocity for
    every r (the t - r branch starts at zero). The recipes' default student reads its output
    as v and its times linearly (TwoTimeDenoiser docstring)."""
    d = ToyDomain(dataset=dataset)
    teacher = d.load_teacher()
    ctx = RecipeContext(domain=d, teacher=teacher)
    default = setup_method("meanflow", ctx).spec["student"]
    assert default["backbone"] == {"prediction": "v", "gap_scale": 1.0, "time_scale": 1.0} and default["prediction"] == "v"
    setup = setup_method("splitmeanflow", ctx, {"student_prediction": "teacher", "time_scale": None, "gap_scale": 1000.0})
    st = setup.nets["student"]
    assert st.prediction == "epsilon" and st.time_scale is None
    tsd = teacher.state_dict()
    assert all(k in st.state_dict() for k in tsd)
    for k, v in tsd.items():
        assert torch.equal(st.state_dict()[k], v), k
    gb = d.generation_batch(6, generator=torch.Generator().manual_seed(0))
    u = torch.tensor([0.99, 0.9, 0.7, 0.5, 0.2, 0.05])
    z, _ = linear_view(d.process(), gb.x_T, torch.ones(6, dtype=F64))
    with torch.no_grad():
        out = st(z, 0.5 * u, u, mask=gb.mask)
    v = teacher_velocity(teacher, d.process(), z, u.double(), mask=gb.mask)
    assert torch.allclose(out, v, atol=1e-4)
    with pytest.raises(ValueError, match="needs dt_in"):
        st.backbone(z, u, mask=gb.mask)


def test_images_two_time_backbone_shapes_names_and_jvp():
    """The images two-time UNet: teacher-compatible names (plus the zero-started gap
    embedding on the class-embedding path), outputs [B, 1, 8, 8], equal to the teacher's
    velocity at initialisation, depends on t - r once the gap branch is trained, and supports
    the MeanFlow JVP."""
    from domains.images.domain import ImagesDomain

    d = ImagesDomain()
    tiny = {"block_out_channels": (8, 16), "norm_num_groups": 8, "attention_head_dim": 8}
    torch.manual_seed(0)
    teacher = d.build_backbone(**tiny).eval().requires_grad_(False)
    st = d.build_backbone(two_time=True, **tiny)
    ssd, tsd = st.state_dict(), teacher.state_dict()
    assert set(tsd) <= set(ssd)
    assert sorted(set(ssd) - set(tsd)) == [f"backbone.unet.class_embedding.gap.{i}.{w}" for i in (0, 2) for w in ("bias", "weight")]
    st.load_state_dict({**ssd, **tsd})
    p = d.process()
    B = 3
    z = torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, r = torch.tensor([0.99, 0.6, 0.3]), torch.tensor([0.0, 0.3, 0.3])
    y = torch.tensor([1, 4, 10])
    with torch.no_grad():
        out = st(z, r, t, cond=y)
    assert out.shape == (B, 1, 8, 8)
    assert torch.allclose(out, teacher_velocity(teacher, p, z, t.double(), cond=y), atol=1e-4)
    nn.init.normal_(st.backbone.unet.class_embedding.gap[2].weight, std=0.5)
    with torch.no_grad():
        assert not torch.allclose(st(z, r, t, cond=y), st(z, 0.5 * r, t, cond=y))
    v = torch.randn_like(z)
    u, du = torch.func.jvp(lambda a, b, c: st(a, b, c, cond=y), (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    assert du.shape == (B, 1, 8, 8) and bool(torch.isfinite(du).all())
    u.pow(2).mean().backward()
    assert st.backbone.unet.class_embedding.gap[0].weight.grad is not None


# -- recipes -------------------------------------------------------------------------------------
TINY = {"gmm": {"hidden": 32, "depth": 1, "freq_dim": 16}, "pointset": {"hidden": 32, "depth": 1, "heads": 2, "freq_dim": 16}}


@pytest.mark.parametrize("method", ["meanflow", "splitmeanflow"])
@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_recipe_conformance(method, dataset):
    d = ToyDomain(dataset=dataset)
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=2)
    setup = setup_method(method, ctx, {"backbone": TINY[dataset]})
    assert setup.spec["kind"] == "meanflow" and setup.spec["student"]["two_time"]
    out = check_recipe(setup, d, decrease_steps=40)
    assert out["loss_end"] < out["loss_start"]


def test_images_splitmeanflow_recipe_conformance():
    """A tiny images run: the recipe on the class-conditional digits teacher with a tiny
    two-time UNet student (only the matching teacher tensors are copied)."""
    from domains.images.domain import ImagesDomain

    d = ImagesDomain()
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False), student_steps=2)
    tiny = {"block_out_channels": (8, 16), "norm_num_groups": 8, "attention_head_dim": 8}
    setup = setup_method("splitmeanflow", ctx, {"backbone": tiny})
    out = check_recipe(setup, d, batch_size=4, decrease_steps=15)
    assert out["sample"].shape == (4, 1, 8, 8)


def test_recipe_options_and_errors():
    d = ToyDomain(dataset="gmm")
    ctx = RecipeContext(domain=d, teacher=d.load_teacher().requires_grad_(False))
    data = setup_method("splitmeanflow", ctx, {"source": "data", "backbone": TINY["gmm"]})
    assert "teacher" not in data.nets and data.objective.source == "data"
    with pytest.raises(ValueError, match="unknown velocity source 'model'; valid: teacher, data"):
        setup_method("meanflow", ctx, {"source": "model"})
    with pytest.raises(ValueError, match="unknown time sampler 'beta'; valid: uniform, logit_normal"):
        setup_method("splitmeanflow", ctx, {"time_sampler": "beta"})
    with pytest.raises(ValueError, match="unknown student prediction 'eps'; valid: v, x0, epsilon, teacher"):
        setup_method("meanflow", ctx, {"student_prediction": "eps"})
    with pytest.raises(ValueError, match="time_scale only apply to two-time students"):
        d.build_backbone(time_scale=1.0)
    with pytest.raises(ValueError, match="boundary_ratio must lie in"):
        SplitMeanFlow(d.process(), boundary_ratio=-0.1)
    with pytest.raises(ValueError, match="source='teacher' needs nets\\['teacher'\\]"):
        MeanFlow(d.process(), source="teacher")({"student": data.nets["student"]}, d.train_data()(4), torch.Generator().manual_seed(0))
    r, t = sample_linear_times(1000, d.process(), ratio_r_neq_t=0.25, generator=torch.Generator().manual_seed(0))
    u_lo, u_hi = linear_time_range(d.process())
    assert bool((r <= t).all()) and float(t.min()) >= u_lo and float(t.max()) <= u_hi
    assert 0.15 < float((r < t).double().mean()) < 0.35
