"""Issue 16, core: checkpoints by time and early, honest interrupt messages, output directories
owned by one run (lock, manifest, stale files), bad input before work, progress, length buckets."""
import json
import os
import subprocess
import sys

import pytest
import torch

import workbench.training as training
from workbench.cli import main
from workbench.losses import DenoisingLoss
from workbench.processes import VPLinear
from workbench.training import TrainConfig, TrainingInterrupted, train
from workbench.utils import LOCK_NAME

from test_training import data, make  # noqa: E402  (tests/ is on sys.path)


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _train(tmp_path, stop_at, **kw):
    def stop(step, logs):
        if step == stop_at:
            raise KeyboardInterrupt

    cfg = TrainConfig(**{**dict(steps=10, batch_size=8, ckpt_every=1000, log_every=1, progress=False), **kw})
    with pytest.raises(TrainingInterrupted) as e:
        train(DenoisingLoss(VPLinear(), "epsilon"), make(), data, cfg, out_dir=tmp_path, on_step=stop)
    return str(e.value)


def test_first_checkpoint_is_early_and_interrupt_says_what_was_saved(tmp_path, monkeypatch):
    from workbench.checkpoint import load_state

    monkeypatch.setattr(training, "FIRST_CKPT_STEPS", 3)
    msg = _train(tmp_path / "a", stop_at=2, ckpt_minutes=None)
    assert "nothing saved yet" in msg and "intact" not in msg and not (tmp_path / "a" / "state.pt").exists()
    msg = _train(tmp_path / "b", stop_at=5, ckpt_minutes=None)
    assert load_state(tmp_path / "b" / "state.pt")["step"] == 3  # the early one; ckpt_every=1000 is far off
    assert "last checkpoint: step 3" in msg and "interrupted at step 5" in msg


def test_checkpoint_every_few_minutes(tmp_path, monkeypatch):
    from workbench.checkpoint import load_state

    monkeypatch.setattr(training, "FIRST_CKPT_STEPS", 10_000)
    monkeypatch.setattr(training, "FIRST_CKPT_SECONDS", 1e9)
    _train(tmp_path / "a", stop_at=4, ckpt_minutes=None)
    assert not (tmp_path / "a" / "state.pt").exists()
    _train(tmp_path / "b", stop_at=4, ckpt_minutes=1e-7)  # every 6 microseconds: after every step
    assert load_state(tmp_path / "b" / "state.pt")["step"] == 3  # step 4 stopped before its checkpoint
    with pytest.raises(ValueError, match="ckpt_minutes"):
        TrainConfig(ckpt_minutes=0)


def test_resume_mismatch_suggests_an_option_the_cli_accepts(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, progress=False)
    train(DenoisingLoss(VPLinear(), "epsilon"), make(), data, cfg, out_dir=tmp_path, meta={"a": 1})
    with pytest.raises(ValueError) as e:
        train(DenoisingLoss(VPLinear(), "epsilon"), make(), data, cfg, out_dir=tmp_path, meta={"a": 2})
    assert "resume=false" in str(e.value) and "--no-resume" not in str(e.value)


def test_cli_interrupt_message_is_honest(capsys, monkeypatch, tmp_path):
    import workbench.runner as runner

    def nothing_saved(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_domain_teacher", nothing_saved)
    code, _, err = run(capsys, "train", f"out={tmp_path}/t")
    assert code == 130 and "intact" not in err and "not saved" in err

    def saved(*a, **k):
        raise TrainingInterrupted("interrupted at step 5 of 9; last checkpoint: step 3 in x/state.pt")

    monkeypatch.setattr(runner, "train_domain_teacher", saved)
    code, _, err = run(capsys, "train", f"out={tmp_path}/t")
    assert code == 130 and "last checkpoint: step 3" in err


@pytest.mark.parametrize("arg,needle", [
    ("steps=abc", "steps must be an integer >= 1, got 'abc'"),
    ("n=1.5", "n must be an integer >= 1 or null, got 1.5"),
    ("seed=abc", "seed must be an integer >= 0"),
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
    ("threads=abc", "threads must be an integer >= 1 or null"),
    ("n_ref=-1", "n_ref must be an integer >= 0"),
    ("resume=maybe", "resume must be true or false"),
    ("train.steps=abc", "train.steps must be an integer >= 1 or null"),
    ("train.ckpt_minutes=0", "train.ckpt_minutes must be a number > 0"),
])
def test_bad_values_name_the_key_and_range(capsys, tmp_path, arg, needle):
    code, _, err = run(capsys, "generate", f"out={tmp_path}/o", arg)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_bad_out_fails_before_any_work(capsys, tmp_path, monkeypatch):
    import workbench.runner as runner

    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("work started"))
    f = tmp_path / "file"
    f.write_text("x")
    for out, needle in ((f, "is an existing file"), (f / "sub", "is a file, not a directory")):
        code, _, err = run(capsys, "generate", f"out={out}")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, _, err = run(capsys, "generate", f"out={ro}/x")
        assert code == 2 and "not writable" in err


