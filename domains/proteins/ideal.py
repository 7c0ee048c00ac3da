"""Procedural ideal backbones: helices, strands, beta hairpins and helix bundles built with
NeRF from backbone torsions (phi, psi, omega) and ideal bond lengths/angles (Engh & Huber
1991, see :mod:`~domains.proteins.geometry`). They are a deterministic, licence-free data
source (``dataset_chains(source="ideal")``) and known-answer test cases for the metrics.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from . import geometry as G
from .chain import Chain

#: the kinds :func:`ideal_chain` builds
IDEAL_KINDS = ("helix", "strand", "hairpin", "helix_bundle")

#: backbone torsions (phi, psi) in degrees
HELIX_PHI_PSI = (-57.0, -47.0)
STRAND_PHI_PSI = (-120.0, 130.0)
#: (phi, psi) of the last strand residue before the turn, the two turn residues (a type I'-like
#: turn: both phi positive, as in 2:2 hairpins, Sibanda & Thornton 1985) and the first strand
#: residue after it. Obtained once by minimising (Nelder-Mead) the squared deviation of the
#: cross-strand CA-CA distances of a 40+2+40 hairpin from the alternating 5.5/4.5 A of real
#: antiparallel pairs, starting from the textbook I' turn (60, 30), (90, 0); with these the two
#: ideal (-120, 130) strands stay paired at 4.8-5.3 A for 40 residues (they drift apart slowly
#: beyond, ~8 A after 150 residues, because the ideal strands are not exactly antiparallel).
HAIRPIN_TURN_PHI_PSI = ((83.3, -164.8), (80.6, 9.1), (106.7, 0.0), (168.5, 174.3))
OMEGA_TRANS = 180.0

#: helix bundle layout: distance between neighbouring helix axes (A), residues per loop
BUNDLE_AXIS_SPACING = 10.0
BUNDLE_LOOP_LEN = 5
BUNDLE_HELIX_LEN = 18


def backbone_from_torsions(phi, psi, omega=None) -> np.ndarray:
    """NeRF chain growth: ``[L]`` torsions (degrees) -> backbone ``[L, 4, 3]`` (N, CA, C, O).

    ``phi[0]`` and ``psi[-1]`` only orient the end atoms (``psi[-1]`` places the last O);
    ``omega[i]`` is the CA(i)-C(i)-N(i+1)-CA(i+1) torsion (default trans, 180). Bond lengths
    and angles are the ideal values of :mod:`~domains.proteins.geometry`; O(i) lies in the
    peptide plane, anti to N(i+1) about the CA-C bond."""
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    L = phi.shape[0]
    if L < 1 or psi.shape[0] != L:
        raise ValueError(f"backbone_from_torsions: phi and psi must both have length L >= 1, got {phi.shape[0]} and {psi.shape[0]}")
    omega = np.full(L, OMEGA_TRANS) if omega is None else np.asarray(omega, dtype=np.float64).reshape(-1)
    if omega.shape[0] != L:
        raise ValueError(f"backbone_from_torsions: omega must have length {L}, got {omega.shape[0]}")
    X = np.zeros((L, 4, 3))
    X[0, 1] = [G.BOND_N_CA, 0.0, 0.0]
    th = math.radians(180.0 - G.ANGLE_N_CA_C)
    X[0, 2] = X[0, 1] + G.BOND_CA_C * np.array([math.cos(th), math.sin(th), 0.0])
    atoms = [tuple(X[0, 0]), tuple(X[0, 1]), tuple(X[0, 2])]  # N, CA, C, N, CA, C, ...
    for i in range(1, L):
        atoms.append(_place(atoms[-3], atoms[-2], atoms[-1], G.BOND_C_N, G.ANGLE_CA_C_N, psi[i - 1]))
        atoms.append(_place(atoms[-3], atoms[-2], atoms[-1], G.BOND_N_CA, G.ANGLE_C_N_CA, omega[i - 1]))
        atoms.append(_place(atoms[-3], atoms[-2], atoms[-1], G.BOND_CA_C, G.ANGLE_N_CA_C, phi[i]))
    X[:, :3] = np.array(atoms).reshape(L, 3, 3)
    n_next = np.empty((L, 3))
    n_next[:-1] = X[1:, 0]
    tors = np.full(L, 180.0)
    # last residue: no next N, so the O is anti to where N(i+1) would be (torsion N-CA-C-O = psi + 180)
    n_next[-1] = X[-1, 0]
    tors[-1] = psi[-1] + 180.0
    X[:, 3] = G.nerf_place(n_next, X[:, 1], X[:, 2], G.BOND_C_O, G.ANGLE_CA_C_O, tors)
    return X


def _place(a, b, c, bond, angle, torsion):
    """Scalar NeRF step (same as :func:`~domains.proteins.geometry.nerf_place`, in plain
    floats: the sequential chain growth is a Python loop, numpy per-call overhead dominates)."""
    bcx, bcy, bcz = c[0] - b[0], c[1] - b[1], c[2] - b[2]
    inv = 1.0 / math.sqrt(bcx * bcx + bcy * bcy + bcz * bcz)
    bcx, bcy, bcz = bcx * inv, bcy * inv, bcz * inv
    abx, aby, abz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    nx, ny, nz = aby * bcz - abz * bcy, abz * bcx - abx * bcz, abx * bcy - aby * bcx
    inv = 1.0 / max(math.sqrt(nx * nx + ny * ny + nz * nz), 1e-12)
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    mx, my, mz = ny * bcz - nz * bcy, nz * bcx - nx * bcz, nx * bcy - ny * bcx
    th, ph = math.radians(angle), math.radians(torsion)
    d0, d1, d2 = -bond * math.cos(th), bond * math.sin(th) * math.cos(ph), bond * math.sin(th) * math.sin(ph)
    return (c[0] + d0 * bcx + d1 * mx + d2 * nx, c[1] + d0 * bcy + d1 * my + d2 * ny, c[2] + d0 * bcz + d1 * mz + d2 * nz)


def _jitter(n: int, generator: Optional[torch.Generator], std: float) -> np.ndarray:
    """Torsion noise ``[n]`` (degrees): differences ``(e_i - e_{i-1}) / sqrt(2)`` of i.i.d.
    ``N(0, std^2)`` draws, so each torsion has standard deviation ``std`` but their running sum
    telescopes: the chain wiggles locally without the random-walk drift of independent noise
    (which would pull paired strands apart)."""
    if generator is None or std <= 0:
        return np.zeros(n)
    e = torch.randn(n + 1, generator=generator, dtype=torch.float64).numpy() * std
    return (e[1:] - e[:-1]) / math.sqrt(2.0)


def _segment_torsions(kind: str, length: int):
    if kind == "helix":
        return np.full(length, HELIX_PHI_PSI[0]), np.full(length, HELIX_PHI_PSI[1])
    if kind == "strand":
        return np.full(length, STRAND_PHI_PSI[0]), np.full(length, STRAND_PHI_PSI[1])
    if kind == "hairpin":
        s1 = (length - 2) // 2
        phi = np.full(length, STRAND_PHI_PSI[0])
        psi = np.full(length, STRAND_PHI_PSI[1])
        for k, (a, b) in enumerate(HAIRPIN_TURN_PHI_PSI):
            phi[s1 - 1 + k], psi[s1 - 1 + k] = a, b
        return phi, psi
    raise AssertionError(kind)


def _helix_axis(ca: np.ndarray):
    """Point and unit direction of the axis of a helical CA trace ``[L, 3]`` (L >= 7): the
    centroids of 4 consecutive CAs (~1.1 turns of an alpha helix) lie near the axis."""
    cent = np.stack([ca[i:i + 4].mean(0) for i in range(len(ca) - 3)])
    mid = cent.mean(0)
    _, _, vh = np.linalg.svd(cent - mid)
    d = vh[0] if vh[0] @ (ca[-1] - ca[0]) > 0 else -vh[0]
    return mid, d


def _rotation_to(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix taking unit vector ``a`` onto unit vector ``b``."""
    v = np.cross(a, b)
    c = float(a @ b)
    if c < -1 + 1e-9:  # opposite: rotate by pi about any perpendicular axis
        p = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(p) < 1e-6:
            p = np.cross(a, [0.0, 1.0, 0.0])
        p /= np.linalg.norm(p)
        return 2 * np.outer(p, p) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def _arc(p0: np.ndarray, p1: np.ndarray, n_points: int, bulge: np.ndarray, spacing: float = G.CA_CA_TRANS) -> np.ndarray:
    """``n_points`` points strictly between ``p0`` and ``p1`` on a circular arc, equally spaced
    with consecutive distance ``spacing`` (including the ends), bulging towards ``bulge``."""
    m = n_points + 1  # segments
    D = float(np.linalg.norm(p1 - p0))
    if D >= m * spacing:
        raise ValueError(f"loop of {n_points} residues cannot span {D:.1f} A")
    ratio = D / spacing
    # equal chords c on a circle: D / c = sin(m th / 2) / sin(th / 2); solve for th in (0, 2 pi / m)
    f = lambda th: math.sin(m * th / 2) / math.sin(th / 2) - ratio  # noqa: E731
    lo, hi = 1e-9, 2 * math.pi / m - 1e-9
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    th = 0.5 * (lo + hi)
    r = spacing / (2 * math.sin(th / 2))
    u = (p1 - p0) / max(D, 1e-12)
    w = bulge - (bulge @ u) * u
    w = w / max(np.linalg.norm(w), 1e-12)
    half = m * th / 2  # half the subtended angle
    centre = 0.5 * (p0 + p1) - w * r * math.cos(half)
    pts = []
    for k in range(1, m):
        ang = -half + k * th
        pts.append(centre + r * (math.sin(ang) * u + math.cos(ang) * w))
    return np.stack(pts)


