"""A regular (non-editable) install works from any folder: the wheel carries the configs and
the shipped checkpoints, and ``workbench generate`` runs from an unrelated directory."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_runs_from_any_folder(tmp_path):
    src = tmp_path / "src"  # a copy of the sources, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("workbench", "domains"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                       capture_output=True, text=True, cwd=tmp_path)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    (whl,) = wheels.glob("*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert "workbench/configs/config.yaml" in names
    for p in ROOT.glob("domains/*/checkpoints/*.safetensors"):
        assert p.relative_to(ROOT).as_posix() in names
    # a fresh environment: the wheel unpacked into its site-packages, the third-party packages
    # of this interpreter reachable through a .pth file, the repository NOT on the path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    zipfile.ZipFile(whl).extractall(site)
    (site / "thirdparty.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    env.pop("WORKBENCH_CONFIG_DIR", None)
    r = subprocess.run([str(py), "-c", "import workbench, domains.toy; print(workbench.__file__); print(domains.toy.__file__)"],
                       capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert all(Path(line).is_relative_to(site) for line in r.stdout.split()), r.stdout
    r = subprocess.run([str(py), "-m", "workbench.cli", "generate", "domain=toy", "sampler=unipc_2", "steps=3", "n=16", "out=gen", "threads=1"],
                       capture_output=True, text=True, cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    assert (work / "gen" / "metrics.json").exists() and (work / "gen" / "samples" / "samples.npz").exists()
