"""The jobs behind the CLI, as plain functions a notebook calls directly:
:func:`generate`, :func:`evaluate_dir`, :func:`train_domain_teacher`, :func:`demo`.
Every file is written atomically; reports are markdown + PNG.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from . import api
from .api import cat_batches, generation_batches
from .domain import Domain, get_domain
from .losses import Batch, tree_map
from .model import prepare_cond_all
from .utils import resolve_device, write_json, write_text

PathLike = Union[str, Path]
#: tolerance of reference solves of network teachers (float32 networks; errors of interest >= 1e-5)
REF_TOL = 1e-7


def sample_domain(domain: Domain, model, *, sampler: str = "dpm_solver_pp_2m", steps: int = 5, n: int = 64, seed: int = 0,
                  timesteps=None, batch_size: int = 256, device="cpu", cond: Any = None, progress: bool = True,
                  options: Optional[dict] = None) -> tuple[Batch, dict]:
    """Draw ``n`` samples from ``model`` in ``domain`` with a training-free sampler.
    Returns ``(samples, info)`` with ``info = {"nfe", "seconds", "timesteps"}``."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    proc = domain.process()
    parts, nfe, secs, ts = [], 0, 0.0, None
    prediction = getattr(model, "prediction", domain.prediction)
    bar = tqdm(total=n, desc=f"{domain.name}:{sampler}", disable=not progress, leave=False)
    for gb, gens in generation_batches(domain, n, seed, batch_size, cond):
        x_T = gb.x_T.to(device)
        mask = gb.mask.to(device) if gb.mask is not None else None
        c = tree_map(lambda a: a.to(device), gb.cond)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = api.run_sampler(model, proc, x_T, sampler=sampler, steps=steps, prediction=prediction, timesteps=timesteps,
                                  mask=mask, cond=c, generator=gens, **(options or {}))
        secs += time.perf_counter() - t0
        nfe, ts = out.nfe, out.timesteps
        parts.append(Batch(x=out.x.cpu(), mask=gb.mask, cond=gb.cond))
        bar.update(len(x_T))
    bar.close()
    return cat_batches(parts), {"nfe": nfe, "seconds": secs, "timesteps": [float(t) for t in ts]}


def ode_reference_error(domain: Domain, model, samples: Batch, *, seed: int, n_ref: int, device="cpu") -> Optional[float]:
    """Mean per-sample RMS error of the first ``n_ref`` samples to the float64 adaptive
    reference solution of the same model from the same noise (``None`` if ``n_ref = 0``)."""
    from .reference import reference_solve

    if n_ref <= 0:
        return None
    n_ref = min(n_ref, samples.x.shape[0])
    gb = next(iter(generation_batches(domain, n_ref, seed, n_ref, tree_map(lambda a: a[:n_ref], samples.cond))))[0]
    m64 = _Float64(model)
    ref = reference_solve(m64, domain.process(), gb.x_T.double(), prediction=getattr(model, "prediction", domain.prediction),
                          mask=gb.mask, cond=gb.cond, rtol=REF_TOL, atol=REF_TOL)
    ref = ref.x if hasattr(ref, "x") else ref
    diff = (samples.x[:n_ref].double() - ref.cpu()).flatten(1)
    return float(diff.pow(2).mean(1).sqrt().mean())


class _Float64(torch.nn.Module):
    """A float64 copy of a network for reference solves (a float32 network's round-off would
    stall an adaptive solver at tight tolerances); non-module callables get float64 inputs."""

    def __init__(self, model):
        super().__init__()
        self.prediction = getattr(model, "prediction", None)
        if isinstance(model, torch.nn.Module) and any(True for _ in model.parameters()):
            import copy

            model = copy.deepcopy(model).double().eval()
        self.model = model

    def forward(self, x, t, **kw):
        return self.model(x.double(), t.double(), **kw)


