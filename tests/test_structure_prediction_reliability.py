"""structure_prediction reliability (issue 16): the shipped example FASTA, one prediction per
record named after it, refusing samples that are not predictions, the folder's per-call generator."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.structure_prediction import StructurePredictionDomain
from domains.structure_prediction.domain import read_fasta_file
from workbench.runner import evaluate_dir, generate

EXAMPLE = Path(__file__).resolve().parents[1] / "domains" / "structure_prediction" / "examples" / "seqs.fasta"
ODE = {"gamma0": 0.0, "step_scale_eta": 1.0}


def test_example_fasta_holds_held_out_chains():
    records = read_fasta_file(EXAMPLE)
    assert len(records) == 2
    test_seqs = {c.sequence for c in StructurePredictionDomain().chains("test")}
    assert all(seq in test_seqs for _, seq in records)


def test_fasta_generation_one_named_prediction_per_record(tmp_path):
    dom = StructurePredictionDomain(fasta=str(EXAMPLE))
    assert dom.default_n() == 2 and StructurePredictionDomain().default_n() is None
    generate(dom, sampler="af3_edm", steps=2, seed=0, out_dir=tmp_path, options=ODE, progress=False)  # n: one per record
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.pdb"))
    assert names == ["sample_00000_6zu5_LMM.pdb", "sample_00001_1lpb_A.pdb"]
    assert "6zu5_LMM" in (tmp_path / "samples" / names[0]).read_text()
    with np.load(tmp_path / "samples" / "samples.npz") as f:
        assert list(f["names"]) == ["6zu5_LMM", "1lpb_A"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["metrics"]["with_reference"] == 1.0  # both are held-out chains with known structures
    assert m["n"] == 2 and m["steps"] == 2 and "steps" not in m["domain_config"]  # only the steps that ran are recorded


def test_evaluate_refuses_backbones_and_overwrites_nothing(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    x = np.cumsum(np.full((2, 10, 3), 0.22, dtype=np.float32), axis=1)  # a protein_backbone samples.npz: nm, no sequences
    np.savez_compressed(samples / "samples.npz", x=x, mask=np.ones((2, 10), np.float32), units=np.array("nm"))
    (tmp_path / "metrics_eval.json").write_text("earlier\n")
    with pytest.raises(ValueError, match="no sequences.*domain=protein_backbone") as e:
        evaluate_dir("structure_prediction", tmp_path)
    assert "\n" not in str(e.value)
    assert (tmp_path / "metrics_eval.json").read_text() == "earlier\n"


def test_folder_seed_comes_from_the_generator():
    folder = StructurePredictionDomain().folder(steps=2, options=ODE)
    seqs = ["ACDEFGHIKLMNPQRSTVWY"] * 2
    a = folder.fold(seqs, generator=torch.Generator().manual_seed(1))
    b = folder.fold(seqs, generator=torch.Generator().manual_seed(1))
    c = folder.fold(seqs, generator=torch.Generator().manual_seed(2))
    assert np.array_equal(a[0].ca, b[0].ca) and not np.allclose(a[0].ca, c[0].ca)
    assert np.array_equal(folder.fold(seqs)[1].ca, folder.domain.predict(seqs, steps=2, options=ODE, seed=0)[1].ca)
