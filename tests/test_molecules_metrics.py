"""EDM's stability and the RDKit metrics of the ``molecules`` domain (domains/molecules/metrics.py).

The stability protocol must give EDM's published values on QM9 itself (with hydrogens: 99.0%
atoms, 95.2% molecules; Hoogeboom et al. 2022, Table 2): measured here on the whole training
split (100,000 molecules, ~3-5 s), where the sampling error is far below the 0.5-point tolerance.
Broken molecules (coordinates replaced by noise, atom types shuffled) must score far lower."""
import time

import numpy as np
import pytest
import torch

from domains.molecules import data as D
from domains.molecules import metrics as M


def _has_qm9pack() -> bool:
    try:
        D.qm9pack_dir()
        return True
    except (ModuleNotFoundError, FileNotFoundError):
        return False


# qm9pack cannot be imported (it imports pkg_resources): importorskip would always skip
needs_qm9 = pytest.mark.skipif(not _has_qm9pack(), reason="QM9 ships with pip qm9pack: " + D.INSTALL_HINT)


def _rdkit():
    return pytest.importorskip("rdkit.Chem", reason="RDKit is not installed (the `molecules` extra)")


@pytest.fixture(scope="module")
def test_split():
    """The QM9 test split, padded: ``positions [B, N, 3]`` float64, ``atom_types``, ``mask``."""
    p = D.load_qm9("test").padded(dtype=torch.float64)
    return p["positions"].numpy(), p["atom_types"].numpy(), p["mask"].numpy() > 0


def test_bond_order_follows_edm_tables():
    # C-C: single below 154 + 10 pm, double below 134 + 5, triple below 120 + 3
    assert [M.bond_order("C", "C", d) for d in (1.70, 1.63, 1.53, 1.38, 1.22)] == [0, 1, 1, 2, 3]
    assert M.bond_order("C", "O", 1.21) == 2 and M.bond_order("O", "C", 1.21) == 2
    assert M.bond_order("C", "O", 1.15) == 3  # C-O has a triple length (113 pm)
    assert M.bond_order("C", "F", 1.00) == 1  # no double length for C-F: single however short
    assert M.bond_order("H", "H", 0.83) == 1 and M.bond_order("H", "H", 0.85) == 0
    assert M.bond_order("N", "N", 1.12) == 3 and M.bond_order("O", "O", 1.25) == 2  # O-O has no triple
    assert M.ALLOWED_VALENCE == {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1} and M.MARGINS == (10, 5, 3)


def test_stability_small_cases_and_input_forms():
    # methane: stable; the same with one H pulled away: C has 3 bonds, that H none -> 3/5 atoms
    ch4 = np.array([[0, 0, 0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629], [-0.629, 0.629, -0.629],
                    [0.629, -0.629, -0.629]], dtype=float)
    types = np.array([1, 0, 0, 0, 0])
    broken = ch4.copy()
    broken[4] *= 3
    assert M.check_stability(ch4, types) == (True, 5, 5)
    assert M.check_stability(broken, types) == (False, 3, 5)
    r = M.stability([(ch4, types), (broken, types)])
    assert r["mol_stable"] == 0.5 and r["atom_stable"] == 8 / 10 and r["valence"][0].tolist() == [4, 1, 1, 1, 1]
    # padded torch input with padding in the middle (float mask) gives the same numbers
    pos = torch.zeros(2, 7, 3)
    ty = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7)
    idx = [0, 1, 3, 4, 6]
    pos[0, idx], pos[1, idx] = torch.tensor(ch4, dtype=torch.float32), torch.tensor(broken, dtype=torch.float32)
    ty[:, idx], mask[:, idx] = torch.tensor(types), 1.0
    ty[:, 2] = 4  # a type on padding is ignored
    r2 = M.stability(pos, ty, mask)
    assert (r2["atom_stable"], r2["mol_stable"], r2["n_atoms"]) == (r["atom_stable"], r["mol_stable"], 10)
    assert M.bond_orders(pos, ty, mask)[0][np.ix_(idx, idx)].tolist() == M.bond_orders([(ch4, types)])[0].tolist()
    with pytest.raises(ValueError, match="atom types must be in 0..4"):
        M.stability([(ch4, np.array([1, 0, 0, 0, 5]))])
    with pytest.raises(ValueError, match="positions"):
        M.stability([(ch4, types[:3])])
    with pytest.raises(ValueError, match="expected positions"):
        M.stability(pos[0], ty[0], mask[0])