def write_report(out_dir: Path, title: str, metrics: dict, plots: list[Path], extra: str = "") -> Path:
    lines = [f"# {title}", ""]
    if extra:
        lines += [extra, ""]
    lines += ["| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines.append("")
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def generate(domain: Union[str, Domain], *, sampler: str = "dpm_solver_pp_2m", steps: int = 5, n: int = 64, seed: int = 0,
             out_dir: PathLike = "outputs/generate", teacher: Optional[str] = None, timesteps=None, batch_size: int = 256,
             device="cpu", n_ref: int = 0, options: Optional[dict] = None, domain_config: Optional[dict] = None,
             progress: bool = True, generator: Optional[str] = None) -> dict:
    """Generate ``n`` samples with the domain's teacher (or ``teacher`` checkpoint), write them
    in the domain's formats, ``metrics.json``, ``report.md`` and a PNG under ``out_dir``.
    Returns the metrics dict (with ``nfe``, ``seconds_per_sample`` and, if ``n_ref > 0``,
    ``ode_error``: RMS distance to the adaptive float64 reference solution)."""
    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    out = Path(out_dir)
    if generator is not None:  # a distilled few-step generator instead of a sampler on the teacher
        model, gmeta = load_generator(dom, generator, device=resolve_device(device))
        samples, info = sample_generator(dom, model, steps=steps, n=n, seed=seed, batch_size=batch_size, device=device,
                                         noise_scale=(options or {}).get("noise_scale"))
        sampler = f"generator:{gmeta['method']}"
        n_ref = 0  # a generator has no ODE to compare with
    else:
        model = dom.load_teacher(teacher, device=resolve_device(device))
        samples, info = sample_domain(dom, model, sampler=sampler, steps=steps, n=n, seed=seed, timesteps=timesteps,
                                      batch_size=batch_size, device=device, options=options, progress=progress)
    metrics = {k: float(v) for k, v in dom.evaluate(samples).items()}
    metrics["nfe"] = info["nfe"]
    metrics["seconds_per_sample"] = info["seconds"] / max(1, n)
    err = ode_reference_error(dom, model, samples, seed=seed, n_ref=n_ref, device=device)
    if err is not None:
        metrics["ode_error"] = err
    dom.save_samples(samples, out / "samples")
    png = dom.plot(samples, out / "samples.png")
    record = {"domain": dom.name, "domain_config": dom.config, "sampler": sampler, "steps": steps, "n": n, "seed": seed,
              "timesteps": info.get("timesteps"), "options": options or {}, "teacher": teacher or "shipped", "generator": generator,
              "metrics": metrics}
    write_json(out / "metrics.json", record)
    write_report(out, f"{dom.name}: {sampler}, {steps} steps ({info['nfe']} NFE)", metrics, [Path(png)],
                 extra=f"{n} samples, seed {seed}, teacher: {teacher or 'shipped checkpoint'}.")
    return metrics


def evaluate_dir(domain: Union[str, Domain], samples_dir: PathLike, *, out: Optional[PathLike] = None,
                 domain_config: Optional[dict] = None) -> dict:
    """Evaluate samples previously written by :func:`generate` (``samples/samples.npz``)."""
    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    d = Path(samples_dir)
    npz = d / "samples.npz" if (d / "samples.npz").exists() else d / "samples" / "samples.npz"
    if not npz.exists():
        raise FileNotFoundError(f"no samples.npz under {d}; run 'workbench generate' first or pass its out directory")
    with np.load(npz, allow_pickle=False) as f:
        x = torch.from_numpy(f["x"]).float()
        mask = torch.from_numpy(f["mask"]).float() if "mask" in f.files else None
        cond = torch.from_numpy(f["cond"]).long() if "cond" in f.files else None
    metrics = {k: float(v) for k, v in dom.evaluate(Batch(x=x, mask=mask, cond=cond)).items()}
    write_json(Path(out) if out else npz.parent.parent / "metrics_eval.json", {"domain": dom.name, "metrics": metrics})
    return metrics


def train_domain_teacher(domain: Union[str, Domain], out_dir: PathLike, *, train: Optional[dict] = None,
                         domain_config: Optional[dict] = None, resume: bool = True) -> dict:
    """Train a domain's teacher with the shared loop (resumable) and export
    ``out_dir/teacher.safetensors``."""
    from .domain import train_teacher

    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    res = train_teacher(dom, {k: v for k, v in (train or {}).items() if v is not None}, out_dir, resume=resume)
    return {"steps": res.step, "seconds": res.seconds, "final_loss": res.history[-1] if res.history else None,
            "checkpoint": str(Path(out_dir) / "teacher.safetensors")}


def distill(domain: Union[str, Domain], *, method: str = "consistency", student_steps: int = 4, out_dir: PathLike = "outputs/distill",
            train: Optional[dict] = None, method_options: Optional[dict] = None, teacher: Optional[str] = None,
            domain_config: Optional[dict] = None, resume: bool = True, device="cpu") -> dict:
    """Distil the domain's teacher with ``method`` (any of
    :func:`workbench.distill.available_methods`) into a few-step generator with the shared
    training loop (resumable from ``out_dir/state.pt``: nets, auxiliary nets, optimizers,
    EMA and RNG states) and export ``out_dir/generator.safetensors`` (the generator's
    weights, EMA where kept; the header key ``spec`` holds its ``to_config()``), which :func:`generate`,
    :func:`load_generator` and ``workbench bench distill`` use."""
    from dataclasses import replace

    from .checkpoint import save_weights
    from .distill import RecipeContext, method_options as validated_options, setup_method
    from .training import TrainConfig
    from .training import train as train_loop

    if int(student_steps) < 1:
        raise ValueError(f"student_steps must be a positive integer, got {student_steps}")
    opts = validated_options(method, method_options)  # type-checked before the teacher loads
    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    device = str(resolve_device(device))
    user = {k: v for k, v in (train or {}).items() if v is not None}
    user.setdefault("device", device)
    t_net = dom.load_teacher(teacher, device=device).eval().requires_grad_(False)
    out = Path(out_dir)
    ctx = RecipeContext(domain=dom, teacher=t_net, student_steps=int(student_steps), out_dir=out, device=device,
                        seed=int(user.get("seed", 0)), train=dict(user))
    setup = setup_method(method, ctx, opts)
    cfg = replace(replace(TrainConfig(**dom.train_defaults), **setup.train_defaults), **user)
    meta = {"kind": "generator", "method": method, "domain": dom.name, "config": dom.config, "student_steps": int(student_steps),
            "options": method_options or {}, "info": setup.info}
    # a resumed run must have the same recipe; ``info`` and the generator config are derived from it
    # (and may hold searched time steps or timings that vary in the last bits between invocations)
    settings = {k: v for k, v in meta.items() if k != "info"}
    res = train_loop(setup.objective, setup.nets, setup.data or dom.train_data("train"), cfg, out_dir=out, resume=resume,
                     trainable=setup.trainable, ema=setup.ema, meta=meta, settings=settings)
    final = {n: res.ema.get(n, m) for n, m in res.nets.items()}
    gen = setup.make_generator(final)
    path = out / "generator.safetensors"
    save_weights(path, gen, {**meta, "spec": gen.to_config(), "steps": res.step, "train_seconds": res.seconds})
    return {"steps": res.step, "seconds": res.seconds, "final_loss": res.history[-1] if res.history else None, "generator": str(path),
            "method": method}


def load_generator(domain: Domain, path: PathLike, *, device="cpu"):
    """``(generator, meta)`` from a ``generator.safetensors`` written by :func:`distill`: the
    module is rebuilt from the generator config in the header (``meta["spec"]``: its
    ``to_config()``, or the older hand-written spec, upgraded) and the domain's backbone."""
    from .checkpoint import CheckpointError, load_state_into, load_weights
    from .distill.generators import build_generator

    state, meta = load_weights(path, device=device)
    if meta.get("kind") != "generator":
        raise CheckpointError(f"{path} is not a distilled generator (written by 'workbench distill'); for a teacher use teacher=PATH")
    if meta.get("domain") != domain.name:
        raise CheckpointError(f"{path} was distilled for domain {meta.get('domain')!r}, not {domain.name!r}")
    if "spec" not in meta:
        raise CheckpointError(f"{path} has no generator config in its header; re-export it with this version's 'workbench distill'")
    domain.adopt_checkpoint_architecture(meta, state.keys())
    gen = build_generator(domain, meta["spec"])
    load_state_into(gen, state, path)
    return gen.to(device).eval(), meta


def sample_generator(domain: Domain, gen, *, steps: int, n: int, seed: int, batch_size: int = 256, device="cpu",
                     noise_scale: Optional[float] = None) -> tuple[Batch, dict]:
    """``n`` samples from a distilled few-step generator with ``steps`` steps (its own grid when
    it has one of that length, else uniform in ``t``); ``noise_scale=None`` keeps the
    generator's own default (the scale it was trained with)."""
    device = resolve_device(device)
    parts, secs = [], 0.0
    for gb, gens in generation_batches(domain, n, seed, batch_size):
        c = tree_map(lambda a: a.to(device), gb.cond)
        mask = gb.mask.to(device) if gb.mask is not None else None
        t0 = time.perf_counter()
        with torch.no_grad():
            c = prepare_cond_all(gen, c, mask=mask, batch_size=gb.x_T.shape[0]) if isinstance(gen, torch.nn.Module) else c
            kw = {} if noise_scale is None else {"noise_scale": float(noise_scale)}  # None: the generator's own default
            x = gen.generate(gb.x_T.to(device), int(steps), mask=mask, cond=c, generator=gens, **kw)
        secs += time.perf_counter() - t0
        parts.append(Batch(x=x.cpu(), mask=gb.mask, cond=gb.cond))
    return cat_batches(parts), {"nfe": int(gen.nfe(int(steps))), "seconds": secs}
