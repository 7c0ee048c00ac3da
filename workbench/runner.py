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
from .api import cat_batches, generation_batches, length_buckets
from .domain import Domain, get_domain
from .losses import Batch, tree_map
from .model import prepare_cond_all
from .utils import OutputDir, resolve_device, show_progress, write_json, write_text

PathLike = Union[str, Path]
#: tolerance of reference solves of network teachers (float32 networks; errors of interest >= 1e-5)
REF_TOL = 1e-7


def sample_domain(domain: Domain, model, *, sampler: str = "dpm_solver_pp_2m", steps: int = 5, n: int = 64, seed: int = 0,
                  timesteps=None, batch_size: int = 256, device="cpu", cond: Any = None, progress: bool = True,
                  options: Optional[dict] = None, bucket: Optional[bool] = None) -> tuple[Batch, dict]:
    """Draw ``n`` samples from ``model`` in ``domain`` with a training-free sampler (under
    ``torch.no_grad()``). Returns ``(samples, info)`` with ``info = {"nfe", "seconds", "timesteps"}``.

    With ``bucket=None`` (default: the domain's ``bucket_lengths``), a batch whose mask has
    varying lengths is sampled in groups of similar length (:func:`~workbench.api.length_buckets`),
    each cut to its own longest row, and put back in order (zero padding): the same samples as
    padding every row to the maximum, up to float round-off, at less cost. Only deterministic
    runs are grouped (a sampler that draws noise would draw it at another shape)."""
    from tqdm.auto import tqdm

    from .samplers import get

    device = resolve_device(device)
    proc = domain.process()
    parts, nfe, secs, ts = [], 0, 0.0, None
    prediction = getattr(model, "prediction", domain.prediction)
    bucket = getattr(domain, "bucket_lengths", False) if bucket is None else bool(bucket)
    spec = get(sampler)
    bucket = bucket and not spec.stochastic
    if "reward" in spec.needs and "reward" not in (options or {}):  # reward-guided samplers (SVDD) get the domain's reward
        options = {**(options or {}), "reward": domain_reward(domain)}
    bar = tqdm(total=n, desc=f"{domain.name}:{sampler}", disable=not progress, leave=False)
    for gb, gens in generation_batches(domain, n, seed, batch_size, cond):
        t0 = time.perf_counter()

        def run(x_T, mask, c, g):
            with torch.no_grad():
                return api.run_sampler(model, proc, x_T.to(device), sampler=sampler, steps=steps, prediction=prediction,
                                       timesteps=timesteps, mask=None if mask is None else mask.to(device),
                                       cond=tree_map(lambda a: a.to(device), c), generator=g, **(options or {}))

        groups = _prefix_groups(gb.mask) if bucket else None
        if groups is not None:
            states = [g.get_state() for g in gens]
            x = torch.zeros_like(gb.x_T)
            for idx in groups:
                L = int(gb.mask[idx].sum(1).max())
                out = run(gb.x_T[idx, :L], gb.mask[idx, :L], tree_map(lambda a: a[idx], gb.cond), [gens[i] for i in idx.tolist()])
                x[idx, :L] = out.x.to(x.dtype).cpu()
            if any(not torch.equal(g.get_state(), st) for g, st in zip(gens, states)):  # it drew noise: redo unbucketed
                for g, st in zip(gens, states):
                    g.set_state(st)
                out = run(gb.x_T, gb.mask, gb.cond, gens)
                x = out.x.cpu()
        else:
            out = run(gb.x_T, gb.mask, gb.cond, gens)
            x = out.x.cpu()
        secs += time.perf_counter() - t0
        nfe, ts = out.nfe, out.timesteps
        parts.append(Batch(x=x, mask=gb.mask, cond=gb.cond))
        bar.update(len(gb.x_T))
    bar.close()
    return cat_batches(parts), {"nfe": nfe, "seconds": secs, "timesteps": [float(t) for t in ts]}


def _prefix_groups(mask) -> Optional[list]:
    """:func:`~workbench.api.length_buckets` of a ``[B, N]`` mask whose rows are prefixes
    (valid entries first); ``None`` when there is no mask, it is not of that form, or every
    row is full length."""
    if mask is None or mask.ndim != 2:
        return None
    lengths = (mask > 0.5).sum(1)
    prefix = (torch.arange(mask.shape[1])[None, :] < lengths[:, None]).to(mask.dtype)
    if not torch.equal(prefix, mask) or bool((lengths == mask.shape[1]).all()):
        return None  # not prefixes, or nothing to cut
    return length_buckets(lengths)


