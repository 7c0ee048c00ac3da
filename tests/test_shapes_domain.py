"""The ``shapes`` domain class (domains/shapes/domain.py) and its backbone (domains/shapes/nets.py):
the point transformer is permutation-equivariant and uses the family label; the domain honours the
plugin contract with a tiny network; training batches have the configured size and labels; a
2-step sample is written as PLY files trimesh reads; the set metrics tell real clouds (1-NNA near
50%) from Gaussian noise (near 100%)."""
import numpy as np
import pytest
import torch

from workbench.losses import Batch

trimesh = pytest.importorskip("trimesh", reason="trimesh is not installed (the `shapes` extra)")
pytest.importorskip("scipy", reason="the shapes metrics need scipy")

#: primitive families only: no boolean unions (manifold3d), quick to build
FAMILIES = ["box", "cylinder", "torus", "superquadric"]
TINY_NET = {"width": 32, "depth": 2, "heads": 2}


@pytest.fixture(scope="module")
def dom():
    from domains.shapes.domain import ShapesDomain

    return ShapesDomain(families=FAMILIES, n_points=96, per_family=40, pool_factor=2, net=TINY_NET, eval_recover=1)


def test_backbone_is_permutation_equivariant_and_uses_the_label():
    from domains.shapes.nets import PointTransformer

    torch.manual_seed(0)
    net = PointTransformer(num_classes=3, width=32, depth=2, heads=4, zero_init=False).double().eval()
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    y = torch.tensor([0, 2])
    perm = torch.randperm(50)
    with torch.no_grad():
        out = net(x, t, cond=y)
        out_p = net(x[:, perm], t, cond=y)
        other = net(x, t, cond=torch.tensor([1, 3]))  # another family, the null label
        none = net(x, t)  # cond=None: the null label
    assert out.shape == (2, 50, 3)
    torch.testing.assert_close(out_p, out[:, perm], rtol=0, atol=1e-12)
    assert (other - out).abs().amax(dim=(1, 2)).min() > 1e-3
    torch.testing.assert_close(none[1], other[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="class labels"):
        net(x, t, cond=torch.tensor([0, 4]))


def test_zero_init_outputs_zero_and_guidance_mixes_passes():
    from domains.shapes.nets import PointTransformer

    torch.manual_seed(0)
    x, t, y = torch.randn(3, 20, 3), torch.rand(3), torch.tensor([0, 1, 2])
    assert PointTransformer(2, width=16, depth=1, heads=2)(x, t, cond=torch.tensor([0, 1, 2])).abs().max() == 0
    net = PointTransformer(2, width=16, depth=1, heads=2, zero_init=False)
    with torch.no_grad():
        c, u = net(x, t, cond=y), net(x, t, cond=torch.full((3,), 2))
        net.guidance = 3.0
        g = net(x, t, cond=y)
    torch.testing.assert_close(g, u + 3.0 * (c - u))


def test_domain_contract(dom):
    from workbench.domain import check_domain

    rep = check_domain(dom, teacher=False)
    assert rep["files"] >= 5 and "1nna_cd" in rep["metrics"]
    assert type(dom).supports("slim_backbone_kwargs")


def test_train_data_sizes_labels_and_fresh_points(dom):
    data = dom.train_data("train")
    g = torch.Generator().manual_seed(0)
    a, b = data(6, g), data(6, g)
    assert a.x.shape == (6, 96, 3) and a.cond.dtype == torch.long and a.cond.shape == (6,)
    assert bool(((a.cond >= 0) & (a.cond < len(FAMILIES))).all())
    assert float(a.x.abs().max()) <= dom.scale * 0.5 + 1e-5  # box-normalised shapes, times scale
    again = data(6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.x, a.x)  # a pure function of the generator
    assert not torch.equal(a.x, b.x)
    # 200 draws from 128 training shapes repeat shapes, never clouds: fresh surface points per draw
    many = data(200, g).x
    assert len(dom.split("train")) == 128
    d = (many[:, None] - many[None]).abs().flatten(2).amax(-1) + torch.eye(200)
    assert float(d.min()) > 0
    with pytest.raises(ValueError, match="split"):
        dom.train_data("nope")


def test_generation_labels_and_per_sample_seeds(dom):
    from workbench.utils import per_sample_generators

    gb = dom.generation_batch(6, generator=per_sample_generators(0, 6))
    assert gb.x_T.shape == (6, 96, 3) and bool(((gb.cond >= 0) & (gb.cond < len(FAMILIES))).all())
    fixed = dom.generation_batch(6, generator=per_sample_generators(0, 6), cond="torus")
    assert fixed.cond.tolist() == [2] * 6
    torch.testing.assert_close(fixed.x_T, gb.x_T)  # the noise does not depend on the labels given
    with pytest.raises(ValueError, match="labels"):
        dom.generation_batch(2, cond=[0, 9])


def test_two_step_samples_are_written_as_ply(dom, tmp_path):
    from workbench.api import run_sampler
    from workbench.utils import per_sample_generators

    torch.manual_seed(0)
    net = dom.build_backbone(zero_init=False).eval()
    gb = dom.generation_batch(4, generator=per_sample_generators(3, 4))
    with torch.no_grad():
        x = run_sampler(net, dom.process(), gb.x_T, sampler="euler", steps=2, prediction=net.prediction, cond=gb.cond).x
    paths = dom.save_samples(Batch(x=x, cond=gb.cond), tmp_path / "s")
    plys = sorted(p for p in paths if p.name.startswith("sample_") and p.suffix == ".ply")
    assert len(plys) == 4 and any(str(p).endswith("samples.npz") for p in paths)
    meshes = sorted(p for p in paths if p.name.startswith("mesh_"))
    assert meshes, "the default (Poisson) reconstruction wrote no mesh"
    for p in meshes:  # trimesh reads each mesh; its vertices lie near the sample's own points
        m = trimesh.load(p, process=False)
        i = int(p.stem.split("_")[1])
        assert len(m.faces) > 0
        d = torch.cdist(torch.as_tensor(np.asarray(m.vertices)), (x[i] / dom.scale).double()).min(1).values
        assert float(d.max()) <= 0.1 + 1e-6  # Poisson's unsupported surface is trimmed at 0.1
    renders = [p for p in paths if p.name.startswith("render_")]
    assert len(renders) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in renders)
    clouds = []
    for p in plys:
        pc = trimesh.load(p)
        v = np.asarray(pc.vertices)
        assert v.shape == (96, 3) and np.isfinite(v).all()
        clouds.append(v)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(clouds[i] - clouds[j]).max() > 1e-3
    np.testing.assert_allclose(clouds[0], (x[0] / dom.scale).numpy(), atol=1e-6)
    from domains.shapes.io import read_ply

    ply = read_ply(plys[0])
    assert ply.normals is not None and np.allclose(np.linalg.norm(ply.normals, axis=1), 1.0, atol=1e-5)
    assert dom.plot(Batch(x=x, cond=gb.cond), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_pca_normals_of_a_plane_and_a_sphere():
    from domains.shapes.domain import pca_normals

    g = torch.Generator().manual_seed(0)
    plane = torch.cat([torch.rand(200, 2, generator=g) - 0.5, torch.full((200, 1), 0.3)], 1)[:, [0, 2, 1]]
    n = pca_normals(plane)  # a flat cloud: the direction is fixed, its sign is not (no outside)
    torch.testing.assert_close(n[:, 1].abs(), torch.ones(200), atol=1e-5, rtol=0)
    s = torch.randn(400, 3, generator=g)
    s = s / s.norm(dim=1, keepdim=True)
    assert float((pca_normals(s) * s).sum(1).min()) > 0.9  # outward


def test_evaluate_tells_real_clouds_from_noise(dom):
    real = dom.reference_batch(split="val")  # other shapes of the same families than the test split
    assert len(real) == 16
    m = dom.evaluate(real)
    assert m["valid_fraction"] == 1.0
    assert 0.3 <= m["1nna_cd"] <= 0.7 and 0.3 <= m["1nna_emd"] <= 0.7
    assert m["param_fits"] == 4 and m["param_error"] < 0.05 and m["param_fit_rms"] < 5e-3
    noise = Batch(x=torch.randn(16, 96, 3, generator=torch.Generator().manual_seed(1)), cond=real.cond)
    m = dom.evaluate(noise)
    assert m["1nna_cd"] >= 0.9 and m["1nna_emd"] >= 0.9
    assert m["param_fit_rms"] > 10 * 5e-3 and "param_error" not in m
    collapsed = Batch(x=torch.zeros(3, 96, 3))
    c = dom.evaluate(collapsed)
    assert c["valid_fraction"] == 0.0 and "1nna_cd" not in c
    bad = Batch(x=torch.full((2, 96, 3), float("nan")))
    assert dom.evaluate(bad)["finite_fraction"] == 0.0


def test_bench_reference_is_fresh_shapes_of_every_family(dom):
    from domains.shapes.bench import _parse, reference_batch

    ref = reference_batch(dom, 3, seed=1)
    assert ref.x.shape == (3 * len(FAMILIES), dom.n_points, 3) and ref.cond.tolist() == sorted(ref.cond.tolist())
    assert torch.bincount(ref.cond).tolist() == [3] * len(FAMILIES)
    train = dom.split("train").points[:, : dom.n_points] * dom.scale
    # another data seed: no reference cloud is a training cloud
    assert float(torch.cdist(ref.x.flatten(1), train.flatten(1)).min()) > 1e-3
    assert _parse("mdt=a/b.safetensors:2,cd=c:1", "students") == [("mdt", "a/b.safetensors", 2), ("cd", "c", 1)]
    with pytest.raises(SystemExit, match="expected LABEL=PATH:STEPS"):
        _parse("mdt=a.safetensors", "students")
    with pytest.raises(SystemExit, match="expected SAMPLER:STEPS"):
        _parse("euler", "runs")
