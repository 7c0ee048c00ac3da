"""Files of the ``shapes`` domain: PLY point clouds with normals, OBJ / PLY triangle meshes.

* :func:`write_ply` writes a point cloud ``points [n, 3]`` (and ``normals [n, 3]``) as one
  ``vertex`` element with float32 properties ``x y z`` (``nx ny nz``), binary little-endian by
  default or ASCII (9 significant digits: float32 values round-trip exactly). ``trimesh``,
  MeshLab and Open3D read it.
* :func:`write_mesh` writes a triangle mesh ``vertices [V, 3]``, ``faces [F, 3]`` (0-based), with
  optional per-vertex ``normals``: PLY (``vertex`` + ``face`` with ``property list uchar int
  vertex_indices``) or Wavefront OBJ (1-based ``f`` lines, ``f a//a`` with normals), by suffix.
* :func:`read_ply` reads PLY files (ASCII, binary little- and big-endian; any element and
  property types of the PLY spec; polygons fan-triangulated) into :class:`PlyData`.

Every write is atomic (a temporary file in the same folder, then ``os.replace``:
:func:`workbench.utils.atomic_path`). Every problem in a file being read raises a one-line
``ValueError`` ``"<file>: <problem>"``; non-finite coordinates and out-of-range face indices
are problems too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from workbench.utils import atomic_path

PathLike = Union[str, Path]
_PROGRAM = "fewstep-workbench domains.shapes.io"
#: PLY scalar types (both the spec's names and the sized aliases) -> numpy type codes
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _array(x, name: str, cols: int, dtype=np.float64) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ModuleNotFoundError:  # pragma: no cover - torch is a core dependency
        pass
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != cols:
        raise ValueError(f"{name} must have shape [n, {cols}], got {list(a.shape)}")
    if np.issubdtype(dtype, np.floating):
        if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite numbers")
    return a.astype(dtype)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _ply_header(fmt: str, n_vert: int, props: list, n_face: Optional[int], comment: Optional[str]) -> bytes:
    lines = ["ply", f"format {fmt} 1.0", f"comment written by {_PROGRAM}"]
    if comment:
        lines += [f"comment {' '.join(line.split())}" for line in str(comment).splitlines() if line.strip()]
    lines.append(f"element vertex {n_vert}")
    lines += [f"property float {p}" for p in props]
    if n_face is not None:
        lines += [f"element face {n_face}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def _ply_bytes(verts: np.ndarray, normals: Optional[np.ndarray], faces: Optional[np.ndarray], binary: bool,
               comment: Optional[str]) -> bytes:
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    cols = verts if normals is None else np.concatenate([verts, normals], axis=1)
    cols = cols.astype(np.float32)
    header = _ply_header("binary_little_endian" if binary else "ascii", len(verts), props,
                         None if faces is None else len(faces), comment)
    if binary:
        body = cols.astype("<f4").tobytes()
        if faces is not None:
            rec = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
            rec["n"], rec["v"] = 3, faces
            body += rec.tobytes()
        return header + body
    rows = [" ".join(f"{v:.9g}" for v in r) for r in cols.tolist()]
    if faces is not None:
        rows += [f"3 {a} {b} {c}" for a, b, c in faces.tolist()]
    return header + ("\n".join(rows) + ("\n" if rows else "")).encode("ascii")


def _write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def write_ply(path: PathLike, points, normals=None, *, binary: bool = True, comment: Optional[str] = None) -> Path:
    """Write a point cloud ``points [n, 3]`` (with ``normals [n, 3]``) as PLY, atomically
    (float32; ``binary`` little-endian or ASCII). ``comment``: extra header comment lines.
    Returns the path. Non-finite values raise ``ValueError``."""
    pts = _array(points, "points", 3)
    nrm = None if normals is None else _array(normals, "normals", 3)
    if nrm is not None and len(nrm) != len(pts):
        raise ValueError(f"write_ply: {len(pts)} points but {len(nrm)} normals")
    return _write_bytes(path, _ply_bytes(pts, nrm, None, binary, comment))


def write_mesh(path: PathLike, vertices, faces, normals=None, *, binary: bool = True,
               comment: Optional[str] = None) -> Path:
    """Write a triangle mesh (``vertices [V, 3]``, 0-based ``faces [F, 3]``, optional per-vertex
    ``normals [V, 3]``) atomically as PLY (``.ply``; ``binary`` or ASCII) or Wavefront OBJ
    (``.obj``). Returns the path."""
    verts = _array(vertices, "vertices", 3)
    f = _array(faces, "faces", 3, dtype=np.int64) if len(np.asarray(faces)) else np.zeros((0, 3), np.int64)
    if len(f) and (f.min() < 0 or f.max() >= len(verts)):
        raise ValueError(f"write_mesh: face indices must be in 0..{len(verts) - 1}, got {f.min()}..{f.max()}")
    nrm = None if normals is None else _array(normals, "normals", 3)
    if nrm is not None and len(nrm) != len(verts):
        raise ValueError(f"write_mesh: {len(verts)} vertices but {len(nrm)} normals")
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return _write_bytes(path, _ply_bytes(verts, nrm, f, binary, comment))
    if suffix != ".obj":
        raise ValueError(f"write_mesh: {path}: the suffix must be .ply or .obj")
    lines = [f"# written by {_PROGRAM}"]
    if comment:
        lines += [f"# {' '.join(line.split())}" for line in str(comment).splitlines() if line.strip()]
    lines += [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in verts.astype(np.float32).tolist()]
    if nrm is not None:
        lines += [f"vn {x:.9g} {y:.9g} {z:.9g}" for x, y, z in nrm.astype(np.float32).tolist()]
        lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in (f + 1).tolist()]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in (f + 1).tolist()]
    return _write_bytes(path, ("\n".join(lines) + "\n").encode("ascii"))


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
@dataclass
class PlyData:
    """A PLY file's geometry: ``points [n, 3]`` float64, ``normals [n, 3]`` (when the vertices
    have ``nx ny nz``) or ``None``, ``faces [F, 3]`` int64 (triangles; polygons fan-split) or
    ``None`` (no face element), ``comments`` (header comment lines), ``elements`` (every element
    as ``{name: {property: array}}``; a list property as an ``[count, k]`` array when every row
    has ``k`` items, else as a list of arrays)."""

    points: np.ndarray
    normals: Optional[np.ndarray]
    faces: Optional[np.ndarray]
    comments: list = field(default_factory=list)
    elements: dict = field(default_factory=dict)


@dataclass
class _Element:
    name: str
    count: int
    props: list  # (name, code) or (name, ("list", count_code, item_code))


def _parse_header(p: Path, raw: bytes):
    def fail(msg):
        raise ValueError(f"{p}: {msg}")

    if not raw.startswith(b"ply"):
        fail("not a PLY file (it does not start with 'ply')")
    m = re.search(rb"end_header[ \t]*\r?\n", raw)
    if m is None:
        fail("the PLY header has no 'end_header' line")
    try:
        lines = raw[:m.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        fail("the PLY header is not ASCII text")
    if lines[0].strip() != "ply":
        fail("not a PLY file (its first line is not 'ply')")
    fmt, elements, comments = None, [], []
    for k, line in enumerate(lines[1:], start=2):
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "comment":
            comments.append(line.strip()[len("comment"):].strip())
        elif tok[0] == "format":
            if len(tok) != 3 or tok[1] not in _FORMATS:
                fail(f"header line {k}: unknown format {' '.join(tok[1:])!r} (ascii, binary_little_endian, binary_big_endian)")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                fail(f"header line {k}: malformed element line {line.strip()!r}")
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                fail(f"header line {k}: a property before any element")
            if len(tok) == 5 and tok[1] == "list":
                if tok[2] not in PLY_TYPES or tok[3] not in PLY_TYPES:
                    fail(f"header line {k}: unknown list types {tok[2]!r}, {tok[3]!r}")
                elements[-1].props.append((tok[4], ("list", PLY_TYPES[tok[2]], PLY_TYPES[tok[3]])))
            elif len(tok) == 3 and tok[1] in PLY_TYPES:
                elements[-1].props.append((tok[2], PLY_TYPES[tok[1]]))
            else:
                fail(f"header line {k}: malformed property line {line.strip()!r}")
        # any other line (e.g. Blender's bare "Created by ...") is ignored, as by most readers
    if fmt is None:
        fail("the PLY header has no format line")
    return fmt, elements, comments, m.end()


def _read_binary(p: Path, raw: bytes, offset: int, elements: list, endian: str) -> dict:
    out = {}
    for el in elements:
        scalar = all(isinstance(t, str) for _, t in el.props)
        if scalar:
            dt = np.dtype([(n, endian + t) for n, t in el.props])
            need = dt.itemsize * el.count
            if offset + need > len(raw):
                raise ValueError(f"{p}: truncated: element {el.name!r} needs {need} bytes, {len(raw) - offset} left")
            arr = np.frombuffer(raw, dt, el.count, offset)
            offset += need
            out[el.name] = {n: arr[n].astype(np.float64 if t.startswith("f") else np.int64) for n, t in el.props}
            continue
        lists = [i for i, (_, t) in enumerate(el.props) if not isinstance(t, str)]
        if len(lists) == 1 and el.count > 0:  # fast path: one list property, every row the same length
            li = lists[0]
            head = sum(np.dtype(t).itemsize for _, t in el.props[:li])
            _, cc, ic = el.props[li][1]
            if offset + head + np.dtype(cc).itemsize <= len(raw):
                k = int(np.frombuffer(raw, endian + cc, 1, offset + head)[0])
                fields = [(n, endian + t) if i != li else [(f"{n}__count", endian + cc), (n, endian + ic, (max(k, 1),))]
                          for i, (n, t) in enumerate(el.props)]
                dt = np.dtype([f for x in fields for f in (x if isinstance(x, list) else [x])])
                if k > 0 and offset + dt.itemsize * el.count <= len(raw):
                    arr = np.frombuffer(raw, dt, el.count, offset)
                    if (arr[f"{el.props[li][0]}__count"] == k).all():
                        out[el.name] = {n: arr[n].astype(np.int64 if i == li or not t.startswith("f") else np.float64)
                                        for i, (n, t) in enumerate(el.props)}
                        offset += dt.itemsize * el.count
                        continue
        cols = {n: [] for n, _ in el.props}
        for row in range(el.count):
            for n, t in el.props:
                if isinstance(t, str):
                    dt = np.dtype(endian + t)
                    if offset + dt.itemsize > len(raw):
                        raise ValueError(f"{p}: truncated in element {el.name!r} row {row}")
                    cols[n].append(np.frombuffer(raw, dt, 1, offset)[0])
                    offset += dt.itemsize
                else:
                    ct, it = np.dtype(endian + t[1]), np.dtype(endian + t[2])
                    if offset + ct.itemsize > len(raw):
                        raise ValueError(f"{p}: truncated in element {el.name!r} row {row}")
                    k = int(np.frombuffer(raw, ct, 1, offset)[0])
                    offset += ct.itemsize
                    if k < 0 or offset + k * it.itemsize > len(raw):
                        raise ValueError(f"{p}: truncated or bad list length {k} in element {el.name!r} row {row}")
                    cols[n].append(np.frombuffer(raw, it, k, offset).astype(np.int64))
                    offset += k * it.itemsize
        out[el.name] = {n: (v if not isinstance(t, str) else np.asarray(v)) for (n, t), v in zip(el.props, cols.values())}
    return out


def _read_ascii(p: Path, raw: bytes, offset: int, elements: list) -> dict:
    try:
        text = raw[offset:].decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: the ASCII PLY body holds a non-ASCII byte at offset {offset + e.start}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    pos, out = 0, {}
    for el in elements:
        if pos + el.count > len(lines):
            raise ValueError(f"{p}: truncated: element {el.name!r} needs {el.count} lines, {len(lines) - pos} left")
        rows = lines[pos:pos + el.count]
        scalar = all(isinstance(t, str) for _, t in el.props)
        if scalar:
            try:
                vals = np.array(" ".join(rows).split(), dtype=np.float64)
            except ValueError:
                bad = next(i for i, r in enumerate(rows) if not _numeric(r))
                raise ValueError(f"{p}: element {el.name!r} row {bad}: non-numeric value in {rows[bad][:60]!r}") from None
            if vals.size != el.count * len(el.props):
                bad = next((i for i, r in enumerate(rows) if len(r.split()) != len(el.props)), 0)
                raise ValueError(f"{p}: element {el.name!r} row {bad}: expected {len(el.props)} values, "
                                 f"got {len(rows[bad].split())}")
            vals = vals.reshape(el.count, len(el.props))
            # values of a float (f4) property are rounded to float32, as a binary file would hold them
            out[el.name] = {n: (vals[:, i].astype(np.dtype(t)).astype(np.float64) if t.startswith("f") else vals[:, i].astype(np.int64))
                            for i, (n, t) in enumerate(el.props)}
        elif len(el.props) == 1 and el.count > 0 and _uniform_lists(rows):
            out[el.name] = {el.props[0][0]: np.array(" ".join(rows).split(), dtype=np.int64).reshape(el.count, -1)[:, 1:]}
        else:
            cols = {n: [] for n, _ in el.props}
            for r, line in enumerate(rows):
                tok, i = line.split(), 0
                try:
                    for n, t in el.props:
                        if isinstance(t, str):
                            cols[n].append(float(tok[i]))
                            i += 1
                        else:
                            k = int(tok[i])
                            if k < 0 or i + 1 + k > len(tok):
                                raise IndexError
                            cols[n].append(np.array([int(v) for v in tok[i + 1:i + 1 + k]], dtype=np.int64))
                            i += 1 + k
                except (IndexError, ValueError):
                    raise ValueError(f"{p}: element {el.name!r} row {r}: malformed line {line[:60]!r}") from None
                if i != len(tok):
                    raise ValueError(f"{p}: element {el.name!r} row {r}: {len(tok) - i} extra values")
            out[el.name] = {n: (v if not isinstance(t, str) else np.asarray(v)) for (n, t), v in zip(el.props, cols.values())}
        pos += el.count
    return out


def _uniform_lists(rows: list) -> bool:
    """Every row ``k v1 .. vk`` with the same integer ``k`` (the common face element)."""
    first = rows[0].split()
    if not first or not first[0].isdigit():
        return False
    k = int(first[0])
    return k > 0 and all(len(r.split()) == k + 1 and r.split(None, 1)[0] == first[0] for r in rows) \
        and all(_is_int(v) for v in " ".join(rows).split())


def _is_int(v: str) -> bool:
    return v.lstrip("+-").isdigit()


def _numeric(row: str) -> bool:
    try:
        [float(v) for v in row.split()]
        return True
    except ValueError:
        return False


def read_ply(path: PathLike) -> PlyData:
    """Read a PLY file (point cloud or mesh). Needs a ``vertex`` element with ``x y z``; reads
    ``nx ny nz`` when present and a ``face`` element's ``vertex_indices`` / ``vertex_index``
    list. Raises a one-line ``ValueError`` naming the file on any problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{p}: is a directory, not a PLY file") from None
    fmt, elements, comments, offset = _parse_header(p, raw)
    if fmt == "ascii":
        data = _read_ascii(p, raw, offset, elements)
    else:
        data = _read_binary(p, raw, offset, elements, _FORMATS[fmt])
    vert = data.get("vertex")
    if vert is None or not all(k in vert for k in "xyz"):
        raise ValueError(f"{p}: no 'vertex' element with x, y, z properties")
    if any(not isinstance(vert[k], np.ndarray) for k in "xyz"):
        raise ValueError(f"{p}: vertex x, y, z must be scalar properties")
    pts = np.stack([vert[k] for k in "xyz"], axis=1).astype(np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"{p}: vertex {int(np.where(~np.isfinite(pts).all(1))[0][0])} has a non-finite coordinate")
    normals = None
    if all(k in vert for k in ("nx", "ny", "nz")):
        normals = np.stack([vert[k] for k in ("nx", "ny", "nz")], axis=1).astype(np.float64)
        if not np.isfinite(normals).all():
            raise ValueError(f"{p}: a vertex normal is not finite")
    faces = None
    if "face" in data:
        key = next((k for k in ("vertex_indices", "vertex_index") if k in data["face"]), None)
        if key is None:
            raise ValueError(f"{p}: the 'face' element has no vertex_indices list")
        polys = data["face"][key]
        if isinstance(polys, np.ndarray):  # [F, k], every face with k vertices
            if polys.shape[1] < 3:
                raise ValueError(f"{p}: face 0 has {polys.shape[1]} vertices (at least 3 needed)")
            bad = np.where((polys < 0).any(1) | (polys >= len(pts)).any(1))[0]
            if len(bad):
                raise ValueError(f"{p}: face {int(bad[0])} has a vertex index outside 0..{len(pts) - 1}")
            faces = np.stack([np.stack([polys[:, 0], polys[:, i], polys[:, i + 1]], 1)
                              for i in range(1, polys.shape[1] - 1)], 1).reshape(-1, 3)
        else:
            tris = []
            for r, poly in enumerate(polys):
                poly = np.asarray(poly, dtype=np.int64).reshape(-1)
                if len(poly) < 3:
                    raise ValueError(f"{p}: face {r} has {len(poly)} vertices (at least 3 needed)")
                if poly.min() < 0 or poly.max() >= len(pts):
                    raise ValueError(f"{p}: face {r} has a vertex index outside 0..{len(pts) - 1}")
                tris += [(poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1)]
            faces = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
    return PlyData(pts, normals, faces, comments, data)