def _bundle(length: int, generator: Optional[torch.Generator], jitter: float):
    """Helix bundle coordinates ``[L, 4, 3]`` and the per-residue segment labels."""
    loop = BUNDLE_LOOP_LEN
    n_helix = max(1, int(round((length + loop) / (BUNDLE_HELIX_LEN + loop))))
    while n_helix > 1 and (length - (n_helix - 1) * loop) / n_helix < 7:
        n_helix -= 1
    total_h = length - (n_helix - 1) * loop
    hl = [total_h // n_helix + (1 if k < total_h % n_helix else 0) for k in range(n_helix)]
    if n_helix == 1:
        phi, psi = _segment_torsions("helix", length)
        return backbone_from_torsions(phi + _jitter(length, generator, jitter), psi + _jitter(length, generator, jitter)), ["H"] * length
    # axis positions: a circle (3+ helices) or a pair, neighbours BUNDLE_AXIS_SPACING apart
    if n_helix == 2:
        centres = [np.array([-BUNDLE_AXIS_SPACING / 2, 0.0]), np.array([BUNDLE_AXIS_SPACING / 2, 0.0])]
    else:
        radius = BUNDLE_AXIS_SPACING / (2 * math.sin(math.pi / n_helix))
        centres = [radius * np.array([math.cos(2 * math.pi * k / n_helix), math.sin(2 * math.pi * k / n_helix)])
                   for k in range(n_helix)]
    phases = (torch.rand(n_helix, generator=generator, dtype=torch.float64).numpy() * 360.0
              if generator is not None else np.zeros(n_helix))
    helices = []
    for k, n in enumerate(hl):
        phi, psi = _segment_torsions("helix", n)
        X = backbone_from_torsions(phi + _jitter(n, generator, jitter), psi + _jitter(n, generator, jitter))
        mid, d = _helix_axis(X[:, 1])
        direction = np.array([0.0, 0.0, 1.0 if k % 2 == 0 else -1.0])  # antiparallel neighbours
        R = _rotation_to(d, direction)
        a = math.radians(phases[k])
        spin = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        X = (X - mid) @ R.T @ spin.T + np.array([centres[k][0], centres[k][1], 0.0])
        helices.append(X)
    parts, labels = [helices[0]], ["H"] * hl[0]
    centre_all = np.zeros(3)
    for k in range(1, n_helix):
        a_end, b_start = helices[k - 1][-1, 1], helices[k][0, 1]
        end_dir = np.array([0.0, 0.0, 1.0 if (k - 1) % 2 == 0 else -1.0])
        mid = 0.5 * (a_end + b_start)
        radial = mid - np.array([centre_all[0], centre_all[1], mid[2]])
        bulge = end_dir + 0.5 * radial / max(np.linalg.norm(radial), 1e-9)
        ca_loop = _arc(a_end, b_start, loop, bulge)
        # N, C, O of loop residues from the CA trace (loop + flanking helix residues for context)
        ctx = np.concatenate([helices[k - 1][-3:, 1], ca_loop, helices[k][:3, 1]])
        rec = G.reconstruct_backbone(ctx)[3:3 + loop]
        parts += [rec, helices[k]]
        labels += ["L"] * loop + ["H"] * hl[k]
    return np.concatenate(parts), labels


MAX_JITTER_ATTEMPTS = 12
#: smallest allowed CA-CA distance between residues |i - j| >= 2 of a noisy ideal chain (A)
MIN_NONBONDED_CA = 3.8
#: largest allowed cross-strand CA-CA distance of a noisy hairpin (first 40 pairs, A)
MAX_HAIRPIN_PAIR = 6.5


def _build(kind: str, length: int, generator, jitter: float):
    if kind == "helix_bundle":
        return _bundle(length, generator, jitter)
    phi, psi = _segment_torsions(kind, length)
    X = backbone_from_torsions(phi + _jitter(length, generator, jitter), psi + _jitter(length, generator, jitter))
    if kind == "hairpin":
        s1 = (length - 2) // 2
        ss = ["E"] * s1 + ["T", "T"] + ["E"] * (length - 2 - s1)
    else:
        ss = ["H" if kind == "helix" else "E"] * length
    return X, ss


def _acceptable(kind: str, ca: np.ndarray) -> bool:
    L = len(ca)
    D = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    if L > 2 and D[np.triu_indices(L, 2)].min() < MIN_NONBONDED_CA:
        return False
    if kind == "hairpin":
        s1 = (L - 2) // 2
        pairs = [D[s1 - 1 - k, s1 + 2 + k] for k in range(min(s1, L - 2 - s1, 40))]
        if pairs and max(pairs) > MAX_HAIRPIN_PAIR:
            return False
    return True


def ideal_chain(kind: str, length: int, *, generator: Optional[torch.Generator] = None,
                jitter: float = 4.0, name: Optional[str] = None) -> Chain:
    """An ideal backbone of ``length`` residues, centred on its CA centroid (Angstrom).

    Kinds (:data:`IDEAL_KINDS`):

    * ``helix``: alpha helix, (phi, psi) = (-57, -47), trans omega (rise ~1.5 A/residue).
    * ``strand``: one extended beta strand, (phi, psi) = (-120, 130).
    * ``hairpin``: two strands of ``(L-2)//2`` and the rest residues joined by a 2-residue
      turn — a 2:2 beta hairpin; the turn and its two flanking residues use the torsions of
      :data:`HAIRPIN_TURN_PHI_PSI` so that the strands pair (cross-strand CA-CA 4.8-5.3 A).
    * ``helix_bundle``: ``round((L + 5) / 23)`` ideal alpha helices (about 18 residues each;
      one helix when ``L`` is too short) placed as rigid bodies with parallel axes,
      antiparallel neighbours, axes on a circle with 10 A between neighbouring axes (a pair for
      two helices); consecutive helices are joined by 5-residue loops whose CAs lie on a
      circular arc with exact 3.80 A CA-CA spacing, bulging away from the bundle, and whose
      N/C/O are placed by :func:`~domains.proteins.geometry.reconstruct_backbone`. A "bundle"
      here is this rough up-down packing, not an energy-minimised structure; the loops are
      the only residues with non-NeRF geometry (listed in ``meta["ss"]`` as ``L``).

    Args:
        generator: ``None`` -> the exact ideal structure (deterministic); a generator adds
            Gaussian noise of standard deviation ``jitter`` degrees to every phi/psi
            (anti-correlated between neighbours, see :func:`_jitter`) and random helix phases
            in bundles; a pure function of the generator state. Draws with clashing CAs
            (< 3.8 A) or, for hairpins, unpaired strands (> 6.5 A in the first 40 pairs) are
            redrawn (halving the noise every 4 tries; the exact ideal chain after 12).
        jitter: torsion noise (degrees) used with a generator.
        name: chain name (default ``"ideal_<kind>_<length>"``).

    Returns:
        A :class:`~domains.proteins.chain.Chain` with sequence ``"X" * L`` (no sequence),
        ``source="ideal:<kind>"``, ``meta={"kind", "ss"}`` (intended secondary structure per
        residue: ``H`` helix, ``E`` strand, ``T`` turn, ``L`` loop).
    """
    if kind not in IDEAL_KINDS:
        raise ValueError(f"unknown ideal backbone kind {kind!r}; valid: {', '.join(IDEAL_KINDS)}")
    length = int(length)
    if length < 1:
        raise ValueError(f"ideal_chain: length must be >= 1, got {length}")
    if kind == "hairpin" and length < 6:
        raise ValueError(f"ideal_chain: a hairpin needs at least 6 residues, got {length}")
    if jitter < 0:
        raise ValueError(f"ideal_chain: jitter must be >= 0 degrees, got {jitter}")
    X = ss = None
    if generator is not None and jitter > 0:
        # rejection: a noisy draw must keep non-bonded CAs apart and hairpin strands paired
        for attempt in range(MAX_JITTER_ATTEMPTS):
            X, ss = _build(kind, length, generator, jitter * 0.5 ** (attempt // 4))
            if _acceptable(kind, X[:, 1]):
                break
            X = None
    if X is None:
        X, ss = _build(kind, length, None, 0.0)
    X = X - X[:, 1].mean(0)
    return Chain(name=name or f"ideal_{kind}_{length}", sequence="X" * length, coords=X.astype(np.float32),
                 source=f"ideal:{kind}", reconstructed=False, meta={"kind": kind, "ss": "".join(ss)})
