"""Chemistry metrics of the ``molecules`` domain (domains/molecules/chem_metrics.py): FCD, QED / SA /
logP distributions, PoseBusters-style geometry checks, each validated on real QM9 molecules and on
bad baselines, which must score far worse.

Bad baselines (see ``bad_sets``): random-topology molecules with the real composition and random
fragments of the real molecules (as many as the real set), and the valid molecules among the real
ones with i.i.d.-noise or 0.3 A-noised coordinates; for the geometry checks the noised molecules
themselves and the real bond graph with noised (0.3 A), compressed (x0.6) or flattened coordinates.
FCD and W1 grow as the sets shrink, so real and bad sets are compared at equal sizes. Small
subsets keep the file fast (300 test molecules, 500 train ones as the reference)."""
import importlib
import sys
import warnings

import numpy as np
import pytest
import torch

from domains.molecules import chem_metrics as C
from domains.molecules import data as D
from domains.molecules import metrics as M


def _has_qm9pack() -> bool:
    try:
        D.qm9pack_dir()
        return True
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


# qm9pack cannot be imported (it imports pkg_resources): importorskip would always skip
needs_qm9 = pytest.mark.skipif(not _has_qm9pack(), reason="QM9 ships with pip qm9pack: " + D.INSTALL_HINT)
needs_rdkit = pytest.mark.skipif(not _has("rdkit"), reason="RDKit is not installed (the `molecules` extra)")
needs_fcd = pytest.mark.skipif(not (_has("fcd") and _has("rdkit")), reason="FCD needs pip fcd: " + C.FCD_INSTALL_HINT)

N_TEST, N_REF = 300, 500


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("chem_cache")


@pytest.fixture(scope="module")
def qm9():
    """Test split (first N_TEST, padded float64) and the train split's first N_REF SMILES."""
    te = D.load_qm9("test", limit=N_TEST)
    p = te.padded(dtype=torch.float64)
    return {"split": te, "pos": p["positions"].numpy(), "types": p["atom_types"].numpy(), "mask": p["mask"].numpy() > 0,
            "train_smiles": list(D.load_qm9("train", limit=N_REF).smiles)}


_VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}


def _random_topology(smiles, rng):
    """A random tree (single bonds) on the heavy atoms of ``smiles``: same size and composition,
    random structure; valid by construction (None when every try strands an atom)."""
    from rdkit import Chem
    els = [a.GetSymbol() for a in Chem.MolFromSmiles(smiles).GetAtoms()]
    for _ in range(20):
        rng.shuffle(els)
        mol, free = Chem.RWMol(), []
        for i, e in enumerate(els):
            mol.AddAtom(Chem.Atom(e))
            f = _VALENCE[e]
            if i:
                open_ = [j for j in range(i) if free[j] > 0]
                if not open_:
                    break
                j = int(rng.choice(open_))
                mol.AddBond(i, j, Chem.BondType.SINGLE)
                free[j] -= 1
                f -= 1
            free.append(f)
        else:
            return M.mol_to_smiles(mol)
    return None


