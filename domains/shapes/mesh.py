"""Surface meshes from generated point clouds, and multi-view PNG renders.

:func:`reconstruct_mesh` turns a cloud ``points [N, 3]`` (with outward normals ``[N, 3]``) into a
triangle mesh with PyMeshLab (the Python bindings of MeshLab, already a dependency of the
domain's data; no CUDA, no Open3D):

* ``poisson``: screened Poisson surface reconstruction (Kazhdan & Hoppe 2013, "Screened Poisson
  Surface Reconstruction"), octree depth ``depth``: a watertight surface that needs consistently
  oriented normals. Generated clouds have none, so :func:`~domains.shapes.domain.pca_normals`
  estimates them (PCA of the nearest neighbours, oriented away from the centroid: right for
  star-shaped parts, wrong inside concavities, where Poisson then bulges). Faces with a vertex
  farther than ``trim`` from every input point are removed (Poisson closes holes with surface that no point
  supports; ``trim=None`` keeps them).
* ``ball_pivoting``: the ball-pivoting algorithm (Bernardini et al. 1999): interpolates the
  points themselves (every vertex is an input point), leaves holes where the cloud is sparse.

:func:`render_views` draws a mesh (shaded by its face normals) or a cloud from several
azimuth / elevation views with matplotlib's Agg backend (no display, no OpenGL).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

#: reconstruction methods of :func:`reconstruct_mesh`
MESH_METHODS = ("poisson", "ball_pivoting")
#: default views of :func:`render_views`: (elevation, azimuth) in degrees (front-left, right, top-back)
DEFAULT_VIEWS = ((20.0, -60.0), (20.0, 30.0), (60.0, 150.0))


def _np(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        raise ValueError(f"{name} must be a non-empty [N, 3] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def reconstruct_mesh(points, normals=None, method: str = "poisson", *, depth: int = 6,
                     trim: Optional[float] = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices [V, 3] float64, faces [F, 3] int64)``: a triangle mesh through the cloud
    ``points [N, 3]`` (``normals [N, 3]``: outward unit normals; ``None`` estimates them with
    :func:`~domains.shapes.domain.pca_normals`). ``method``: ``poisson`` (screened Poisson at
    octree ``depth``; faces with a vertex farther than ``trim`` (points' units) from every point
    removed) or ``ball_pivoting`` (PyMeshLab's automatic ball radius). One thread."""
    if method not in MESH_METHODS:
        raise ValueError(f"unknown mesh method {method!r}; valid: {', '.join(MESH_METHODS)}")
    import pymeshlab

    p = _np(points, "points")
    if len(p) < 4:
        raise ValueError(f"mesh reconstruction needs at least 4 points, got {len(p)}")
    if normals is None:
        from .domain import pca_normals

        normals = pca_normals(torch.as_tensor(p))
    n = _np(normals, "normals")
    if n.shape != p.shape:
        raise ValueError(f"{len(p)} points but {len(n)} normals")
    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(vertex_matrix=p, v_normals_matrix=n))
    if method == "poisson":
        ms.generate_surface_reconstruction_screened_poisson(depth=int(depth), preclean=True, threads=1)
    else:
        ms.generate_surface_reconstruction_ball_pivoting()
    m = ms.current_mesh()
    v = np.asarray(m.vertex_matrix(), dtype=np.float64)
    f = np.asarray(m.face_matrix(), dtype=np.int64).reshape(-1, 3)
    if method == "poisson" and trim is not None and len(f):
        near = torch.cdist(torch.as_tensor(v), torch.as_tensor(p)).min(1).values.numpy() <= float(trim)
        f = f[near[f].all(1)]
        used = np.unique(f)
        remap = np.full(len(v), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        v, f = v[used], remap[f]
    return v, f


def render_views(path, points=None, mesh: Optional[tuple] = None, *, views: Sequence = DEFAULT_VIEWS,
                 title: Optional[str] = None, size: float = 2.4, dpi: int = 80) -> Path:
    """Write a PNG (atomically) with one panel per ``(elevation, azimuth)`` view of ``mesh``
    (``(vertices [V, 3], faces [F, 3])``, Lambert-shaded by face normal) and/or the cloud
    ``points [N, 3]`` (dots, drawn over the mesh). Axes span the data's bounding cube (+y up)."""
    from workbench.utils import atomic_path
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if points is None and mesh is None:
        raise ValueError("render_views needs points, a mesh, or both")
    pts = None if points is None else _np(points, "points")
    allp = [a for a in (pts, None if mesh is None else _np(mesh[0], "mesh vertices")) if a is not None]
    allp = np.concatenate(allp)
    c, half = (allp.max(0) + allp.min(0)) / 2, max(float((allp.max(0) - allp.min(0)).max()) / 2, 1e-6) * 1.05
    fig = Figure(figsize=(size * len(views), size + (0.3 if title else 0.0)))
    light = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
    for k, (elev, azim) in enumerate(views):
        ax = fig.add_subplot(1, len(views), k + 1, projection="3d")
        # matplotlib's z axis is up: plot (x, z, y) so the shapes' +y is up
        if mesh is not None:
            v, f = np.asarray(mesh[0], dtype=np.float64), np.asarray(mesh[1], dtype=np.int64).reshape(-1, 3)
            if len(f):
                tri = v[f][:, :, [0, 2, 1]]
                nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
                nrm /= np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)
                shade = 0.35 + 0.65 * np.abs(nrm @ light[[0, 2, 1]])
                col = np.stack([0.55 * shade, 0.65 * shade, 0.85 * shade, np.ones_like(shade)], 1)
                ax.add_collection3d(Poly3DCollection(tri, facecolors=col, edgecolors="none"))
        if pts is not None:
            ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=1.0, c="k" if mesh is not None else pts[:, 2],
                       cmap=None if mesh is not None else "viridis", depthshade=False, linewidths=0)
        ax.set_xlim(c[0] - half, c[0] + half)
        ax.set_ylim(c[2] - half, c[2] + half)
        ax.set_zlim(c[1] - half, c[1] + half)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.view_init(elev=float(elev), azim=float(azim))
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
