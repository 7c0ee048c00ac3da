"""The ``structure_prediction`` domain: plugin conformance (``check_domain``), the trunk runs
once per sampling call (``prepare_cond``), zero centre of mass and zero padding after
sampling, padding / batch-mate invariance, the ``recycles`` option, AF3's schedule, the AF3
loss pieces, predictions / the designability folder, PDB + mmCIF output that reads back, metrics
of a true structure against itself, bad options, and the shipped checkpoint."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import workbench
from workbench.checkpoint import CheckpointError
from workbench.domain import check_domain
from workbench.losses import Batch
from workbench.utils import per_sample_generators

from domains.structure_prediction import StructurePredictionDomain, af3_grid
from domains.structure_prediction.domain import CHECKPOINT_DIR, CHECKPOINT_NAME, encode_sequences
from domains.structure_prediction.loss import StructureDiffusionLoss, random_rotations, rigid_align, smooth_lddt

TINY = {"c_s": 16, "c_z": 8, "heads": 2, "trunk_depth": 1, "diffusion_depth": 1, "c_opm": 4, "fourier_dim": 8, "transition": 1}
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ", "MADEEKLPPGWEKRMSRSSG"]
CKPT = CHECKPOINT_DIR / CHECKPOINT_NAME


def tiny(**kw) -> StructurePredictionDomain:
    return StructurePredictionDomain(net=TINY, crop=24, source="ideal", sequences=SEQS, **kw)


@pytest.fixture(scope="module")
def dom():
    return tiny()


@pytest.fixture(scope="module")
def net(dom):
    torch.manual_seed(0)
    return dom.build_backbone().eval()


def test_check_domain(dom, tmp_path):
    rep = check_domain(dom, teacher=False, tmpdir=tmp_path)
    assert rep["domain"] == "structure_prediction"
    assert {"ca_lddt", "tm_score", "rmsd"} <= set(rep["metrics"])


def test_trunk_runs_once_per_sampling_call(dom, net):
    gb = dom.generation_batch(3, generator=per_sample_generators(0, 3))
    bb = net.backbone
    before = bb.trunk_calls
    with torch.no_grad():
        out = workbench.run_sampler(net, dom.process(), gb.x_T, sampler="af3_edm", steps=6, prediction="x0", mask=gb.mask,
                                    cond=gb.cond, generator=per_sample_generators(0, 3))
    assert out.nfe == 6 and bb.trunk_calls - before == 1
    # without prepare_cond (training) every forward computes the trunk itself
    before = bb.trunk_calls
    with torch.no_grad():
        for _ in range(2):
            net(gb.x_T, torch.full((3,), 0.5), mask=gb.mask, cond=gb.cond)
    assert bb.trunk_calls - before == 2
    # the cached and the direct forward agree
    with torch.no_grad():
        c = net.prepare_cond(gb.cond, mask=gb.mask, batch_size=3)
        a = net(gb.x_T, torch.full((3,), 0.3), mask=gb.mask, cond=c)
        b = net(gb.x_T, torch.full((3,), 0.3), mask=gb.mask, cond=gb.cond)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_cache_is_private_to_each_network(dom, net):
    """Two networks (e.g. teacher and student) sharing one cond each use their own trunk."""
    other = dom.build_backbone().eval()
    gb = dom.generation_batch(2, generator=per_sample_generators(0, 2))
    with torch.no_grad():
        c = other.prepare_cond(net.prepare_cond(gb.cond, mask=gb.mask), mask=gb.mask)
        t = torch.full((2,), 0.2)
        torch.testing.assert_close(net(gb.x_T, t, mask=gb.mask, cond=c), net(gb.x_T, t, mask=gb.mask, cond=gb.cond), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(other(gb.x_T, t, mask=gb.mask, cond=c), other(gb.x_T, t, mask=gb.mask, cond=gb.cond), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sampler,opts", [("af3_edm", {}), ("af3_edm", {"gamma0": 0.0, "step_scale_eta": 1.0}), ("heun", {})])
def test_zero_com_and_padding_after_sampling(dom, net, sampler, opts):
    gb = dom.generation_batch(3, generator=per_sample_generators(5, 3))
    assert gb.mask.sum(1).tolist() == [float(len(SEQS[s % len(SEQS)])) for s in (5, 6, 7)]  # seed s folds target s mod T
    with torch.no_grad():
        x = workbench.sample(net, dom.process(), gb.x_T, sampler=sampler, steps=8, prediction="x0", mask=gb.mask, cond=gb.cond,
                             generator=per_sample_generators(5, 3), **opts)
    assert torch.isfinite(x).all()
    assert float(x[gb.mask == 0].abs().max()) == 0.0
    com = (x * gb.mask[..., None]).sum(1) / gb.mask.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-3


def test_prediction_independent_of_padding_and_batch(dom, net):
    """A sequence's deterministic prediction does not depend on its batch mates or padding."""
    ode = {"gamma0": 0.0, "step_scale_eta": 1.0}
    alone = dom.predict([SEQS[1]], steps=4, options=ode, model=net, seed=1)[0]
    together = dom.predict([SEQS[0], SEQS[1], SEQS[2]], steps=4, options=ode, model=net, seed=0)[1]
    assert len(alone) == len(SEQS[1]) and alone.sequence == SEQS[1]
    np.testing.assert_allclose(alone.ca, together.ca, atol=2e-3)
    assert np.isfinite(alone.ca).all() and np.abs(alone.ca.mean(0)).max() < 1e-3


