"""Data of the ``shapes`` domain: meshes, surface point clouds with normals, and their labels.

Two sources, nothing copied into the project:

* **Real meshes**, read in place at run time (:data:`REAL_MESHES`): the sample meshes shipped in
  pip ``pymeshlab`` (``pymeshlab/tests/sample_meshes/``: Stanford bunny, cow, airplane, bone,
  all closed; a face range scan, open), and, when the Debian package ``assimp-testmodels`` is
  installed (``/usr/share/assimp/models``, BSD-3-Clause), three of its models (Wuson, spider,
  a two-cylinder engine CAD assembly; none of them is watertight: they serve surface sampling).
* **Procedural families** (:data:`PROCEDURAL_FAMILIES`), built from ``trimesh.creation`` boxes,
  cylinders and tori, a superquadric surface written here (Barr 1981), and chairs, tables and
  airplanes assembled from boxes and cylinders (boolean union by ``manifold3d``, so every
  procedural mesh is watertight). Their parameters (:data:`PARAM_NAMES`) are kept as labels.
  Every family's geometry is homogeneous of degree one in its length parameters (thicknesses
  and insets are fixed fractions of them), so a normalised shape is exactly the family's shape
  at the normalised parameters: the labels are the parameters *after* normalisation.

Conventions: **up axis +y** (ShapeNet's, :data:`UP_AXIS`); procedural shapes face +z (the
chair's back is at -z, the airplane's nose at +z). **Normalisation** (``normalize=``):

* ``"box"`` (default): the bounding-box centre to the origin and the longest side to 1, so every
  shape lies in ``[-0.5, 0.5]^3`` and touches it on one axis (LION's ``norm_box``: its
  ``normalize_point_clouds(mode="shape_bbox")`` times 0.5; Zeng et al. 2022).
* ``"sphere"``: the bounding-box centre to the origin and the farthest vertex at distance 1
  (the unit sphere about the box centre, not the minimal enclosing sphere).

Procedural shapes are normalised with their analytic bounding boxes (the meshes' vertices reach
them); real meshes with their vertices' boxes.

Surface points (:func:`sample_points`) are area-weighted uniform samples on the triangles
(Osada et al. 2002's square-root barycentric rule), each with its face's unit normal (outward on
the closed meshes). :func:`augment` applies a random rotation about the up axis, a small
anisotropic scaling (normals transform by the inverse transpose) and a clipped Gaussian jitter.
:class:`ShapeDataset` draws ``per_family`` shapes of each family and splits them by seed.
"""
from __future__ import annotations

import importlib.util
import math
import os
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

UP_AXIS = 1  #: +y is up (ShapeNet's convention); augmentation rotates about it

BOX, CYLINDER, TORUS, SUPERQUADRIC = "box", "cylinder", "torus", "superquadric"
CHAIR, TABLE, AIRPLANE = "chair", "table", "airplane"
#: the procedural families, in label order when a dataset uses them all
PROCEDURAL_FAMILIES = (BOX, CYLINDER, TORUS, SUPERQUADRIC, CHAIR, TABLE, AIRPLANE)
NORMALIZATIONS = ("box", "sphere")
SPLITS = ("train", "val", "test")
INSTALL_HINT = "pip install -c constraints.txt -e '.[shapes]'  (trimesh, manifold3d, pymeshlab)"
#: where the Debian package ``assimp-testmodels`` puts its models
ASSIMP_MODELS_DIR = Path("/usr/share/assimp/models")

# mesh resolution of the curved primitives
_CYL_SECTIONS = 64
_TORUS_SECTIONS = (64, 32)
_SQ_GRID = (48, 96)  # superquadric: latitude rings + 1, longitude segments (a multiple of 4)


