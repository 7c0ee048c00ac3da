"""The protein_backbone domain: plugin contract, network invariances (padding, translation),
self-conditioning state, objective, sampling constraints, file output, teacher loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from domains.protein_backbone import ProteinBackboneDomain
from domains.protein_backbone.nets import TINY_NET, ProteinTransformer, SelfCondState
from domains.protein_backbone.objective import SelfCondFlowLoss, sample_times
from workbench import api
from workbench.checkpoint import CheckpointError
from workbench.domain import check_domain
from workbench.losses import Batch
from workbench.model import prepare_cond
from workbench.utils import per_sample_generators

torch.set_num_threads(1)

#: the tiny network with the plain (Proteina) linear coordinate head; TINY_NET alone gets the
#: domain default (``DEFAULT_NET["coord_head"]``, the relative head)
LINEAR_NET = {**TINY_NET, "coord_head": "linear"}


def tiny_domain(**kw) -> ProteinBackboneDomain:
    cfg = {"net": dict(TINY_NET), "data": "ideal", "n_max": 24, "lengths": [10, 16], "novelty_reference": 4}
    cfg.update(kw)
    return ProteinBackboneDomain(**cfg)


def tiny_model(dom=None, seed=0, **kw):
    torch.manual_seed(seed)
    return (dom or tiny_domain(**kw)).build_backbone().eval()


@pytest.mark.slow
def test_check_domain_contract(tmp_path):
    rep = check_domain(tiny_domain(), teacher=False, tmpdir=tmp_path)
    assert rep["domain"] == "protein_backbone"
    assert {"ca_ca_mean", "clashes_mean", "helix", "strand", "coil"} <= set(rep["metrics"])


def test_training_data_units_and_lengths():
    dom = tiny_domain()
    b = dom.train_data("train")(4, torch.Generator().manual_seed(0))
    assert b.x.shape == (4, 24, 3) and b.mask.shape == (4, 24)
    real = b.mask > 0.5
    d = (b.x[:, 1:] - b.x[:, :-1]).norm(dim=-1)[real[:, 1:] & real[:, :-1]]
    assert torch.allclose(d.mean(), torch.tensor(0.38), atol=0.02)  # nm: CA-CA ~ 3.8 A
    sizes, probs = dom.length_histogram()
    assert int(sizes.max()) <= 24 and abs(float(probs.sum()) - 1) < 1e-9


def relative_head_model(seed=0, **kw):
    """A tiny model with ``coord_head="relative"`` whose (zero-initialised) head output layer is
    randomised, so the head actually contributes."""
    model = tiny_model(seed=seed, net={**TINY_NET, "coord_head": "relative"}, **kw)
    with torch.no_grad():
        for prm in model.backbone.rel_head.out.parameters():
            prm.copy_(0.5 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(seed + 9)))
    return model


@pytest.mark.parametrize("prediction,head", [("x0", "linear"), ("velocity", "linear"), ("velocity", "relative")])
def test_padding_does_not_change_real_residues(prediction, head):
    net = (tiny_model(prediction=prediction, net=LINEAR_NET) if head == "linear" else relative_head_model(prediction=prediction)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.float64)
    mask[0, 9:] = 0
    mask[1, 6:] = 0
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    ref = net(x, t, mask=mask)
    x2 = x.clone()
    x2[mask == 0] = 50 * torch.randn(int((mask == 0).sum()), 3, generator=g, dtype=torch.float64)  # other padding content
    assert torch.allclose(net(x2, t, mask=mask), ref, atol=1e-10)
    x3 = torch.cat([x2, torch.randn(2, 7, 3, generator=g, dtype=torch.float64)], 1)  # longer padding
    m3 = torch.cat([mask, torch.zeros(2, 7, dtype=torch.float64)], 1)
    out3 = net(x3, t, mask=m3)
    assert torch.allclose(out3[:, :12], ref, atol=1e-10)
    assert out3[m3 == 0].abs().max() == 0
    # the same real residues at another position of a bigger batch with another sample
    x4 = torch.cat([x3, torch.randn(1, 19, 3, generator=g, dtype=torch.float64)])
    m4 = torch.cat([m3, torch.ones(1, 19, dtype=torch.float64)])
    assert torch.allclose(net(x4, torch.cat([t, t[:1]]), mask=m4)[:2, :12], ref, atol=1e-10)


@pytest.mark.parametrize("head", ["linear", "relative"])
def test_translation_invariance_and_zero_com(head):
    model = (tiny_model() if head == "linear" else relative_head_model()).double()
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(3, 10, dtype=torch.float64)
    mask[1, 7:] = 0
    x = torch.randn(3, 10, 3, generator=g, dtype=torch.float64) * mask[..., None]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = model(x, t, mask=mask)
    shift = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    out_shift = model((x + shift) * mask[..., None], t, mask=mask)
    assert torch.allclose(out, out_shift, atol=1e-10)  # raw backbone centres its input
    assert torch.allclose(model.backbone(x + shift, t, mask=mask), model.backbone(x, t, mask=mask), atol=1e-10)
    com = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-10 and out[mask == 0].abs().max() == 0


def test_raw_coordinate_embeddings_are_the_only_non_equivariant_part():
    """Proteina-like: rotations are learnt from augmentation through the raw-coordinate
    embeddings; every other path (pair features, relative head, chiral frame features) is
    rotation-equivariant. Zeroing those embeddings and the linear read-out makes the whole
    network equivariant; restoring them breaks it."""
    model = tiny_model().double()
    x = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64))[0]
    R = R * torch.sign(torch.linalg.det(R))  # a proper rotation
    t = torch.tensor([0.5], dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(model(x @ R.T, t), model(x, t) @ R.T, atol=1e-6)
        bb = model.backbone
        for lin in (bb.embed_x, bb.embed_sc, bb.out):
            lin.weight.zero_()
        g = torch.Generator().manual_seed(5)
        for prm in list(bb.rel_head.out.parameters()) + [bb.frame_out.weight, bb.embed_local.weight, bb.pair_dir.weight]:
            prm.copy_(0.3 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
        assert torch.allclose(model(x @ R.T, t), model(x, t) @ R.T, atol=1e-8)


def test_relative_coord_head_is_equivariant_and_starts_at_zero():
    """The head's update rotates with its coordinate inputs (features held fixed), only sees
    sequence neighbours within its window, and a ``relative`` network loaded from a ``linear``
    one (missing head keys) computes the same function until the head is trained."""
    from domains.protein_backbone.nets import RelativeCoordHead

    g = torch.Generator().manual_seed(5)
    head = RelativeCoordHead(16, 8, hidden=8, window=2).double()
    with torch.no_grad():
        for prm in head.out.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64))
    h = torch.randn(1, 9, 16, generator=g, dtype=torch.float64)
    pair = torch.randn(1, 9, 9, 8, generator=g, dtype=torch.float64)
    x, s = torch.randn(2, 1, 9, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 9, dtype=torch.float64)
    R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    out = head(h, pair, x, s, mask)
    assert out.abs().max() > 1e-3
    assert torch.allclose(head(h, pair, x @ R.T, s @ R.T, mask), out @ R.T, atol=1e-10)
    far = x.clone()
    far[0, 8] += 5.0  # residue 8 is 4 positions from residue 4: outside the window of 2
    assert torch.allclose(head(h, pair, far, s, mask)[0, 4], out[0, 4], atol=1e-12)
    assert not torch.allclose(head(h, pair, far, s, mask)[0, 7], out[0, 7], atol=1e-6)

    lin, rel = tiny_model(seed=3, net=LINEAR_NET), tiny_model(seed=4, net={**TINY_NET, "coord_head": "relative"})
    missing, unexpected = rel.load_state_dict(lin.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".rel_head." in k for k in missing)
    xt = torch.randn(2, 10, 3, generator=g)
    t = torch.tensor([0.2, 0.7])
    assert torch.allclose(rel(xt, t), lin(xt, t), atol=1e-6)
    with pytest.raises(ValueError, match="coord_head"):
        tiny_model(net={**TINY_NET, "coord_head": "egnn"})


@pytest.mark.parametrize("prediction", ["x0", "velocity"])
def test_self_conditioning_state(prediction):
    model = tiny_model(prediction=prediction).double()
    # make the self-conditioning embedding matter
    torch.nn.init.normal_(model.backbone.embed_sc.weight, std=1.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.float64)
    x = model.process.project(x, mask)
    t = torch.tensor([0.7, 0.7], dtype=torch.float64)
    cond = prepare_cond(model, None, mask=mask, batch_size=2)
    state = cond["self_cond"]
    assert isinstance(state, SelfCondState) and state.x0 is None
    first = model(x, t, mask=mask, cond=cond)
    assert torch.allclose(first, model(x, t, mask=mask))  # no estimate yet: same as no self-cond
    x0_est = first if prediction == "x0" else x - 0.7 * first
    assert torch.allclose(state.x0, model.process.project(x0_est, mask), atol=1e-10)
    second = model(x, t, mask=mask, cond=cond)
    assert state.calls == 2 and not torch.allclose(second, first)
    assert torch.allclose(second, model(x, t, mask=mask, cond={"x_sc": x0_est}), atol=1e-10)
    # a call with another batch size ignores the state and leaves it untouched
    saved = state.x0.clone()
    one = model(x[:1], t[:1], mask=mask[:1], cond=cond)
    assert torch.allclose(one, model(x[:1], t[:1], mask=mask[:1])) and torch.equal(state.x0, saved) and state.calls == 2
    # each prepare_cond starts a fresh trajectory
    assert prepare_cond(model, None, mask=mask, batch_size=2)["self_cond"] is not state


def test_self_conditioning_off():
    dom = tiny_domain(self_conditioning=False)
    model = tiny_model(dom).double()
    assert prepare_cond(model, None, batch_size=2) is None
    assert dom.objective().p_self_cond == 0.0
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    t = torch.tensor([0.4, 0.6], dtype=torch.float64)
    a = model(x, t, cond={"x_sc": torch.randn(2, 8, 3, dtype=torch.float64)})
    assert torch.allclose(a, model(x, t))
    gb = dom.generation_batch(2, generator=per_sample_generators(0, 2))
    out = api.sample(model.float(), dom.process(), gb.x_T, sampler="euler", steps=3, prediction=model.prediction, mask=gb.mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler,options", [("euler", {}), ("sde", {"temperature": 0.5}), ("heun", {})])
def test_sampling_keeps_zero_com_and_padding(sampler, options):
    dom = tiny_domain()
    model = tiny_model(dom)
    gb = dom.generation_batch(4, generator=per_sample_generators(0, 4))
    assert set(gb.info["lengths"].tolist()) <= {10, 16}
    out = api.run_sampler(model, dom.process(), gb.x_T, sampler=sampler, steps=4, prediction=model.prediction, mask=gb.mask,
                          generator=per_sample_generators(100, 4), **options)
    x = out.x
    assert x[gb.mask == 0].abs().max() == 0
    com = (x * gb.mask[..., None]).sum(1) / gb.mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    # sample 0 alone gives the same result (per-sample seeds; self-cond state per trajectory)
    gb1 = dom.generation_batch(1, generator=per_sample_generators(0, 1))
    out1 = api.run_sampler(model, dom.process(), gb1.x_T, sampler=sampler, steps=4, prediction=model.prediction, mask=gb1.mask,
                           generator=per_sample_generators(100, 1), **options)
    assert torch.allclose(out1.x, x[:1], atol=1e-5)


def test_generation_lengths_and_config_errors():
    dom = tiny_domain(lengths=[7, 30], n_max=30)
    gb = dom.generation_batch(6, generator=per_sample_generators(3, 6))
    assert gb.x_T.shape == (6, 30, 3)  # padded to n_max
    assert torch.equal(gb.mask.sum(1).long(), gb.info["lengths"]) and set(gb.info["lengths"].tolist()) <= {7, 30}
    default = tiny_domain(lengths=None).generation_batch(8, generator=per_sample_generators(0, 8))
    sizes, _ = tiny_domain(lengths=None).length_histogram()
    assert set(default.info["lengths"].tolist()) <= set(sizes.tolist())
    for bad in ({"data": "pdb"}, {"prediction": "eps"}, {"lengths": [0]}, {"n_max": 1}, {"bogus": 1}, {"net": 3}):
        with pytest.raises(ValueError):
            tiny_domain(**bad)
    with pytest.raises(ValueError, match=r"lengths must be <= n_max=24 .*got \[7, 30\]"):
        tiny_domain(lengths=[7, 30])  # longer than the model is trained / padded for
    with pytest.raises(ValueError):
        ProteinTransformer(dim=32, heads=3)
    with pytest.raises(ValueError):
        dom.generation_batch(2, cond=torch.zeros(2))
    with pytest.raises(ValueError):
        sample_times(4, "beta")


@pytest.mark.parametrize("prediction,loss_space", [("x0", "velocity"), ("velocity", "velocity"), ("x0", "x0")])
def test_objective_trains(prediction, loss_space):
    dom = tiny_domain(prediction=prediction, loss_space=loss_space)
    torch.manual_seed(0)
    model = dom.build_backbone()
    obj = dom.objective()
    assert obj.prediction == prediction and obj.loss_space == loss_space
    batch = dom.train_data("train")(4, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_at(seed):
        return obj({"model": model}, batch, torch.Generator().manual_seed(seed))

    l0 = torch.stack([loss_at(s).mean() for s in range(4)]).mean().item()
    for i in range(40):
        loss = loss_at(i % 4)
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    l1 = torch.stack([loss_at(s).mean() for s in range(4)]).mean().item()
    assert l1 < l0


def test_objective_self_conditioning_pass_is_used():
    dom = tiny_domain()
    model = dom.build_backbone()
    torch.nn.init.normal_(model.backbone.embed_sc.weight, std=1.0)
    batch = dom.train_data("train")(3, torch.Generator().manual_seed(0))
    calls = []
    orig = model.backbone.forward

    def spy(x, t, mask=None, cond=None):
        calls.append(isinstance(cond, dict) and "x_sc" in cond)
        return orig(x, t, mask=mask, cond=cond)

    model.backbone.forward = spy
    on = SelfCondFlowLoss(dom.process(), "x0", p_self_cond=1.0)
    off = SelfCondFlowLoss(dom.process(), "x0", p_self_cond=0.0)
    a = on({"model": model}, batch, torch.Generator().manual_seed(1))
    assert calls == [False, True]
    calls.clear()
    b = off({"model": model}, batch, torch.Generator().manual_seed(1))
    assert calls == [False] and not torch.allclose(a, b)
    t = sample_times(20000, "proteina", torch.Generator().manual_seed(0))
    assert 0 < float(t.min()) and float(t.max()) <= 1 and abs(float(t.mean()) - (1 - 0.98 * 1.9 / 2.9 - 0.01)) < 0.01


def test_save_samples_round_trip(tmp_path):
    from domains.proteins.io import read_chains

    dom = tiny_domain()
    gb = dom.generation_batch(2, generator=per_sample_generators(0, 2))
    x = gb.x_T * 0.5
    paths = dom.save_samples(Batch(x=x, mask=gb.mask), tmp_path)
    names = sorted(p.name for p in paths)
    assert "sample_00000.pdb" in names and "sample_00000.cif" in names and "sample_00001_backbone.pdb" in names
    for fmt in ("pdb", "cif"):
        ch = read_chains(tmp_path / f"sample_00001.{fmt}")[0]
        L = int(gb.mask[1].sum())
        assert len(ch) == L
        assert np.allclose(ch.ca, x[1, :L].numpy() * 10, atol=2e-3)  # nm -> A, 3 decimals
        full = read_chains(tmp_path / f"sample_00001_backbone.{fmt}")[0]
        assert np.isfinite(full.coords).all() and np.allclose(full.ca, ch.ca, atol=2e-3)
    assert "REMARK" in (tmp_path / "sample_00000_backbone.pdb").read_text()
    with np.load(tmp_path / "samples.npz") as f:
        assert np.allclose(f["x"], x.numpy()) and np.array_equal(f["mask"], gb.mask.numpy())
    png = dom.plot(Batch(x=x, mask=gb.mask), tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_train_teacher_and_load(tmp_path):
    from workbench.domain import train_teacher

    dom = tiny_domain()
    res = train_teacher(dom, {"steps": 3, "batch_size": 2, "progress": False, "warmup": 0}, tmp_path)
    assert res.step == 3
    teacher = dom.load_teacher(str(tmp_path / "teacher.safetensors"))
    assert teacher.prediction == "velocity" and not teacher.training
    with pytest.raises(CheckpointError):
        dom.load_teacher(str(tmp_path / "missing.safetensors"))
    # the checkpoint's architecture wins over the domain's: a domain configured for another
    # size builds the checkpoint's network (and so do its later build_backbone calls)
    other = tiny_domain(net={**TINY_NET, "dim": 48})
    assert other.load_teacher(str(tmp_path / "teacher.safetensors")).backbone.cfg.dim == TINY_NET["dim"]
    assert other.config["net"]["dim"] == TINY_NET["dim"] and other.build_backbone().backbone.cfg.dim == TINY_NET["dim"]


def test_checkpoint_architecture_is_read_from_header_and_weights(tmp_path):
    """A teacher saved before the header recorded ``coord_head`` (its ``net`` has sizes only,
    the old linear-head default) loads as linear; one whose header contradicts its weights fails
    with a CheckpointError; a distilled generator adopts its teacher's architecture too."""
    from workbench.checkpoint import load_weights, save_weights
    from workbench.distill.recipes import build_generator
    from workbench.runner import load_generator

    torch.manual_seed(0)
    lin = tiny_domain(net=LINEAR_NET).build_backbone()
    old_cfg = {**tiny_domain().config, "net": dict(TINY_NET)}  # sizes only, no coord_head
    save_weights(tmp_path / "old.safetensors", lin, {"domain": "protein_backbone", "config": old_cfg})
    dom = tiny_domain(net=dict(TINY_NET))
    assert dom.config["net"]["coord_head"] == "relative"
    t = dom.load_teacher(str(tmp_path / "old.safetensors"))
    assert t.backbone.rel_head is None and dom.config["net"]["coord_head"] == "linear"
    state, _ = load_weights(tmp_path / "old.safetensors")
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in state.items())

    lying = {"domain": "protein_backbone", "config": {**old_cfg, "net": {**LINEAR_NET, "dim": 48}}}
    save_weights(tmp_path / "lying.safetensors", lin, lying)
    with pytest.raises(CheckpointError, match="does not fit"):
        tiny_domain().load_teacher(str(tmp_path / "lying.safetensors"))

    spec = {"kind": "consistency", "student": {"backbone": {}, "prediction": "velocity", "two_time": False},
            "parameterization": "x0", "timesteps": [1.0, 0.0]}
    gen = build_generator(tiny_domain(net=LINEAR_NET), spec)
    save_weights(tmp_path / "gen.safetensors", gen, {"kind": "generator", "domain": "protein_backbone", "config": old_cfg, "spec": spec})
    loaded, _ = load_generator(tiny_domain(), tmp_path / "gen.safetensors")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in gen.state_dict().items())


