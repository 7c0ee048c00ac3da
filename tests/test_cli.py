"""CLI: one-line errors with valid choices, and the generate / evaluate / bench / train / check
jobs end to end on the toy domain (tiny sizes)."""
import json
import subprocess
import sys

import pytest

from workbench.cli import main


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,needle", [
    (["generate", "stepz=3"], "unknown config key 'stepz'; valid: "),
    (["generate", "domain=nope"], "unknown domain 'nope'; valid: "),
    (["generate", "sampler=fast"], "unknown sampler 'fast'; valid: "),
    (["generate", "timesteps=wobbly"], "unknown time grid 'wobbly'; valid: "),
    (["frobnicate"], "unknown command 'frobnicate'; valid: "),
    (["bench", "everything"], "bench needs a kind; valid: samplers, distill"),
    (["generate", "steps"], "expected key=value"),
])
def test_bad_input_is_one_line_error(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_missing_checkpoint_is_one_line_error(capsys, tmp_path):
    code, _, err = run(capsys, "generate", f"teacher={tmp_path}/none.safetensors", f"out={tmp_path}/o", "n=4")
    assert code == 2 and "checkpoint not found" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    code, _, err = run(capsys, "generate", f"teacher={bad}", f"out={tmp_path}/o", "n=4")
    assert code == 2 and "corrupt" in err


def test_lists(capsys):
    code, out, _ = run(capsys, "domains")
    assert code == 0 and "toy" in out and "images" in out
    code, out, _ = run(capsys, "samplers")
    assert code == 0 and "dpm_solver_pp_2m" in out and "unipc_3" in out


def test_generate_then_evaluate(capsys, tmp_path):
    out = tmp_path / "gen"
    code, stdout, err = run(capsys, "generate", "domain=toy", "sampler=unipc_2", "steps=4", "n=32", "seed=3", f"out={out}", "n_ref=8")
    assert code == 0, err
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["metrics"]["nfe"] == 4 and rec["sampler"] == "unipc_2" and "ode_error" in rec["metrics"]
    assert (out / "report.md").exists() and (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "samples" / "samples.npz").exists()
    code, stdout, err = run(capsys, "evaluate", "domain=toy", f"samples={out}")
    assert code == 0, err
    ev = json.loads((out / "metrics_eval.json").read_text())["metrics"]
    for k, v in ev.items():
        assert abs(v - rec["metrics"][k]) < 1e-6 * max(1.0, abs(v)), k


def test_same_seed_same_samples_whatever_the_batch_size(capsys, tmp_path):
    import numpy as np

    for bs, name in ((32, "a"), (5, "b")):
        code, _, err = run(capsys, "generate", "sampler=euler", "options.eta=1.0", "steps=3", "n=12", f"batch_size={bs}", f"out={tmp_path / name}")
        assert code == 0, err
    a = np.load(tmp_path / "a" / "samples" / "samples.npz")["x"]
    b = np.load(tmp_path / "b" / "samples" / "samples.npz")["x"]
    assert np.allclose(a, b, atol=1e-5)


def test_bench_samplers_tiny(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "samplers", "domain=toy", f"out={tmp_path}", "bench.nfes=[3,5]",
                       "bench.samplers=[euler,dpm_solver_pp_2m,heun]", "bench.peers=[ddim,dpmsolver_2m]", "bench.n=32", "bench.n_ref=16")
    assert code == 0, err
    csv = (tmp_path / "samplers.csv").read_text().splitlines()
    methods = {line.split(",")[0] for line in csv[1:]}
    assert methods == {"euler", "dpm_solver_pp_2m", "heun", "diffusers:ddim", "diffusers:dpmsolver_2m"}
    md = (tmp_path / "samplers.md").read_text()
    assert "Bookkeeping cost per step" in md and (tmp_path / "samplers.png").exists()


def test_train_is_resumable_and_check_passes(capsys, tmp_path):
    out = tmp_path / "t"
    code, _, err = run(capsys, "train", "domain=toy", f"out={out}", "train.steps=6", "train.ckpt_every=3", "train.batch_size=16", "train.progress=false")
    assert code == 0, err
    assert (out / "teacher.safetensors").exists() and (out / "state.pt").exists()
    code, _, err = run(capsys, "train", "domain=toy", f"out={out}", "train.steps=9", "train.ckpt_every=3", "train.batch_size=16", "train.progress=false")
    assert code == 0, err
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["step"] == 9
    code, stdout, err = run(capsys, "check", "domain=toy", "domain.dataset=pointset")
    assert code == 0 and "passes" in stdout, err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "generate", "sampler=nope"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("workbench: error: unknown sampler 'nope'")