# ----------------------------------------------------------------------------------------------
# primitives: the geometry behind both the meshes and the signed distances of the oracle
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prim:
    """One primitive in a family's own frame (y up). ``kind``: ``"box"`` (``size`` = half
    extents ``(hx, hy, hz)``), ``"cyl"`` (``size = (radius, half_height)``, along ``axis``),
    ``"torus"`` (``size = (major, minor)``, axis y), ``"sq"`` (superquadric, ``size = (eps1,
    eps2, a_x, a_y, a_z)``, eps1 the exponent along y)."""

    kind: str
    center: tuple
    size: tuple
    axis: int = 1

    def bounds(self) -> np.ndarray:
        """Analytic axis-aligned bounds ``[2, 3]`` (min, max)."""
        c = np.asarray(self.center, dtype=np.float64)
        if self.kind == "box":
            h = np.asarray(self.size, dtype=np.float64)
        elif self.kind == "cyl":
            r, hh = self.size
            h = np.full(3, r, dtype=np.float64)
            h[self.axis] = hh
        elif self.kind == "torus":
            R, r = self.size
            h = np.array([R + r, r, R + r])
        elif self.kind == "sq":
            h = np.asarray(self.size[2:], dtype=np.float64)
        else:
            raise ValueError(f"unknown primitive kind {self.kind!r}")
        return np.stack([c - h, c + h])

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance of points ``p [N, 3]`` (negative inside) ``-> [N]``. Exact for boxes,
        cylinders and tori; for superquadrics the radial distance ``|q| (1 - F(q)^(-eps1/2))``
        (F the inside-outside function; Jaklic, Leonardis & Solina 2000, eq. 2.15)."""
        q = p - np.asarray(self.center, dtype=np.float64)
        if self.kind == "box":
            d = np.abs(q) - np.asarray(self.size)
            return np.linalg.norm(np.maximum(d, 0.0), axis=1) + np.minimum(d.max(axis=1), 0.0)
        if self.kind == "cyl":
            r, hh = self.size
            other = [i for i in range(3) if i != self.axis]
            d = np.stack([np.linalg.norm(q[:, other], axis=1) - r, np.abs(q[:, self.axis]) - hh], axis=1)
            return np.linalg.norm(np.maximum(d, 0.0), axis=1) + np.minimum(d.max(axis=1), 0.0)
        if self.kind == "torus":
            R, r = self.size
            return np.hypot(np.hypot(q[:, 0], q[:, 2]) - R, q[:, 1]) - r
        if self.kind == "sq":
            e1, e2, ax, ay, az = self.size
            f = superquadric_inside_outside(q, e1, e2, (ax, ay, az))
            return np.linalg.norm(q, axis=1) * (1.0 - np.power(np.maximum(f, 1e-12), -e1 / 2.0))
        raise ValueError(f"unknown primitive kind {self.kind!r}")


    def surface_points(self) -> np.ndarray:
        """A fixed, deterministic set of points on the primitive's surface ``[K, 3]`` (a grid in
        its own parametrisation; smooth in the primitive's parameters): the model side of the
        two-sided fit of :func:`domains.shapes.metrics.fit_params`."""
        c = np.asarray(self.center, dtype=np.float64)
        if self.kind == "box":
            h = np.asarray(self.size, dtype=np.float64)
            u = np.linspace(-1.0, 1.0, 5)
            U, V = (a.reshape(-1) for a in np.meshgrid(u, u, indexing="ij"))
            out = []
            for k in range(3):
                i, j = [a for a in range(3) if a != k]
                for sgn in (-1.0, 1.0):
                    q = np.zeros((len(U), 3))
                    q[:, i], q[:, j], q[:, k] = U, V, sgn
                    out.append(q)
            return c + np.concatenate(out) * h
        if self.kind == "cyl":
            r, hh = self.size
            i, j = [a for a in range(3) if a != self.axis]
            th = 2 * np.pi * np.arange(16) / 16
            T, Hh = (a.reshape(-1) for a in np.meshgrid(th, np.linspace(-1.0, 1.0, 5), indexing="ij"))
            side = np.zeros((len(T), 3))
            side[:, i], side[:, j], side[:, self.axis] = r * np.cos(T), r * np.sin(T), hh * Hh
            th2 = 2 * np.pi * np.arange(8) / 8
            caps = []
            for sgn in (-1.0, 1.0):
                for rr in (0.0, 0.5 * r):
                    q = np.zeros((len(th2), 3))
                    q[:, i], q[:, j], q[:, self.axis] = rr * np.cos(th2), rr * np.sin(th2), sgn * hh
                    caps.append(q)
            return c + np.concatenate([side] + caps)
        if self.kind == "torus":
            R, r = self.size
            U, V = (a.reshape(-1) for a in np.meshgrid(2 * np.pi * np.arange(24) / 24, 2 * np.pi * np.arange(8) / 8,
                                                      indexing="ij"))
            rad = R + r * np.cos(V)
            return c + np.stack([rad * np.cos(U), r * np.sin(V), rad * np.sin(U)], axis=1)
        if self.kind == "sq":
            e1, e2, ax, ay, az = self.size
            E, O = (a.reshape(-1) for a in np.meshgrid(np.linspace(-np.pi / 2, np.pi / 2, 9),
                                                       -np.pi + 2 * np.pi * np.arange(16) / 16, indexing="ij"))

            def spow(v, e):
                return np.sign(v) * np.abs(v) ** e

            ce = spow(np.cos(E), e1)
            return c + np.stack([ax * ce * spow(np.cos(O), e2), ay * spow(np.sin(E), e1), az * ce * spow(np.sin(O), e2)], 1)
        raise ValueError(f"unknown primitive kind {self.kind!r}")


def superquadric_inside_outside(q: np.ndarray, eps1: float, eps2: float, a: Sequence[float]) -> np.ndarray:
    """Barr's inside-outside function ``F [N]`` of points ``q [N, 3]`` for the superquadric with
    exponents ``eps1`` (along y, the up axis) and ``eps2`` (in the xz plane) and semi-axes
    ``a = (a_x, a_y, a_z)``: ``F = (|x/a_x|^(2/eps2) + |z/a_z|^(2/eps2))^(eps2/eps1) +
    |y/a_y|^(2/eps1)``; 1 on the surface, < 1 inside."""
    ax, ay, az = a
    x, y, z = np.abs(q[:, 0]) / ax, np.abs(q[:, 1]) / ay, np.abs(q[:, 2]) / az
    h = np.power(x, 2.0 / eps2) + np.power(z, 2.0 / eps2)
    return np.power(h, eps2 / eps1) + np.power(y, 2.0 / eps1)


def parts_sdf(parts: Sequence[Prim], p: np.ndarray) -> np.ndarray:
    """Signed distance of the union of ``parts`` (the minimum of theirs; exact outside, a lower
    bound of the depth inside) at points ``p [N, 3]`` ``-> [N]``."""
    return np.min(np.stack([pr.sdf(p) for pr in parts]), axis=0)


def parts_bounds(parts: Sequence[Prim]) -> np.ndarray:
    """Analytic axis-aligned bounds ``[2, 3]`` of the union of ``parts``."""
    b = np.stack([pr.bounds() for pr in parts])
    return np.stack([b[:, 0].min(axis=0), b[:, 1].max(axis=0)])


# ----------------------------------------------------------------------------------------------
# the procedural families
# ----------------------------------------------------------------------------------------------
def _box_parts(p):
    ex, ey, ez = p
    return [Prim("box", (0.0, 0.0, 0.0), (ex / 2, ey / 2, ez / 2))]


def _cylinder_parts(p):
    r, h = p
    return [Prim("cyl", (0.0, 0.0, 0.0), (r, h / 2), axis=1)]


def _torus_parts(p):
    R, r = p
    return [Prim("torus", (0.0, 0.0, 0.0), (R, r))]


def _superquadric_parts(p):
    return [Prim("sq", (0.0, 0.0, 0.0), tuple(p))]


def _chair_parts(p):
    """Seat (thickness t = 0.1 seat depth), four square legs of side t from the floor (y = 0) into
    the seat, a back of thickness t at -z rising ``back_height`` above the seat."""
    w, d, L, hb = p
    t = 0.1 * d
    legs = [Prim("box", (sx * (w / 2 - t / 2), (L + t / 2) / 2, sz * (d / 2 - t / 2)), (t / 2, (L + t / 2) / 2, t / 2))
            for sx in (-1, 1) for sz in (-1, 1)]
    seat = Prim("box", (0.0, L + t / 2, 0.0), (w / 2, t / 2, d / 2))
    back = Prim("box", (0.0, (L + L + t + hb) / 2, -d / 2 + t / 2), (w / 2, (t + hb) / 2, t / 2))
    return legs + [seat, back]


def _table_parts(p):
    """Top (thickness 0.05 top depth) and four cylindrical legs inset by 2 leg radii + 0.05 top
    depth from the edges, from the floor into the top."""
    w, d, L, r = p
    t = 0.05 * d
    inset = 2 * r + 0.05 * d
    top = Prim("box", (0.0, L + t / 2, 0.0), (w / 2, t / 2, d / 2))
    legs = [Prim("cyl", (sx * (w / 2 - inset), (L + t / 2) / 2, sz * (d / 2 - inset)), (r, (L + t / 2) / 2), axis=1)
            for sx in (-1, 1) for sz in (-1, 1)]
    return [top] + legs


def _airplane_parts(p):
    """Fuselage (cylinder along z), wings (thickness 0.15 chord) centred 0.1 fuselage length
    ahead of the middle, a horizontal tail (chord half the wing chord) and a vertical fin (height
    fuselage radius + half the tail span above the axis) at the rear."""
    fl, fr, ws, wc, ts = p
    tc = 0.5 * wc
    z_tail = -fl / 2 + 0.6 * tc
    fin_top = fr + 0.5 * ts
    return [Prim("cyl", (0.0, 0.0, 0.0), (fr, fl / 2), axis=2),
            Prim("box", (0.0, 0.0, 0.1 * fl), (ws / 2, 0.075 * wc, wc / 2)),
            Prim("box", (0.0, 0.0, z_tail), (ts / 2, 0.05 * wc, tc / 2)),
            Prim("box", (0.0, fin_top / 2, z_tail), (0.05 * wc, fin_top / 2, tc / 2))]


@dataclass(frozen=True)
class Family:
    """A procedural family: ``param_names``, the uniform ``ranges`` of its raw parameters,
    ``length`` (which parameters are lengths: they scale with normalisation; the others, the
    superquadric exponents, do not), ``parts`` (params -> primitives) and ``symmetries``
    (permutations of the parameters that give the same shape turned 90 degrees about y)."""

    name: str
    param_names: tuple
    ranges: tuple
    length: tuple
    parts: Callable = field(repr=False, compare=False, default=None)
    symmetries: tuple = ()


FAMILIES = {
    BOX: Family(BOX, ("extent_x", "extent_y", "extent_z"), ((0.3, 1.0),) * 3, (True,) * 3, _box_parts,
                ((2, 1, 0),)),
    CYLINDER: Family(CYLINDER, ("radius", "height"), ((0.15, 0.5), (0.3, 1.5)), (True, True), _cylinder_parts),
    TORUS: Family(TORUS, ("major_radius", "minor_radius"), ((0.5, 1.0), (0.08, 0.35)), (True, True), _torus_parts),
    SUPERQUADRIC: Family(SUPERQUADRIC, ("eps1", "eps2", "a_x", "a_y", "a_z"),
                         ((0.4, 1.6), (0.4, 1.6), (0.4, 1.0), (0.4, 1.0), (0.4, 1.0)),
                         (False, False, True, True, True), _superquadric_parts, ((0, 1, 4, 3, 2),)),
    CHAIR: Family(CHAIR, ("seat_width", "seat_depth", "leg_length", "back_height"),
                  ((0.4, 0.7), (0.4, 0.7), (0.3, 0.6), (0.3, 0.7)), (True,) * 4, _chair_parts),
    TABLE: Family(TABLE, ("top_width", "top_depth", "leg_length", "leg_radius"),
                  ((0.8, 1.6), (0.5, 1.0), (0.4, 0.9), (0.02, 0.06)), (True,) * 4, _table_parts, ((1, 0, 2, 3),)),
    AIRPLANE: Family(AIRPLANE, ("fuselage_length", "fuselage_radius", "wing_span", "wing_chord", "tail_span"),
                     ((1.2, 2.0), (0.06, 0.14), (1.0, 2.2), (0.2, 0.4), (0.4, 0.8)), (True,) * 5, _airplane_parts),
}
#: parameter names of each procedural family (the label vector's order)
PARAM_NAMES = {k: f.param_names for k, f in FAMILIES.items()}
MAX_PARAMS = max(len(v) for v in PARAM_NAMES.values())


def _family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown procedural family {name!r}; known: {', '.join(PROCEDURAL_FAMILIES)}") from None


def family_parts(family: str, params: Sequence[float]) -> list:
    """The primitives of ``family`` at ``params`` (raw or normalised: the geometry is homogeneous
    in the length parameters), in the family's own frame (floor at y = 0 for chairs and tables,
    centred otherwise)."""
    f = _family(family)
    params = [float(v) for v in np.asarray(params, dtype=np.float64).reshape(-1)]
    if len(params) != len(f.param_names):
        raise ValueError(f"{family}: expected {len(f.param_names)} parameters {f.param_names}, got {len(params)}")
    return f.parts(params)


def random_params(family: str, rng: np.random.Generator) -> np.ndarray:
    """Raw parameters of ``family`` drawn uniformly from its ranges ``-> [P]`` float64."""
    f = _family(family)
    lo, hi = np.asarray(f.ranges, dtype=np.float64).T
    return lo + (hi - lo) * rng.random(len(lo))


def normalization_scale(bounds: np.ndarray, vertices: Optional[np.ndarray] = None, normalize: str = "box"):
    """``(center [3], scale)`` of a shape with axis-aligned ``bounds [2, 3]``: normalised
    coordinates are ``(x - center) * scale``. ``"box"``: longest side 1; ``"sphere"``: the
    farthest of ``vertices`` (or of the box's corners) at distance 1 from the box centre."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    bounds = np.asarray(bounds, dtype=np.float64)
    center = bounds.mean(axis=0)
    if normalize == "box":
        size = float((bounds[1] - bounds[0]).max())
    else:
        pts = vertices if vertices is not None else np.array(np.meshgrid(*bounds.T)).reshape(3, -1).T
        size = float(np.linalg.norm(np.asarray(pts, dtype=np.float64) - center, axis=1).max())
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"cannot normalise a degenerate shape (bounds {bounds.tolist()})")
    return center, 1.0 / size


