"""The shipped SiD students of the protein_backbone teacher
(``domains/protein_backbone/checkpoints/sid_student_k{K}.safetensors``) and the recipe that
regenerates them (``python -m domains.protein_backbone.distill_sid``)."""
from __future__ import annotations

import pytest
import torch


from domains.protein_backbone.distill_sid import (METHOD_OPTIONS, NOISE_SCALE, VARIANTS, default_checkpoint, distill_student,
                                                  evaluate_student)
from domains.protein_backbone.nets import TINY_NET
from workbench.checkpoint import load_weights
from workbench.domain import get_domain
from workbench.runner import load_generator, sample_generator

torch.set_num_threads(1)

SHIPPED = (8, 16)  # both students ship; a missing file fails the tests that use them


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


def _json(d):
    import json

    return json.loads(json.dumps(d))


def _effective(options):
    """Every SiD recipe option: the recipe's defaults updated by ``options`` (JSON-normalised)."""
    from workbench.distill.api import METHODS

    defaults = METHODS["sid"].defaults()
    return _json({**defaults, **{k: v for k, v in options.items() if k != "student"}})


def test_the_recipe_is_the_published_one():
    """Defaults = Proteina-SiD (authors' run_sid_proteina.sh, sid_utils.py, sid_loss.py, README):
    the log grid round(linspace(30, 400, K)), tau = 1 - 10^(-2 s / 400); training at gamma 1;
    sampling at gamma 0.45 with every noise term scaled, so the first generator input of K = 8 is
    0.708 * 0.45 times the prior noise."""
    from workbench.distill import setup_method
    from workbench.distill.recipes import RecipeContext

    assert METHOD_OPTIONS["train_noise_scale"] == 1.0 and METHOD_OPTIONS["sample_noise_scale"] == 0.45
    assert METHOD_OPTIONS["alpha"] == 1.0 and METHOD_OPTIONS["generator_betas"] == (0.9, 0.999)
    dom = get_domain("protein_backbone", n_max=24, lengths=[20, 24])
    setup = setup_method("sid", RecipeContext.for_domain(dom, student_steps=8), {**METHOD_OPTIONS, "student": dict(TINY_NET)})
    s = torch.round(torch.linspace(30.0, 400.0, 8, dtype=torch.float64))
    tau = 1.0 - 10.0 ** (-(s / 400) * 2.0)  # Proteina time, tau = 1 data
    torch.testing.assert_close(torch.tensor(setup.spec["timesteps"], dtype=torch.float64), torch.cat([1.0 - tau, torch.zeros(1)]))
    gen = setup.make_generator(setup.nets).eval()
    seen = []

    class Zero(torch.nn.Module):
        prediction = "x0"

        def forward(self, x, t, **kw):
            seen.append(x.detach().clone())
            return torch.zeros_like(x)

    gen.student = Zero()
    gb = dom.generation_batch(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gen.generate(gb.x_T, mask=gb.mask, generator=torch.Generator().manual_seed(1))
    x0_ref = 0.45 * (1.0 - float(tau[0])) * gb.x_T / dom.process().prior_std()  # (1 - tau) gamma eps + tau * 0
    torch.testing.assert_close(seen[0], x0_ref * gb.mask[..., None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", SHIPPED)
def test_shipped_student_generates_with_noise_modulation(K):
    path = default_checkpoint(K)
    assert path.stat().st_size < 5 * 2**20
    dom = get_domain("protein_backbone", n_max=40, lengths=[21, 34])
    gen, meta = load_generator(dom, path)
    assert meta["method"] == "sid" and meta["student_steps"] == K
    # shipped with the published recipe or a named variant of it (every option resolved against the recipe's defaults)
    assert any(_effective(meta["options"]) == _effective({**METHOD_OPTIONS, **v}) for v in VARIANTS.values()), meta["options"]
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
    assert {k: meta["options"][k] for k in METHOD_OPTIONS if k != "alpha"} == _json(
        {k: v for k, v in METHOD_OPTIONS.items() if k != "alpha"})  # the rest of the recipe is kept
    assert METHOD_OPTIONS["alpha"] == 1.0  # the module constant is not mutated
    q = evaluate_student(ckpt, student_steps=2, noise_scales=(0.5,), n=2, teacher_steps=(), domain_config=cfg, log=lambda *a: None)
    # the published recipe samples by default at gamma 0.45 with every noise term scaled
    assert q["generator"]["noise_scale"] == METHOD_OPTIONS["sample_noise_scale"] == NOISE_SCALE == 0.45
    assert q["generator"]["scale_initial_noise"] is True
    distill_student(tmp_path / "run2", student_steps=2, steps=1, checkpoint=ckpt, domain_config=cfg, student=dict(TINY_NET),
                    method_options=VARIANTS["uniform_grid_gamma08"], train={"batch_size": 2, "progress": False, "ckpt_every": 1000})
    q = evaluate_student(ckpt, student_steps=2, noise_scales=(0.5,), n=2, teacher_steps=(), domain_config=cfg, log=lambda *a: None)
    # the project's first recipe: trained and sampled at 0.8, only the re-injected noise scaled
    assert q["generator"]["noise_scale"] == 0.8 and q["generator"]["scale_initial_noise"] is False


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
