"""Data and files of the ``shapes`` domain (domains/shapes/data.py, domains/shapes/io.py).

Procedural meshes must be watertight and normalised as documented; surface samples must have
the configured size, lie on the surface, carry outward unit normals and be area-weighted; the
data set must be deterministic per (seed, family, item); real meshes load in place from the
installed packages (skipped when absent); PLY / OBJ files round-trip through our reader and
trimesh, and malformed files give one-line errors naming the file."""
import os

import numpy as np
import pytest
import torch

from domains.shapes import data as D

trimesh = pytest.importorskip("trimesh", reason="trimesh is not installed (the `shapes` extra)")
needs_manifold = pytest.mark.skipif(__import__("importlib").util.find_spec("manifold3d") is None,
                                    reason="manifold3d (the `shapes` extra) is not installed: composed shapes need it")


def _has(source: str) -> bool:
    try:
        D.pymeshlab_dir() if source == "pymeshlab" else D.assimp_models_dir()
        return True
    except (ModuleNotFoundError, FileNotFoundError):
        return False


needs_pymeshlab = pytest.mark.skipif(not _has("pymeshlab"), reason="pip pymeshlab (the `shapes` extra) is not installed")
needs_assimp = pytest.mark.skipif(not _has("assimp"),
                                  reason="the Debian package assimp-testmodels is not installed (/usr/share/assimp/models)")


def _mid(family):
    lo, hi = np.asarray(D.FAMILIES[family].ranges).T
    return (lo + hi) / 2


@needs_manifold
@pytest.mark.parametrize("family", D.PROCEDURAL_FAMILIES)
def test_procedural_shape_is_watertight_and_normalised(family):
    s = D.build_shape(family, _mid(family))
    m = s.mesh
    assert m.is_watertight and m.is_volume and m.volume > 0
    ext = m.bounds[1] - m.bounds[0]
    tol = 1e-6  # manifold3d's booleans round the composed shapes' vertices to float32
    assert ext.max() == pytest.approx(1.0, abs=tol) and np.allclose(m.bounds.mean(0), 0, atol=tol)
    raw = np.asarray(_mid(family))
    length = np.asarray(D.FAMILIES[family].length)
    assert np.allclose(s.params[length], raw[length] * s.scale) and np.allclose(s.params[~length], raw[~length])
    # homogeneity: the family built at the normalised parameters is the normalised shape
    b = D.parts_bounds(D.family_parts(family, s.params))
    assert np.allclose(b - b.mean(0), m.bounds, atol=tol)
    sph = D.build_shape(family, raw, normalize="sphere").mesh
    assert np.linalg.norm(sph.vertices, axis=1).max() == pytest.approx(1.0, abs=tol)


@needs_manifold
@pytest.mark.parametrize("family", D.PROCEDURAL_FAMILIES)
def test_samples_lie_on_the_surface_with_outward_unit_normals(family):
    s = D.build_shape(family, _mid(family))
    p, n = D.sample_points(s.mesh, 1000, 3)
    assert p.shape == (1000, 3) and n.shape == (1000, 3) and p.dtype == torch.float32
    assert torch.isfinite(p).all() and torch.isfinite(n).all()
    assert torch.allclose(n.norm(dim=1), torch.ones(1000), atol=1e-5)
    parts = D.family_parts(family, s.params)
    q = p.double().numpy() + D.parts_bounds(parts).mean(0)  # normalised frame -> family frame
    sdf = D.parts_sdf(parts, q)
    assert np.abs(sdf).max() < 5e-3  # on the polygonal surface (curved parts: chord error)
    # outward: a small step along the normal leaves the solid, against it enters
    h = 2e-3
    out = D.parts_sdf(parts, q + h * n.double().numpy()) - sdf
    assert (out > 0).mean() > 0.97


def test_sampling_is_seeded_and_area_weighted():
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.25))
    p1, n1 = D.sample_points(box, 20000, 0)
    p2, _ = D.sample_points(box, 20000, 0)
    p3, _ = D.sample_points(box, 20000, torch.Generator().manual_seed(1))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    areas = np.array([0.5 * 0.25, 1.0 * 0.25, 1.0 * 0.5])  # faces with normal +-x, +-y, +-z
    frac = np.array([(n1[:, k].abs() > 0.5).float().mean().item() for k in range(3)])
    assert np.allclose(frac, areas / areas.sum(), atol=0.015)
    assert (p1.abs() <= torch.tensor([0.5, 0.25, 0.125]) + 1e-6).all()  # inside the faces
    v, f = box.vertices, box.faces
    pt, _ = D.sample_points((v, f), 10, 5)  # (vertices, faces) input
    assert pt.shape == (10, 3)