def ode_reference_error(domain: Domain, model, samples: Batch, *, seed: int, n_ref: int, device="cpu",
                        progress: bool = False) -> Optional[float]:
    """Mean per-sample RMS error of the first ``n_ref`` samples to the float64 adaptive
    reference solution of the same model from the same noise (``None`` if ``n_ref = 0``).
    Continuous processes only (a discrete process has no ODE: a one-line ``ValueError``)."""
    from .reference import reference_solve

    if n_ref <= 0:
        return None
    if not getattr(domain.process(), "continuous", True):
        raise ValueError(f"n_ref={n_ref}: domain {domain.name!r} has discrete state ({type(domain.process()).__name__}); "
                         "it has no probability-flow ODE to solve: pass n_ref=0")
    n_ref = min(n_ref, samples.x.shape[0])
    gb = next(iter(generation_batches(domain, n_ref, seed, n_ref, tree_map(lambda a: a[:n_ref], samples.cond))))[0]
    m64 = _Float64(model)
    ref = reference_solve(m64, domain.process(), gb.x_T.double(), prediction=getattr(model, "prediction", domain.prediction),
                          mask=gb.mask, cond=gb.cond, rtol=REF_TOL, atol=REF_TOL, progress=progress)
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


#: samples of ``generate`` when neither ``n`` nor the domain (:meth:`Domain.default_n`) says how many
DEFAULT_N = 64


def domain_reward(domain: Domain):
    """``reward(x [B, ...], mask) -> [B]``: the domain's :meth:`~workbench.domain.Domain.reward`
    on a batch of states (for reward-guided samplers, ``SamplerSpec.needs``); a domain without a
    reward is a one-line error naming it."""
    if not domain.supports("reward"):
        raise ValueError(f"domain {domain.name!r} defines no reward (Domain.reward), which reward-guided samplers (svdd) need; "
                         "use a sampler without a reward")
    return lambda x, mask=None: domain.reward(Batch(x=x, mask=mask))


def generate(domain: Union[str, Domain], *, sampler: Optional[str] = None, steps: int = 5, n: Optional[int] = None, seed: int = 0,
             out_dir: PathLike = "outputs/generate", teacher: Optional[str] = None, timesteps=None, batch_size: int = 256,
             device="cpu", n_ref: int = 0, options: Optional[dict] = None, domain_config: Optional[dict] = None,
             progress: bool = True, generator: Optional[str] = None) -> dict:
    """Generate ``n`` samples with the domain's teacher (or ``teacher`` checkpoint), write them
    in the domain's formats, ``metrics.json``, ``report.md`` and a PNG under ``out_dir``
    (owned by this run: :class:`~workbench.utils.OutputDir`; files of an earlier ``generate`` there
    that this one did not rewrite, e.g. ``n=6`` then ``n=2``, are removed; ``manifest.json``
    lists the files written).
    ``n=None``: the domain's :meth:`~workbench.domain.Domain.default_n` (e.g. one prediction per
    FASTA record), else :data:`DEFAULT_N`.
    Returns the metrics dict (with ``nfe``, ``seconds_per_sample`` and, if ``n_ref > 0``,
    ``ode_error``: RMS distance to the adaptive float64 reference solution)."""
    out = Path(out_dir)
    with OutputDir(out, "generate", remove_stale=True) as owner:  # checked and locked before any work
        dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
        if n_ref > 0 and generator is None and not getattr(dom.process(), "continuous", True):
            raise ValueError(f"n_ref={n_ref}: the ODE reference error needs a continuous process, and domain {dom.name!r} has "
                             f"discrete state ({type(dom.process()).__name__}, stochastic samplers); pass n_ref=0")
        if n is None:
            n = dom.default_n() or DEFAULT_N
        if sampler is None:
            sampler = dom.default_sampler
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
        with show_progress(progress):
            metrics = {k: float(v) for k, v in dom.evaluate(samples).items()}
        if generator is None and "reward" in api.get(sampler).needs and "reward" not in (options or {}):
            # a reward-guided run reports the reward it raised beside the unguided metrics
            metrics["reward_mean"] = float(torch.as_tensor(dom.reward(samples)).double().mean())
        metrics["nfe"] = info["nfe"]
        metrics["seconds_per_sample"] = info["seconds"] / max(1, n)
        err = ode_reference_error(dom, model, samples, seed=seed, n_ref=n_ref, device=device, progress=progress)
        if err is not None:
            metrics["ode_error"] = err
        dom.save_samples(samples, out / "samples")
        png = dom.plot(samples, out / "samples.png")
        # the domain's own sampler defaults (e.g. structure_prediction's 200-step predict()) did not run here
        dcfg = {k: v for k, v in dom.config.items() if k not in dom.sampling_config_keys}
        record = {"domain": dom.name, "domain_config": dcfg, "sampler": sampler, "steps": steps, "n": n, "seed": seed,
                  "timesteps": info.get("timesteps"), "options": options or {}, "teacher": teacher or "shipped", "generator": generator,
                  "metrics": metrics}
        write_json(out / "metrics.json", record)
        write_report(out, f"{dom.name}: {sampler}, {steps} steps ({info['nfe']} NFE)", metrics, [Path(png)],
                     extra=f"{n} samples, seed {seed}, teacher: {teacher or 'shipped checkpoint'}.")
    if owner.removed:
        import sys

        print(owner.note_removed(), file=sys.stderr)
    return metrics


