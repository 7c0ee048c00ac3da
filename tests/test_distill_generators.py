"""Generators describe themselves: ``to_config()`` is JSON, ``build_generator`` rebuilds the
same generator from it (dispatch by class, no per-kind branches), and headers written before
``to_config`` (the hand-built ``spec``) are upgraded, the shipped generator checkpoints included."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.checkpoint import load_weights
from workbench.distill.generators import GENERATOR_KINDS, GENERATORS, BaseGenerator, build_generator, upgrade_spec

from domains.toy.domain import ToyDomain

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
S = {"backbone": {"hidden": 16}, "prediction": "epsilon", "two_time": False}
#: one header of each kind as ``runner.distill`` wrote them before generators had a config
OLD_SPECS = {
    "consistency": {"kind": "consistency", "student": S, "parameterization": "x0", "sigma_data": 0.5, "timesteps": [1.0, 0.5, 0.0]},
    "flow": {"kind": "flow", "student": S, "sampler": "euler", "timesteps": None, "options": {}},
    "meanflow": {"kind": "meanflow", "student": {"backbone": {"hidden": 16, "prediction": "v"}, "prediction": "v", "two_time": True}},
    "experts": {"kind": "experts", "n": 2, "boundaries": [1.0, 0.5, 0.0],
                "inner": {"kind": "consistency", "student": S, "parameterization": "x0", "sigma_data": 0.5, "timesteps": None}},
    "multi_student": {"kind": "multi_student", "n": 2, "router": "noise",
                      "inner": {"kind": "flow", "student": S, "sampler": "euler", "timesteps": None, "options": {}}},
}


def _shipped_generators():
    out = []
    for p in sorted(ROOT.glob("domains/*/checkpoints/*.safetensors")):
        _, meta = load_weights(p)
        if meta.get("kind") == "generator":
            out.append(p)
    return out


def test_every_generator_class_is_registered_and_every_old_kind_maps_to_one():
    assert {c.__name__ for c in BaseGenerator.__subclasses__()} <= set(GENERATORS)
    # classes added after headers carried their "class" have no old kind to upgrade from
    new = {"LSDGenerator"}
    assert {upgrade_spec(OLD_SPECS[k])["class"] for k in GENERATOR_KINDS} == set(GENERATORS) - new


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_old_spec_upgrades_and_config_round_trips(kind):
    d = ToyDomain(dataset="gmm")
    gen = build_generator(d, OLD_SPECS[kind])
    assert isinstance(gen, GENERATORS[upgrade_spec(OLD_SPECS[kind])["class"]]) and gen.kind == kind
    cfg = json.loads(json.dumps(gen.to_config()))
    assert cfg == upgrade_spec(OLD_SPECS[kind]) and upgrade_spec(cfg) is cfg
    again = build_generator(d, cfg)
    again.load_state_dict(gen.state_dict())
    assert again.to_config() == cfg
    gb = d.generation_batch(3, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    with torch.no_grad():
        a = gen.generate(gb.x_T, 2, generator=torch.Generator().manual_seed(0))
        b = again.generate(gb.x_T, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_upgrade_keeps_the_defaults_old_files_relied_on():
    cfg = upgrade_spec(OLD_SPECS["experts"])
    assert cfg["transition"] == "renoise" and cfg["inner"]["noise_scale"] == 1.0 and cfg["inner"]["scale_initial_noise"] is False
    assert upgrade_spec(OLD_SPECS["consistency"])["prediction"] == "epsilon"
    with pytest.raises(ValueError, match="unknown generator kind 'nope'; valid: consistency, flow"):
        upgrade_spec({"kind": "nope"})
    with pytest.raises(ValueError, match="unknown generator class 'Nope'; valid: "):
        build_generator(ToyDomain(), {"class": "Nope"})


def test_a_generator_of_unknown_students_refuses_to_describe_itself():
    from workbench.distill.generators import TwoTimeGenerator

    with pytest.raises(ValueError, match="has no student_config; build students with make_student"):
        TwoTimeGenerator(nn.Linear(2, 2), ToyDomain().process()).to_config()


@pytest.mark.parametrize("path", _shipped_generators(), ids=lambda p: p.name)
def test_shipped_generator_checkpoints_load_from_their_spec_and_sample(path):
    """Every shipped generator loads (strictly) from its header and samples; headers written
    before ``to_config`` existed (no ``class``) go through the upgrade path, newer ones hold
    ``to_config()`` itself."""
    from workbench.domain import get_domain
    from workbench.runner import load_generator

    _, meta = load_weights(path)
    dom = get_domain(meta["domain"], **(meta.get("config") or {}))  # the config it was distilled in (e.g. a data set)
    gen, _ = load_generator(dom, path)  # strict state load
    expected = upgrade_spec(meta["spec"]) if "class" not in meta["spec"] else meta["spec"]
    assert gen.to_config() == expected
    gb = dom.generation_batch(1, generator=[torch.Generator().manual_seed(0)])
    steps = int(meta["student_steps"]) if gen.kind == "lsd" else 2  # a learned sampler runs at its own steps only
    with torch.no_grad():
        x = gen.generate(gb.x_T, steps, mask=gb.mask, cond=gb.cond, generator=[torch.Generator().manual_seed(1)])
    assert x.shape == gb.x_T.shape and bool(torch.isfinite(x).all())


def test_multi_student_routing_slices_dict_conditions():
    """Each sub-generator gets exactly its rows of a dict-valued condition (per-sample tensors
    sliced, a shared non-batched tensor passed whole) and of the mask."""
    from workbench.distill.generators import MultiStudentGenerator

    class Echo(BaseGenerator):
        kind = "echo_test"

        def __init__(self):
            super().__init__()
            self.seen = []

        def _config(self):
            return {}

        @classmethod
        def from_config(cls, domain, config):
            return cls()

        def nfe(self, steps=None):
            return 1

        def generate(self, x_T, steps=None, *, timesteps=None, mask=None, cond=None, generator=None, noise_scale=None):
            self.seen.append((cond, mask))
            return cond["row"][:, None, None].expand_as(x_T).to(x_T.dtype)

    try:
        B = 12
        x_T = torch.randn(B, 3, 2, generator=torch.Generator().manual_seed(0))
        cond = {"row": torch.arange(B), "shared": torch.ones(5), "tag": "x"}
        mask = torch.ones(B, 3)
        gen = MultiStudentGenerator(nn.ModuleList([Echo(), Echo(), Echo()]), router="noise")
        out = gen.generate(x_T, 1, cond=cond, mask=mask)
        torch.testing.assert_close(out[:, 0, 0], torch.arange(B, dtype=out.dtype))  # every row came back from its owner
        idx = gen.route(x_T, cond, mask)
        for k, s in enumerate(gen.students):
            if (idx == k).any():
                (c, m), = s.seen
                assert torch.equal(c["row"], (idx == k).nonzero().flatten()) and torch.equal(c["shared"], torch.ones(5))
                assert c["tag"] == "x" and m.shape == (int((idx == k).sum()), 3)
        assert len({int(i) for i in idx}) > 1  # the test routes to several students
    finally:
        GENERATORS.pop("Echo", None)


def test_a_generator_must_implement_the_contract():
    """``BaseGenerator`` is abstract: a subclass missing ``generate`` / ``nfe`` / ``_config`` /
    ``from_config`` cannot be instantiated (no silent stub)."""

    class _IncompleteGeneratorForTest(BaseGenerator):
        kind = "incomplete_test"

        def nfe(self, steps=None):
            return 1

    with pytest.raises(TypeError, match="abstract"):
        _IncompleteGeneratorForTest()