@needs_qm9
def test_vectorised_equals_edm_pairwise_loop():
    s = D.load_qm9("val", limit=150)
    r = M.stability(s.molecules())
    for m in range(len(s)):
        pos, types = s.molecule(m)
        val = np.zeros(len(types), dtype=int)
        for i in range(len(types)):
            for j in range(i + 1, len(types)):
                o = M.bond_order(D.ATOM_TYPES[types[i]], D.ATOM_TYPES[types[j]], np.linalg.norm(pos[i] - pos[j]))
                val[i] += o
                val[j] += o
        assert val.tolist() == r["valence"][m, :len(types)].tolist()


@needs_qm9
def test_qm9_train_split_gives_edm_published_stability(capsys):
    s = D.load_qm9("train")
    p = s.padded(dtype=torch.float64)
    t0 = time.perf_counter()
    r = M.stability(p["positions"], p["atom_types"], p["mask"])
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nQM9 train ({r['n_molecules']} molecules): atom stability {100 * r['atom_stable']:.2f}%, "
              f"molecule stability {100 * r['mol_stable']:.2f}% in {dt:.2f} s")
    assert r["n_molecules"] == 100_000 and r["n_atoms"] == sum(D.atom_type_counts("train").values())
    assert abs(100 * r["atom_stable"] - 99.0) <= 0.5
    assert abs(100 * r["mol_stable"] - 95.2) <= 0.5


@needs_qm9
def test_broken_molecules_score_far_lower(test_split):
    pos, types, mask = test_split
    real = M.stability(pos, types, mask)
    rng = np.random.default_rng(0)
    centred = pos - (pos * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]
    noise = rng.normal(0.0, centred[mask].std(), size=pos.shape)  # i.i.d. noise of the data's spread
    shuffled = types.copy()
    for i in range(len(types)):
        n = int(mask[i].sum())
        shuffled[i, :n] = shuffled[i, rng.permutation(n)]  # right coordinates, wrong atoms
    for bad in (M.stability(noise, types, mask), M.stability(pos, shuffled, mask)):
        assert bad["atom_stable"] < 0.4 and bad["mol_stable"] < 0.01
        assert bad["atom_stable"] < real["atom_stable"] - 0.5 and bad["mol_stable"] < real["mol_stable"] - 0.9


def test_build_molecule_and_smiles():
    Chem = _rdkit()
    water = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    mol = M.build_molecule(water, [3, 0, 0], conformer=True)
    assert mol.GetNumAtoms() == 3 and mol.GetNumBonds() == 2
    assert np.allclose(mol.GetConformer().GetPositions(), water)
    assert M.mol_to_smiles(mol) == "O"
    # a carbon with 5 bonds does not sanitise
    bad = Chem.RWMol(Chem.MolFromSmiles("C", sanitize=False))
    for _ in range(5):
        bad.AddAtom(Chem.Atom("H"))
    for i in range(1, 6):
        bad.AddBond(0, i, Chem.BondType.SINGLE)
    assert M.mol_to_smiles(bad) is None
    # two waters far apart plus a methane: valid, SMILES of the largest fragment (methane: 5 atoms)
    ch4 = np.array([[0, 0, 0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629], [-0.629, 0.629, -0.629],
                    [0.629, -0.629, -0.629]], dtype=float)
    pos = np.concatenate([water, water + 10.0, ch4 - 10.0])
    assert M.molecule_smiles(pos, [3, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0]) == "C"
    assert M.canonical_smiles("OCC") == "CCO" and M.canonical_smiles("[H]OC([H])([H])C") == "CCO"
    assert M.canonical_smiles("C[C@H](N)O") == "CC(N)O" and M.canonical_smiles("C1CC") is None
    assert M.uniqueness(["C", "C", "O"]) == 2 / 3 and M.uniqueness([]) == 0.0
    assert M.novelty(["C", "O", "O"], {"C"}) == 0.5


@needs_qm9
def test_rdkit_metrics_on_qm9_and_on_broken_molecules(test_split):
    _rdkit()
    pos, types, mask = (a[:1000] for a in test_split)
    s = D.load_qm9("test", limit=1000)
    r = M.rdkit_metrics(pos, types, mask)
    # EDM reports 97.7% validity for the QM9 data with hydrogens; 1,000 molecules: SE ~0.5 point
    assert 0.96 <= r["validity"] <= 0.99 and r["uniqueness"] == 1.0 and r["novelty"] is None
    # novelty against the (canonical) CSV SMILES: the molecules themselves are known, other ones novel
    own = M.canonical_reference(s.smiles[:500])
    assert M.novelty(M.validity(s.molecules()[:500])[0], own) < 0.1
    assert M.rdkit_metrics(s.molecules()[500:], reference=own)["novelty"] > 0.9
    ref = M.reference_smiles(s.molecules()[:500])  # EDM's reference: the same 3D pipeline
    assert M.novelty(M.validity(s.molecules()[:500])[0], ref) == 0.0
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.4, size=pos.shape)
    assert M.rdkit_metrics(noise, types, mask)["validity"] < 0.4
