"""The shared training loop: learning, exact resume, EMA, phases, errors."""
import pytest
import torch
from torch import nn

from workbench.checkpoint import CheckpointError, load_weights
from workbench.losses import Batch, DenoisingLoss
from workbench.model import Denoiser, sinusoidal_embedding
from workbench.processes import VPLinear
from workbench.training import TrainConfig, train


class TinyNet(nn.Module):
    def __init__(self, d=2, h=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 16, h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x, t, **kw):
        return self.net(torch.cat([x, sinusoidal_embedding(t, 16)], -1))


def data(bs, g):
    return Batch(x=torch.randn(bs, 2, generator=g) * 0.5 + torch.tensor([1.0, -1.0]))


def make(seed=0):
    torch.manual_seed(seed)
    return Denoiser(TinyNet(), VPLinear(), "epsilon", time_map="scaled")


def cfg(**kw):
    base = dict(steps=20, batch_size=32, lr=3e-3, ckpt_every=5, log_every=5, progress=False, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases():
    p = VPLinear()
    res = train(DenoisingLoss(p, "epsilon"), make(), data, cfg(steps=300, log_every=50))
    assert res.history[-1]["main"] < 0.8 * res.history[0]["main"]


def test_interrupted_run_resumes_exactly(tmp_path):
    p = VPLinear()
    ref = train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path / "a")

    class Crash(Exception):
        pass

    def crash(step, logs):
        if step == 12:
            raise Crash

    with pytest.raises(Crash):
        train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path / "b", on_step=crash)
    resumed = train(DenoisingLoss(p, "epsilon"), make(seed=123), data, cfg(), out_dir=tmp_path / "b")
    assert resumed.step == 20
    for (k, a), (_, b) in zip(ref.nets["model"].state_dict().items(), resumed.nets["model"].state_dict().items()):
        assert torch.equal(a, b), k
    for a, b in zip(ref.ema["model"].parameters(), resumed.ema["model"].parameters()):
        assert torch.equal(a, b)
    state, meta = load_weights(tmp_path / "b" / "model.safetensors")
    assert meta["step"] == 20 and (tmp_path / "b" / "loss.png").exists()


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    p = VPLinear()

    class Crash(Exception):
        pass

    def crash(step, logs):
        if step == 12:  # after the checkpoint at step 10
            raise Crash

    meta = {"kind": "generator", "options": {"alpha": 1.0, "grid": (0.5, 1.0)}}
    with pytest.raises(Crash):
        train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path, meta=meta, on_step=crash)
    with pytest.raises(ValueError, match=r"other settings \(options\.alpha: 1\.0 -> 1\.2\).*resume=False"):
        train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path,
              meta={**meta, "options": {**meta["options"], "alpha": 1.2}})
    # descriptive values left out of ``settings`` may change; tuples and lists compare equal
    res = train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path,
                meta={**meta, "seconds": 3.0}, settings={"kind": "generator", "options": {"alpha": 1.0, "grid": [0.5, 1.0]}})
    assert res.step == 20
    fresh = train(DenoisingLoss(p, "epsilon"), make(), data, cfg(), out_dir=tmp_path, resume=False, meta={"options": {"alpha": 1.2}})
    assert fresh.step == 20  # resume=False starts afresh whatever was there


def test_corrupt_state_gives_clear_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(DenoisingLoss(VPLinear()), make(), data, cfg(), out_dir=tmp_path)


def test_nan_loss_and_bad_shapes_are_reported():
    nan_obj = lambda nets, b, g: torch.full((len(b),), float("nan"), requires_grad=True)  # noqa: E731
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train(nan_obj, make(), data, cfg(steps=1))
    bad = lambda nets, b, g: nets["model"](b.x, torch.rand(len(b))).sum()  # noqa: E731
    with pytest.raises(ValueError, match=r"per-sample loss of shape \[B\]"):
        train(bad, make(), data, cfg(steps=1))


def test_phases_and_frozen_nets():
    class TwoPhase:
        phases = [("gen", ["a"], 1), ("critic", ["b"], 2)]

        def __call__(self, nets, batch, g, phase):
            net = nets["a"] if phase == "gen" else nets["b"]
            return (net(batch.x) ** 2).mean(1)

    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    c0 = c.weight.detach().clone()
    b_updates = []
    orig = b.weight.detach().clone()
    res = train(TwoPhase(), {"a": a, "b": b, "c": c}, data, cfg(steps=4), trainable=["a", "b"], ema=[],
                on_step=lambda s, logs: b_updates.append("critic" in logs))
    assert b_updates == [True, False, True, False]
    assert torch.equal(c.weight, c0) and not torch.equal(b.weight, orig)
    assert res.ema == {}
    with pytest.raises(ValueError, match="frozen"):
        train(TwoPhase(), {"a": a, "b": b}, data, cfg(steps=1), trainable=["a"])



def test_phase_betas_reach_the_phase_optimizer(tmp_path):
    """``phase_betas`` gives one phase its own Adam betas; the other phase keeps ``cfg.betas``.
    Checked on the saved optimizer state (what a resume restores)."""
    class TwoPhase:
        phases = [("gen", ["a"], 1), ("critic", ["b"], 1)]
        phase_betas = {"gen": (0.9, 0.999)}

        def __call__(self, nets, batch, g, phase):
            return (nets["a" if phase == "gen" else "b"](batch.x) ** 2).mean(1)

    from workbench.checkpoint import load_state
    train(TwoPhase(), {"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}, data, cfg(steps=2, betas=(0.0, 0.99)),
          out_dir=tmp_path, ema=[])
    st = load_state(tmp_path / "state.pt")
    assert tuple(st["optims"]["gen"]["param_groups"][0]["betas"]) == (0.9, 0.999)
    assert tuple(st["optims"]["critic"]["param_groups"][0]["betas"]) == (0.0, 0.99)

def test_ema_targets_follow_their_source():
    """An objective's ``ema_targets`` make the loop move a target net towards its source."""
    class WithTarget:
        ema_targets = {"target": ("model", 0.5)}

        def __call__(self, nets, batch, g):
            return (nets["model"](batch.x) ** 2).mean(1)

    model, target = nn.Linear(2, 2), nn.Linear(2, 2)
    t0 = target.weight.detach().clone()
    seen = []

    def record(step, logs):
        seen.append((model.weight.detach().clone(), target.weight.detach().clone()))

    train(WithTarget(), {"model": model, "target": target}, data, cfg(steps=2), trainable=["model"], ema=[], on_step=record)
    (m1, tg1), (m2, tg2) = seen
    assert torch.allclose(tg1, 0.5 * t0 + 0.5 * m1) and torch.allclose(tg2, 0.5 * tg1 + 0.5 * m2)
    with pytest.raises(ValueError, match="must not also be trainable"):
        train(WithTarget(), {"model": model, "target": target}, data, cfg(steps=1), trainable=["model", "target"])