def evaluate_dir(domain: Union[str, Domain, None], samples_dir: PathLike, *, out: Optional[PathLike] = None,
                 domain_config: Optional[dict] = None, progress: bool = True) -> dict:
    """Evaluate samples previously written by :func:`generate` (``samples/samples.npz``) and
    write ``metrics_eval.json`` (atomically) beside them. ``domain=None``: the domain and options
    recorded in the run's ``metrics.json``. Samples recorded for another domain, or whose shape
    does not fit the domain, are a one-line ``ValueError`` (nothing written)."""
    import json
    import sys

    d = Path(samples_dir)
    npz = d / "samples.npz" if (d / "samples.npz").exists() else d / "samples" / "samples.npz"
    if not npz.exists():
        raise FileNotFoundError(f"no samples.npz under {d}; run 'workbench generate' first or pass its out directory")
    run_dir = npz.parent.parent
    try:
        rec = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        rec = {}
    recorded = rec.get("domain")
    if domain is None:
        if recorded is None:
            raise ValueError(f"{run_dir} records no domain (no metrics.json); pass domain=NAME")
        domain, domain_config = recorded, (rec.get("domain_config") or {}) if domain_config is None else domain_config
    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    if recorded is not None and recorded != dom.name:
        raise ValueError(f"{run_dir} holds samples of domain {recorded!r}, not {dom.name!r}; pass domain={recorded} (or leave domain= out)")
    x, mask, cond = _read_samples_npz(npz)
    _check_sample_shape(dom, x, mask, npz)
    dest = Path(out) if out else run_dir / "metrics_eval.json"
    with OutputDir(dest.parent, "evaluate", lock_only=True):  # not while another run writes there
        if progress:
            print(f"evaluating {x.shape[0]} {dom.name} samples from {npz} ...", file=sys.stderr, flush=True)
        with show_progress(progress):
            metrics = {k: float(v) for k, v in dom.evaluate(Batch(x=x, mask=mask, cond=cond)).items()}
        write_json(dest, {"domain": dom.name, "domain_config": dom.config, "samples": str(npz), "metrics": metrics})
    return metrics


