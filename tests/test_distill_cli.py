"""`workbench distill` -> generator.safetensors -> `workbench generate generator=PATH` (tiny budgets)."""
import json

import torch

from workbench.cli import main

torch.set_num_threads(1)


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_distill_then_generate_and_resume(capsys, tmp_path):
    out = tmp_path / "cd"
    args = ["distill", "domain=toy", "method=consistency", "student_steps=2", f"out={out}", "train.batch_size=32",
            "train.ckpt_every=3", "train.progress=false", "distill.num_scales=20", "distill.skip=2"]
    code, _, err = run(capsys, *args, "train.steps=3")
    assert code == 0, err
    code, _, err = run(capsys, *args, "train.steps=6")  # resumes from state.pt
    assert code == 0, err
    assert json.loads((out / "history.json").read_text())[-1]["step"] == 6
    # resuming under another recipe is refused with the differing option named; nothing is overwritten
    before = (out / "generator.safetensors").read_bytes()
    code, _, err = run(capsys, *args[:-1], "distill.skip=3", "train.steps=9")
    assert code == 2 and "other settings (options.skip: 2 -> 3)" in err and "resume=false" in err
    assert (out / "generator.safetensors").read_bytes() == before
    code, _, err = run(capsys, *args[:-1], "distill.skip=3", "train.steps=3", "resume=false")  # starts afresh
    assert code == 0, err
    gen = out / "generator.safetensors"
    code, _, err = run(capsys, "generate", "domain=toy", f"generator={gen}", "steps=2", "n=16", f"out={tmp_path / 'g'}")
    assert code == 0, err
    rec = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert rec["sampler"] == "generator:consistency" and rec["metrics"]["nfe"] == 2
    assert (tmp_path / "g" / "samples" / "samples.npz").exists()


def test_distill_errors(capsys, tmp_path):
    code, _, err = run(capsys, "distill", "method=magic", f"out={tmp_path}")
    assert code == 2 and "unknown distillation method 'magic'; valid: " in err and "consistency" in err and "dmd2" in err
    # a teacher checkpoint is not a generator
    from workbench.domain import get_domain

    teacher = get_domain("toy").default_teacher_path()
    code, _, err = run(capsys, "generate", f"generator={teacher}", "n=4", f"out={tmp_path / 'x'}")
    assert code == 2 and "not a distilled generator" in err