def test_superquadric_mesh_reaches_its_semi_axes():
    m = D.superquadric_mesh(0.5, 1.3, (0.3, 0.7, 0.5))
    assert m.is_watertight and m.is_volume
    assert np.allclose(m.bounds, [[-0.3, -0.7, -0.5], [0.3, 0.7, 0.5]], atol=1e-12)
    f = D.superquadric_inside_outside(m.vertices, 0.5, 1.3, (0.3, 0.7, 0.5))
    assert np.allclose(f[np.linalg.norm(m.vertices, axis=1) > 1e-9], 1.0, atol=1e-9)


def test_augment_rotates_about_up_scales_and_jitters():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 100, 3, generator=g)
    n = torch.nn.functional.normalize(torch.randn(4, 100, 3, generator=g), dim=-1)
    q, m = D.augment(p, n, D.Augment(rotate=True, scale=None, jitter=0.0), 1)
    assert torch.allclose(q[..., 1], p[..., 1]) and torch.allclose(q[..., [0, 2]].norm(dim=-1), p[..., [0, 2]].norm(dim=-1), atol=1e-5)
    assert torch.allclose((q * m).sum(-1), (p * n).sum(-1), atol=1e-5)  # a rotation keeps p . n
    # scaling: a box's face normals stay axis-aligned and unit; the jitter is clipped
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    bp, bn = D.sample_points(box, 500, 0)
    cfg = D.Augment(rotate=False, scale=(0.5, 1.5), jitter=0.01, jitter_clip=0.02)
    q, m = D.augment(bp, bn, cfg, 2)
    assert torch.allclose(m.norm(dim=-1), torch.ones(500), atol=1e-5)
    assert torch.allclose(m.abs().max(dim=-1).values, torch.ones(500), atol=1e-5)
    q0, _ = D.augment(bp, bn, D.Augment(rotate=False, scale=(0.5, 1.5), jitter=0.0), 2)
    assert 0 < (q - q0).abs().max() <= 0.02 + 1e-6
    q2, _ = D.augment(bp, None, cfg, 2)
    assert torch.equal(q, q2)


@needs_manifold
def test_dataset_tensors_split_and_determinism():
    fams = D.PROCEDURAL_FAMILIES
    ds = D.ShapeDataset(families=fams, n_points=128, per_family=10, seed=3)
    M = 10 * len(fams)
    assert ds.points.shape == (M, 128, 3) and ds.normals.shape == (M, 128, 3)
    assert torch.isfinite(ds.points).all() and torch.allclose(ds.normals.norm(dim=-1), torch.ones(M, 128), atol=1e-5)
    assert ds.labels.tolist() == [i for i in range(len(fams)) for _ in range(10)]
    assert ds.params.shape == (M, D.MAX_PARAMS) and ds.param_mask.sum(1).tolist() == [len(D.PARAM_NAMES[f]) for f in fams for _ in range(10)]
    assert (ds.params[~ds.param_mask] == 0).all() and (ds.params[ds.param_mask] > 0).all()
    assert ds.points.abs().max() <= 0.5 + 1e-6  # unit box
    for li in range(len(fams)):
        assert torch.bincount(ds.split[ds.labels == li], minlength=3).tolist() == [8, 1, 1]
    tr, va, te = ds.train, ds.val, ds.test
    assert len(tr) + len(va) + len(te) == M and (tr.split == 0).all() and len(te) == len(fams)
    assert set(ds[0]) >= {"points", "normals", "labels", "params", "param_mask"}
    # same seed -> same data; one family's rows do not depend on the other families
    solo = D.ShapeDataset(families=("torus",), n_points=128, per_family=10, seed=3)
    rows = ds.labels == fams.index("torus")
    assert torch.equal(solo.points, ds.points[rows]) and torch.equal(solo.params, ds.params[rows])
    assert torch.equal(solo.split, ds.split[rows]) and (solo.labels == 0).all()
    other = D.ShapeDataset(families=("torus",), n_points=128, per_family=10, seed=4)
    assert not torch.equal(other.points, solo.points)
    assert D.ShapeDataset.param_names("chair") == ("seat_width", "seat_depth", "leg_length", "back_height")


def test_dataset_and_family_errors():
    with pytest.raises(ValueError, match="unknown family 'sofa'"):
        D.ShapeDataset(families=("sofa",), per_family=1)
    with pytest.raises(ValueError, match="split_fractions"):
        D.ShapeDataset(families=("box",), per_family=1, split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="expected 3 parameters"):
        D.family_parts("box", [1.0, 2.0])
    with pytest.raises(ValueError, match="normalize"):
        D.build_shape("box", [1, 1, 1], normalize="cube")
    with pytest.raises(ValueError, match="unknown real mesh"):
        D.real_mesh_path("teapot")


