"""Mesh reconstruction and renders of the shapes domain (domains/shapes/mesh.py): screened Poisson
on a torus's surface samples stays on the true torus and covers it; ball pivoting only uses input
points; renders are PNGs with one panel per view; bad input gives one-line errors."""
import numpy as np
import pytest
import torch

pytest.importorskip("pymeshlab", reason="mesh reconstruction needs pymeshlab (the `shapes` extra)")
trimesh = pytest.importorskip("trimesh", reason="trimesh is not installed (the `shapes` extra)")


def _torus_distance(p, R, r):
    """Exact distance of points ``[N, 3]`` to the torus of radii ``R``, ``r`` about the y axis."""
    q = np.hypot(p[:, 0], p[:, 2]) - R
    return np.abs(np.hypot(q, p[:, 1]) - r)


def test_poisson_reconstruction_lies_on_and_covers_a_torus():
    from domains.shapes.mesh import reconstruct_mesh

    R, r = 0.35, 0.12
    g = torch.Generator().manual_seed(0)
    u, v = (torch.rand(2, 1024, generator=g) * 2 * np.pi).double()
    # area-uniform on the torus: accept v with probability (R + r cos v) / (R + r)
    keep = torch.rand(1024, generator=g, dtype=torch.float64) < (R + r * torch.cos(v)) / (R + r)
    u, v = u[keep], v[keep]
    pts = torch.stack([(R + r * torch.cos(v)) * torch.cos(u), r * torch.sin(v), (R + r * torch.cos(v)) * torch.sin(u)], 1)
    nrm = torch.stack([torch.cos(v) * torch.cos(u), torch.sin(v), torch.cos(v) * torch.sin(u)], 1)
    V, F = reconstruct_mesh(pts, nrm, "poisson", depth=6)
    assert F.shape[1] == 3 and len(F) > 500 and F.min() >= 0 and F.max() < len(V)
    assert np.median(_torus_distance(V, R, r)) < 0.01 and _torus_distance(V, R, r).max() < 0.05
    # coverage: every input point has a mesh vertex close by (no large piece of the torus missing)
    assert float(torch.cdist(pts, torch.as_tensor(V)).min(1).values.max()) < 0.05
    # the same reconstruction of i.i.d. noise is far from the torus (the check above can fail)
    noise = torch.randn(len(pts), 3, generator=g, dtype=torch.float64) * 0.3
    Vn, _ = reconstruct_mesh(noise, None, "poisson", depth=6)
    assert np.median(_torus_distance(Vn, R, r)) > 0.05


def test_ball_pivoting_interpolates_the_points_and_errors():
    from domains.shapes.data import build_shape, random_params, sample_points
    from domains.shapes.mesh import reconstruct_mesh

    s = build_shape("superquadric", random_params("superquadric", np.random.default_rng(1)))
    p, n = sample_points(s.mesh, 400, 0)
    V, F = reconstruct_mesh(p, n, "ball_pivoting")
    assert len(F) > 100
    assert float(torch.cdist(torch.as_tensor(V), p.double()).min(1).values.max()) < 1e-6
    with pytest.raises(ValueError, match="unknown mesh method 'marching'; valid: poisson, ball_pivoting"):
        reconstruct_mesh(p, n, "marching")
    with pytest.raises(ValueError, match="finite"):
        reconstruct_mesh(torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        reconstruct_mesh(torch.zeros(10, 2))


def test_render_views_writes_one_panel_per_view(tmp_path):
    from matplotlib.image import imread

    from domains.shapes.mesh import render_views

    box = trimesh.creation.box((0.5, 0.3, 0.2))
    pts = torch.as_tensor(box.sample(200, seed=0))
    one = render_views(tmp_path / "one.png", pts, (box.vertices, box.faces), views=((20, 30),), size=2.0, dpi=50)
    three = render_views(tmp_path / "three.png", pts, (box.vertices, box.faces), size=2.0, dpi=50)
    a, b = imread(one), imread(three)
    assert a.shape[0] == b.shape[0] and b.shape[1] == 3 * a.shape[1]
    assert float(np.asarray(b[..., :3]).std()) > 0.01  # something was drawn
    with pytest.raises(ValueError, match="needs points, a mesh, or both"):
        render_views(tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
