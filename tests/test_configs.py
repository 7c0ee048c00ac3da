"""Every hydra config composes, and every domain config builds its domain."""
from pathlib import Path

import pytest

from workbench.cli import _domain_kwargs, config_dir, load_config
from workbench.domain import available_domains, get_domain

DOMAIN_CONFIGS = sorted(p.stem for p in (config_dir() / "domain").glob("*.yaml"))


def test_every_registered_domain_has_a_config_and_vice_versa():
    assert set(DOMAIN_CONFIGS) == set(available_domains())


@pytest.mark.parametrize("name", DOMAIN_CONFIGS)
def test_domain_config_composes_and_instantiates(name):
    cfg = load_config([f"domain={name}"])
    dname, kwargs = _domain_kwargs(cfg)
    assert dname == name
    dom = get_domain(dname, **kwargs)
    assert dom.name == name and dom.config == {**dom.config, **kwargs}


def test_defaults_are_valid_choices():
    from workbench.samplers import available

    cfg = load_config([])
    assert cfg.sampler in available() and cfg.domain.name in available_domains()
    assert Path(config_dir(), "config.yaml").exists()
