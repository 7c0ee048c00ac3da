"""Backbone geometry: optimal superposition (Kabsch), RMSD, uniform random rotations,
NeRF atom placement and reconstruction of N, C, O around a CA trace. Units: Angstrom, angles
in degrees.

``kabsch``/``superpose``/``rmsd`` take numpy arrays or torch tensors (same type out), with
optional leading batch dimensions ``[..., N, 3]`` and a mask ``[..., N]``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

#: ideal backbone geometry (Engh & Huber 1991): bond lengths (A) and angles (deg)
BOND_N_CA = 1.458
BOND_CA_C = 1.525
BOND_C_N = 1.329
BOND_C_O = 1.231
ANGLE_N_CA_C = 111.2
ANGLE_CA_C_N = 116.2
ANGLE_C_N_CA = 121.7
ANGLE_CA_C_O = 120.5
#: CA-CA distance of a trans peptide with the geometry above
CA_CA_TRANS = 3.80


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _finite_mask(P, Q, mask):
    """Real points: the given mask AND finite coordinates in both P and Q."""
    if _is_torch(P):
        m = torch.isfinite(P).all(-1) & torch.isfinite(Q).all(-1)
        if mask is not None:
            m = m & (mask > 0)
        return m.to(P.dtype)
    m = np.isfinite(P).all(-1) & np.isfinite(Q).all(-1)
    if mask is not None:
        m = m & (np.asarray(mask) > 0)
    return m.astype(np.float64)


def kabsch(P, Q, mask=None):
    """The rigid motion that best superposes ``P`` onto ``Q`` (Kabsch 1976).

    Args:
        P, Q: ``[..., N, 3]`` point sets in correspondence (numpy or torch). Non-finite points
            are ignored.
        mask: optional ``[..., N]`` weights/booleans of the points to use.

    Returns:
        ``(R, t)`` with ``R`` ``[..., 3, 3]`` a proper rotation (det +1) and ``t`` ``[..., 3]``
        minimising ``sum_i m_i |R P_i + t - Q_i|^2``; apply as ``P @ R.T + t``.
    """
    m = _finite_mask(P, Q, mask)
    if _is_torch(P):
        Pz = torch.nan_to_num(P) * m[..., None]
        Qz = torch.nan_to_num(Q) * m[..., None]
        w = m.sum(-1, keepdim=True).clamp_min(1.0)[..., None]  # [..., 1, 1]
        cp = Pz.sum(-2, keepdim=True) / w
        cq = Qz.sum(-2, keepdim=True) / w
        H = ((Pz - cp) * m[..., None]).transpose(-1, -2) @ ((Qz - cq) * m[..., None])  # [..., 3, 3]
        U, S, Vh = torch.linalg.svd(H.double())
        V = Vh.transpose(-1, -2)
        d = torch.sign(torch.linalg.det(V @ U.transpose(-1, -2)))
        d = torch.where(d == 0, torch.ones_like(d), d)
        D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
        R = (V @ D @ U.transpose(-1, -2)).to(P.dtype)
        t = cq.squeeze(-2) - (cp @ R.transpose(-1, -2)).squeeze(-2)
        return R, t
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    Pz = np.nan_to_num(P) * m[..., None]
    Qz = np.nan_to_num(Q) * m[..., None]
    w = np.maximum(m.sum(-1, keepdims=True), 1.0)[..., None]
    cp = Pz.sum(-2, keepdims=True) / w
    cq = Qz.sum(-2, keepdims=True) / w
    H = np.swapaxes((Pz - cp) * m[..., None], -1, -2) @ ((Qz - cq) * m[..., None])
    U, S, Vh = np.linalg.svd(H)
    V = np.swapaxes(Vh, -1, -2)
    d = np.sign(np.linalg.det(V @ np.swapaxes(U, -1, -2)))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros(d.shape + (3, 3))
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    R = V @ D @ np.swapaxes(U, -1, -2)
    t = cq[..., 0, :] - (cp @ np.swapaxes(R, -1, -2))[..., 0, :]
    return R, t


def superpose(P, Q, mask=None):
    """``P`` ``[..., N, 3]`` moved by the Kabsch motion onto ``Q`` (same type as ``P``)."""
    R, t = kabsch(P, Q, mask)
    if _is_torch(P):
        return P @ R.transpose(-1, -2) + t[..., None, :]
    out = np.asarray(P, dtype=np.float64) @ np.swapaxes(R, -1, -2) + t[..., None, :]
    return out.astype(np.asarray(P).dtype if np.asarray(P).dtype.kind == "f" else np.float64)


_superpose = superpose  # the name is shadowed by rmsd's keyword argument


def rmsd(P, Q, superpose: bool = True, mask=None):
    """Root-mean-square deviation between ``P`` and ``Q`` ``[..., N, 3]`` over the (masked,
    finite) points, after optimal superposition unless ``superpose=False``.

    Returns a float for unbatched numpy input, else an array/tensor ``[...]``."""
    m = _finite_mask(P, Q, mask)
    X = _superpose(P, Q, mask) if superpose else P
    if _is_torch(P):
        d2 = ((torch.nan_to_num(X) - torch.nan_to_num(Q)) ** 2).sum(-1) * m
        return (d2.sum(-1) / m.sum(-1).clamp_min(1.0)).sqrt()
    d2 = ((np.nan_to_num(np.asarray(X, np.float64)) - np.nan_to_num(np.asarray(Q, np.float64))) ** 2).sum(-1) * m
    out = np.sqrt(d2.sum(-1) / np.maximum(m.sum(-1), 1.0))
    return float(out) if out.ndim == 0 else out


def random_rotation(generator: Optional[torch.Generator] = None, n: Optional[int] = None, *,
                    dtype=torch.float32, device=None) -> torch.Tensor:
    """Rotation matrices drawn uniformly (Haar measure) on SO(3): ``[3, 3]``, or ``[n, 3, 3]``.

    A unit quaternion from a normalised 4-D standard normal is uniform on S^3, and the
    quaternion -> matrix map sends that to the Haar measure on SO(3) (Shoemake 1992).
    Pure function of ``generator``."""
    gdev = generator.device if generator is not None else device
    q = torch.randn((1 if n is None else int(n), 4), generator=generator, device=gdev, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3).to(dtype)
    if device is not None:
        R = R.to(device)
    return R[0] if n is None else R


def _normalize(v, eps=1e-12):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def nerf_place(a, b, c, bond, angle, torsion):
    """Natural Extension Reference Frame (Parsons et al. 2005): the point ``d`` with
    ``|c - d| = bond``, angle ``b-c-d = angle`` and dihedral ``a-b-c-d = torsion``
    (degrees). ``a, b, c`` are ``[..., 3]``; ``bond/angle/torsion`` broadcast to ``[...]``.
    Returns ``[..., 3]`` (numpy float64)."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    bond, angle, torsion = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (bond, angle, torsion)))
    bond = bond[..., None]
    th = np.deg2rad(angle)[..., None]
    ph = np.deg2rad(torsion)[..., None]
    bc = _normalize(c - b)
    n = _normalize(np.cross(b - a, bc))
    m = np.cross(n, bc)
    return c + (-bond * np.cos(th)) * bc + (bond * np.sin(th) * np.cos(ph)) * m + (bond * np.sin(th) * np.sin(ph)) * n