def _random_fragment(smiles, rng):
    """The largest piece left of ``smiles`` after deleting a random half of its heavy atoms."""
    from rdkit import Chem
    mol = Chem.RWMol(Chem.MolFromSmiles(smiles))
    Chem.Kekulize(mol, clearAromaticFlags=True)
    n = mol.GetNumAtoms()
    for i in sorted(rng.choice(n, size=n - max(1, (n + 1) // 2), replace=False).tolist(), reverse=True):
        mol.RemoveAtom(i)
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(False)
        atom.SetNumExplicitHs(0)
        atom.SetFormalCharge(0)
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return M.mol_to_smiles(Chem.RWMol(max(frags, key=lambda f: f.GetNumAtoms())))


@pytest.fixture(scope="module")
def bad_sets(qm9):
    """Valid SMILES of bad baselines: ``random_topology`` / ``random_fragments`` of the test
    molecules (one each, as many as the real set: FCD and W1 depend on the set size) and the valid
    molecules among the test molecules with i.i.d.-noise coordinates (``iid_noise_3d``: the data's
    spread, real atom types) or 0.3 A of noise (``noise_0.3A_3d``), ~15% of them."""
    pos, types, mask = qm9["pos"], qm9["types"], qm9["mask"]
    rng = np.random.default_rng(0)
    centred = pos - (pos * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]
    noise = rng.normal(0.0, centred[mask].std(), size=pos.shape)
    noised = pos + rng.normal(0.0, 0.3, size=pos.shape)
    smiles = list(qm9["split"].smiles)
    return {"random_topology": [s for s in (_random_topology(x, rng) for x in smiles) if s],
            "random_fragments": [s for s in (_random_fragment(x, rng) for x in smiles) if s],
            "iid_noise_3d": M.validity(noise, types, mask)[0], "noise_0.3A_3d": M.validity(noised, types, mask)[0]}


def _report(capsys, text):
    with capsys.disabled():
        print("\n" + text)


# ---------------------------------------------------------------------------------------- FCD

def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 4.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    assert C.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4.0 + (1 - 3) ** 2 + 0.0)
    assert C.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shape"):
        C.frechet_distance(mu1, s1, np.zeros(3), np.eye(3))


def test_fcd_missing_package_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fcd", None)  # import fcd -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install -c constraints.txt fcd==1.2.2") as e:
        C.fcd_score(["CCO", "CC"], ["CCO", "CCC"])
    assert "\n" not in str(e.value)
    assert not C.fcd_available()


@needs_fcd
def test_fcd_equals_official_get_fcd():
    import fcd
    a = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "OCC(O)CO", "CC#N", "C1CCOC1", "CC(C)=O"]
    b = ["CCCC", "CO", "C1CC1", "NCC(=O)O", "c1ccncc1", "CC=O", "OC1CCCC1"]
    # fcd.get_fcd's steps (get_fcd itself runs a DataLoader worker process); np.row_stack and sqrtm(disp=) deprecated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fcd.load_ref_model()
        act = [fcd.get_predictions(model, [M.canonical_smiles(s) for s in x], n_jobs=0, device="cpu") for x in (a, b)]
        ref = fcd.calculate_frechet_distance(act[0].mean(0), np.cov(act[0].T), act[1].mean(0), np.cov(act[1].T))
    assert C.fcd_score(a, b, cache_dir=False, device="cpu") == pytest.approx(ref, rel=1e-5)
    # canonical SMILES in: another spelling of the same molecules gives the same value
    assert C.fcd_score(["OCC", "OC(C)=O"] + a[2:], b, cache_dir=False) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 parsable SMILES"):
        C.fcd_score(["CCO", "C1CC"], b, cache_dir=False)


