"""The domain contract as code: a third-party domain registered by entry point only (a plugin
package written to a temporary folder, nothing in this project) runs every core command;
optional capabilities fail with "domain X does not support Y"; ``load_teacher`` is a template
method driven by hooks; registry-wide invariants over every installed domain."""
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.domain import OPTIONAL_CAPABILITIES, Domain, available_domains, get_domain, get_domain_class

#: a complete third-party domain: 2-D Gaussian data, a small MLP denoiser, no shipped teacher
PLUGIN = '''
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch
from workbench.model import Denoiser
from workbench.processes import from_diffusers


@dataclass
class GaussConfig:
    dim: int = 2
    mean: float = 1.0


class Net(nn.Module):
    def __init__(self, dim, hidden=32):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t, **kw):
        return self.f(torch.cat([x, t[:, None].float() / 1000], 1))


class GaussDomain(Domain):
    name, description, formats, primary_metric = "gauss", "a Gaussian", ("npz",), "mean_error"
    Config = GaussConfig

    def process(self):
        return from_diffusers({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000})

    def build_backbone(self, **kw):
        return Denoiser(Net(self.config["dim"], **kw), self.process(), "epsilon", time_map="diffusers")

    def train_data(self, split="train"):
        return lambda n, g=None: Batch(x=self.config["mean"] + torch.randn(n, self.config["dim"], generator=g))

    def generation_batch(self, n, *, generator=None, cond=None):
        return GenerationBatch(x_T=self.process().prior((n, self.config["dim"]), generator=generator))

    def evaluate(self, samples, *, reference=None):
        return {"mean_error": float((samples.x.mean(0) - self.config["mean"]).abs().max())}

    def save_samples(self, samples, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(out_dir) / "samples.npz", x=samples.x.numpy())
        return [Path(out_dir) / "samples.npz"]

    def plot(self, samples, path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from workbench.utils import save_figure
        fig, ax = plt.subplots()
        ax.scatter(*samples.x[:, :2].T.numpy())
        return save_figure(fig, path)
'''


@pytest.fixture
def gauss_plugin(tmp_path, monkeypatch):
    """The plugin as an installed distribution: its module plus a ``.dist-info`` declaring the
    ``workbench.domains`` entry point, on ``sys.path`` (what ``pip install`` leaves behind)."""
    site = tmp_path / "site"
    (site / "gauss_plugin").mkdir(parents=True)
    (site / "gauss_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "gauss_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gauss-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[workbench.domains]\ngauss = gauss_plugin:GaussDomain\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("gauss_plugin", None)


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plugin_domain_runs_every_command(gauss_plugin, tmp_path, capsys):
    assert "gauss" in available_domains()
    code, out, err = run(capsys, "domains")
    assert code == 0 and "gauss" in out
    quick = ["train.batch_size=16", "train.progress=false", "threads=1"]
    code, _, err = run(capsys, "train", "domain=gauss", "domain.mean=2.0", f"out={tmp_path / 't'}", "train.steps=3", *quick)
    assert code == 0, err
    teacher = tmp_path / "t" / "teacher.safetensors"
    assert json.loads((tmp_path / "t" / "history.json").read_text())[-1]["step"] == 3
    code, _, err = run(capsys, "generate", "domain=gauss", "domain.mean=2.0", f"teacher={teacher}", "n=8", "steps=2", f"out={tmp_path / 'g'}")
    assert code == 0, err
    rec = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert rec["domain_config"] == {"dim": 2, "mean": 2.0} and "mean_error" in rec["metrics"]
    code, _, err = run(capsys, "distill", "domain=gauss", "domain.mean=2.0", "method=consistency", "student_steps=2", f"teacher={teacher}",
                       f"out={tmp_path / 'd'}", "train.steps=2", *quick)
    assert code == 0, err
    code, _, err = run(capsys, "generate", "domain=gauss", "domain.mean=2.0", f"generator={tmp_path / 'd' / 'generator.safetensors'}",
                       "n=4", "steps=2", f"out={tmp_path / 'gd'}")
    assert code == 0, err
    code, out, err = run(capsys, "check", "domain=gauss", f"teacher={teacher}")
    assert code == 0 and "passes the conformance check" in out, err
    assert "samplers (" in out and "euler" in out
    # consistency needs no optional capability, meanflow needs a two-time backbone
    methods = next(line for line in out.splitlines() if line.startswith("distillation methods"))
    assert "consistency" in methods
    from workbench.distill.api import METHODS

    for name, m in METHODS.items():
        assert (name in methods.split(": ", 1)[1].split(", ")) == (not m.requires and m.state == "continuous"), name
    # without a teacher the check runs on an untrained backbone and says so
    code, out, err = run(capsys, "check", "domain=gauss")
    assert code == 0 and "no shipped teacher" in out, err
    # the plugin's options are typed keys: a bad value or an unknown key is a one-line error
    code, _, err = run(capsys, "generate", "domain=gauss", "domain.dim=two")
    assert code == 2 and "domain.dim" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "generate", "domain=gauss", "domain.nope=1")
    assert code == 2 and "unknown config key 'domain.nope'" in err and "domain.mean" in err