def dihedral(a, b, c, d):
    """Dihedral angle ``a-b-c-d`` in degrees, ``[...]`` (IUPAC sign convention)."""
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (a, b, c, d))
    b0, b1, b2 = a - b, c - b, d - c
    b1n = _normalize(b1)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    x = (v * w).sum(-1)
    y = (np.cross(b1n, v) * w).sum(-1)
    return np.rad2deg(np.arctan2(y, x))


def bond_angle(a, b, c):
    """Angle ``a-b-c`` in degrees ``[...]``."""
    u = _normalize(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    v = _normalize(np.asarray(c, np.float64) - np.asarray(b, np.float64))
    return np.rad2deg(np.arccos(np.clip((u * v).sum(-1), -1.0, 1.0)))


def ca_ca_distances(ca):
    """Consecutive CA-CA distances ``[L-1]`` of a trace ``[L, 3]`` (numpy or torch; batched
    ``[..., L, 3]`` -> ``[..., L-1]``)."""
    if _is_torch(ca):
        return (ca[..., 1:, :] - ca[..., :-1, :]).norm(dim=-1)
    ca = np.asarray(ca, dtype=np.float64)
    return np.linalg.norm(ca[..., 1:, :] - ca[..., :-1, :], axis=-1)


# --------------------------------------------------------------------------------------------
# N, C, O around a CA trace
# --------------------------------------------------------------------------------------------
_DEFAULT_VIRTUAL_ANGLE = 110.0    # CA(i-1)-CA(i)-CA(i+1), used only for traces shorter than 4
_DEFAULT_VIRTUAL_TORSION = -170.0  # CA dihedral, idem


def _extend_trace(ca: np.ndarray, k: int) -> np.ndarray:
    """Add ``k`` phantom CAs at each end of ``ca`` ``[L, 3]`` (``L >= 3``) that continue the
    local conformation (same virtual bond angle and torsion as the nearest residues)
    -> ``[L + 2k, 3]``."""
    out = [np.asarray(p, dtype=np.float64) for p in ca]
    for _ in range(k):  # append at the end
        n = len(out)
        ang = bond_angle(out[n - 3], out[n - 2], out[n - 1])
        tor = dihedral(out[n - 4], out[n - 3], out[n - 2], out[n - 1]) if n >= 4 else _DEFAULT_VIRTUAL_TORSION
        out.append(nerf_place(out[n - 3], out[n - 2], out[n - 1], CA_CA_TRANS, ang, tor))
    for _ in range(k):  # prepend at the start
        ang = bond_angle(out[2], out[1], out[0])
        tor = dihedral(out[3], out[2], out[1], out[0])
        out.insert(0, nerf_place(out[2], out[1], out[0], CA_CA_TRANS, ang, tor))
    return np.stack(out)


def _local_features(ca: np.ndarray, idx: np.ndarray):
    """Local frames ``[n, 3, 3]`` (rows e1, e2, e3) and features ``[n, 39]`` of residues ``idx``
    of a trace ``ca`` (each needs three neighbours on both sides).

    Features: CA(i-1)-CA(i+1), CA(i-2)-CA(i), CA(i)-CA(i+2) distances (/6 A, with squares) and
    the four CA virtual torsions touching residue i (first and second harmonics, alone and
    times the CA(i-1)-CA(i+1) distance)."""
    prev, cur, nxt = ca[idx - 1], ca[idx], ca[idx + 1]
    u = _normalize(nxt - cur)
    v = _normalize(prev - cur)
    e1 = _normalize(u - v)            # along the chain
    e2 = _normalize(u + v)            # bisector of the virtual bond angle
    e3 = np.cross(e1, e2)             # normal to the CA(i-1), CA(i), CA(i+1) plane
    frames = np.stack([e1, e2, e3], 1)
    r13 = np.linalg.norm(nxt - prev, axis=-1) / 6.0  # ~0.9 helix, ~1.1 strand
    r24 = np.linalg.norm(ca[idx + 2] - cur, axis=-1) / 6.0
    r02 = np.linalg.norm(ca[idx - 2] - cur, axis=-1) / 6.0
    torsions = [dihedral(ca[idx - 3], ca[idx - 2], prev, cur), dihedral(ca[idx - 2], prev, cur, nxt),
                dihedral(prev, cur, nxt, ca[idx + 2]), dihedral(cur, nxt, ca[idx + 2], ca[idx + 3])]
    trig = []
    for t in np.deg2rad(torsions):
        trig += [np.cos(t), np.sin(t), np.cos(2 * t), np.sin(2 * t)]
    feats = np.stack([np.ones_like(r13), r13, r13 ** 2, r24, r02, r24 ** 2, r02 ** 2] + trig + [r13 * f for f in trig], -1)
    return frames, feats


def fit_backbone_model(chains) -> np.ndarray:
    """Least-squares fit of the coefficient table ``[3, F, 3]`` used by
    :func:`reconstruct_backbone`: the unit directions CA->N and CA->C and the offset CA->O in
    the local frame, as linear functions of the local CA features. ``chains``: iterable of ``[L, 4, 3]`` full
    backbones without chain breaks. This is how :data:`_BACKBONE_COEF` was obtained."""
    X, Y = [], []
    for xyz in chains:
        xyz = np.asarray(xyz, dtype=np.float64)
        if len(xyz) < 8 or not np.isfinite(xyz).all():
            continue
        sl = slice(3, len(xyz) - 3)  # interior residues only: real neighbours on both sides
        frames, feats = _local_features(xyz[:, 1], np.arange(len(xyz))[sl])
        rel = np.stack([_normalize(xyz[:, 0] - xyz[:, 1]), _normalize(xyz[:, 2] - xyz[:, 1]),
                        xyz[:, 3] - xyz[:, 1]], 1)                                   # [L, 3, 3]
        local = np.einsum("lij,laj->lai", frames, rel[sl])                           # [n, 2, 3]
        X.append(feats)
        Y.append(local)
    X = np.concatenate(X)
    Y = np.concatenate(Y).reshape(len(X), 9)
    coef, *_ = np.linalg.lstsq(X, Y, rcond=None)                                     # [F, 9]
    return coef.reshape(-1, 3, 3).transpose(1, 0, 2)


#: range of the peptide's in-plane angle opening (degrees, added to both CA-C-N and C-N-CA)
#: that :func:`reconstruct_backbone` uses to span CA-CA distances other than 3.80 A
_PEPTIDE_FLEX = (-25.0, 25.0)


def _peptide_template(delta, cis: bool = False):
    """Ideal trans (or ``cis``) peptide CA(i), C(i), O(i), N(i+1), CA(i+1) in its own plane, for in-plane
    angle offsets ``delta`` ``[n]`` (degrees; CA-C-N = 116.2 + delta, C-N-CA = 121.7 + delta,
    CA-C-O = 120.5, all bond lengths Engh & Huber).

    Returns ``(d [n], xy [n, 3, 2])``: the CA(i)-CA(i+1) distance and the in-plane coordinates
    of C(i), O(i), N(i+1) with CA(i) at the origin, CA(i+1) on the +x axis and C(i) at y > 0."""
    delta = np.asarray(delta, dtype=np.float64)
    t1 = np.deg2rad(ANGLE_CA_C_N + delta)
    t2 = np.deg2rad(ANGLE_C_N_CA + delta)
    zero = np.zeros_like(delta)
    c = np.stack([np.full_like(delta, BOND_CA_C), zero], -1)                       # CA -> C along +x
    # walk the zigzag (trans: omega = 180): turn by (pi - t1) at C, then back by (pi - t2) at N;
    # cis (omega = 0): turn the same way twice
    a1 = np.pi - t1
    n = c + BOND_C_N * np.stack([np.cos(a1), np.sin(a1)], -1)
    a2 = a1 + (np.pi - t2) if cis else a1 - (np.pi - t2)
    ca1 = n + BOND_N_CA * np.stack([np.cos(a2), np.sin(a2)], -1)
    # O: CA-C-O = 120.5 on the side of C away from N
    a_o = np.pi + np.deg2rad(ANGLE_CA_C_O)                      # C->CA points along pi; N lies at pi - t1
    o = c + BOND_C_O * np.stack([np.cos(a_o + zero), np.sin(a_o + zero)], -1)
    # rotate so that CA(i+1) lies on +x
    ang = np.arctan2(ca1[..., 1], ca1[..., 0])
    cos, sin = np.cos(-ang)[..., None], np.sin(-ang)[..., None]
    rot = lambda p: np.stack([cos[..., 0] * p[..., 0] - sin[..., 0] * p[..., 1],  # noqa: E731
                              sin[..., 0] * p[..., 0] + cos[..., 0] * p[..., 1]], -1)
    xy = np.stack([rot(c), rot(o), rot(n)], -2)
    xy[..., 1] *= np.where(xy[..., 0, 1] < 0, -1.0, 1.0)[..., None]                  # C(i) at y > 0
    return np.linalg.norm(ca1, axis=-1), xy


#: weights of the predicted C(i), O(i), N(i+1) in the plane-rotation fit
_PEPTIDE_FIT_WEIGHTS = (1.0, 1.0, 1.0)
_FLEX_GRID = np.linspace(_PEPTIDE_FLEX[0], _PEPTIDE_FLEX[1], 201)
_FLEX_D = _peptide_template(_FLEX_GRID)[0]  # CA-CA distance, increasing in delta
_FLEX_D_CIS = _peptide_template(_FLEX_GRID, cis=True)[0]
#: CA-CA distances below this are built as cis peptides (ideal cis 2.77 A, e.g. cis-proline)
_CIS_BELOW = 0.5 * (_FLEX_D_CIS[100] + _FLEX_D[0])


def _place_peptides(ca_a: np.ndarray, ca_b: np.ndarray, target: np.ndarray, weights=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Ideal peptide planes between consecutive CAs ``ca_a -> ca_b`` ``[n, 3]``, each rotated
    about the CA-CA axis to best fit ``target`` ``[n, 3, 3]`` (approximate C(i), O(i), N(i+1)).
    Returns ``[n, 3, 3]`` positions of C(i), O(i), N(i+1).

    The in-plane angles open or close (:data:`_PEPTIDE_FLEX`) so that all bond lengths stay ideal
    and the plane spans the given CA-CA distance; beyond that range the template is kept at
    the nearest end and C(i) is placed from CA(i), N(i+1) from CA(i+1), so the remaining gap
    shows up in the C-N bond (a broken trace gives a broken peptide bond)."""
    axis = ca_b - ca_a
    d = np.linalg.norm(axis, axis=-1)
    u = _normalize(axis)
    delta = np.interp(d, _FLEX_D, _FLEX_GRID)                                        # clamps at the ends
    d_t, xy = _peptide_template(delta)                                               # [n], [n, 3, 2]
    cis = d < _CIS_BELOW
    if cis.any():
        d_c, xy_c = _peptide_template(np.interp(d[cis], _FLEX_D_CIS, _FLEX_GRID), cis=True)
        d_t[cis], xy[cis] = d_c, xy_c
    # the best rotation about u: maximise sum_k y_k (t_k . v(phi)), v = cos(phi) e1 + sin(phi) e2
    ref = np.where(np.abs(u[:, :1]) < 0.9, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    e1 = _normalize(np.cross(u, ref))
    e2 = np.cross(u, e1)
    # targets relative to the point on the axis where each atom's template foot lies
    origin = np.stack([ca_a, ca_a, ca_b], 1)                                          # C, O from CA(i); N from CA(i+1)
    x_off = xy[..., 0] - np.stack([np.zeros_like(d_t), np.zeros_like(d_t), d_t], -1)  # x relative to its origin
    rel = target - origin - x_off[..., None] * u[:, None]
    y = xy[..., 1] * np.asarray(weights, dtype=np.float64)
    s1 = (y * (rel * e1[:, None]).sum(-1)).sum(-1)
    s2 = (y * (rel * e2[:, None]).sum(-1)).sum(-1)
    phi = np.arctan2(s2, s1)
    v = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    return origin + x_off[..., None] * u[:, None] + xy[..., 1][..., None] * v[:, None]


def reconstruct_backbone(ca) -> np.ndarray:
    """Place N, C and O around a CA trace: ``ca`` ``[L, 3]`` -> ``[L, 4, 3]`` (N, CA, C, O), with
    ideal peptide geometry.

    Each peptide unit CA(i), C(i), O(i), N(i+1), CA(i+1) is a rigid planar trans peptide with
    Engh & Huber bond lengths (N-CA 1.458, CA-C 1.525, C-N 1.329, C=O 1.231 A) and angles
    (CA-C-N 116.2, C-N-CA 121.7, CA-C-O 120.5 deg), built in the plane that contains CA(i) and
    CA(i+1) (NeRF-like, :func:`_peptide_template`). Its only free parameter, the rotation of
    the plane about the CA(i)-CA(i+1) axis, is fitted per peptide (closed-form least squares,
    :func:`_place_peptides`) to approximate C(i), O(i), N(i+1) positions predicted from the
    local CA geometry by the linear model of :data:`_BACKBONE_COEF` (in the spirit of Milik,
    Kolinski & Skolnick, J. Comput. Chem. 1997; Purisima & Scheraga 1984 for the peptide-plane
    idea). CA-CA distances other than 3.80 A (imperfect traces) are spanned by opening or
    closing CA-C-N and C-N-CA together by up to 25 deg, keeping every bond length ideal; CA-CA
    distances below 3.06 A are built as cis peptides (ideal 2.77 A with these angles; e.g.
    cis-proline). For CA-CA distances of 3.06-3.34 A or above 4.13 A the gap that remains shows as a stretched or
    compressed C(i)-N(i+1) (a broken trace stays broken). Chain ends: the trace is extended by
    phantom CAs that continue its local conformation; traces shorter than 3 residues get
    helper points.

    The coefficient table :data:`_BACKBONE_COEF` was fitted once with :func:`fit_backbone_model`
    on the interior residues of the 51 unbroken segments (6,953 residues) of the MDAnalysisTests
    ``dssp/*.pdb.gz`` chains; it only orients the planes. Measured accuracy: see the tests
    (``tests/test_proteins_geometry.py``).
    """
    ca = np.asarray(ca, dtype=np.float64)
    if ca.ndim != 2 or ca.shape[-1] != 3 or ca.shape[0] < 1:
        raise ValueError(f"reconstruct_backbone: ca must be [L, 3] with L >= 1, got {ca.shape}")
    if not np.isfinite(ca).all():
        raise ValueError("reconstruct_backbone: the CA trace has non-finite coordinates")
    L = ca.shape[0]
    if L < 3:  # too short for a local frame: continue the trace with helper points, then drop them
        helper = [ca[0], ca[1] if L > 1 else ca[0] + np.array([CA_CA_TRANS, 0.0, 0.0])]
        d = _normalize(helper[1] - helper[0])
        ref = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        helper.append(nerf_place(helper[0] + np.cross(d, ref), helper[0], helper[1], CA_CA_TRANS,
                                 _DEFAULT_VIRTUAL_ANGLE, _DEFAULT_VIRTUAL_TORSION))
        return reconstruct_backbone(np.stack(helper))[:L]
    k = 4
    ext = _extend_trace(ca, k)                                                   # [L + 2k, 3]
    idx = np.arange(k - 1, k + L + 1)                                            # residues -1 .. L
    frames, feats = _local_features(ext, idx)
    local = np.einsum("lf,afd->lad", feats, _BACKBONE_COEF)                      # [L + 2, 3 atoms, 3]
    rel = np.einsum("lai,lij->laj", local, frames)                              # lab frame
    cen = ext[idx]
    n_pred = cen + BOND_N_CA * _normalize(rel[:, 0])
    c_pred = cen + BOND_CA_C * _normalize(rel[:, 1])
    o_pred = c_pred + BOND_C_O * _normalize(cen + rel[:, 2] - c_pred)
    # peptides (-1, 0), (0, 1), ..., (L-1, L): C, O of the first residue and N of the second
    target = np.stack([c_pred[:-1], o_pred[:-1], n_pred[1:]], 1)               # [L + 1, 3, 3]
    pep = _place_peptides(cen[:-1], cen[1:], target, _PEPTIDE_FIT_WEIGHTS)                            # [L + 1, 3, 3]
    n_at = pep[:-1, 2]
    c_at = pep[1:, 0]
    o_at = pep[1:, 1]
    return np.stack([n_at, ca, c_at, o_at], 1).astype(np.float32)


#: fitted with fit_backbone_model on the MDAnalysisTests dssp chains (see reconstruct_backbone)
# [3 atoms (N dir, C dir, O offset), 39 features, 3 local axes]
_BACKBONE_COEF = np.array([
    [
        [0.60362, 2.11920, 2.36414],
        [-1.83332, -1.34073, -3.89984],
        [0.66470, 0.34189, 1.79098],
        [-0.00480, -0.12560, -0.53767],
        [-0.51216, -1.12530, -0.08019],
        [0.01858, 0.08080, 0.28305],
        [0.26311, 0.57786, -0.07655],
        [-0.00087, 0.03885, 0.06701],
        [-0.00008, 0.01578, -0.05815],
        [-0.01072, -0.00332, 0.04596],
        [0.01161, 0.03824, 0.01758],
        [-0.04354, -0.13357, 0.31910],
        [-0.08416, -0.18427, -0.31549],
        [-0.00790, -0.12248, 0.13231],
        [0.00979, 0.04149, -0.08269],
        [0.06076, 0.14174, -0.47495],
        [-0.06134, -0.00745, 0.21138],
        [0.01304, 0.05293, 0.06795],
        [-0.11190, -0.13771, -0.35236],
        [-0.03003, -0.03663, 0.01640],
        [-0.01878, 0.02959, 0.00971],
        [0.00967, 0.01812, 0.01386],
        [-0.10653, -0.16338, -0.01858],
        [0.00236, -0.03400, -0.05490],
        [-0.00024, -0.01722, 0.05506],
        [0.00908, 0.00097, -0.03200],
        [-0.01204, -0.04021, -0.02284],
        [0.05159, 0.14491, -0.26204],
        [0.10573, 0.21587, 0.23552],
        [0.03696, 0.16256, -0.12382],
        [0.00154, -0.02641, 0.05199],
        [-0.04761, -0.12160, 0.46918],
        [0.09108, 0.05364, -0.20742],
        [-0.02549, -0.06538, -0.04783],
        [0.10380, 0.12314, 0.29082],
        [0.02618, 0.03106, -0.02925],
        [0.01798, -0.02721, 0.00105],
        [-0.00560, -0.01154, -0.01339],
        [0.10387, 0.15790, 0.02038],
    ],
    [
        [1.77395, 0.20727, 2.38122],
        [-2.21285, -0.06706, -3.23474],
        [0.92901, 0.23048, 1.32436],
        [0.63907, 0.33736, 0.02662],
        [-0.05329, -0.12505, -1.29013],
        [-0.29896, -0.13267, 0.05111],
        [0.02807, 0.05366, 0.64049],
        [-0.01351, 0.02180, 0.06453],
        [-0.01908, 0.01559, -0.05986],
        [-0.02352, 0.01881, -0.08267],
        [0.00174, 0.00904, 0.05762],
        [-0.03297, 0.06616, -0.11472],
        [-0.10920, 0.14191, -0.04682],
        [-0.02530, 0.03718, -0.04393],
        [-0.04086, 0.06811, 0.14023],
        [0.02707, -0.08357, 0.40511],
        [-0.03112, 0.14291, 0.12335],
        [-0.06080, 0.02158, -0.01905],
        [-0.13697, 0.20652, 0.24755],
        [-0.04340, 0.04832, 0.01774],
        [-0.02435, 0.03038, 0.03322],
        [-0.00138, 0.00829, 0.06802],
        [-0.15891, 0.17559, -0.14586],
        [0.01308, -0.02053, -0.04920],
        [0.01774, -0.01446, 0.05822],
        [0.01959, -0.01570, 0.07850],
        [-0.00174, -0.00889, -0.05704],
        [0.04024, -0.07333, 0.13820],
        [0.12797, -0.16925, 0.07600],
        [0.05000, -0.06989, 0.06685],
        [0.04770, -0.07873, -0.12010],
        [-0.02583, 0.08255, -0.23129],
        [0.07140, -0.19761, -0.06894],
        [0.04231, -0.00888, -0.00952],
        [0.12575, -0.19290, -0.22172],
        [0.03825, -0.03763, -0.01422],
        [0.02161, -0.01873, -0.01272],
        [0.00282, -0.01308, -0.05918],
        [0.14971, -0.16244, 0.17093],
    ],
    [
        [7.42463, 4.59278, 14.24875],
        [-12.36482, -8.38931, -15.82956],
        [4.18005, 6.69869, 6.45138],
        [4.91509, -3.53456, -4.82024],
        [-0.27008, -1.21197, -6.18566],
        [-2.35276, 1.86706, 2.56506],
        [0.11654, 0.59028, 3.05406],
        [-0.02437, 0.06178, 0.25447],
        [-0.11180, 0.11472, -0.31109],
        [-0.12538, 0.10557, -0.41262],
        [-0.03074, 0.09765, 0.31192],
        [-0.14682, 0.27492, -0.57657],
        [-0.58915, 0.74548, -0.21324],
        [-0.16256, 0.20815, -0.22006],
        [-0.22524, 0.43061, 0.68554],
        [0.26012, -0.61247, 2.00019],
        [-0.18011, 0.73742, 0.59576],
        [-0.32712, 0.27688, -0.09139],
        [-0.80393, 1.14904, 1.23680],
        [-0.21019, 0.21216, 0.07832],
        [-0.11061, 0.14876, 0.15335],
        [-0.00120, 0.03347, 0.29054],
        [-0.86228, 0.93510, -0.66025],
        [0.02946, -0.06484, -0.18150],
        [0.10322, -0.10658, 0.30478],
        [0.10474, -0.08699, 0.39489],
        [0.03072, -0.09934, -0.30633],
        [0.18549, -0.31715, 0.68689],
        [0.67878, -0.87333, 0.35235],
        [0.27755, -0.36405, 0.33155],
        [0.26087, -0.48162, -0.58328],
        [-0.23471, 0.59161, -1.12044],
        [0.40430, -1.03485, -0.31353],
        [0.22780, -0.19803, -0.04611],
        [0.74628, -1.08226, -1.10759],
        [0.17985, -0.15818, -0.07059],
        [0.09433, -0.08975, -0.06278],
        [0.00854, -0.05441, -0.23606],
        [0.81177, -0.86669, 0.78672],
    ],
])
