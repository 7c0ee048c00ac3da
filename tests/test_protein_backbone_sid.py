"""The shipped SiD students of the protein_backbone teacher
(``domains/protein_backbone/checkpoints/sid_student_k{K}.safetensors``) and the recipe that
regenerates them (``python -m domains.protein_backbone.distill_sid``)."""
from __future__ import annotations

import pytest
import torch

from domains.protein_backbone.distill_sid import (METHOD_OPTIONS, NOISE_SCALE, default_checkpoint, distill_student,
                                                  evaluate_student)
from domains.protein_backbone.nets import TINY_NET
from workbench.checkpoint import load_weights
from workbench.domain import get_domain
from workbench.runner import load_generator, sample_generator

torch.set_num_threads(1)

SHIPPED = [k for k in (8, 16) if default_checkpoint(k).exists()]


def _check_samples(x, mask, lengths):
    assert torch.isfinite(x).all()
    real = mask > 0.5
    assert torch.equal(real.sum(1), torch.as_tensor(lengths).long())
    assert float(x[~real].abs().max()) == 0.0  # padding rows stay exactly zero
    com = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-5  # zero centre of mass over the real residues
    # a backbone, not a collapsed point cloud: consecutive CA within a loose band (nm)
    d = (x[:, 1:] - x[:, :-1]).norm(dim=-1)[real[:, 1:] & real[:, :-1]]
    assert 0.1 < float(d.mean()) < 1.0


def test_a_student_is_shipped():
    assert default_checkpoint(8).exists(), "run: python -m domains.protein_backbone.distill_sid --student-steps 8 ..."


@pytest.mark.parametrize("K", SHIPPED)
def test_shipped_student_generates_with_noise_modulation(K):
    path = default_checkpoint(K)
    assert path.stat().st_size < 5 * 2**20
    dom = get_domain("protein_backbone", n_max=40, lengths=[21, 34])
    gen, meta = load_generator(dom, path)
    assert meta["method"] == "sid" and meta["student_steps"] == K
    assert {k: meta["options"][k] for k in METHOD_OPTIONS} == METHOD_OPTIONS  # shipped with the recipe's options
    assert gen.nfe(K) == K
    for steps in (8, 16):
        x, info = sample_generator(dom, gen, steps=steps, n=3, seed=0, noise_scale=NOISE_SCALE)
        assert info["nfe"] == steps and x.x.shape == (3, 40, 3)
        lengths = dom.generation_batch(3, generator=[torch.Generator().manual_seed(i) for i in range(3)]).info["lengths"]
        _check_samples(x.x, x.mask, lengths)
    # same seeds -> same samples (the noise modulation draws from the per-sample generators)
    a, _ = sample_generator(dom, gen, steps=K, n=2, seed=5, noise_scale=0.6)
    b, _ = sample_generator(dom, gen, steps=K, n=2, seed=5, noise_scale=0.6)
    assert torch.equal(a.x, b.x)


def test_tiny_sid_distillation_end_to_end(tmp_path):
    cfg = {"data": "ideal", "n_max": 16, "lengths": [9, 14], "novelty_reference": 2}
    ckpt = tmp_path / "student.safetensors"
    res = distill_student(tmp_path / "run", student_steps=2, steps=2, checkpoint=ckpt, domain_config=cfg,
                          student=dict(TINY_NET), train={"batch_size": 2, "progress": False, "ckpt_every": 1000})
    assert res["steps"] == 2 and ckpt.exists()
    _, meta = load_weights(ckpt)
    assert meta["method"] == "sid" and meta["options"]["alpha"] == METHOD_OPTIONS["alpha"]
    dom = get_domain("protein_backbone", **cfg)
    gen, _ = load_generator(dom, ckpt)
    assert sum(p.numel() for p in gen.parameters()) < sum(p.numel() for p in dom.load_teacher().parameters()) / 10
    x, _ = sample_generator(dom, gen, steps=2, n=2, seed=0, noise_scale=0.5)
    lengths = dom.generation_batch(2, generator=[torch.Generator().manual_seed(i) for i in range(2)]).info["lengths"]
    assert torch.isfinite(x.x).all() and x.x.shape == (2, 16, 3)
    real = x.mask > 0.5
    assert torch.equal(real.sum(1), lengths.long()) and float(x.x[~real].abs().max()) == 0.0
    com = (x.x * x.mask[..., None]).sum(1) / x.mask.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-5


def test_distill_student_method_options_override_the_recipe(tmp_path):
    cfg = {"data": "ideal", "n_max": 16, "lengths": [9, 14], "novelty_reference": 2}
    ckpt = tmp_path / "student.safetensors"
    res = distill_student(tmp_path / "run", student_steps=2, steps=1, checkpoint=ckpt, domain_config=cfg, student=dict(TINY_NET),
                          method_options={"alpha": 1.2}, train={"batch_size": 2, "progress": False, "ckpt_every": 1000})
    _, meta = load_weights(ckpt)
    assert meta["options"]["alpha"] == 1.2 == res["method_options"]["alpha"]
    assert meta["options"]["train_noise_scale"] == METHOD_OPTIONS["train_noise_scale"]  # the rest of the recipe is kept
    assert METHOD_OPTIONS["alpha"] == 1.0  # the module constant is not mutated
    assert load_generator(get_domain("protein_backbone", **cfg), ckpt)[0].noise_scale == METHOD_OPTIONS["train_noise_scale"]
    distill_student(tmp_path / "run2", student_steps=2, steps=1, checkpoint=ckpt, domain_config=cfg, student=dict(TINY_NET),
                    method_options={"train_noise_scale": 0.5}, train={"batch_size": 2, "progress": False, "ckpt_every": 1000})
    q = evaluate_student(ckpt, student_steps=2, noise_scales=(0.5,), n=2, teacher_steps=(), domain_config=cfg, log=lambda *a: None)
    assert q["generator"]["noise_scale"] == 0.5  # the generator samples by default at the scale it was trained with


def test_distill_student_rejects_bad_steps(tmp_path):
    with pytest.raises(ValueError, match="student_steps"):
        distill_student(tmp_path, student_steps=0, steps=1, checkpoint=False)


def test_teacher_domain_config_reads_the_teachers_chain_set(tmp_path):
    from domains.protein_backbone.distill_sid import teacher_domain_config
    from workbench.checkpoint import save_weights

    assert teacher_domain_config() == {}
    assert teacher_domain_config(data="mixed") == {"data": "mixed"}
    path = save_weights(tmp_path / "t.safetensors", {"w": torch.zeros(1)},
                        meta={"domain": "protein_backbone", "config": {"data": "ideal", "n_max": 128}})
    assert teacher_domain_config(str(path)) == {"data": "ideal"}  # the teacher's own chain set
    assert teacher_domain_config(str(path), "real") == {"data": "real"}  # an explicit choice wins
    bare = save_weights(tmp_path / "bare.safetensors", {"w": torch.zeros(1)})
    assert teacher_domain_config(str(bare)) == {}