@needs_fcd
def test_fcd_reference_statistics_are_cached_atomically(tmp_path, monkeypatch, caplog):
    ref = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "OCC(O)CO", "CC#N"]
    st = C.fcd_statistics(ref, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("fcd_") and files[0].suffix == ".npz"  # no temp file left
    assert st.mu.shape == (512,) and st.sigma.shape == (512, 512) and st.n == 6

    def boom(*a, **k):
        raise AssertionError("ChemNet ran although the statistics are cached")

    monkeypatch.setattr(C, "chemnet_activations", boom)
    # the same set in another order and spelling (canonicalised first): a cache hit
    hit = C.fcd_statistics(["OCC"] + list(reversed(ref[1:])), cache_dir=tmp_path)
    assert np.array_equal(hit.mu, st.mu) and np.array_equal(hit.sigma, st.sigma)
    monkeypatch.undo()
    files[0].write_bytes(b"not an npz")  # a corrupt cache file is recomputed and rewritten
    fixed = C.fcd_statistics(ref, cache_dir=tmp_path)
    assert np.allclose(fixed.mu, st.mu) and "ignoring unreadable cache file" in caplog.text
    assert C.default_cache_dir().name == "chem_metrics" and C.default_cache_dir().parent == D.default_cache_dir().parent


@needs_qm9
@needs_fcd
def test_fcd_real_vs_train_small_bad_sets_large(qm9, bad_sets, cache, capsys):
    ref = qm9["train_smiles"][:N_REF]
    real = list(qm9["split"].smiles)
    lines, real_at = [], {}
    for name, bad in bad_sets.items():
        assert len(bad) >= 30, name
        # FCD grows as the sets shrink (real: ~1.8 at 300 SMILES, ~6 at 50): compare at equal sizes
        if len(bad) not in real_at:
            real_at[len(bad)] = C.fcd_score(real[:len(bad)], ref, cache_dir=cache)
        fcd_real = real_at[len(bad)]
        fcd_bad = C.fcd_score(bad, ref, cache_dir=cache)
        lines.append(f"  {name} ({len(bad)} SMILES): real {fcd_real:.2f}, bad {fcd_bad:.2f}")
        assert fcd_bad > 2.5 * fcd_real and fcd_bad > 12.0, name
        if len(bad) >= 0.9 * len(real):
            assert fcd_real < 2.5 and fcd_bad > 5 * fcd_real, name
    _report(capsys, f"FCD vs {N_REF} train SMILES, QM9 test vs bad sets of the same size:\n" + "\n".join(lines))


# --------------------------------------------------------------------------------- properties

@needs_rdkit
def test_sa_score_matches_rdkit_reference_values_and_orders_molecules():
    import os

    from rdkit import Chem, RDConfig
    # the reference values shipped with the official implementation (Contrib/SA_Score/data/zim.100.txt, 100 ZINC
    # molecules, 3 decimals; RDKit's UnitTestSAScore checks the same to 3 places)
    with open(os.path.join(RDConfig.RDContribDir, "SA_Score", "data", "zim.100.txt")) as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh][1:]
    assert len(rows) == 100
    for smi, _, score in rows:
        assert C.sa_score(Chem.MolFromSmiles(smi)) == pytest.approx(float(score), abs=6e-4)
    # self-consistency: small / simple molecules are easy (SA < 2.5), stereo-rich natural products hard (> 5)
    easy = ["c1ccccc1", "CCO", "CC(=O)O", "CC(=O)Oc1ccccc1C(=O)O", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"]
    hard = ["CN1CC[C@]23[C@@H]4[C@H]1CC5=C2C(=C(C=C5)O)O[C@H]3[C@H](C=C4)O",  # morphine
            "O=C7N2c1ccccc1[C@@]64[C@@H]2[C@@H]3[C@@H](OC/C=C5\\[C@@H]3C[C@@H]6N(CC4)C5)C7",  # strychnine
            "CC1=C2[C@@]([C@]([C@H]([C@@H]3[C@]4([C@H](OC4)C[C@@H]([C@]3(C(=O)[C@@H]2OC(=O)C)C)O)OC(=O)C)"
            "OC(=O)c5ccccc5)(C[C@@H]1OC(=O)[C@H](O)[C@@H](NC(=O)c6ccccc6)c7ccccc7)O)(C)C"]  # paclitaxel
    props = C.molecule_properties(easy + hard + ["not a smiles"])
    assert np.all(props["sa"][:5] < 2.5) and np.all(props["sa"][5:8] > 5.0) and np.isnan(props["sa"][8])
    assert props["sa"][0] == 1.0  # benzene: the floor of the scale
    # QED and logP (RDKit's values): aspirin's QED (mean weights) 0.55, Crippen logP of ethanol -0.0014
    assert props["qed"][3] == pytest.approx(0.55, abs=0.01)
    assert props["logp"][1] == pytest.approx(-0.0014, abs=1e-3)


@needs_rdkit
def test_sascorer_missing_is_one_line_error(tmp_path, monkeypatch):
    from rdkit import RDConfig
    monkeypatch.setattr(RDConfig, "RDContribDir", str(tmp_path))
    C.sascorer.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="Contrib/SA_Score") as e:
            C.molecule_properties(["CCO"])
        assert "\n" not in str(e.value)
    finally:
        monkeypatch.undo()
        C.sascorer.cache_clear()


