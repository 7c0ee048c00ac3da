"""The analytic toy domain: conformance, exactness of the closed-form teacher, constraints
under every sampler, checkpoint errors and data constraints."""
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from workbench.checkpoint import CheckpointError, save_weights
from workbench.domain import check_domain
from workbench.losses import Batch
from workbench.utils import per_sample_generators

from domains.toy import ToyDomain
from domains.toy import domain as toy_mod

SHIPPED = {ds: Path(toy_mod.CHECKPOINT_DIR) / f"{ds}_mlp.safetensors" for ds in ("gmm", "pointset")}


@pytest.mark.parametrize("teacher", ["exact", "mlp"])
@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_check_domain(dataset, teacher, tmp_path):
    rep = check_domain(ToyDomain(dataset=dataset, teacher=teacher), tmpdir=tmp_path)
    assert {"sw", "mmd", "loglik"} <= set(rep["metrics"])
    if dataset == "pointset":
        assert {"com_max", "pad_max"} <= set(rep["metrics"])


def test_config_validation():
    with pytest.raises(ValueError, match="valid: gmm, pointset"):
        ToyDomain(dataset="moons")
    with pytest.raises(ValueError, match="valid: mlp, exact"):
        ToyDomain(teacher="big")
    with pytest.raises(ValueError, match="unknown toy domain option"):
        ToyDomain(datset="gmm")
    d = ToyDomain()
    assert d.config == {"dataset": "gmm", "teacher": "mlp"}
    assert d.process().prediction == "epsilon" and not d.process().zero_com
    assert ToyDomain(dataset="pointset").process().zero_com
    # the point-set process is the same DDPM schedule
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(d.process().alpha(t), ToyDomain(dataset="pointset").process().alpha(t), rtol=1e-12)


@pytest.mark.slow
def test_exact_gmm_many_steps_is_near_perfect():
    d = ToyDomain(dataset="gmm", teacher="exact")
    m = d.load_teacher()
    assert m.prediction == "x0"
    n = 2000
    gb = d.generation_batch(n, generator=torch.Generator().manual_seed(1))
    x = workbench.sample(m, d.process(), gb.x_T, sampler="dpm_solver_pp_2m", steps=50, prediction="x0", timesteps="uniform_lambda")
    got = d.evaluate(Batch(x=x))
    true = d.evaluate(d.sample_true(n, torch.Generator().manual_seed(2)))  # the finite-sample floor
    assert got["sw"] < 1.25 * true["sw"] + 0.01
    assert abs(got["loglik"] - got["loglik_true"]) < 0.1  # standard error ~0.02
    assert abs(got["mmd"]) < 1e-3
    # a one-step sample collapses towards the mean: clearly worse
    x1 = workbench.sample(m, d.process(), gb.x_T, sampler="euler", steps=1, prediction="x0")
    assert d.evaluate(Batch(x=x1))["sw"] > 5 * got["sw"]


@pytest.mark.slow
def test_exact_pointset_many_steps():
    d = ToyDomain(dataset="pointset", teacher="exact")
    m = d.load_teacher()
    n = 500
    gb = d.generation_batch(n, generator=torch.Generator().manual_seed(1))
    x = workbench.sample(m, d.process(), gb.x_T, sampler="dpm_solver_pp_2m", steps=30, prediction="x0", mask=gb.mask,
                         timesteps="uniform_lambda")
    got = d.evaluate(Batch(x=x, mask=gb.mask))
    true = d.evaluate(d.sample_true(n, torch.Generator().manual_seed(2)))
    assert got["sw"] < 1.5 * true["sw"] + 0.01
    assert got["sw_shape"] < 1.5 * true["sw_shape"] + 0.01
    assert abs(got["loglik"] - got["loglik_true"]) < 0.6  # standard error ~0.2 (log p spread over 9-33 dims)
    assert got["pad_max"] == 0.0 and got["com_max"] < 1e-5


@pytest.mark.parametrize("teacher", ["exact", "mlp"])
def test_pointset_constraints_under_every_sampler(teacher):
    d = ToyDomain(dataset="pointset", teacher=teacher)
    m = d.load_teacher()
    gb = d.generation_batch(6, generator=per_sample_generators(3, 6))
    assert gb.x_T.shape == (6, toy_mod.N_MAX, 3) and gb.mask.shape == (6, toy_mod.N_MAX)
    pad = (1 - gb.mask)[..., None]
    for name in workbench.samplers.available():
        spec = workbench.samplers.get(name)
        kw = {"generator": per_sample_generators(5, 6)} if spec.stochastic else {}
        if "reward" in spec.needs:  # reward-guided samplers (svdd_sde, fk_steering) keep the constraints too
            kw["reward"] = lambda x, mask=None: (x.norm(dim=-1) * (mask if mask is not None else 1)).sum(1).double()
        x = workbench.sample(m, d.process(), gb.x_T, sampler=name, steps=4, prediction=m.prediction, mask=gb.mask, **kw)
        assert torch.isfinite(x).all(), name
        assert torch.equal(x * pad, torch.zeros_like(x)), f"{name}: padding not exactly zero"
        com = (x * gb.mask[..., None]).sum(1) / gb.mask.sum(1, keepdim=True)
        assert com.abs().max() < 1e-5, f"{name}: CoM {com.abs().max():.2e}"


