"""Configs: every registered domain composes from one source (its Config dataclass or one
YAML), the configs ship inside the package, and the config keys match what they feed."""
import dataclasses
import fnmatch
import tomllib
from pathlib import Path

import pytest

import workbench
from workbench.cli import MOVED_TO_DOMAIN, _domain_kwargs, config_dir, load_config
from workbench.domain import available_domains, get_domain, get_domain_class
from workbench.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = sorted(available_domains())


@pytest.mark.parametrize("name", DOMAINS)
def test_every_registered_domain_composes_from_one_source(name):
    """``domain=NAME`` composes whatever installs the domain; its keys come from its
    ``Config`` dataclass or from one YAML, never both, and they build the domain."""
    cls = get_domain_class(name)
    yaml = config_dir() / "domain" / f"{name}.yaml"
    assert (cls.Config is None) == yaml.exists(), f"{name}: options must come from a Config dataclass or one YAML"
    cfg = load_config([f"domain={name}"])
    dname, kwargs = _domain_kwargs(cfg)
    assert dname == name
    if cls.Config is not None:
        assert set(kwargs) == {f.name for f in dataclasses.fields(cls.Config)}
    dom = get_domain(dname, **kwargs)
    assert dom.name == name and dom.config == {**dom.config, **kwargs}


def test_every_yaml_names_a_registered_domain():
    for p in (config_dir() / "domain").glob("*.yaml"):
        assert p.stem in DOMAINS
        assert load_config([f"domain={p.stem}"]).domain.name == p.stem


def test_every_train_config_field_is_a_key():
    assert list(load_config([]).train) == [f.name for f in dataclasses.fields(TrainConfig)]


def test_protein_inputs_are_domain_options():
    """``lengths`` / ``fasta`` are not core keys; the old top-level spelling still reaches the domain."""
    cfg = load_config([])
    assert not set(MOVED_TO_DOMAIN) & set(cfg)
    if "protein_backbone" in DOMAINS:
        for o in ("lengths=[50,60]", "domain.lengths=[50,60]"):
            assert _domain_kwargs(load_config(["domain=protein_backbone", o]))[1]["lengths"] == [50, 60]
        assert _domain_kwargs(load_config(["domain=protein_backbone"]))[1]["lengths"] is None  # unset: the training histogram
    if "structure_prediction" in DOMAINS:
        assert _domain_kwargs(load_config(["domain=structure_prediction", "fasta=x.fasta"]))[1]["fasta"] == "x.fasta"


def test_defaults_are_valid_choices():
    from workbench.samplers import available

    cfg = load_config([])
    assert cfg.sampler is None and cfg.domain.name in DOMAINS  # null: each domain's default_sampler
    from workbench.domain import get_domain_class

    for name in DOMAINS:
        assert get_domain_class(name).default_sampler in available(state=None), name


def test_configs_ship_inside_the_package():
    """An installed wheel finds its configs: they live in the package and the package data
    patterns of pyproject.toml cover every config and every shipped checkpoint."""
    pkg = Path(workbench.__file__).resolve().parent
    assert config_dir().resolve() == pkg / "configs"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]

    def matches(rel: str, pat: str) -> bool:  # setuptools globs: '*' stays within one folder
        a, b = rel.split("/"), pat.split("/")
        return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))

    def shipped(path: Path, package: str) -> bool:
        rel = path.relative_to(ROOT / package.replace(".", "/")).as_posix()
        return any(matches(rel, pat) for pat in data.get(package, []) + data.get("*", []))

    yamls = list((pkg / "configs").rglob("*.yaml"))
    assert yamls and all(shipped(p, "workbench") for p in yamls)
    ckpts = list((ROOT / "domains").glob("*/checkpoints/*.safetensors"))
    assert ckpts and all(shipped(p, f"domains.{p.parent.parent.name}") for p in ckpts)