def test_a_second_writer_is_refused_and_a_dead_lock_is_taken_over(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": live.pid, "argv": ["workbench", "generate", "n=8"]}))
        code, _, err = run(capsys, "generate", f"out={out}", "n=4", "steps=2")
        assert code == 2 and f"in use by another workbench run (pid {live.pid}: workbench generate n=8)" in err
        assert len(err.strip().splitlines()) == 1 and not (out / "metrics.json").exists()
    finally:
        live.kill()
        live.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": live.pid}))  # that process is gone
    code, _, err = run(capsys, "generate", f"out={out}", "n=4", "steps=2", "progress=false")
    assert code == 0, err
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()


def test_generate_removes_only_its_own_stale_files_and_writes_a_manifest(tmp_path, capsys):
    from domains.toy import ToyDomain
    from workbench.runner import generate

    class PerSample(ToyDomain):
        def save_samples(self, samples, out_dir):
            paths = super().save_samples(samples, out_dir)
            for i in range(samples.x.shape[0]):
                (out_dir / f"sample_{i:05d}.txt").write_text(str(samples.x[i].tolist()))
            return paths

    out = tmp_path / "g"
    generate(PerSample(), n=6, steps=2, out_dir=out, progress=False)
    (out / "samples" / "mine.txt").write_text("a file the workbench did not write")
    generate(PerSample(), n=2, steps=2, out_dir=out, progress=False)
    assert sorted(p.name for p in (out / "samples").glob("sample_*.txt")) == ["sample_00000.txt", "sample_00001.txt"]
    assert (out / "samples" / "mine.txt").exists()
    assert "removed 4 stale file(s)" in capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    assert "samples/sample_00001.txt" in man["files"] and "metrics.json" in man["files"]
    assert "samples/sample_00005.txt" in man["removed_stale"] and "samples/mine.txt" not in man["files"]
    assert all((out / f).exists() for f in man["files"])


def test_evaluate_uses_the_recorded_domain_and_refuses_another(capsys, tmp_path):
    out = tmp_path / "g"
    code, _, err = run(capsys, "generate", "domain=toy", "domain.dataset=pointset", "n=4", "steps=2", f"out={out}", "progress=false")
    assert code == 0, err
    code, stdout, err = run(capsys, "evaluate", f"samples={out}")  # no domain=: the recorded one, with its options
    assert code == 0, err
    first = (out / "metrics_eval.json").read_bytes()
    code, _, err = run(capsys, "evaluate", "domain=images", f"samples={out}")
    assert code == 2 and "holds samples of domain 'toy', not 'images'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "evaluate", "domain=toy", f"samples={out}")  # gmm: [n, 2], not point sets
    assert code == 2 and "does not produce" in err
    assert (out / "metrics_eval.json").read_bytes() == first


def test_reference_solve_and_evaluate_show_progress(capsys, tmp_path):
    from workbench.reference import reference_run

    proc = VPLinear()
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    reference_run(zero, proc, torch.randn(2, 2), rtol=1e-4, atol=1e-4, progress=True)
    assert "reference ODE" in capsys.readouterr().err
    reference_run(zero, proc, torch.randn(2, 2), rtol=1e-4, atol=1e-4)
    assert "reference ODE" not in capsys.readouterr().err


def test_length_buckets_group_similar_lengths():
    from workbench.api import length_buckets

    lengths = torch.tensor([50, 100, 50, 100, 12, 100])
    groups = length_buckets(lengths, max_waste=0.1)
    assert sorted(i for g in groups for i in g.tolist()) == list(range(6))
    assert [sorted(lengths[g].tolist()) for g in groups] == [[100, 100, 100], [50, 50], [12]]


@pytest.mark.parametrize("sampler,options", [("dpm_solver_pp_2m", {}), ("euler", {"eta": 1.0})])
def test_bucketed_generation_equals_padded_generation(sampler, options):
    """Toy point sets (4..12 points, masked set transformer): sampling groups of similar length
    gives the samples of padding all to the longest, per seed; a run that draws noise is redone
    unbucketed (noise drawn at another shape would differ)."""
    from workbench.domain import get_domain
    from workbench.runner import _prefix_groups, sample_domain

    dom = get_domain("toy", dataset="pointset")
    net = dom.load_teacher()
    kw = dict(sampler=sampler, steps=3, n=12, seed=5, batch_size=12, progress=False, options=options)
    a, _ = sample_domain(dom, net, bucket=False, **kw)
    b, _ = sample_domain(dom, net, bucket=True, **kw)
    assert len(_prefix_groups(a.mask)) > 1
    assert torch.equal(a.mask, b.mask) and not b.x.requires_grad
    assert torch.allclose(a.x, b.x, atol=1e-5), (a.x - b.x).abs().max()


def test_library_plots_leave_the_interactive_backend_alone(tmp_path):
    """Notebook figures vanished because library plotting called ``matplotlib.use("Agg")``:
    plots are now bare Figures, so the user's backend (inline in Jupyter) is never switched."""
    import matplotlib

    import torch

    from domains.toy.domain import ToyDomain
    from workbench.training import plot_history
    from workbench.utils import new_figure, save_figure

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        dom = ToyDomain()
        b = dom.generation_batch(16, generator=torch.Generator().manual_seed(0))
        from workbench.losses import Batch

        dom.plot(Batch(x=b.x_T, mask=b.mask, cond=b.cond), tmp_path / "toy.png")
        plot_history([{"step": 1, "main": 1.0}, {"step": 2, "main": 0.5}], tmp_path / "loss.png")
        fig, ax = new_figure(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        save_figure(fig, tmp_path / "f.png")
        assert matplotlib.get_backend() == "svg"
        for name in ("toy.png", "loss.png", "f.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)