def test_train_teacher_init_starts_from_the_given_weights(tmp_path):
    """``train_teacher(init=...)`` (a later training stage) starts from those weights: with a
    zero learning rate the exported teacher equals them; a checkpoint of another size fails."""
    from workbench.checkpoint import load_weights
    from workbench.domain import train_teacher

    dom = tiny_domain()
    cfg = {"steps": 2, "batch_size": 2, "progress": False, "warmup": 0}
    train_teacher(dom, cfg, tmp_path / "a")
    first, _ = load_weights(tmp_path / "a" / "teacher.safetensors")
    train_teacher(dom, {**cfg, "lr": 0.0}, tmp_path / "b", init=tmp_path / "a" / "teacher.safetensors")
    second, meta = load_weights(tmp_path / "b" / "teacher.safetensors")
    assert meta["init"].endswith("teacher.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    train_teacher(dom, {**cfg, "lr": 0.0}, tmp_path / "c")  # no init: a fresh network differs
    fresh, _ = load_weights(tmp_path / "c" / "teacher.safetensors")
    assert not all(torch.equal(first[k], fresh[k]) for k in first)
    with pytest.raises(CheckpointError):
        train_teacher(tiny_domain(net={**TINY_NET, "dim": 48}), cfg, tmp_path / "d", init=tmp_path / "a" / "teacher.safetensors")


def test_shipped_teacher_loads():
    dom = ProteinBackboneDomain(lengths=[40], novelty_reference=2)
    teacher = dom.load_teacher()
    gb = dom.generation_batch(2, generator=per_sample_generators(0, 2))
    with torch.no_grad():
        out = teacher(gb.x_T, torch.full((2,), 0.5), mask=gb.mask)
    assert out.shape == gb.x_T.shape and torch.isfinite(out).all()
    assert sum(p.numel() for p in teacher.parameters()) * 4 < 5e6


def test_config_dataclass_and_template_hooks(tmp_path):
    """Options come from the Config dataclass (defaults filled, unknown keys and bad values are
    one-line errors); no two-time students; a missing teacher names the regenerate command and
    a teacher of another domain is refused by the template's check."""
    from workbench.checkpoint import save_weights

    dom = ProteinBackboneDomain()
    assert dom.config["data"] == "globular" and dom.config["lengths"] is None and dom.config["novelty_reference"] == 32
    with pytest.raises(ValueError, match="unknown protein_backbone domain option.*lenghts; valid: data, root, n_max, lengths"):
        ProteinBackboneDomain(lenghts=[50])
    with pytest.raises(ValueError, match="unknown protein_backbone data 'fake'; valid: globular, real, ideal, mixed"):
        ProteinBackboneDomain(data="fake")
    assert not dom.supports("build_two_time_backbone")
    with pytest.raises(NotImplementedError, match="does not support two-time"):
        dom.build_two_time_backbone()
    with pytest.raises(CheckpointError, match="regenerate it with `python -m domains.protein_backbone.train`"):
        dom.load_teacher(str(tmp_path / "none.safetensors"))
    torch.manual_seed(0)
    save_weights(tmp_path / "other.safetensors", tiny_model(), {"domain": "toy", "config": {}})
    with pytest.raises(CheckpointError, match="trained for domain 'toy', not 'protein_backbone'"):
        tiny_domain().load_teacher(str(tmp_path / "other.safetensors"))
