"""``workbench`` command line: a thin layer over :mod:`workbench.runner` and
:mod:`workbench.bench` on hydra configs (``workbench/configs/``, shipped in the package; a
domain's options come from its ``Config`` dataclass, registered at start-up, or a YAML there).
Errors are one line naming the problem and the valid choices; exit code 2.
``workbench COMMAND --help`` lists a command's keys with their defaults.

    workbench domains | samplers
    workbench train domain=toy out=runs/toy train.steps=2000
    workbench distill domain=toy method=consistency student_steps=4 out=runs/cd train.steps=3000
    workbench generate domain=toy generator=runs/cd/generator.safetensors steps=4 out=runs/cd_samples
    workbench generate domain=images sampler=unipc_2 steps=6 n=32 seed=1 out=runs/x
    workbench evaluate domain=images samples=runs/x
    workbench bench samplers domain=toy
    workbench bench distill domain=toy domain.teacher=exact bench_distill.methods=[consistency,dmd2] train.steps=2000
    workbench bench peers threads=1 out=runs/bench_peers
    workbench check domain=toy
    workbench generate --help
    workbench demo out=demo

Domain plugins add commands through the entry-point group ``workbench.commands`` (e.g.
``workbench designability DIR_OR_FILES ...`` from the protein domains) and benchmark kinds
through ``workbench.bench``; ``workbench help`` lists the installed ones. They parse their
options with the same grammar and ``--help`` (:func:`run_plugin_command` on an options dataclass).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

USAGE = __doc__.split("\n\n", 1)[1]
COMMANDS = ("domains", "samplers", "train", "distill", "generate", "evaluate", "bench", "check", "demo")
BENCH_KINDS = ("samplers", "distill", "peers")
#: entry-point group of plugin commands: ``name = "package.module:function"``, ``function(argv: list[str]) -> int``
COMMAND_GROUP = "workbench.commands"
#: entry-point group of plugin benchmark kinds (``workbench bench NAME key=value ...``), same function signature
BENCH_GROUP = "workbench.bench"


class CLIError(Exception):
    pass


def config_dir() -> Path:
    """``$WORKBENCH_CONFIG_DIR`` or the configs shipped in the package (``workbench/configs``)."""
    env = os.environ.get("WORKBENCH_CONFIG_DIR")
    d = Path(env) if env else Path(__file__).resolve().parent / "configs"
    if not (d / "config.yaml").exists():
        raise CLIError(f"config directory not found at {d} (no config.yaml); unset WORKBENCH_CONFIG_DIR or point it at a copy of "
                       "the package's workbench/configs")
    return d


#: groups whose keys ``unknown config key`` errors and ``--help`` list one by one
GROUPS = ("domain", "train", "bench", "bench_peers", "bench_distill")
#: former top-level keys that are now protein domain options (``domain.lengths=``, ``domain.fasta=``);
#: ``lengths=...`` / ``fasta=...`` still work as deprecated aliases
MOVED_TO_DOMAIN = ("lengths", "fasta")


def _valid_keys(cfg, prefix="") -> list[str]:
    from omegaconf import DictConfig

    out = []
    for k, v in cfg.items():
        out.append(prefix + str(k))
        if isinstance(v, DictConfig) and not prefix and k in GROUPS:
            out += _valid_keys(v, prefix + str(k) + ".")
    return out


def _default_domain(cdir: Path) -> str:
    from omegaconf import OmegaConf

    for item in OmegaConf.load(cdir / "config.yaml").get("defaults", []):
        if isinstance(item, dict) or OmegaConf.is_dict(item):
            if "domain" in item:
                return str(item["domain"])
    return "toy"


def register_domain_config(name: str, cls: type) -> None:
    """Register domain ``name`` as the hydra config ``domain=<name>``: its ``Config`` dataclass
    (plus ``name``) when it has one, else just ``{"name": name}``."""
    import dataclasses

    from hydra.core.config_store import ConfigStore

    conf = getattr(cls, "Config", None)
    if conf is not None:
        if not dataclasses.is_dataclass(conf):
            raise CLIError(f"domain {name!r}: Config must be a dataclass, got {conf!r}")
        node = dataclasses.make_dataclass(f"{conf.__name__}WithName", [("name", str, dataclasses.field(default=name))], bases=(conf,))
    else:
        node = {"name": name}
    ConfigStore.instance().store(group="domain", name=name, node=node)


def _dict_options(cls: type) -> set:
    """Names of the dict-valued options of a domain's ``Config`` (overridden with ``++``)."""
    import dataclasses

    conf = getattr(cls, "Config", None)
    if conf is None:
        return set()
    out = set()
    for f in dataclasses.fields(conf):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(default, dict):
            out.add(f.name)
    return out