# ----------------------------------------------------------------------------------------------
# meshes
# ----------------------------------------------------------------------------------------------
def _trimesh():
    try:
        import trimesh
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"the shapes domain needs trimesh: {INSTALL_HINT}") from None
    return trimesh


def superquadric_mesh(eps1: float, eps2: float, a: Sequence[float], grid: tuple = _SQ_GRID):
    """A watertight triangle mesh of the superquadric surface (Barr 1981), up axis y:
    ``x = a_x C(eta)^eps1 C(omega)^eps2``, ``y = a_y S(eta)^eps1``, ``z = a_z C(eta)^eps1
    S(omega)^eps2`` with signed powers, on a latitude/longitude grid (``grid = (rings + 1,
    segments)``; segments a multiple of 4 so the grid holds the extreme points ``+-a``)."""
    tm = _trimesh()
    n_lat, n_lon = grid
    ax, ay, az = (float(v) for v in a)

    def spow(v, e):
        return np.sign(v) * np.abs(v) ** e

    eta = -np.pi / 2 + np.pi * np.arange(1, n_lat) / n_lat  # the rings between the poles
    omega = -np.pi + 2 * np.pi * np.arange(n_lon) / n_lon
    E, O = np.meshgrid(eta, omega, indexing="ij")
    ce, se = spow(np.cos(E), eps1), spow(np.sin(E), eps1)
    ring = np.stack([ax * ce * spow(np.cos(O), eps2), ay * se, az * ce * spow(np.sin(O), eps2)], axis=-1).reshape(-1, 3)
    verts = np.concatenate([[[0.0, -ay, 0.0]], ring, [[0.0, ay, 0.0]]])
    R = n_lat - 1
    idx = 1 + np.arange(R * n_lon).reshape(R, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(n_lon, dtype=np.int64), nxt[0], idx[0]], axis=1)]
    a_, b_, c_, d_ = idx[:-1], nxt[:-1], nxt[1:], idx[1:]
    faces += [np.stack([a_, b_, c_], axis=-1).reshape(-1, 3), np.stack([a_, c_, d_], axis=-1).reshape(-1, 3)]
    faces.append(np.stack([np.full(n_lon, len(verts) - 1), idx[-1], nxt[-1]], axis=1))
    mesh = tm.Trimesh(verts, np.concatenate(faces), process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _prim_mesh(pr: Prim):
    tm = _trimesh()
    T = tm.transformations
    move = T.translation_matrix(pr.center)
    if pr.kind == "box":
        return tm.creation.box(extents=2 * np.asarray(pr.size), transform=move)
    if pr.kind == "cyl":
        r, hh = pr.size
        turn = {0: T.rotation_matrix(np.pi / 2, [0, 1, 0]), 1: T.rotation_matrix(-np.pi / 2, [1, 0, 0]), 2: np.eye(4)}[pr.axis]
        return tm.creation.cylinder(radius=r, height=2 * hh, sections=_CYL_SECTIONS, transform=move @ turn)
    if pr.kind == "torus":
        R, r = pr.size
        return tm.creation.torus(R, r, major_sections=_TORUS_SECTIONS[0], minor_sections=_TORUS_SECTIONS[1],
                                 transform=move @ T.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    if pr.kind == "sq":
        m = superquadric_mesh(pr.size[0], pr.size[1], pr.size[2:])
        m.apply_transform(move)
        return m
    raise ValueError(f"unknown primitive kind {pr.kind!r}")


def parts_mesh(parts: Sequence[Prim]):
    """The watertight mesh of the union of ``parts`` (``manifold3d`` booleans for several)."""
    tm = _trimesh()
    meshes = [_prim_mesh(p) for p in parts]
    if len(meshes) == 1:
        return meshes[0]
    if importlib.util.find_spec("manifold3d") is None:
        raise ModuleNotFoundError(f"the composed shapes (chairs, tables, airplanes) need manifold3d: {INSTALL_HINT}")
    return tm.boolean.union(meshes, engine="manifold")


@dataclass
class Shape:
    """A normalised shape: ``mesh`` (a ``trimesh.Trimesh``), ``family``, ``params`` (normalised
    parameters ``[P]`` float64; empty for real meshes), ``raw_params`` (before normalisation),
    ``center`` ``[3]`` and ``scale`` (normalised = ``(raw - center) * scale``)."""

    mesh: object
    family: str
    params: np.ndarray
    raw_params: np.ndarray
    center: np.ndarray
    scale: float


def normalized_params(family: str, raw_params: Sequence[float], scale: float) -> np.ndarray:
    """``raw_params`` with the length parameters multiplied by ``scale`` ``-> [P]``."""
    f = _family(family)
    p = np.asarray(raw_params, dtype=np.float64).copy()
    p[np.asarray(f.length)] *= scale
    return p


def build_shape(family: str, params: Sequence[float], normalize: str = "box") -> Shape:
    """The normalised shape of a procedural ``family`` at raw ``params`` (see the module doc)."""
    parts = family_parts(family, params)
    mesh = parts_mesh(parts)
    bounds = parts_bounds(parts)
    center, scale = normalization_scale(bounds, mesh.vertices if normalize == "sphere" else None, normalize)
    mesh.apply_translation(-center)
    mesh.apply_scale(scale)
    raw = np.asarray(params, dtype=np.float64)
    return Shape(mesh, family, normalized_params(family, raw, scale), raw, center, scale)


# ----------------------------------------------------------------------------------------------
# real meshes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealMesh:
    """A mesh shipped by an installed package: ``source`` (``"pymeshlab"`` or
    ``"assimp-testmodels"``), ``relpath`` inside it, ``closed`` (watertight, consistently
    oriented), ``note`` (what it is; vertex / face counts as loaded by trimesh)."""

    name: str
    source: str
    relpath: str
    closed: bool
    note: str


REAL_MESHES = {m.name: m for m in [
    RealMesh("bunny", "pymeshlab", "tests/sample_meshes/bunny.obj", True, "Stanford bunny, 28,088 vertices, 56,172 faces"),
    RealMesh("cow", "pymeshlab", "tests/sample_meshes/cow.obj", True, "cow, 2,903 vertices, 5,804 faces"),
    RealMesh("airplane_mesh", "pymeshlab", "tests/sample_meshes/airplane.obj", True, "airplane, 5,400 vertices, 10,796 faces"),
    RealMesh("bone", "pymeshlab", "tests/sample_meshes/bone.ply", True, "bone, 1,513 vertices, 3,022 faces"),
    RealMesh("face_scan", "pymeshlab", "tests/sample_meshes/rangemaps/face000.ply", False,
             "one range scan of a face, 85,182 vertices, 166,259 faces, open, 17 pieces"),
    RealMesh("wuson", "assimp-testmodels", "STL/Wuson.stl", False,
             "Wuson figure, 2,117 vertices, 3,732 faces, 51 pieces, 4% boundary edges"),
    RealMesh("spider", "assimp-testmodels", "OBJ/spider.obj", False, "spider, 946 vertices, 1,368 faces, 39 pieces"),
    RealMesh("engine", "assimp-testmodels", "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb", False,
             "two-cylinder engine CAD assembly (Khronos glTF sample), 84,657 vertices, 121,496 faces"),
]}
REAL_MESH_NAMES = tuple(REAL_MESHES)
CLOSED_REAL_MESHES = tuple(k for k, m in REAL_MESHES.items() if m.closed)


def pymeshlab_dir() -> Path:
    """The installed ``pymeshlab`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pymeshlab")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the real meshes need pip pymeshlab, which is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def assimp_models_dir() -> Path:
    """The models of the Debian package ``assimp-testmodels`` (``$ASSIMP_MODELS_DIR`` overrides)."""
    d = Path(os.environ.get("ASSIMP_MODELS_DIR", ASSIMP_MODELS_DIR))
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: the Debian package assimp-testmodels is not installed "
                                f"(apt-get install assimp-testmodels)")
    return d


def real_mesh_path(name: str) -> Path:
    """The file of real mesh ``name`` inside its installed package (raises when absent)."""
    if name not in REAL_MESHES:
        raise ValueError(f"unknown real mesh {name!r}; known: {', '.join(REAL_MESH_NAMES)}")
    m = REAL_MESHES[name]
    root = pymeshlab_dir() if m.source == "pymeshlab" else assimp_models_dir()
    path = root / m.relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path}: real mesh {name!r} is missing from the installed {m.source}")
    return path


def available_real_meshes(closed_only: bool = False) -> tuple:
    """Names of the real meshes whose package is installed (optionally only the closed ones)."""
    out = []
    for k, m in REAL_MESHES.items():
        if closed_only and not m.closed:
            continue
        try:
            real_mesh_path(k)
        except (ModuleNotFoundError, FileNotFoundError):
            continue
        out.append(k)
    return tuple(out)


@lru_cache(maxsize=16)
def _load_raw(path: str):
    tm = _trimesh()
    try:
        mesh = tm.load(path, force="mesh", process=True)
    except Exception as e:  # trimesh raises many kinds
        raise ValueError(f"{path}: cannot be read as a mesh: {type(e).__name__}: {' '.join(str(e).split())}") from None
    if len(mesh.faces) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    return mesh


def load_real_mesh(name: str, normalize: str = "box") -> Shape:
    """Real mesh ``name`` read in place, normalised (orientation as stored). ``params`` empty."""
    path = real_mesh_path(name)
    mesh = _load_raw(str(path)).copy()
    center, scale = normalization_scale(mesh.bounds, mesh.vertices, normalize)
    mesh.apply_translation(-center)
    mesh.apply_scale(scale)
    empty = np.zeros(0, dtype=np.float64)
    return Shape(mesh, name, empty, empty, center, scale)


# ----------------------------------------------------------------------------------------------
# surface sampling and augmentation
# ----------------------------------------------------------------------------------------------
GeneratorArg = Union[None, int, torch.Generator]


def _generator(generator: GeneratorArg) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(0 if generator is None else int(generator))
    return g


def sample_points(mesh, n: int, generator: GeneratorArg = None):
    """Area-weighted uniform surface samples with their face normals.

    ``mesh``: a ``trimesh.Trimesh`` or ``(vertices [V, 3], faces [F, 3])``; ``generator``: a
    ``torch.Generator`` or an integer seed (``None``: seed 0). Faces are drawn with probability
    proportional to their area, points inside them with the barycentric coordinates
    ``(1 - sqrt(r1), sqrt(r1) (1 - r2), sqrt(r1) r2)`` (uniform on the triangle; Osada et al.
    2002). Returns ``points [n, 3]`` and unit ``normals [n, 3]`` (float32 tensors; the normal of
    the face each point lies on, oriented as the face's winding)."""
    if isinstance(mesh, (tuple, list)):
        verts, faces = mesh
    else:
        verts, faces = mesh.vertices, mesh.faces
    v = torch.as_tensor(np.asarray(verts), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tri = v[f]  # [F, 3, 3]
    cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = cross.norm(dim=1)
    if not torch.isfinite(area2).all() or area2.sum() <= 0:
        raise ValueError("cannot sample a mesh with no area or non-finite vertices")
    g = _generator(generator)
    idx = torch.multinomial(area2, n, replacement=True, generator=g)
    r = torch.rand(n, 2, generator=g, dtype=torch.float64)
    s = r[:, :1].sqrt()
    w = torch.cat([1 - s, s * (1 - r[:, 1:]), s * r[:, 1:]], dim=1)
    pts = (w[:, :, None] * tri[idx]).sum(dim=1)
    nrm = cross[idx] / area2[idx, None]
    return pts.float(), nrm.float()


@dataclass
class Augment:
    """Augmentation settings: ``rotate`` (uniform angle about the up axis), ``scale`` (per-axis
    factors drawn uniformly from ``(low, high)``; ``None``: off), ``jitter`` (Gaussian sigma of
    the point noise, clipped at ``+-jitter_clip``; normals unchanged)."""

    rotate: bool = True
    scale: Optional[tuple] = (0.9, 1.1)
    jitter: float = 0.005
    jitter_clip: float = 0.02


def rotation_about_up(angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` about +y by ``angle [...]`` (radians, right-handed)."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def augment(points: torch.Tensor, normals: Optional[torch.Tensor] = None, cfg: Optional[Augment] = None,
            generator: GeneratorArg = None):
    """Augment ``points [B, n, 3]`` (or ``[n, 3]``) and their ``normals`` with ``cfg`` (default
    :class:`Augment`), one draw per cloud: rotate about +y, scale each axis, then jitter the
    points. Normals follow the linear map by its inverse transpose and are renormalised.
    Returns ``(points, normals)`` (``normals`` ``None`` when not given)."""
    cfg = Augment() if cfg is None else cfg
    g = _generator(generator)
    single = points.dim() == 2
    P = points[None] if single else points
    N = None if normals is None else (normals[None] if single else normals)
    B, dt = P.shape[0], P.dtype
    A = torch.eye(3, dtype=dt).expand(B, 3, 3)
    if cfg.rotate:
        A = rotation_about_up(2 * math.pi * torch.rand(B, generator=g, dtype=torch.float64)).to(dt)
    if cfg.scale is not None:
        lo, hi = cfg.scale
        fac = lo + (hi - lo) * torch.rand(B, 3, generator=g, dtype=torch.float64)
        A = torch.diag_embed(fac.to(dt)) @ A
    P = P @ A.transpose(1, 2)
    if N is not None:
        N = N @ torch.linalg.inv(A)  # (A^-T n) as rows
        N = N / N.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if cfg.jitter > 0:
        noise = torch.randn(P.shape, generator=g, dtype=torch.float64).to(dt) * cfg.jitter
        P = P + noise.clamp(-cfg.jitter_clip, cfg.jitter_clip)
    if single:
        P = P[0]
        N = None if N is None else N[0]
    return P, N


_augment_fn = augment  # ShapeDataset's argument ``augment`` shadows the function


# ----------------------------------------------------------------------------------------------
# the data set
# ----------------------------------------------------------------------------------------------
def _family_code(name: str) -> int:
    return zlib.crc32(name.encode())


class ShapeDataset:
    """``per_family`` shapes of each of ``families`` as surface point clouds, split by seed.

    ``families``: names from :data:`PROCEDURAL_FAMILIES` and :data:`REAL_MESH_NAMES` (their order
    gives the labels). Procedural shapes are drawn with uniform raw parameters (one shape per
    item); a real family's items are independent samplings of its one mesh. Each item's draws
    depend only on ``(seed, family name, item index)``, so adding a family changes no other.
    Tensors (all shapes, in family order):

    * ``points [M, n_points, 3]``, ``normals [M, n_points, 3]`` (float32, unit normals)
    * ``labels [M]`` (int64, index into ``family_names``)
    * ``params [M, MAX_PARAMS]`` (float32, normalised parameters, zero-padded) and
      ``param_mask [M, MAX_PARAMS]`` (bool); ``param_names(family)`` names the columns
    * ``scales [M]`` (normalisation scale; raw lengths = normalised / scale)
    * ``split [M]`` (int64: 0 train, 1 val, 2 test; per family a seeded permutation cut by
      ``split_fractions``; for real meshes the split separates samplings, not geometry)

    ``subset("train")`` (or ``.train`` / ``.val`` / ``.test``) gives the rows of one split.
    ``augment``: an :class:`Augment` applied once at build time (``None``: clean clouds; for
    fresh augmentation per epoch call :func:`augment` in the training loop)."""

    def __init__(self, families: Sequence[str] = PROCEDURAL_FAMILIES, n_points: int = 2048, per_family: int = 64,
                 seed: int = 0, *, normalize: str = "box", split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 augment: Optional[Augment] = None):
        families = tuple(families)
        if not families or len(set(families)) != len(families):
            raise ValueError(f"families must be distinct and non-empty, got {families}")
        for fam in families:
            if fam not in FAMILIES and fam not in REAL_MESHES:
                raise ValueError(f"unknown family {fam!r}; known: {', '.join(PROCEDURAL_FAMILIES + REAL_MESH_NAMES)}")
        if per_family < 1 or n_points < 1:
            raise ValueError(f"per_family and n_points must be >= 1, got {per_family}, {n_points}")
        fr = np.asarray(split_fractions, dtype=np.float64)
        if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
            raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}")
        self.family_names, self.n_points, self.seed, self.normalize = families, n_points, seed, normalize
        pts, nrm, labels, params, mask, scales, split = [], [], [], [], [], [], []
        for li, fam in enumerate(families):
            code = _family_code(fam)
            real = load_real_mesh(fam, normalize) if fam in REAL_MESHES else None
            for i in range(per_family):
                rng = np.random.default_rng([seed, code, i])
                shape = real if real is not None else build_shape(fam, random_params(fam, rng), normalize)
                g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
                p, n = sample_points(shape.mesh, n_points, g)
                if augment is not None:
                    p, n = _augment_fn(p, n, augment, g)
                pts.append(p)
                nrm.append(n)
                labels.append(li)
                row = np.zeros(MAX_PARAMS)
                row[:len(shape.params)] = shape.params
                params.append(row)
                mask.append(np.arange(MAX_PARAMS) < len(shape.params))
                scales.append(shape.scale)
            perm = np.random.default_rng([seed, code, 2 ** 31]).permutation(per_family)
            n_val, n_test = int(round(fr[1] * per_family)), int(round(fr[2] * per_family))
            s = np.zeros(per_family, dtype=np.int64)
            s[perm[:n_val]] = 1
            s[perm[n_val:n_val + n_test]] = 2
            split.append(s)
        self.points, self.normals = torch.stack(pts), torch.stack(nrm)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.params = torch.tensor(np.stack(params), dtype=torch.float32)
        self.param_mask = torch.tensor(np.stack(mask))
        self.scales = torch.tensor(scales, dtype=torch.float32)
        self.split = torch.as_tensor(np.concatenate(split))

    @staticmethod
    def param_names(family: str) -> tuple:
        """The parameter names of ``family`` (empty for a real mesh)."""
        return PARAM_NAMES.get(family, ())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {k: getattr(self, k)[i] for k in ("points", "normals", "labels", "params", "param_mask", "scales", "split")}

    def subset(self, split: str) -> "ShapeDataset":
        """The rows of ``split`` (``"train"``, ``"val"`` or ``"test"``) as a data set."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        keep = self.split == SPLITS.index(split)
        out = object.__new__(ShapeDataset)
        out.__dict__.update(self.__dict__)
        for k in ("points", "normals", "labels", "params", "param_mask", "scales", "split"):
            setattr(out, k, getattr(self, k)[keep])
        return out

    train = property(lambda self: self.subset("train"))
    val = property(lambda self: self.subset("val"))
    test = property(lambda self: self.subset("test"))
