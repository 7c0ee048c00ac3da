"""``workbench`` command line: a thin layer over :mod:`workbench.runner` and
:mod:`workbench.bench` on hydra configs (``configs/``). Errors are one line naming the
problem and the valid choices; exit code 2.

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
    workbench demo out=demo

Domain plugins add commands through the entry-point group ``workbench.commands`` (e.g.
``workbench designability DIR_OR_FILES ...`` from the protein domains); ``workbench help``
lists the installed ones.
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
    """``$WORKBENCH_CONFIG_DIR`` or the repository's ``configs/`` (editable installs)."""
    env = os.environ.get("WORKBENCH_CONFIG_DIR")
    d = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not (d / "config.yaml").exists():
        raise CLIError(f"config directory not found at {d}; set WORKBENCH_CONFIG_DIR to the repository's configs/")
    return d


def _valid_keys(cfg, prefix="") -> list[str]:
    from omegaconf import DictConfig

    out = []
    for k, v in cfg.items():
        out.append(prefix + str(k))
        if isinstance(v, DictConfig) and k in ("train", "bench", "bench_peers", "domain"):
            out += _valid_keys(v, prefix + str(k) + ".")
    return out


def load_config(overrides: list[str]):
    """Compose ``configs/config.yaml`` with ``overrides``; unknown keys and domains become
    one-line :class:`CLIError`s."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf

    from .domain import available_domains

    cdir = config_dir()
    for o in overrides:
        if "=" not in o:
            raise CLIError(f"expected key=value, got {o!r} (e.g. steps=5)")
    # sampler options are free-form: options.eta=1.0 adds a key to the (empty) options dict
    overrides = ["+" + o if o.startswith(("options.", "distill.", "bench_distill.options.")) else o for o in overrides]
    with initialize_config_dir(config_dir=str(cdir), version_base=None):
        try:
            cfg = compose(config_name="config", overrides=list(overrides))
        except MissingConfigException:
            names = sorted({p.stem for p in (cdir / "domain").glob("*.yaml")} | set(available_domains()))
            dom = next((o.split("=", 1)[1] for o in overrides if o.startswith("domain=")), "?")
            raise CLIError(f"unknown domain {dom!r}; valid: {', '.join(names)}") from None
        except (ConfigCompositionException, OverrideParseException) as e:
            msg = str(e).splitlines()[0]
            bad = next((o.split("=", 1)[0].lstrip("+~") for o in overrides if f"'{o}'" in msg or o.split("=", 1)[0] in msg), None)
            if bad is not None and "domain=" not in f"{bad}=":
                base = compose(config_name="config")
                raise CLIError(f"unknown config key {bad!r}; valid: {', '.join(_valid_keys(base))}") from None
            raise CLIError(f"bad override: {msg}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


#: top-level generation inputs passed on to the domain's config when set (``lengths=[50,100]``, ``fasta=FILE``)
DOMAIN_INPUTS = ("lengths", "fasta")


def _domain_kwargs(cfg) -> tuple[str, dict]:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg.domain, resolve=True)
    name = d.pop("name")
    for k in DOMAIN_INPUTS:
        v = cfg.get(k)
        if v is not None:
            d[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return name, d


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
    from .samplers import SAMPLERS

    for name, spec in sorted(SAMPLERS.items()):
        kind = "stochastic" if spec.stochastic else f"order {spec.order}"
        print(f"{name:18s} {kind:12s} NFE(5 steps)={spec.nfe(5):<3d} {spec.reference}")
    return 0


def cmd_train(cfg) -> int:
    from omegaconf import OmegaConf

    from .runner import train_domain_teacher

    name, kw = _domain_kwargs(cfg)
    tr = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if v is not None}
    res = train_domain_teacher(name, cfg.out, train=tr, domain_config=kw, resume=bool(cfg.resume))
    print(f"trained {name} teacher for {res['steps']} steps in {res['seconds']:.1f} s -> {res['checkpoint']}")
    return 0


def cmd_distill(cfg) -> int:
    from omegaconf import OmegaConf

    from .runner import distill

    name, kw = _domain_kwargs(cfg)
    tr = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items() if v is not None}
    res = distill(name, method=cfg.method, student_steps=cfg.student_steps, out_dir=cfg.out, train=tr, teacher=cfg.teacher,
                  method_options=OmegaConf.to_container(cfg.distill, resolve=True) or {}, domain_config=kw, device=cfg.device,
                  resume=bool(cfg.resume))
    print(f"distilled {name} with {cfg.method} for {res['steps']} steps in {res['seconds']:.1f} s -> {res['generator']}")
    return 0


def cmd_generate(cfg) -> int:
    from .runner import generate

    name, kw = _domain_kwargs(cfg)
    m = generate(name, sampler=cfg.sampler, steps=cfg.steps, n=cfg.n, seed=cfg.seed, out_dir=cfg.out, teacher=cfg.teacher,
                 timesteps=_timesteps(cfg), batch_size=cfg.batch_size, device=cfg.device, n_ref=cfg.n_ref,
                 options=_options(cfg), domain_config=kw, generator=cfg.generator)
    print(f"wrote {cfg.n} samples to {cfg.out}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return 0


def cmd_evaluate(cfg) -> int:
    from .runner import evaluate_dir

    if cfg.samples is None:
        raise CLIError("evaluate needs samples=DIR (a directory written by 'workbench generate')")
    name, kw = _domain_kwargs(cfg)
    m = evaluate_dir(name, cfg.samples, domain_config=kw)
    print(", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return 0


def cmd_check(cfg) -> int:
    from .domain import check_domain, get_domain

    name, kw = _domain_kwargs(cfg)
    rep = check_domain(get_domain(name, **kw))
    print(f"domain {name!r} passes the conformance check: {rep}")
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
                            domain_config=kw, teacher=cfg.teacher, device=cfg.device)
        print(f"wrote {res['csv']}, {res['markdown']}, {res['plot']}")
        return 0
    res = bench_samplers(name, out_dir=cfg.out, domain_config=kw, nfes=list(cfg.bench.nfes), samplers=cfg.bench.samplers,
                         peers=list(cfg.bench.peers), n=cfg.bench.n, n_ref=cfg.bench.n_ref, seed=cfg.seed, teacher=cfg.teacher,
                         device=cfg.device, repeats=cfg.bench.repeats, grid=cfg.timesteps if isinstance(cfg.timesteps, str) else None)
    print(f"wrote {res['csv']}, {res['markdown']}, {res['plot']}")
    return 0


def cmd_demo(cfg) -> int:
    from .demo import run_demo

    path = run_demo(cfg.out if cfg.out != f"outputs/{cfg.domain.name}" else "demo", device=cfg.device)
    print(f"demo report: {path}")
    return 0


def plugin_commands(group: str = COMMAND_GROUP) -> dict:
    """``{name: entry point}`` of the commands installed plugins add (group ``workbench.commands``,
    or ``workbench.bench`` for ``workbench bench NAME ...`` kinds)."""
    from importlib.metadata import entry_points

    builtin = COMMANDS if group == COMMAND_GROUP else BENCH_KINDS
    return {ep.name: ep for ep in entry_points(group=group) if ep.name not in builtin}


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
        cfg = load_config(rest)
        _validate(cfg)
        if cfg.threads is not None:
            import torch

            torch.set_num_threads(int(cfg.threads))
        handler = {"domains": cmd_domains, "samplers": cmd_samplers, "train": cmd_train, "distill": cmd_distill, "generate": cmd_generate,
                   "evaluate": cmd_evaluate, "check": cmd_check, "demo": cmd_demo}.get(cmd)
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
    except Exception as e:
        from .checkpoint import CheckpointError

        if isinstance(e, CheckpointError) and not os.environ.get("WORKBENCH_DEBUG"):
            print(f"workbench: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("workbench: interrupted (checkpoints and finished outputs are intact)", file=sys.stderr)
        return 130


def _validate(cfg) -> None:
    """Cheap checks before any work starts, so bad input fails fast with valid choices."""
    from .samplers import available
    from .timegrids import available as grids

    from .distill.recipes import available_methods

    if cfg.method not in available_methods():
        raise CLIError(f"unknown distillation method {cfg.method!r}; valid: {', '.join(available_methods())}")
    if cfg.sampler not in available():
        raise CLIError(f"unknown sampler {cfg.sampler!r}; valid: {', '.join(available())}")
    if int(cfg.steps) < 1 or int(cfg.n) < 1:
        raise CLIError(f"steps and n must be positive, got steps={cfg.steps}, n={cfg.n}")
    if isinstance(cfg.timesteps, str) and cfg.timesteps not in grids():
        raise CLIError(f"unknown time grid {cfg.timesteps!r}; valid: {', '.join(grids())} or a list of times")


if __name__ == "__main__":
    sys.exit(main())