def _prepare(overrides: list[str], cdir: Path) -> tuple[list[str], str]:
    """Check the ``key=value`` form, map deprecated keys, register the selected domain's
    config when it has no YAML; returns the overrides for hydra and the domain name."""
    from .domain import available_domains, get_domain_class

    out = []
    for o in overrides:
        if "=" not in o:
            raise CLIError(f"expected key=value, got {o!r} (e.g. steps=5)")
        key = o.split("=", 1)[0]
        if not key.lstrip("+~").strip():
            raise CLIError(f"empty key in {o!r}; expected key=value (e.g. steps=5)")
        if key in MOVED_TO_DOMAIN:  # deprecated alias of domain.lengths= / domain.fasta=
            o = "domain." + o
        out.append(o)
    dom = next((o.split("=", 1)[1] for o in reversed(out) if o.split("=", 1)[0] == "domain"), None) or _default_domain(cdir)
    yamls = {p.stem for p in (cdir / "domain").glob("*.yaml")}
    extra = set()
    if dom not in yamls:
        registry = available_domains()
        if dom not in registry:
            raise CLIError(f"unknown domain {dom!r}; valid: {', '.join(sorted(yamls | set(registry)))}")
        try:
            cls = get_domain_class(dom)
        except Exception as e:  # a broken plugin: one line naming it
            raise CLIError(f"domain {dom!r} failed to load: {type(e).__name__}: {e}") from None
        register_domain_config(dom, cls)
        extra = _dict_options(cls)
    # free-form dicts: sampler / method options add keys (options.eta=1.0), and so do dict-valued domain options
    free = ("options.", "distill.", "bench_distill.options.")
    res = []
    for o in out:
        key = o.split("=", 1)[0]
        if o.startswith(free):
            o = "+" + o
        elif any(key == f"domain.{k}" or key.startswith(f"domain.{k}.") for k in extra):
            o = "++" + o
        res.append(o)
    return res, dom