def test_generation_batch_per_sample_sizes():
    d = ToyDomain(dataset="pointset")
    a = d.generation_batch(7, generator=per_sample_generators(10, 7))
    b = d.generation_batch(3, generator=per_sample_generators(10, 3))
    assert torch.equal(a.mask[:3], b.mask) and torch.equal(a.x_T[:3], b.x_T)
    sizes = a.mask.sum(1)
    assert set(sizes.long().tolist()) <= set(toy_mod.SIZE_HISTOGRAM)
    # real points first, padding after
    assert torch.equal(a.mask, toy_mod.mask_of_sizes(sizes.long()))
    with pytest.raises(ValueError, match="unconditional"):
        d.generation_batch(2, cond=torch.zeros(2))


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_train_data_pure_and_constrained(dataset):
    d = ToyDomain(dataset=dataset)
    f = d.train_data("train")
    b1 = f(64, torch.Generator().manual_seed(0))
    b2 = f(64, torch.Generator().manual_seed(0))
    bv = d.train_data("val")(64, torch.Generator().manual_seed(0))
    assert torch.equal(b1.x, b2.x) and not torch.equal(b1.x, bv.x)
    with pytest.raises(ValueError, match="split"):
        d.train_data("dev")
    if dataset == "gmm":
        assert b1.x.shape == (64, 2) and b1.mask is None
        return
    x, mask = b1.x, b1.mask
    assert x.shape == (64, toy_mod.N_MAX, 3) and mask.shape == (64, toy_mod.N_MAX)
    assert torch.equal(x * (1 - mask)[..., None], torch.zeros_like(x))
    com = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    assert set(mask.sum(1).long().tolist()) <= set(toy_mod.SIZE_HISTOGRAM)
    assert torch.allclose(d.process().project(x, mask), x, atol=1e-6)


def test_teacher_checkpoint_errors(tmp_path, monkeypatch):
    d = ToyDomain(dataset="gmm")
    with pytest.raises(CheckpointError, match="not found"):
        d.load_teacher(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        d.load_teacher(str(bad))
    # a pointset network does not fit the gmm backbone
    other = save_weights(tmp_path / "ps.safetensors", ToyDomain(dataset="pointset").build_backbone(), {"config": {"dataset": "pointset"}})
    with pytest.raises(CheckpointError, match="does not fit|trained for"):
        d.load_teacher(str(other))
    # a missing shipped checkpoint names the command that regenerates it
    monkeypatch.setattr(toy_mod, "CHECKPOINT_DIR", tmp_path / "none")
    with pytest.raises(CheckpointError, match="train_teachers"):
        d.load_teacher()
    # the exact teacher needs no file
    assert ToyDomain(dataset="gmm", teacher="exact").load_teacher().prediction == "x0"


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
@pytest.mark.slow
def test_shipped_teacher_quality(dataset):
    """The shipped network against the exact denoiser, both sampled with 20-step DDIM from
    the same noise (the numbers domains/toy/train_teachers.py reports)."""
    assert SHIPPED[dataset].exists() and SHIPPED[dataset].stat().st_size < 1_000_000
    d = ToyDomain(dataset=dataset)
    m = d.load_teacher()
    assert m.prediction == "epsilon" and not m.training
    exact = ToyDomain(dataset=dataset, teacher="exact").load_teacher()
    n = 500
    gb = d.generation_batch(n, generator=torch.Generator().manual_seed(4))
    x = workbench.sample(m, d.process(), gb.x_T, sampler="euler", steps=20, prediction="epsilon", mask=gb.mask)
    xe = workbench.sample(exact, d.process(), gb.x_T, sampler="euler", steps=20, prediction="x0", mask=gb.mask)
    got, ref = d.evaluate(Batch(x=x, mask=gb.mask)), d.evaluate(Batch(x=xe, mask=gb.mask))
    assert got["sw"] < 1.5 * ref["sw"] + 0.01
    assert abs(got["loglik"] - ref["loglik"]) < (0.2 if dataset == "gmm" else 1.5)
    rms = (x - xe).flatten(1).pow(2).mean(1).sqrt().mean()
    assert rms < 0.1


def test_save_samples_formats(tmp_path):
    d = ToyDomain(dataset="pointset")
    b = d.sample_true(5, torch.Generator().manual_seed(0))
    csv, npz = d.save_samples(b, tmp_path / "s")
    lines = csv.read_text().strip().splitlines()
    assert lines[0] == "sample,index,x,y,z"
    assert len(lines) - 1 == int(b.mask.sum())
    with np.load(npz) as f:
        assert np.allclose(f["x"], b.x.numpy()) and np.array_equal(f["mask"], b.mask.numpy())
    g = ToyDomain(dataset="gmm")
    gb = g.sample_true(4, torch.Generator().manual_seed(0))
    csv, npz = g.save_samples(gb, tmp_path / "g")
    assert csv.read_text().splitlines()[0] == "sample,x,y" and len(csv.read_text().strip().splitlines()) == 5
    with np.load(npz) as f:
        assert f.files == ["x"]
