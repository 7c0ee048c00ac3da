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
    (["generate", "domain=images", "domain.guidance=abc"], "bad value for domain.guidance: "),
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


@pytest.mark.slow
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


def test_train_keys_seed_and_device_reach_the_loop(capsys, tmp_path):
    """Every ``train.<field>`` of TrainConfig is a key, and it, ``seed`` and ``device`` reach the
    training loop (its saved config); the top-level seed is the training seed."""
    import torch

    from workbench.checkpoint import load_state

    common = ["domain=toy", "train.steps=4", "train.batch_size=16", "train.progress=false", "train.log_every=2"]
    code, _, err = run(capsys, "train", *common, f"out={tmp_path / 'a'}", "train.warmup=10", "train.betas=[0.9,0.99]",
                       "train.schedule=constant", "train.weight_decay=0.01", "device=cpu", "seed=3")
    assert code == 0, err
    cfg = load_state(tmp_path / "a" / "state.pt")["config"]
    assert (cfg["warmup"], tuple(cfg["betas"]), cfg["schedule"], cfg["weight_decay"], cfg["seed"], cfg["device"]) == \
        (10, (0.9, 0.99), "constant", 0.01, 3, "cpu")
    assert [h["step"] for h in json.loads((tmp_path / "a" / "history.json").read_text())] == [2, 4]
    # the same seed gives the same weights, another seed other weights
    for name, seed in (("b", "train.seed=3"), ("c", "seed=4")):
        code, _, err = run(capsys, "train", *common, f"out={tmp_path / name}", seed)
        assert code == 0, err
    w = {n: torch.load(tmp_path / n / "state.pt", weights_only=True)["nets"]["model"] for n in "abc"}
    assert load_state(tmp_path / "b" / "state.pt")["config"]["seed"] == 3
    assert all(torch.equal(w["b"][k], v) for k, v in w["c"].items()) is False
    assert all(torch.equal(w["b"][k], v) for k, v in w["a"].items()) is False  # a had other hyper-parameters
    code, _, err = run(capsys, "train", *common, f"out={tmp_path / 'd'}", "seed=3")
    d = torch.load(tmp_path / "d" / "state.pt", weights_only=True)["nets"]["model"]
    assert all(torch.equal(w["b"][k], v) for k, v in d.items())


@pytest.mark.parametrize("args,needle", [
    (["train", "train.schedule=wavy"], "unknown lr schedule 'wavy'; valid: constant, cosine"),
    (["train", "train.warmup=abc"], "train.warmup must be an integer >= 0 or null, got 'abc'"),
    (["train", "train.betas=[0.9]"], "TrainConfig.betas must be two numbers"),
    (["generate", "device=tpu"], "unknown device 'tpu'; valid: cpu, cuda, cuda:N, auto"),
])
def test_bad_train_and_device_values_are_one_line_errors(capsys, tmp_path, args, needle):
    code, _, err = run(capsys, *args, f"out={tmp_path}", "train.steps=1", "train.progress=false")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args", [["generate"], ["train"], ["distill"], ["bench", "samplers"], ["bench", "distill"], ["evaluate"],
                                  ["check"], ["demo"], ["generate", "train.device=cuda", "device=cpu"]])
def test_unavailable_cuda_is_a_one_line_error(capsys, tmp_path, args):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    extra = [] if any(a.endswith("device=cpu") for a in args) else ["device=cuda"]
    code, out, err = run(capsys, *args, *extra, f"out={tmp_path}")
    assert code == 2 and "CUDA is not available on this machine; valid here: cpu, auto" in err, err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("cmd", sorted(__import__("workbench.cli", fromlist=["COMMAND_HELP"]).COMMAND_HELP))
def test_help_lists_each_commands_keys_with_defaults(capsys, cmd):
    from omegaconf import OmegaConf

    from workbench.cli import COMMAND_HELP, load_config

    code, out, err = run(capsys, *cmd.split(), "--help")
    assert code == 0, err
    assert out.startswith(f"workbench {cmd} [key=value ...]: {COMMAND_HELP[cmd][0]}")
    cfg = load_config([])
    for key in COMMAND_HELP[cmd][1]:
        node = cfg[key]
        if OmegaConf.is_dict(node) and key != "options" and key != "distill":
            for sub, v in node.items():
                assert f"    {key}.{sub}=" in out, (key, sub)
        elif key != "domain":
            assert f"  {key}={OmegaConf.to_container(node) if OmegaConf.is_config(node) else node!r}" in out, key
    if "train" in COMMAND_HELP[cmd][1]:  # a null train key shows what it means for the domain
        assert "train.steps=None (default 8000)" in out and "train.warmup=None (default 200)" in out


def test_help_shows_the_selected_domains_options(capsys):
    code, out, _ = run(capsys, "generate", "domain=images", "domain.guidance=2.0", "--help")
    assert code == 0 and "domain.guidance=2.0" in out and "domain.dataset='digits'  # digits" in out


def test_plugin_commands_share_the_core_grammar_and_help(capsys):
    """Plugin commands (``workbench.commands`` / ``workbench.bench`` entry points) parse
    ``key=value`` with hydra's grammar against their options dataclass, list every key with its
    value on ``--help`` and report bad input in one line (exit code 2)."""
    from dataclasses import dataclass, field
    from typing import List, Optional

    from workbench.cli import parse_options, run_plugin_command

    @dataclass
    class Opts:
        n: int = field(default=2, metadata={"help": "how many"})
        sizes: List[int] = field(default_factory=lambda: [1, 2], metadata={"help": "sizes"})
        path: Optional[str] = None
        fast: bool = False

    assert parse_options([], Opts, "demo") == {"n": 2, "sizes": [1, 2], "path": None, "fast": False}
    assert parse_options(["n=5", "sizes=3,4", "path=runs/a.pt", "fast=yes"], Opts, "demo") == \
        {"n": 5, "sizes": [3, 4], "path": "runs/a.pt", "fast": True}
    assert parse_options(["sizes=7", "path='x=1'"], Opts, "demo")["sizes"] == [7]
    assert parse_options(["sizes=[8, 9]", "path=null"], Opts, "demo")["sizes"] == [8, 9]
    for argv, needle in ((["m=1"], "unknown demo option 'm'; valid: n, sizes, path, fast"), (["n=x"], "option n='x': expected int"),
                         (["sizes=[a]"], "expected a list of int values"), (["n"], "expected key=value")):
        with pytest.raises(ValueError, match=needle):
            parse_options(argv, Opts, "demo")
    ran = []
    assert run_plugin_command("demo", ["n=3", "--help"], Opts, ran.append, what="a demo") == 0 and not ran
    out = capsys.readouterr().out
    assert out.startswith("workbench demo [key=value ...]: a demo") and "\n  n=3  # how many\n  sizes=[1, 2]  # sizes\n" in out
    assert run_plugin_command("demo", ["n=4"], Opts, lambda o: f"ran n={o['n']}", what="a demo") == 0
    assert capsys.readouterr().out == "ran n=4\n"
    assert run_plugin_command("demo", ["n=x"], Opts, ran.append, what="a demo") == 2 and not ran
    assert capsys.readouterr().err == "workbench demo: error: option n='x': expected int\n"