def test_recycles_changes_trunk_output(dom):
    torch.manual_seed(1)
    a = dom.build_backbone(recycles=0)
    b = dom.build_backbone(recycles=3)
    b.load_state_dict(a.state_dict())
    cond, mask = encode_sequences(SEQS)
    with torch.no_grad():
        ca = a.backbone.condition(cond, mask)
        cb = b.backbone.condition(cond, mask)
        cb0 = b.backbone.condition(cond, mask, recycles=0)
    assert (ca["s0"] - cb["s0"]).abs().max() > 1e-4
    torch.testing.assert_close(ca["s0"], cb0["s0"])


def test_af3_grid_matches_schedule(dom):
    proc = dom.process()
    ts = af3_grid(proc, 200)
    assert ts.shape == (201,) and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    assert bool((ts[1:] < ts[:-1]).all())
    sig_A = proc.sigma(ts[:-1]) * dom.unit  # VE: sigma~ = sigma; states are in units of sigma_data = 16 A
    i = torch.arange(200, dtype=torch.float64) / 200
    want = 16.0 * (160 ** (1 / 7) + i * (4e-4 ** (1 / 7) - 160 ** (1 / 7))) ** 7  # AF3 / Protenix, Angstrom
    torch.testing.assert_close(sig_A, want, rtol=1e-10, atol=1e-10)
    assert dom.unit == 16.0 and abs(proc.sigma_max - 160.0) < 1e-9 and proc.zero_com


def test_loss_pieces():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 3, generator=g, dtype=torch.float64) * 5
    mask = torch.ones(3, 10, dtype=torch.float64)
    mask[1, 7:] = 0
    x = x * mask[..., None]
    R = random_rotations(3, g, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3, dtype=torch.float64))
    moved = (x @ R.transpose(1, 2) + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)) * mask[..., None]
    back = rigid_align(moved, x, mask)  # superposes exactly
    com = (x * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]
    torch.testing.assert_close(back, ((x - com) + com) * mask[..., None], rtol=1e-9, atol=1e-9)
    s_same = smooth_lddt(x, x, mask)
    want = sum(0.25 / (1 + math.exp(-c)) for c in (0.5, 1, 2, 4))  # smooth lDDT of a perfect prediction
    torch.testing.assert_close(s_same, torch.full((3,), want, dtype=torch.float64))
    assert bool((smooth_lddt(x * 1.5, x, mask) < s_same).all())