@needs_pymeshlab
@pytest.mark.parametrize("name", [k for k, m in D.REAL_MESHES.items() if m.source == "pymeshlab"])
def test_pymeshlab_meshes_load_in_place(name):
    path = D.real_mesh_path(name)
    assert str(path).startswith(str(D.pymeshlab_dir())) and "site-packages" in str(path)
    s = D.load_real_mesh(name)
    assert s.mesh.is_watertight == D.REAL_MESHES[name].closed
    assert (s.mesh.bounds[1] - s.mesh.bounds[0]).max() == pytest.approx(1.0) and np.allclose(s.mesh.bounds.mean(0), 0, atol=1e-9)
    p, n = D.sample_points(s.mesh, 512, 0)
    assert p.shape == (512, 3) and torch.isfinite(p).all() and torch.allclose(n.norm(dim=1), torch.ones(512), atol=1e-4)
    if D.REAL_MESHES[name].closed:  # consistently wound outward: the sampled face normals point out
        assert s.mesh.is_volume and s.mesh.volume > 0
        c = torch.as_tensor(s.mesh.center_mass, dtype=torch.float32)
        assert ((p - c) * n).sum(1).mean() > 0


@needs_pymeshlab
def test_real_meshes_in_a_dataset():
    ds = D.ShapeDataset(families=("bunny", "box"), n_points=64, per_family=4, seed=0)
    assert ds.points.shape == (8, 64, 3) and not ds.param_mask[:4].any() and ds.param_mask[4:].sum() == 12
    assert not torch.equal(ds.points[0], ds.points[1])  # independent samplings of one mesh
    assert set(D.CLOSED_REAL_MESHES) <= set(D.available_real_meshes()) | {"wuson", "spider", "engine"}


@needs_assimp
@pytest.mark.parametrize("name", [k for k, m in D.REAL_MESHES.items() if m.source == "assimp-testmodels"])
def test_assimp_meshes_load_in_place(name):
    s = D.load_real_mesh(name)
    assert str(D.real_mesh_path(name)).startswith(str(D.assimp_models_dir()))
    p, n = D.sample_points(s.mesh, 256, 0)
    assert torch.isfinite(p).all() and p.abs().max() <= 0.5 + 1e-6


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
from domains.shapes import io as IO  # noqa: E402


@pytest.mark.parametrize("binary", [True, False])
def test_ply_point_cloud_round_trip(tmp_path, binary):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(300, 3, generator=g)
    n = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)
    f = IO.write_ply(tmp_path / "cloud.ply", p, n, binary=binary, comment="test cloud")
    assert [x.name for x in tmp_path.iterdir()] == ["cloud.ply"]  # no temporary file left
    r = IO.read_ply(f)
    assert np.array_equal(r.points, p.numpy().astype(np.float64)) and np.array_equal(r.normals, n.numpy().astype(np.float64))
    assert r.faces is None and "test cloud" in r.comments
    t = trimesh.load(f)
    assert isinstance(t, trimesh.PointCloud) and np.array_equal(np.asarray(t.vertices, np.float32), p.numpy())
    raw = t.metadata["_ply_raw"]["vertex"]["data"]
    tn = np.stack([np.asarray(raw["nx"]), np.asarray(raw["ny"]), np.asarray(raw["nz"])], axis=1).reshape(-1, 3)
    assert np.array_equal(tn.astype(np.float32), n.numpy())
    q = IO.write_ply(tmp_path / "plain.ply", p.numpy(), binary=binary)
    assert IO.read_ply(q).normals is None


@pytest.mark.parametrize("suffix,binary", [(".ply", True), (".ply", False), (".obj", True)])
def test_mesh_writer_is_read_by_trimesh(tmp_path, suffix, binary):
    m = trimesh.creation.icosphere(subdivisions=2)
    f = IO.write_mesh(tmp_path / f"sphere{suffix}", m.vertices, m.faces, m.vertex_normals, binary=binary)
    t = trimesh.load(f, force="mesh", process=False)
    assert np.allclose(t.vertices, m.vertices, atol=1e-6) and np.array_equal(t.faces, m.faces)
    assert t.is_watertight and t.volume == pytest.approx(m.volume, rel=1e-5)
    if suffix == ".ply":
        r = IO.read_ply(f)
        assert np.array_equal(r.faces, m.faces) and np.allclose(r.normals, m.vertex_normals, atol=1e-6)
    IO.write_mesh(tmp_path / "nonormals.obj", m.vertices, m.faces)
    assert np.array_equal(trimesh.load(tmp_path / "nonormals.obj", force="mesh", process=False).faces, m.faces)