def _read_samples_npz(npz: Path):
    """``(x, mask, cond)`` tensors of a ``samples.npz`` written by :func:`generate` (``x`` float32,
    or int64 token ids when the file holds integers); a file that is
    cut short or not an npz, has no ``x``, holds no samples, pickled objects or non-numeric arrays
    is a one-line ``ValueError`` naming the file (nothing is unpickled)."""
    import zipfile
    import zlib

    again = "; pass the samples.npz of a finished 'workbench generate' run (or generate again)"
    try:
        f = np.load(npz, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a bare .npy array, not an npz archive
            raise ValueError(f"{npz} is a single .npy array, not an npz archive with an array 'x'{again}")
        with f:
            if "x" not in f.files:
                raise ValueError(f"{npz} has no array 'x' (it holds: {', '.join(f.files) or 'nothing'}){again}")
            arrays = {k: f[k] for k in ("x", "mask", "cond") if k in f.files}
    except ValueError as e:
        if str(e).startswith(str(npz)):
            raise
        raise ValueError(f"{npz} cannot be read as samples ({_first_line(e)}){again}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError) as e:
        raise ValueError(f"{npz} is damaged or cut short ({type(e).__name__}: {_first_line(e)}){again}") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf" or a.ndim == 0:
            raise ValueError(f"{npz}: array {k!r} has dtype {a.dtype} and shape {list(a.shape)}; expected a numeric array "
                             f"with one row per sample{again}")
    x = arrays["x"]
    if x.shape[0] == 0:
        raise ValueError(f"{npz} holds 0 samples (x has shape {list(x.shape)}); nothing to evaluate{again}")
    mask = torch.from_numpy(arrays["mask"]).float() if "mask" in arrays else None
    cond = torch.from_numpy(arrays["cond"]).long() if "cond" in arrays else None
    # integer x are token ids (discrete state) and stay integers; any other x is a float state
    return (torch.from_numpy(x).long() if x.dtype.kind in "biu" else torch.from_numpy(x).float()), mask, cond


def _first_line(e: BaseException) -> str:
    return " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())


def _check_sample_shape(dom: Domain, x: torch.Tensor, mask, path) -> None:
    """A one-line ``ValueError`` when samples ``x`` cannot be this domain's: another number of
    dimensions, or other per-sample (per-position for masked domains) sizes than its noise."""
    from .utils import per_sample_generators

    try:
        ref = dom.generation_batch(1, generator=per_sample_generators(0, 1)).x_T
    except Exception:  # noqa: BLE001 - a domain that needs inputs (e.g. a FASTA) to draw noise: no check
        return
    want, got = tuple(ref.shape[1:]), tuple(x.shape[1:])
    fits = len(want) == len(got) and (want[1:] == got[1:] if mask is not None else want == got)
    if not fits or (mask is not None and tuple(mask.shape) != tuple(x.shape[:2])):
        raise ValueError(f"{path} holds samples of shape [n, {', '.join(map(str, got))}], which domain {dom.name!r} does not "
                         f"produce (its samples are [n, {', '.join(map(str, want))}]); pass the domain that generated them")


def train_domain_teacher(domain: Union[str, Domain], out_dir: PathLike, *, train: Optional[dict] = None,
                         domain_config: Optional[dict] = None, resume: bool = True) -> dict:
    """Train a domain's teacher with the shared loop (resumable) and export
    ``out_dir/teacher.safetensors``."""
    from .domain import train_teacher

    with OutputDir(out_dir, "train"):  # checked and locked before any work; manifest.json at the end
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
    with OutputDir(out_dir, "distill"):  # checked and locked before any work; manifest.json at the end
        dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
        from .distill.api import METHODS, available_methods

        missing = METHODS[method].missing(dom)
        if missing:
            valid = [m for m in available_methods() if not METHODS[m].missing(dom)]
            raise ValueError(f"method {method!r} cannot distil domain {dom.name!r}: it needs {', '.join(missing)}; "
                             f"valid here: {', '.join(valid) or '(none)'}")
        device = str(resolve_device(device))
        user = {k: v for k, v in (train or {}).items() if v is not None}
        user.setdefault("device", device)
        t_net = dom.load_teacher(teacher, device=device).eval().requires_grad_(False)
        out = Path(out_dir)
        ctx = RecipeContext(domain=dom, teacher=t_net, student_steps=int(student_steps), out_dir=out, device=device,
                            seed=int(user.get("seed", 0)), train=dict(user), teacher_path=None if teacher is None else str(teacher))
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

    state, meta = load_weights(path, device=device)  # its header is a JSON object (else a CheckpointError)
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
                     noise_scale: Optional[float] = None, cond: Any = None) -> tuple[Batch, dict]:
    """``n`` samples from a distilled few-step generator with ``steps`` steps (its own grid when
    it has one of that length, else uniform in ``t``); ``noise_scale=None`` keeps the
    generator's own default (the scale it was trained with); ``cond``: the conditioning as in
    :func:`sample_domain` (``None``: the domain's own draw)."""
    device = resolve_device(device)
    parts, secs = [], 0.0
    for gb, gens in generation_batches(domain, n, seed, batch_size, cond):
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