def test_objective_trains_on_fixed_batch(dom):
    torch.manual_seed(0)
    net = dom.build_backbone()
    obj = dom.objective()
    assert isinstance(obj, StructureDiffusionLoss) and obj.K == 4
    batch = dom.train_data("train")(4, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = obj({"model": net}, batch, torch.Generator().manual_seed(1))
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(float(loss.mean().detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # the CA-CA bond term (AF3 eq. 5-6, alpha_bond) only adds a non-negative penalty
    with torch.no_grad():
        plain = obj({"model": net}, batch, torch.Generator().manual_seed(2))
        bonded = tiny(bond_weight=1.0).objective()({"model": net}, batch, torch.Generator().manual_seed(2))
    assert bool((bonded >= plain - 1e-6).all()) and bool((bonded > plain).any())


def test_evaluate_true_structure_against_itself_and_io(dom, tmp_path):
    from domains.proteins.io import read_chains

    chains = [c for c in dom.chains("test")][:2]
    seqs = [c.sequence for c in chains]
    cond, mask = encode_sequences(seqs)
    x = torch.zeros(len(chains), mask.shape[1], 3)
    for i, c in enumerate(chains):
        ca = torch.from_numpy(c.ca)
        x[i, : len(c)] = (ca - ca.mean(0)) / dom.unit  # states are in units of 16 A
    rot = random_rotations(1, torch.Generator().manual_seed(3))[0]
    ref = Batch(x=(x @ rot.T) * mask[..., None], mask=mask, cond=cond)  # the truth, rotated
    m = dom.evaluate(Batch(x=x, mask=mask, cond=cond), reference=ref)
    assert m["with_reference"] == 1.0
    assert m["ca_lddt"] == pytest.approx(1.0) and m["tm_score"] == pytest.approx(1.0, abs=1e-6) and m["rmsd"] < 1e-3
    coil = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * mask[..., None]  # ~16 A random cloud
    bad = dom.evaluate(Batch(x=coil, mask=mask, cond=cond), reference=ref)
    assert bad["ca_lddt"] < 0.5 and bad["tm_score"] < 0.4
    paths = dom.save_samples(Batch(x=x, mask=mask, cond=cond), tmp_path / "s")
    for p in paths:
        if p.suffix in (".pdb", ".cif"):
            i = int(p.stem.split("_")[1])
            back = read_chains(p)[0]
            assert back.sequence == seqs[i].replace("X", "G")  # the writer names unknown residues GLY
            np.testing.assert_allclose(back.ca, x[i, : len(seqs[i])].numpy() * dom.unit, atol=2e-3)


def test_folder_and_predict(dom, net):
    preds = dom.predict(SEQS[:2], steps=3, model=net, seed=0)
    assert [len(p) for p in preds] == [len(s) for s in SEQS[:2]]
    again = dom.predict(SEQS[:2], steps=3, model=net, seed=0)
    np.testing.assert_allclose(preds[0].ca, again[0].ca)
    f = dom.folder(steps=3)
    assert "not ESMFold" in f.name and callable(f.fold)


@pytest.mark.parametrize("kw,word", [({"bogus": 1}, "bogus"), ({"sequence_encoder": "bert"}, "sequence_encoder"),
                                     ({"recycles": -1}, "recycles"), ({"source": "web"}, "source"), ({"sampler": "nope"}, "nope"),
                                     ({"net": {"width": 3}}, "width"), ({"sequences": ["MK1A"]}, "invalid"),
                                     ({"crop": 2}, "crop")])
def test_bad_options(kw, word):
    with pytest.raises(ValueError) as e:
        d = StructurePredictionDomain(**kw)
        d.generation_batch(1)
    assert "\n" not in str(e.value) and word in str(e.value)


def test_bad_cond(dom):
    with pytest.raises(ValueError, match="invalid"):
        dom.generation_batch(1, cond=["ACDZ"])
    with pytest.raises(ValueError, match="1 or 2"):
        dom.generation_batch(2, cond=["ACDE", "ACDE", "ACDE"])


def test_plm_sequence_encoder_option():
    from domains.proteins import plm

    assert plm.SHIPPED_CHECKPOINT.exists()
    d = tiny(sequence_encoder="plm")
    net = d.build_backbone().eval()
    gb = d.generation_batch(2, generator=per_sample_generators(0, 2))
    with torch.no_grad():
        out = net(gb.x_T, torch.full((2,), 0.1), mask=gb.mask, cond=gb.cond)
    assert torch.isfinite(out).all() and out.shape == gb.x_T.shape


def test_shipped_checkpoint():
    assert CKPT.stat().st_size < 5e6
    check_domain(StructurePredictionDomain(max_length=100), teacher=True)  # default targets: held-out test chains
    d = StructurePredictionDomain(sequences=SEQS[:2])
    teacher = d.teacher()  # the predictor predict() and the folder use: loaded once, frozen
    assert teacher.prediction == "x0" and not any(p.requires_grad for p in teacher.parameters())
    ode = {"gamma0": 0.0, "step_scale_eta": 1.0}
    assert [len(p) for p in d.folder(steps=5, options=ode).fold(SEQS[:2])] == [len(s) for s in SEQS[:2]]
    # on held-out test chains: consecutive CAs near the 3.8 A virtual bond (untrained: far off) and a
    # better CA-lDDT than the untrained network
    from domains.proteins import metrics as pm

    test = [c for c in StructurePredictionDomain().chains("test") if len(c) <= 100][:3]
    torch.manual_seed(0)
    untrained = d.build_backbone().eval()
    seqs = [c.sequence for c in test]
    preds = d.predict(seqs, steps=5, options=ode)
    bond = np.median(np.concatenate([np.linalg.norm(np.diff(p.ca, axis=0), axis=1) for p in preds]))
    assert 2.8 < float(bond) < 4.8
    ours = np.mean([pm.ca_lddt(p.ca, c.ca) for p, c in zip(preds, test)])
    base = np.mean([pm.ca_lddt(p.ca, c.ca) for p, c in zip(d.predict(seqs, steps=5, options=ode, model=untrained), test)])
    assert ours > base + 0.05, (ours, base)
    with pytest.raises(CheckpointError):
        StructurePredictionDomain(sequence_encoder="plm").load_teacher()


def test_default_targets_follow_the_sample_seed_not_the_chunk():
    """With ``cond=None`` the sample seeded ``s`` folds target ``s mod T``: generating in chunks
    (the runner's batch_size) gives every sample the same target as one big batch."""
    from workbench.runner import generation_batches

    d = tiny()
    T = len(d.targets())
    whole = next(iter(generation_batches(d, T + 2, 0, T + 2)))[0].info["names"]
    chunks = [n for gb, _ in generation_batches(d, T + 2, 0, 2) for n in gb.info["names"]]
    assert chunks == whole and whole[T] == whole[0]


def test_config_dataclass_and_checkpoint_hooks(tmp_path):
    """Options come from the Config dataclass (unknown keys and bad values are one-line errors);
    the template's hooks check the header (domain, sigma_data, an explicit sequence_encoder) and
    adopt the checkpoint's architecture unless ``net`` was set."""
    from workbench.checkpoint import save_weights

    with pytest.raises(ValueError, match="unknown structure_prediction domain option.*recycle; valid: source, root"):
        StructurePredictionDomain(recycle=2)
    with pytest.raises(ValueError, match="unknown sequence_encoder 'bert'; valid: onehot, plm, esm"):
        StructurePredictionDomain(sequence_encoder="bert")
    with pytest.raises(ValueError, match="give either sequences"):
        StructurePredictionDomain(sequences=SEQS, fasta="x.fasta")
    assert StructurePredictionDomain().config["sampler"] == "af3_edm"
    d = tiny()
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_weights(path, d.build_backbone(), {"domain": "structure_prediction", "config": dict(d.config)})
    plain = StructurePredictionDomain(sequences=SEQS)  # default net: adopts the checkpoint's tiny one
    shape = d.build_backbone().state_dict()["backbone.trunk.s_init.weight"].shape
    assert plain.load_teacher(str(path)).state_dict()["backbone.trunk.s_init.weight"].shape == shape
    assert plain.config["net"] == TINY and plain.build_backbone().state_dict()["backbone.trunk.s_init.weight"].shape == shape
    with pytest.raises(CheckpointError, match="sigma_data=16.0, not 10.0"):
        tiny(sigma_data=10.0).load_teacher(str(path))
    with pytest.raises(CheckpointError, match="sequence_encoder='onehot', not 'plm'"):
        tiny(sequence_encoder="plm").load_teacher(str(path))
    with pytest.raises(CheckpointError, match="regenerate it with `python -m domains.structure_prediction.train`"):
        d.load_teacher(str(tmp_path / "none.safetensors"))
    save_weights(tmp_path / "o.safetensors", d.build_backbone(), {"domain": "toy"})
    with pytest.raises(CheckpointError, match="is a 'toy' model, not a structure_prediction one"):
        d.load_teacher(str(tmp_path / "o.safetensors"))