def load_config(overrides: list[str]):
    """Compose ``config.yaml`` (:func:`config_dir`) with ``overrides``; unknown keys and
    domains become one-line :class:`CLIError`s."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf

    cdir = config_dir()
    overrides, dom = _prepare(list(overrides), cdir)
    with initialize_config_dir(config_dir=str(cdir), version_base=None):
        try:
            cfg = compose(config_name="config", overrides=list(overrides))
        except MissingConfigException:
            raise CLIError(f"no config for domain {dom!r} under {cdir / 'domain'}") from None
        except (ConfigCompositionException, OverrideParseException) as e:
            msg = str(e).splitlines()[0]
            if isinstance(e, OverrideParseException):  # the grammar: name the token it could not parse
                _raise_unparsable(overrides, msg)
            bad = next((o.split("=", 1)[0].lstrip("+~") for o in overrides
                        if f"'{o}'" in msg or f"'{o.split('=', 1)[0].lstrip('+~')}'" in msg), None)
            if bad is None:  # hydra quotes some messages ("Error merging override domain.x=abc") without quotes
                bad = next((o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o and o in msg), None)
            if bad is not None and bad != "domain":
                valid = _valid_keys(compose(config_name="config", overrides=[f"domain={dom}"]))
                if bad not in valid:
                    raise CLIError(f"unknown config key {bad!r}; valid: {', '.join(valid)}") from None
                cause = e.__cause__ if e.__cause__ is not None else e
                detail = str(cause).strip().splitlines()[0] if str(cause).strip() else msg
                raise CLIError(f"bad value for {bad}: {detail}") from None
            raise CLIError(f"bad override: {msg}") from None
    _check_interpolations(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


#: what a value may look like on the command line (hydra's override grammar)
VALUE_FORMS = "a number, true/false, null, text, 'quoted text', or a list [1,2]"


def _raise_unparsable(overrides: list[str], msg: str) -> None:
    """One-line :class:`CLIError` naming the first override that hydra's grammar cannot parse
    (e.g. ``steps=[``), with the valid forms of a value; returns if each parses alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException as e:
            key, value = (o.split("=", 1) + [""])[:2]
            key = key.lstrip("+~")
            detail = (str(e).strip().splitlines() or [msg])[0]
            try:
                parser.parse_overrides([f"{key}=1"])
            except OverrideParseException:  # the key itself is malformed
                raise CLIError(f"bad key {key!r} in {o!r} ({detail}); expected key=value with a key such as steps, "
                               f"train.lr or domain.<option>") from None
            raise CLIError(f"bad value for {key}: cannot parse {value!r} ({detail}); a value is {VALUE_FORMS}") from None
        except Exception:  # noqa: BLE001 - not a grammar error; the caller reports it
            continue


def _check_interpolations(cfg) -> None:
    """Resolve every ``${...}`` once (a check; ``cfg`` is unchanged): one that cannot be resolved
    (``steps=${x}``) is a one-line :class:`CLIError` naming its key, before any work."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        detail = " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())
        raise CLIError(f"bad value for {key}: {detail}; an interpolation ${{...}} must name an existing key "
                       f"(e.g. out=outputs/${{domain.name}}), else pass {VALUE_FORMS}") from None


def _domain_kwargs(cfg) -> tuple[str, dict]:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg.domain, resolve=True)
    name = d.pop("name")
    return name, d


def _train_overrides(cfg) -> dict:
    """The ``train.*`` keys the user set; ``seed`` and ``device`` default to the top-level ones."""
    from omegaconf import OmegaConf

    from .utils import resolve_device

    tr = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if v is not None}
    tr.setdefault("seed", int(cfg.seed))
    tr.setdefault("device", str(resolve_device(cfg.device)))
    tr.setdefault("progress", bool(cfg.progress))
    return tr


def _options(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.options, resolve=True) or {}


def _timesteps(cfg):
    from omegaconf import ListConfig

    ts = cfg.timesteps
    return list(ts) if isinstance(ts, ListConfig) else ts


def cmd_domains(_cfg) -> int:
    from .domain import available_domains

    for name, obj in available_domains().items():
        try:
            cls = obj if isinstance(obj, type) else obj.load()
            print(f"{name:20s} {cls.description}")
        except Exception as e:  # a broken plugin must not hide the others
            print(f"{name:20s} (failed to load: {type(e).__name__}: {e})")
    return 0


def cmd_samplers(_cfg) -> int:
    from .samplers import REGISTRY

    for name, spec in sorted(REGISTRY.items()):
        kind = "stochastic" if spec.stochastic else f"order {spec.order}"
        needs = f" [needs: {', '.join(spec.needs)}]" if spec.needs else ""
        print(f"{name:18s} {spec.state:10s} {kind:12s} NFE(5 steps)={spec.nfe(5):<3d} {spec.reference}{needs}")
    from .samplers.base import LOADERS

    if LOADERS:
        print(f"trained sampler files: {', '.join(p + ':PATH' for p in sorted(LOADERS))} (e.g. from `workbench distill method=lsd`)")
    return 0


def cmd_train(cfg) -> int:
    from .runner import train_domain_teacher

    name, kw = _domain_kwargs(cfg)
    res = train_domain_teacher(name, cfg.out, train=_train_overrides(cfg), domain_config=kw, resume=bool(cfg.resume))
    print(f"trained {name} teacher for {res['steps']} steps in {res['seconds']:.1f} s -> {res['checkpoint']}")
    return 0


def cmd_distill(cfg) -> int:
    from omegaconf import OmegaConf

    from .runner import distill

    name, kw = _domain_kwargs(cfg)
    tr = _train_overrides(cfg)
    res = distill(name, method=cfg.method, student_steps=cfg.student_steps, out_dir=cfg.out, train=tr, teacher=cfg.teacher,
                  method_options=OmegaConf.to_container(cfg.distill, resolve=True) or {}, domain_config=kw, device=tr["device"],
                  resume=bool(cfg.resume))
    print(f"distilled {name} with {cfg.method} for {res['steps']} steps in {res['seconds']:.1f} s -> {res['generator']}")
    return 0


def cmd_generate(cfg) -> int:
    from .runner import generate

    name, kw = _domain_kwargs(cfg)
    m = generate(name, sampler=cfg.sampler, steps=cfg.steps, n=cfg.n, seed=cfg.seed, out_dir=cfg.out, teacher=cfg.teacher,
                 timesteps=_timesteps(cfg), batch_size=cfg.batch_size, device=cfg.device, n_ref=cfg.n_ref,
                 options=_options(cfg), domain_config=kw, generator=cfg.generator, progress=bool(cfg.progress))
    print(f"wrote samples to {cfg.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return 0


def cmd_evaluate(cfg, explicit_domain: bool = True) -> int:
    """Without ``domain=`` the domain (and its options) recorded in the samples' ``metrics.json``
    is used; a ``domain=`` that differs from the recorded one is an error."""
    from .runner import evaluate_dir

    if cfg.samples is None:
        raise CLIError("evaluate needs samples=DIR (a directory written by 'workbench generate')")
    name, kw = _domain_kwargs(cfg)
    m = evaluate_dir(name if explicit_domain else None, cfg.samples, domain_config=kw if explicit_domain else None,
                     progress=bool(cfg.progress))
    print(", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return 0


def cmd_check(cfg) -> int:
    """The conformance check, then what the domain supports: optional capabilities, samplers
    (each run for 2 steps) and distillation methods (those whose required capabilities it has)."""
    from .domain import OPTIONAL_CAPABILITIES, check_domain, get_domain, supported_samplers

    name, kw = _domain_kwargs(cfg)
    dom = get_domain(name, **kw)
    teacher = cfg.teacher if cfg.teacher is not None else dom.default_teacher_path() is not None
    rep = check_domain(dom, teacher=teacher)
    print(f"domain {name!r} passes the conformance check: {rep}")
    if teacher is False:
        print("  (no shipped teacher: checked an untrained backbone; pass teacher=PATH to check a checkpoint)")
    caps = dom.capabilities()
    print(f"capabilities: {', '.join(caps) or '(none)'}"
          + (f"; not implemented: {', '.join(c for c in OPTIONAL_CAPABILITIES if c not in caps)}" if len(caps) < len(OPTIONAL_CAPABILITIES) else ""))
    net = dom.load_teacher(None if teacher is True else teacher) if teacher is not False else dom.build_backbone().eval()
    samp = supported_samplers(dom, net)
    ok = [k for k, v in samp.items() if v is None]
    print(f"samplers ({len(ok)} of {len(samp)}): {', '.join(ok)}")
    for k, v in samp.items():
        if v is not None:
            print(f"  not supported: {k} ({v})")
    from .distill.api import METHODS

    meth = {m: METHODS[m].missing(dom) for m in sorted(METHODS)}  # the process's state, then optional capabilities
    ok = [m for m, missing in meth.items() if not missing]
    print(f"distillation methods ({len(ok)} of {len(meth)}): {', '.join(ok) or '(none)'}")
    for m, missing in meth.items():
        if missing:
            print(f"  not supported: {m} (needs {', '.join(missing)})")
    return 0


def cmd_bench(cfg, kind: str) -> int:
    from omegaconf import OmegaConf

    from .bench import bench_samplers

    name, kw = _domain_kwargs(cfg)
    if kind == "peers":
        from .bench_peers import bench_peers

        b = OmegaConf.to_container(cfg.bench_peers, resolve=True)
        res = bench_peers(out_dir=cfg.out if cfg.out != f"outputs/{cfg.domain.name}" else "outputs/bench_peers", seed=cfg.seed, **b)
        print(f"wrote {res['csv']}, {res['markdown']}, {res['json']}")
        return 0
    if kind == "distill":
        from .bench_distill import bench_distill

        b = cfg.bench_distill
        methods = None if b.methods in (None, "all") else list(b.methods)
        tr = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if v is not None}
        res = bench_distill(name, methods=methods, student_steps=list(b.student_steps), teacher_nfes=list(b.teacher_nfes), out_dir=cfg.out,
                            train=tr, method_options=OmegaConf.to_container(b.options, resolve=True) or {}, n=b.n, seed=cfg.seed,
                            domain_config=kw, teacher=cfg.teacher, device=cfg.device, progress=bool(cfg.progress))
        print(f"wrote {res['csv']}, {res['markdown']}, {res['plot']}")
        return 0
    samp = cfg.bench.samplers if isinstance(cfg.bench.samplers, str) else list(cfg.bench.samplers)
    res = bench_samplers(name, out_dir=cfg.out, domain_config=kw, nfes=None if cfg.bench.nfes is None else list(cfg.bench.nfes), samplers=samp,
                         peers=list(cfg.bench.peers), n=cfg.bench.n, n_ref=cfg.bench.n_ref, seed=cfg.seed, teacher=cfg.teacher,
                         device=cfg.device, repeats=cfg.bench.repeats, grid=cfg.timesteps if isinstance(cfg.timesteps, str) else None,
                         progress=bool(cfg.progress))
    print(f"wrote {res['csv']}, {res['markdown']}, {res['plot']}")
    return 0


def cmd_demo(cfg) -> int:
    from .demo import run_demo

    path = run_demo(cfg.out if cfg.out != f"outputs/{cfg.domain.name}" else "demo", device=cfg.device)
    print(f"demo report: {path}")
    return 0


#: what each command does and the config keys it reads (``workbench COMMAND --help``)
COMMAND_HELP = {
    "domains": ("list the installed domains", ()),
    "samplers": ("list the training-free samplers", ()),
    "train": ("train the domain's teacher with the shared loop (resumable) -> out/teacher.safetensors",
              ("domain", "out", "resume", "seed", "device", "threads", "train")),
    "distill": ("distil the teacher into a few-step generator -> out/generator.safetensors",
                ("domain", "method", "student_steps", "teacher", "out", "resume", "seed", "device", "threads", "distill", "train")),
    "generate": ("sample with a training-free sampler on the teacher (or a distilled generator), write samples, metrics, report",
                 ("domain", "sampler", "steps", "n", "seed", "out", "teacher", "generator", "timesteps", "batch_size", "device",
                  "threads", "n_ref", "options", "progress")),
    "evaluate": ("evaluate samples written by generate (domain= defaults to the one recorded there)", ("domain", "samples", "progress")),
    "check": ("conformance check of a domain, and the capabilities, samplers and distillation methods it supports",
              ("domain", "teacher", "threads")),
    "demo": ("few-step generation in every installed domain -> out/README.md", ("out", "device", "threads")),
    "bench samplers": ("every sampler at several NFEs against the reference ODE solution",
                       ("domain", "out", "seed", "teacher", "device", "threads", "timesteps", "bench", "progress")),
    "bench distill": ("every distillation method at several student steps next to the teacher",
                      ("domain", "out", "seed", "teacher", "device", "threads", "train", "bench_distill", "progress")),
    "bench peers": ("workbench samplers against diffusers and k-diffusion on an exact Gaussian mixture",
                    ("out", "seed", "threads", "bench_peers")),
}


def _yaml_comments(path: Path) -> dict:
    """``{"key" | "group.key": comment}`` of a YAML file's ``key: value  # comment`` lines."""
    import re

    out, group = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        indent, key, value, comment = m.groups()
        if not indent:
            group = key if not value else None
            full = key
        elif group is not None:
            full = f"{group}.{key}"
        else:
            continue
        if comment:
            out[full] = comment
    return out


def command_help(cmd: str, cfg) -> str:
    """``workbench CMD --help``: what the command does and its keys with their current values
    (defaults unless overridden on the same command line) and descriptions."""
    import dataclasses

    from omegaconf import OmegaConf

    from .domain import get_domain_class

    what, keys = COMMAND_HELP[cmd]
    cdir = config_dir()
    notes = _yaml_comments(cdir / "config.yaml")
    dname = cfg.domain.name
    ypath = cdir / "domain" / f"{dname}.yaml"
    if ypath.exists():
        notes.update({f"domain.{k}": v for k, v in _yaml_comments(ypath).items()})
    else:
        conf = getattr(get_domain_class(dname), "Config", None)
        for f in dataclasses.fields(conf) if conf is not None else ():
            if f.metadata.get("help"):
                notes[f"domain.{f.name}"] = f.metadata["help"]
    effective = {}
    if "train" in keys:  # what a null train.* key means for this domain
        try:
            from .training import TrainConfig

            name, kw = _domain_kwargs(cfg)
            effective = dataclasses.asdict(TrainConfig(**get_domain_class(name)(**kw).train_defaults))
            effective.update(seed=cfg.seed, device=cfg.device)
        except Exception:  # noqa: BLE001 - help must not fail on a domain that cannot be built here
            effective = {}
    lines = [f"workbench {cmd} [key=value ...]: {what}", ""]
    if keys:
        lines.append("keys (current value; `workbench " + cmd + " domain=NAME --help` shows that domain's keys):")
    for k in keys:
        v = cfg[k]
        if OmegaConf.is_dict(v) and k in GROUPS:
            lines.append(f"  {k}.*" + (f"  # {notes[k]}" if k in notes else ""))
            for sk, sv in v.items():
                val = OmegaConf.to_container(sv, resolve=True) if OmegaConf.is_config(sv) else sv
                dflt = f" (default {effective[sk]!r})" if k == "train" and val is None and sk in effective else ""
                lines.append(f"    {k}.{sk}={val!r}{dflt}" + (f"  # {notes[f'{k}.{sk}']}" if f"{k}.{sk}" in notes else ""))
            continue
        val = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        lines.append(f"  {k}={dname if k == 'domain' else val!r}" + (f"  # {notes[k]}" if k in notes else ""))
    if cmd == "distill":
        from .distill import available_methods, describe_methods

        lines += ["", f"methods: {', '.join(available_methods())}", f"options of method={cfg.method} (distill.<option>=...):",
                  describe_methods(cfg.method)]
    if cmd == "generate":
        from .samplers import available

        lines += ["", f"samplers: {', '.join(available())}"]
    return "\n".join(lines)


def plugin_commands(group: str = COMMAND_GROUP) -> dict:
    """``{name: entry point}`` of the commands installed plugins add (group ``workbench.commands``,
    or ``workbench.bench`` for ``workbench bench NAME ...`` kinds)."""
    from importlib.metadata import entry_points

    builtin = COMMANDS if group == COMMAND_GROUP else BENCH_KINDS
    return {ep.name: ep for ep in entry_points(group=group) if ep.name not in builtin}


# -- plugin commands: the same key=value grammar and --help as the core commands -----------------
def parse_options(argv, options: type, command: str) -> dict:
    """``key=value`` arguments of a plugin command -> ``{key: value}`` for every field of the
    dataclass ``options`` (its defaults where not given). Values follow hydra's override grammar,
    as in the core commands (``[a,b]`` lists, also ``a,b`` or one item for a list option; ``null``;
    quotes), and OmegaConf checks them against the field types. Bad input raises a one-line
    ValueError naming the valid keys."""
    import dataclasses
    import typing

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    keys = [f.name for f in dataclasses.fields(options)]
    hints = typing.get_type_hints(options)
    cfg = OmegaConf.structured(options)
    parser = OverridesParser.create()
    for a in argv:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            raise ValueError(f"{command}: expected key=value, got {a!r}; valid keys: {', '.join(keys)}")
        if key not in keys:
            raise ValueError(f"unknown {command} option {key!r}; valid: {', '.join(keys)}")
        try:
            ov = parser.parse_override(a)
        except HydraException as e:
            raise ValueError(f"option {key}={raw!r}: {str(e).strip().splitlines()[0]}") from None
        value, is_list = ov.value(), _list_item_type(hints[key]) is not None
        if ov.is_sweep_override():
            if not (isinstance(value, ChoiceSweep) and is_list):
                raise ValueError(f"option {key}={raw!r}: expected one {_type_words(hints[key])} value")
            value = list(value.list)
        elif is_list and value is not None and not isinstance(value, list):
            value = [value]  # a list option given one item
        try:
            cfg[key] = value
        except OmegaConfBaseException:
            raise ValueError(f"option {key}={raw!r}: expected {_type_words(hints[key])}") from None
    return OmegaConf.to_container(cfg)


def _list_item_type(tp):
    """The item type of ``list[T]`` / ``Optional[list[T]]`` (``None`` if not a list type)."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else [tp]
    for a in args:
        if typing.get_origin(a) in (list, typing.List) or a is list:
            return (typing.get_args(a) or (str,))[0]
    return None


def _type_words(tp) -> str:
    import typing

    item = _list_item_type(tp)
    if item is not None:
        return f"a list of {getattr(item, '__name__', item)} values like [a,b]"
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else [tp]
    if args and args[0] is bool:
        return "true or false"
    return " or ".join(getattr(a, "__name__", str(a)) for a in args) + (" or null" if len(args) < len(typing.get_args(tp)) else "")


def options_help(command: str, what: str, options: type, values: Optional[dict] = None, *, usage: str = "[key=value ...]",
                 doc: str = "") -> str:
    """``workbench COMMAND --help`` of a plugin command, in the core commands' form: what it does
    and each key of the dataclass ``options`` with its current value (``values``, else the
    default) and its ``metadata["help"]``; then ``doc``."""
    import dataclasses

    vals = values if values is not None else dataclasses.asdict(options())
    lines = [f"workbench {command} {usage}: {what}", "", "keys (current value):"]
    for f in dataclasses.fields(options):
        note = f.metadata.get("help")
        lines.append(f"  {f.name}={vals[f.name]!r}" + (f"  # {note}" if note else ""))
    return "\n".join(lines + (["", doc.strip()] if doc else []))


def run_plugin_command(command: str, argv, options: type, run, *, what: str, usage: str = "[key=value ...]", doc: str = "",
                       split_inputs=None) -> int:
    """The ``main(argv) -> exit code`` of a plugin command (entry-point groups ``workbench.commands``
    and ``workbench.bench``) with the core commands' conventions: ``--help`` (or ``help``) lists
    the keys with their current values; :func:`parse_options` reads the ``key=value`` options of
    the dataclass ``options``; a ``threads`` option (when set) sets torch's threads; ``run(opts)``
    (``run(inputs, opts)`` when ``split_inputs(argv) -> (inputs, rest)`` separates positional
    inputs) returns the text to print. Bad input: one line ``workbench COMMAND: error: ...`` on
    stderr, exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    helpflag = (split_inputs is not None and not argv) or (argv[:1] == ["help"]) or any(a in ("-h", "--help") for a in argv)
    rest = [a for a in argv if a not in ("-h", "--help", "help")] if helpflag else argv
    try:
        inputs, rest = split_inputs(rest) if split_inputs is not None else (None, rest)
        opts = parse_options(rest, options, command)
        if helpflag:
            print(options_help(command, what, options, opts, usage=usage, doc=doc))
            return 0
        if opts.get("threads") is not None:
            if int(opts["threads"]) < 1:
                raise ValueError(f"threads must be >= 1, got {opts['threads']}")
            import torch

            torch.set_num_threads(int(opts["threads"]))
        msg = run(opts) if split_inputs is None else run(inputs, opts)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:  # incl. CheckpointError (a RuntimeError)
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"workbench {command}: error: {text}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. ENOSPC while writing outputs
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        print(f"workbench {command}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    if msg:
        print(msg)
    return 0


def os_error_line(e: OSError) -> str:
    """One line for an ``OSError`` (a full disk, a permission refused, ...): the OS's words, the
    error's name and the path, e.g. ``No space left on device (ENOSPC): runs/x/samples/samples.npz``."""
    import errno

    what = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    code = f" ({errno.errorcode[e.errno]})" if isinstance(e.errno, int) and e.errno in errno.errorcode else ""
    where = "".join(f": {f}" for f in (e.filename, e.filename2) if f is not None)
    return " ".join(f"{what}{code}{where}".split())


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        plugins = plugin_commands()
        print(USAGE + (f"\nPlugin commands: {', '.join(sorted(plugins))}" if plugins else ""))
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd not in COMMANDS:
            plugins = plugin_commands()
            if cmd in plugins:
                return int(plugins[cmd].load()(rest) or 0)
            raise CLIError(f"unknown command {cmd!r}; valid: {', '.join(list(COMMANDS) + sorted(plugins))}")
        kind = None
        if cmd == "bench":
            plugins = plugin_commands(BENCH_GROUP)
            if rest and rest[0] in plugins:
                return int(plugins[rest[0]].load()(rest[1:]) or 0)
            if not rest or rest[0] not in BENCH_KINDS:
                raise CLIError(f"bench needs a kind; valid: {', '.join(list(BENCH_KINDS) + sorted(plugins))}")
            kind, rest = rest[0], rest[1:]
        helpflag = any(a in ("-h", "--help") for a in rest)
        cfg = load_config([a for a in rest if a not in ("-h", "--help")])
        if helpflag:
            print(command_help(f"bench {kind}" if kind else cmd, cfg))
            return 0
        _validate(cfg, cmd, kind)
        if cfg.threads is not None:
            import torch

            torch.set_num_threads(int(cfg.threads))
        handler = {"domains": cmd_domains, "samplers": cmd_samplers, "train": cmd_train, "distill": cmd_distill, "generate": cmd_generate,
                   "evaluate": cmd_evaluate, "check": cmd_check, "demo": cmd_demo}.get(cmd)
        with _sigterm_as_interrupt():
            if cmd == "evaluate":
                return cmd_evaluate(cfg, explicit_domain=any(a.split("=", 1)[0].lstrip("+~") == "domain" for a in rest))
            return cmd_bench(cfg, kind) if cmd == "bench" else handler(cfg)
    except CLIError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, KeyError) as e:
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"workbench: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. ENOSPC while writing outputs (atomic writes: the earlier files stay intact)
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        print(f"workbench: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        from .checkpoint import CheckpointError
        from .utils import OutputDirInUse

        if isinstance(e, (CheckpointError, OutputDirInUse)) and not os.environ.get("WORKBENCH_DEBUG"):
            print(f"workbench: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see _sigterm_as_interrupt)
        from .training import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):  # it says which checkpoint was saved, if any
            print(f"workbench: {e}", file=sys.stderr)
        else:
            print("workbench: interrupted; the unfinished work was not saved (files written so far are complete, "
                  "none is half-written)", file=sys.stderr)
        return 130


class _sigterm_as_interrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so a killed run
    reports what it saved; the previous handler comes back afterwards (main thread only)."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt

            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def check_device(device, key: str = "device") -> None:
    """One-line :class:`CLIError` unless ``device`` names a device this machine has
    (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``; ``None`` = default)."""
    import torch

    if device is None or device == "auto":
        return
    try:
        d = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown {key} {device!r}; valid: cpu, cuda, cuda:N, auto") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{key}={device} but CUDA is not available on this machine; valid here: cpu, auto")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise CLIError(f"{key}={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"{key}={device} but MPS is not available on this machine; valid here: cpu, auto")
    elif d.type != "cpu":
        raise CLIError(f"unsupported {key} {device!r}; valid: cpu, cuda, cuda:N, auto")


#: integer keys: ``{key: (lowest valid value, may be null)}`` (``train.*`` keys are null = the domain's default)
INT_KEYS = {"steps": (1, False), "n": (1, True), "seed": (0, False), "batch_size": (1, False), "n_ref": (0, False),
            "threads": (1, True), "student_steps": (1, False), "train.steps": (1, True), "train.batch_size": (1, True),
            "train.warmup": (0, True), "train.ckpt_every": (1, True), "train.log_every": (1, True), "train.seed": (0, True),
            "bench.n": (1, False), "bench.n_ref": (0, False), "bench.repeats": (1, False), "bench_distill.n": (1, False)}
#: number keys: ``{key: (must be > 0, may be null)}``
FLOAT_KEYS = {"train.lr": (True, True), "train.weight_decay": (False, True), "train.ema_decay": (False, True),
              "train.ckpt_minutes": (True, True)}
BOOL_KEYS = ("resume", "progress", "train.progress")
#: commands whose ``out=`` is written (checked before any work)
WRITES_OUT = ("train", "distill", "generate", "bench", "demo")


def _lookup(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None)


def _check_types(cfg) -> None:
    """One-line errors naming the key and the valid range for integer, number and boolean keys."""
    for key, (lo, nullable) in INT_KEYS.items():
        v = _lookup(cfg, key)
        if v is None and nullable:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            rng = f"an integer >= {lo}" + (" or null" if nullable else "")
            raise CLIError(f"{key} must be {rng}, got {v!r}")
    for key, (positive, nullable) in FLOAT_KEYS.items():
        v = _lookup(cfg, key)
        if v is None and nullable:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (v <= 0 if positive else v < 0):
            raise CLIError(f"{key} must be a number {'> 0' if positive else '>= 0'}" + (" or null" if nullable else "") + f", got {v!r}")
    for key in BOOL_KEYS:
        v = _lookup(cfg, key)
        if not isinstance(v, bool) and not (v is None and key.startswith("train.")):
            raise CLIError(f"{key} must be true or false, got {v!r}")


def _validate(cfg, cmd: str = "", kind=None) -> None:
    """Cheap checks before any work starts, so bad input fails fast with valid choices."""
    from .distill import available_methods
    from .timegrids import available as grids
    from .utils import check_output_dir

    check_device(cfg.device)
    check_device(cfg.train.device, "train.device")
    if cfg.method not in available_methods():
        raise CLIError(f"unknown distillation method {cfg.method!r}; valid: {', '.join(available_methods())}")
    if cfg.sampler is not None:  # continuous, discrete (which fit the domain's process: checked when it runs) or a sampler file
        from .checkpoint import CheckpointError
        from .samplers import get as get_sampler

        try:
            get_sampler(cfg.sampler)
        except (ValueError, CheckpointError) as e:
            raise CLIError(str(e)) from None
    _check_types(cfg)
    if cmd in WRITES_OUT and not (cmd == "bench" and kind == "peers"):
        try:
            check_output_dir(cfg.out)
        except ValueError as e:
            raise CLIError(str(e)) from None
    if isinstance(cfg.timesteps, str) and cfg.timesteps not in grids():
        raise CLIError(f"unknown time grid {cfg.timesteps!r}; valid: {', '.join(grids())} or a list of times "
                       f"(e.g. timesteps=[1.0,0.5,0.0])")


if __name__ == "__main__":
    sys.exit(main())