def test_writers_refuse_bad_input_and_keep_the_old_file(tmp_path):
    f = IO.write_ply(tmp_path / "a.ply", np.zeros((2, 3)))
    before = f.read_bytes()
    with pytest.raises(ValueError, match="finite"):
        IO.write_ply(f, np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        IO.write_ply(f, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="face indices"):
        IO.write_mesh(tmp_path / "m.ply", np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(ValueError, match="suffix"):
        IO.write_mesh(tmp_path / "m.stl", np.zeros((3, 3)), [[0, 1, 2]])
    assert f.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["a.ply"]


_HDR = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"


@pytest.mark.parametrize("content,problem", [
    (b"", "not a PLY file"),
    (b"solid cube\nfacet normal 0 0 1\n", "not a PLY file"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "no 'end_header'"),
    (b"ply\nformat binary_middle_endian 1.0\nend_header\n", "unknown format"),
    (b"ply\nelement vertex 1\nend_header\n", "no format line"),
    (b"ply\nformat ascii 1.0\nelement vertex two\nend_header\n", "malformed element"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n", "malformed property"),
    ((_HDR + "end_header\n0 0 0\n").encode(), "truncated"),
    ((_HDR + "end_header\n0 0 0\n1 x 1\n").encode(), "row 1: non-numeric"),
    ((_HDR + "end_header\n0 0 0\n1 1\n").encode(), "expected 3 values"),
    ((_HDR + "end_header\n0 0 0\n1 nan 1\n").encode(), "vertex 1 has a non-finite coordinate"),
    (b"ply\nformat ascii 1.0\nelement point 1\nproperty float x\nend_header\n0\n", "no 'vertex' element"),
    ((_HDR + "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 1 1\n3 0 1 2\n").encode(),
     "face 0 has a vertex index outside 0..1"),
    ((_HDR.replace("ascii", "binary_little_endian") + "end_header\n").encode() + np.zeros(5, "<f4").tobytes(), "truncated"),
])
def test_malformed_ply_gives_one_line_error_naming_the_file(tmp_path, content, problem):
    f = tmp_path / "bad.ply"
    f.write_bytes(content)
    with pytest.raises(ValueError) as e:
        IO.read_ply(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and problem in msg and "\n" not in msg


def test_reader_handles_big_endian_polygons_and_extra_properties(tmp_path):
    hdr = ("ply\nformat binary_big_endian 1.0\ncomment made by hand\nelement vertex 4\nproperty double x\n"
           "property double y\nproperty double z\nproperty uchar red\nelement face 1\nproperty uchar flags\n"
           "property list uchar uint vertex_indices\nend_header\n")
    v = np.zeros(4, dtype=[("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("red", "u1")])
    v["x"], v["y"], v["red"] = [0, 1, 1, 0], [0, 0, 1, 1], 255
    face = np.zeros(1, dtype=[("flags", "u1"), ("n", "u1"), ("v", ">u4", (4,))])
    face["n"], face["v"] = 4, [0, 1, 2, 3]
    f = tmp_path / "quad.ply"
    f.write_bytes(hdr.encode() + v.tobytes() + face.tobytes())
    r = IO.read_ply(f)
    assert r.points[2].tolist() == [1.0, 1.0, 0.0] and r.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert r.elements["vertex"]["red"].tolist() == [255] * 4 and r.comments == ["made by hand"]
    # trimesh's own PLY files read too
    m = trimesh.creation.box()
    g = tmp_path / "tm.ply"
    g.write_bytes(m.export(file_type="ply"))
    assert np.array_equal(IO.read_ply(g).faces, m.faces)


@needs_pymeshlab
def test_reader_agrees_with_trimesh_on_shipped_ply():
    for rel in ("bone.ply", "rangemaps/face000.ply"):
        path = D.pymeshlab_dir() / "tests" / "sample_meshes" / rel
        r = IO.read_ply(path)
        t = trimesh.load(path, force="mesh", process=False)
        assert np.allclose(r.points, t.vertices, atol=1e-6) and np.array_equal(r.faces, t.faces)


def test_atomic_write_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    f = IO.write_ply(tmp_path / "c.ply", np.ones((3, 3)))
    before = f.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        IO.write_ply(f, np.zeros((5, 3)))
    assert f.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["c.ply"]