@needs_qm9
@needs_rdkit
def test_property_distances_real_small_bad_large(qm9, bad_sets, cache, capsys):
    ref = C.compute_reference_properties(qm9["train_smiles"][:N_REF], cache_dir=cache)
    assert all(len(ref[p]) == N_REF for p in C.PROPERTIES)
    again = C.compute_reference_properties(qm9["train_smiles"][:N_REF], cache_dir=cache)  # from the cache
    assert all(np.array_equal(ref[p], again[p]) for p in C.PROPERTIES)
    real = C.property_distances(C.molecule_properties(list(qm9["split"].smiles)), ref)
    bad = {k: C.property_distances(C.molecule_properties(v), ref) for k, v in bad_sets.items()}
    fmt = lambda d: ", ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
    _report(capsys, f"W1 to {N_REF} train molecules: test ({N_TEST}) {fmt(real)}\n"
            + "\n".join(f"  {k} ({len(bad_sets[k])}): {fmt(v)}" for k, v in bad.items()))
    # real: the sampling floor of 300 vs 500 molecules
    assert real["qed_w1"] < 0.025 and real["sa_w1"] < 0.12 and real["logp_w1"] < 0.15
    for k in ("random_topology", "random_fragments"):  # as many molecules as the real set
        assert bad[k]["qed_w1"] > 3 * real["qed_w1"] and bad[k]["sa_w1"] > 5 * real["sa_w1"], k
        assert bad[k]["logp_w1"] > 1.5 * real["logp_w1"], k
    for k in ("iid_noise_3d", "noise_0.3A_3d"):  # ~50 molecules: noisier, QED and SA only
        assert bad[k]["qed_w1"] > 3 * real["qed_w1"] and bad[k]["sa_w1"] > 3 * real["sa_w1"], k


# ----------------------------------------------------------------------------------- geometry

def _with_positions(mol, pos):
    from rdkit import Chem
    mol = Chem.Mol(mol)
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(np.asarray(pos, dtype=float).tolist()):
        conf.SetAtomPosition(i, p)
    conf.Set3D(True)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)
    return mol


@needs_qm9
@needs_rdkit
def test_geometry_checks_pass_on_qm9_fail_on_noised_positions(qm9, capsys):
    pos, types, mask = qm9["pos"], qm9["types"], qm9["mask"]
    real = C.geometry_checks(pos, types, mask)
    assert set(real["flags"]) == set(C.GEOMETRY_CHECKS) | {"pb_valid"} and real["n_molecules"] == N_TEST
    assert real["flags"]["bond_angles"].shape == (N_TEST,) and real["flags"]["bond_angles"].dtype == bool
    noised = C.geometry_checks(pos + np.random.default_rng(1).normal(0.0, 0.3, size=pos.shape), types, mask)
    _report(capsys, "geometry checks (fraction passing), real QM9 test / +0.3 A noise (bonds re-inferred):\n  "
            + "\n  ".join(f"{k}: {real['fractions'][k]:.3f} / {noised['fractions'][k]:.3f}" for k in real["fractions"]))
    for k, v in real["fractions"].items():
        assert v >= 0.95, k  # the ~2.5% that fail are QM9's charged molecules, which EDM's bonds cannot sanitise
        assert noised["fractions"][k] < 0.3, k
    assert noised["fractions"]["pb_valid"] < 0.05
    # torch input and the list-of-pairs form agree with the padded numpy form
    pairs = qm9["split"].molecules()
    assert np.array_equal(C.geometry_checks(pairs)["flags"]["pb_valid"], real["flags"]["pb_valid"])
    t = C.geometry_checks(torch.as_tensor(pos[:20]), torch.as_tensor(types[:20]), torch.as_tensor(mask[:20]).float())
    assert np.array_equal(t["flags"]["pb_valid"], real["flags"]["pb_valid"][:20])
    with pytest.raises(ValueError, match="atom types must be in 0..4"):
        C.geometry_checks([(pos[0][:3], np.array([1, 1, 7]))])