def test_plugin_without_shipped_teacher_is_a_clear_error(gauss_plugin, capsys):
    code, _, err = run(capsys, "generate", "domain=gauss", "n=2")
    assert code == 2 and "domain 'gauss' ships no teacher; pass teacher=PATH" in err


def test_optional_capabilities_raise_does_not_support(gauss_plugin):
    dom = get_domain("gauss")
    assert dom.capabilities() == ()
    with pytest.raises(NotImplementedError, match="domain 'gauss' does not support two-time"):
        dom.build_two_time_backbone()
    with pytest.raises(NotImplementedError, match="domain 'gauss' does not support slimmer students"):
        dom.slim_backbone_kwargs(2)
    with pytest.raises(NotImplementedError, match="domain 'gauss' does not support rewards"):
        dom.reward(None)
    with pytest.raises(ValueError, match="unknown domain capability 'fly'; valid: "):
        dom.supports("fly")
    with pytest.raises(ValueError, match="unknown gauss domain option"):
        get_domain("gauss", colour="red")


def test_every_method_requirement_is_a_declared_capability():
    from workbench.distill.api import METHODS

    for name, m in METHODS.items():
        assert set(m.requires) <= set(OPTIONAL_CAPABILITIES), (name, m.requires)


@pytest.mark.parametrize("name", sorted(available_domains()))
def test_registered_domains_declare_the_contract(name):
    cls = get_domain_class(name)
    assert issubclass(cls, Domain) and cls.name == name
    assert isinstance(cls.primary_metric, str) and cls.primary_metric, f"{name} declares no primary_metric"
    assert isinstance(cls.demo_configs, dict) and cls.demo_n > 0
    assert all(isinstance(k, str) and k.isidentifier() and isinstance(v, dict) for k, v in cls.demo_configs.items())
    from workbench.samplers import available

    assert cls.teacher_sampler[0] in available(state=None) and set(cls.demo_fast_samplers) <= set(available(state=None))
    assert cls.primary_metric in cls.metric_info, f"{name}: the primary metric has no definition/direction"
    assert all(d in ("lower", "higher") or d.startswith("target") for d, _ in cls.metric_info.values())
    for cfg in cls.demo_configs.values() or [{}]:  # every shipped student of a demo config exists
        for s in get_domain(name, **cfg).shipped_students():
            assert Path(s.path).is_file() and s.steps >= 1 and s.name.isidentifier(), s
    for cap in cls.capabilities():  # an implemented capability is an override, not the raising default
        assert getattr(cls, cap) is not getattr(Domain, cap)


@pytest.mark.parametrize("config,narrow", [({"dataset": "gmm"}, {"hidden": 64}), ({"dataset": "pointset"}, {"hidden": 32})])
def test_toy_capabilities(config, narrow):
    dom = get_domain("toy", **config)
    assert set(dom.capabilities()) == set(OPTIONAL_CAPABILITIES)
    assert dom.slim_backbone_kwargs(2) == narrow
    teacher, slim = dom.build_backbone(), dom.build_backbone(**dom.slim_backbone_kwargs(2))
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2
    # the two-time student keeps the teacher's parameter names (weights copy by name)
    u = dom.build_two_time_backbone()
    assert set(teacher.state_dict()) <= set(u.state_dict())
    assert type(u).__name__ == "TwoTimeDenoiser"


def test_images_capabilities():
    dom = get_domain("images")
    assert {"build_two_time_backbone", "slim_backbone_kwargs"} <= set(dom.capabilities())
    kw = dom.slim_backbone_kwargs(2)
    assert kw == {"block_out_channels": [16, 32], "norm_num_groups": 16}
    assert dom.build_backbone(**kw).backbone.unet.config.block_out_channels == (16, 32)


def test_load_teacher_is_a_template_driven_by_hooks(tmp_path):
    """A domain customises loading through hooks only, called in order; the header decides."""
    from workbench.checkpoint import CheckpointError, save_weights
    from domains.toy import ToyDomain

    calls = []

    class Traced(ToyDomain):
        def check_checkpoint(self, meta, path):
            calls.append(("check", meta.get("domain")))
            super().check_checkpoint(meta, path)

        def adopt_checkpoint_architecture(self, meta, keys):
            calls.append(("adopt", "backbone.inp.weight" in set(keys)))

        def build_backbone(self, **kw):
            calls.append(("build",))
            return super().build_backbone(**kw)

    d = Traced()
    net = d.load_teacher()
    assert calls == [("check", "toy"), ("adopt", True), ("build",)]
    assert not net.training and d.default_teacher_path().exists()
    # the shipped weights are the ones loaded
    from safetensors.torch import load_file

    ref = load_file(str(d.default_teacher_path()))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())
    # a header naming another domain is refused before any network is built
    other = save_weights(tmp_path / "o.safetensors", ToyDomain().build_backbone(), {"domain": "images"})
    calls.clear()
    with pytest.raises(CheckpointError, match="trained for domain 'images', not 'toy'"):
        d.load_teacher(str(other))
    assert calls == [("check", "images")]
