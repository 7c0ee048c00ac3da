"""Every command of the README's CLI quickstart runs as written (issue 16: "every command in the
README runs as written on a fresh clone"), in the README's order, from a scratch folder with the
repository's files where the commands name them (the example FASTA). The commands whose work is
a long benchmark or training run are run with ``--help`` only (their keys and defaults parse);
the reason is given per command below. Marked slow (about a minute)."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: commands run with --help only: (prefix, reason)
HELP_ONLY = {
    "workbench train domain=toy": "2000 training steps (minutes); the training loop is tested in test_training.py",
    "workbench distill domain=toy": "3000 distillation steps (minutes); distillation is tested per method",
    "workbench generate domain=toy generator=runs/cd": "needs the distilled student of the command before",
    "workbench bench samplers": "a benchmark over every sampler (minutes)",
    "workbench bench peers": "a benchmark against diffusers and k-diffusion (about a minute of one core)",
    "workbench bench distill": "two distillations of 2000 steps (minutes)",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## CLI quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("workbench "):
            cmds.append(line)
    return cmds


def test_the_readme_lists_the_quickstart_commands():
    cmds = readme_commands()
    assert len(cmds) >= 10 and all(c.startswith("workbench ") for c in cmds)
    for prefix in HELP_ONLY:  # every exemption still names a README command
        assert any(c.startswith(prefix) for c in cmds), prefix


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "domains" / "structure_prediction" / "examples", tmp_path / "domains" / "structure_prediction" / "examples")
    monkeypatch.chdir(tmp_path)
    ran = []
    for cmd in readme_commands():
        argv = shlex.split(cmd)[1:]
        help_only = next((p for p in HELP_ONLY if cmd.startswith(p)), None)
        if help_only:
            argv = argv[:1] + ["--help"] if argv[0] != "bench" else argv[:2] + ["--help"]
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"{cmd!r} exited {rc}: {out.err[-500:]}"
        ran.append(cmd)
    assert Path("runs/digits/samples.npz").is_file() or any(Path("runs/digits").glob("**/*.npz"))
    assert any(Path("runs/bb/samples").glob("sample_*.pdb")) and Path("runs/bb_design/report.json").is_file()
    assert any(Path("runs/fold").rglob("*.pdb"))