@needs_qm9
@needs_rdkit
def test_each_geometry_check_on_the_real_bond_graph_with_broken_coordinates(qm9, capsys):
    """Bonds from the real geometry, coordinates broken: each check must catch its kind of damage."""
    from rdkit import Chem
    rng = np.random.default_rng(2)
    pats = C._patterns()
    has = {"aromatic_ring_flatness": pats["flat"], "double_bond_flatness": pats["double"],
           "non_aromatic_ring_non_flatness": pats["nonflat"]}

    def flatten(p):
        c = p - p.mean(0)
        vt = np.linalg.svd(c)[2]
        return c @ vt[:2].T @ vt[:2]

    broken = {"real": lambda p: p, "noise_0.3A": lambda p: p + rng.normal(0.0, 0.3, p.shape),
              "compressed_x0.6": lambda p: 0.6 * (p - p.mean(0)), "flattened": flatten}
    # molecules with non-aromatic 6-rings are rare in QM9 (~2%): take them from a larger sample
    extra = D.load_qm9("test", limit=2000)
    rows = [(qm9["split"], m) for m in range(N_TEST)]
    rows += [(extra, m) for m in range(N_TEST, 2000)
             if any(Chem.MolFromSmiles(extra.smiles[m]).HasSubstructMatch(q) for q in pats["nonflat"])][:25]
    res = {k: {c: [] for c in C.GEOMETRY_CHECKS[2:]} for k in broken}
    for split, m in rows:
        p, t = split.molecule(m)
        mol = M.build_molecule(p, t)
        sane = Chem.Mol(mol)
        if not C.posebusters_checks(_with_positions(mol, p))["sanitization"]:
            continue
        Chem.SanitizeMol(sane)
        applies = {c: (c not in has or any(sane.HasSubstructMatch(q) for q in has[c])) for c in C.GEOMETRY_CHECKS[2:]}
        for name, f in broken.items():
            r = C.posebusters_checks(mol, f(p))
            for c in C.GEOMETRY_CHECKS[2:]:
                if applies[c]:
                    res[name][c].append(r[c])
    frac = {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in res.items()}
    counts = {c: len(v) for c, v in res["real"].items()}
    _report(capsys, f"geometry checks on the real bond graph (molecules where the check applies: {counts}):\n  "
            + "\n  ".join(f"{k}: " + ", ".join(f"{c} {v:.3f}" for c, v in d.items()) for k, d in frac.items()))
    # real: all pass but one of the (selected) molecules with a non-aromatic 6-ring, O=C1C=CC(=O)C(=O)N1, which is
    # conjugated and planar: PoseBusters' pattern flags it too (its ring bonds match the SMARTS)
    assert all(v >= 0.95 for v in frac["real"].values())
    assert frac["noise_0.3A"]["bond_lengths"] < 0.1 and frac["noise_0.3A"]["bond_angles"] < 0.4
    assert frac["noise_0.3A"]["aromatic_ring_flatness"] < 0.7 and frac["noise_0.3A"]["double_bond_flatness"] < 0.7
    assert frac["compressed_x0.6"]["internal_steric_clash"] < 0.3
    assert frac["flattened"]["non_aromatic_ring_non_flatness"] < 0.1 and counts["non_aromatic_ring_non_flatness"] >= 10


@needs_rdkit
def test_posebusters_checks_small_cases():
    from rdkit import Chem
    from rdkit.Chem import AllChem
    benzene = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1"))
    AllChem.EmbedMolecule(benzene, randomSeed=0)
    r = C.posebusters_checks(benzene)
    assert r["pb_valid"] and all(r[k] for k in C.GEOMETRY_CHECKS)
    pos = benzene.GetConformer().GetPositions()
    pos[0, 2] += 0.6  # one ring atom 0.6 A out of the plane
    r = C.posebusters_checks(benzene, pos)
    assert not r["aromatic_ring_flatness"] and not r["pb_valid"]
    # no conformer / two fragments / one atom
    assert not C.posebusters_checks(Chem.MolFromSmiles("CCO"))["pb_valid"]
    water_and_methane = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [10.0, 0, 0]])
    two = C.geometry_checks([(water_and_methane, np.array([3, 0, 0, 1]))])
    assert two["flags"]["sanitization"][0] and not two["flags"]["all_atoms_connected"][0]
    one = C.geometry_checks([(np.zeros((1, 3)), np.array([1]))])
    assert one["flags"]["pb_valid"][0] and C.geometry_checks([])["n_molecules"] == 0


# ------------------------------------------------------------------------------------ combined

@needs_qm9
@needs_rdkit
def test_chemistry_metrics_real_vs_noise(qm9, cache, capsys, monkeypatch):
    pos, types, mask = (a[:200] for a in (qm9["pos"], qm9["types"], qm9["mask"]))
    ref = qm9["train_smiles"][:N_REF]
    real = C.chemistry_metrics(torch.as_tensor(pos), torch.as_tensor(types), torch.as_tensor(mask),
                               reference_smiles=ref, cache_dir=cache)
    noised = C.chemistry_metrics(pos + np.random.default_rng(3).normal(0.0, 0.3, pos.shape), types, mask,
                                 reference_smiles=ref, cache_dir=cache)
    _report(capsys, "chemistry_metrics, 200 QM9 test molecules vs +0.3 A noise:\n  "
            + "\n  ".join(f"{k}: {real[k]:.4g} / {noised[k]:.4g}" for k in real))
    expected = ({"n_molecules", "n_valid", "validity"} | {f"{p}_mean" for p in C.PROPERTIES}
                | {f"{p}_w1" for p in C.PROPERTIES} | {f"geom_{k}" for k in C.GEOMETRY_CHECKS + ("pb_valid",)})
    if C.fcd_available():
        expected.add("fcd")  # (the noised set has ~35 valid molecules: part of its FCD is the small-set bias)
        assert real["fcd"] < 3.0 < 10.0 < noised["fcd"]
    assert set(real) == expected and all(type(v) is float for v in real.values())
    assert real["validity"] > 0.95 and real["geom_pb_valid"] > 0.95 > 0.3 > noised["geom_pb_valid"]
    # (the property distances are validated in test_property_distances_real_small_bad_large; 200 molecules are noisier)
    assert noised["qed_w1"] > 3 * real["qed_w1"] and noised["sa_w1"] > 3 * real["sa_w1"]
    assert noised["logp_w1"] > 1.5 * real["logp_w1"]
    # the reference properties can be passed in; without any reference there are no distances
    props = C.compute_reference_properties(ref, cache_dir=cache)
    r2 = C.chemistry_metrics(pos[:30], types[:30], mask[:30], reference_properties=props, cache_dir=cache)
    own = C.property_distances(C.molecule_properties(M.validity(pos[:30], types[:30], mask[:30])[0]), props)
    assert r2["qed_w1"] == own["qed_w1"] and "fcd" not in r2
    monkeypatch.setitem(sys.modules, "fcd", None)  # fcd not installed: no fcd key, everything else
    r3 = C.chemistry_metrics(pos[:20], types[:20], mask[:20])
    assert "fcd" not in r3 and "qed_w1" not in r3 and r3["n_molecules"] == 20.0
    empty = C.chemistry_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3), dtype=int), np.zeros((2, 3)))
    assert np.isnan(empty["qed_mean"]) and empty["geom_pb_valid"] == 0.0
