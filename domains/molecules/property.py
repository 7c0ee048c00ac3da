"""An in-repo QM9 property regressor for property-conditioned / reward-guided generation (issue 18).

EDM (Hoogeboom et al. 2022, sec. 5.2) scores its property-conditioned generators with EGNN property
classifiers (Satorras et al. 2021, ``qm9/property_prediction`` of
github.com/ehoogeboom/e3_diffusion_for_molecules) that are trained on **the other half** of the
training split: the classifiers on ``qm9_first_half``, the conditional generators on
``qm9_second_half`` (:func:`domains.molecules.data.train_half_positions`). This module does the
same: :func:`train_regressor` trains on EDM's first half (50,000 molecules) only and evaluates on
the validation split, so a generator trained on the second half is never scored by a regressor
that saw its training molecules. (The unconditional teacher of the domain trains on all 100,000
training molecules, so it does overlap the regressor's half; that matters only when the
regressor is used as an *evaluator* of a generator, not as a guidance reward.)

:class:`PropertyRegressor` is E(3)-invariant and permutation-invariant by construction: it reads
the domain's clean state ``x [B, N, 3 + F]`` with ``mask [B, N]`` (positions in Angstrom, the
scaled type one-hot and charge channels), embeds each real atom's feature channels, runs
``n_layers`` of the EGNN's invariant message-passing layer (:class:`~domains.molecules.nets.EGNNLayer`,
EDM's ``GCL``) on the fully connected graph of each molecule with a Gaussian radial basis of the
interatomic distances as edge features (the coordinate stream of the EGNN is left out: the
output is a scalar, and the distances carry all the geometry it may use), then a node MLP, a sum
(or mean) over the real atoms and a graph MLP to one number: the standardised property
``(y - mean) / std``. ``mean`` and ``std`` (of the training molecules) are buffers saved with the
weights; :meth:`PropertyRegressor.predict` returns the property in its units
(:data:`domains.molecules.data.PROPERTIES`: meV for the energies, Debye for ``mu``, Bohr^3 for
``alpha``, cal/(mol K) for ``Cv``). Only distances of real atoms enter, so rotations, reflections,
translations, permutations and the padding width and content do not change the output.

Loss: L1 on the standardised property (EDM's ``main_qm9_prop.py``); Adam; the reported
``val_mae`` is the MAE in the property's units on the validation split, beside the
predict-the-training-mean baseline on the same molecules.

Command line (resumable: a rerun of the same command continues from ``OUT.state.pt``)::

    python -m domains.molecules.property --prop alpha --steps 20000 --out runs/alpha.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from workbench.checkpoint import CheckpointError, load_state, load_state_into, load_weights, save_state, save_weights

from .data import MAX_ATOMS, PROPERTIES, load_qm9
from .nets import EGNNLayer, fully_connected_graph

PathArg = Union[str, Path]
#: the domain settings a regressor depends on (the layout and scale of the feature channels)
DOMAIN_KEYS = ("remove_h", "include_charges", "type_scale", "charge_scale")


@dataclass
class RegressorConfig:
    """:class:`PropertyRegressor` options. ``in_features``: the domain's ``F`` (6 with hydrogens
    and charges); ``hidden``, ``n_layers``: width and depth of the EGNN layers; ``n_rbf`` Gaussian
    radial functions of the distance on ``[0, rbf_max]`` Angstrom (QM9's largest interatomic
    distance is about 12 A; farther pairs see the tail of the last function);
    ``normalization_factor``: the EGNN's divisor of the summed messages; ``pool``: ``sum``
    (extensive properties such as ``alpha``, ``Cv``; EDM's classifier) or ``mean``."""

    in_features: int = 6
    hidden: int = 64
    n_layers: int = 4
    n_rbf: int = 16
    rbf_max: float = 10.0
    normalization_factor: float = 10.0
    attention: bool = True
    pool: str = "sum"


class PropertyRegressor(nn.Module):
    """``forward(x [B, N, 3 + F], mask [B, N] or None) -> [B]``: the standardised property;
    :meth:`predict`: the property in its units (see the module docstring)."""

    def __init__(self, prop: str = "alpha", *, mean: float = 0.0, std: float = 1.0, domain_config: Optional[dict] = None,
                 **kwargs):
        super().__init__()
        valid = [f.name for f in fields(RegressorConfig)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown PropertyRegressor option(s) {unknown}; valid: {', '.join(valid)}")
        cfg = RegressorConfig(**kwargs)
        if prop not in PROPERTIES:
            raise ValueError(f"unknown QM9 property {prop!r}; valid: {', '.join(PROPERTIES)}")
        if cfg.pool not in ("sum", "mean"):
            raise ValueError(f"unknown pool {cfg.pool!r}; valid: sum, mean")
        if cfg.hidden < 1 or cfg.n_layers < 1 or cfg.n_rbf < 2 or not cfg.rbf_max > 0 or cfg.in_features < 1:
            raise ValueError("PropertyRegressor needs hidden, n_layers, in_features >= 1, n_rbf >= 2 and rbf_max > 0")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std must be a positive number, got {std}")
        self.cfg, self.prop, self.unit = cfg, prop, PROPERTIES[prop]
        self.domain_config = dict(domain_config or {})
        H = cfg.hidden
        self.embedding = nn.Linear(cfg.in_features, H)
        self.layers = nn.ModuleList([EGNNLayer(H, cfg.n_rbf, cfg.normalization_factor, cfg.attention) for _ in range(cfg.n_layers)])
        self.node_dec = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
        self.graph_dec = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, 1))
        self.register_buffer("centers", torch.linspace(0.0, cfg.rbf_max, cfg.n_rbf))
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float64))

    def config(self) -> dict:
        return asdict(self.cfg)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        F = self.cfg.in_features
        if x.ndim != 3 or x.shape[-1] != 3 + F:
            raise ValueError(f"x must have shape [B, N, 3 + {F}], got {tuple(x.shape)}")
        B, N, _ = x.shape
        dtype = self.embedding.weight.dtype
        x = x.to(dtype)
        mask = torch.ones(B, N, dtype=dtype, device=x.device) if mask is None else mask.to(device=x.device, dtype=dtype)
        if mask.shape != (B, N):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape)}")
        m = (mask > 0.5).to(dtype)
        x = torch.where(m[..., None] > 0, x, torch.zeros((), dtype=dtype, device=x.device))  # padding never enters (even NaN)
        edge_index = fully_connected_graph(m)
        pos = x[..., :3].reshape(B * N, 3)
        src, dst = edge_index
        d = torch.sqrt(((pos[dst] - pos[src]) ** 2).sum(-1) + 1e-12)
        spacing = self.cfg.rbf_max / (self.cfg.n_rbf - 1)
        e = torch.exp(-0.5 * ((d[:, None] - self.centers.to(dtype)) / spacing) ** 2)
        w = torch.ones_like(d)[:, None]
        node_mask = m.reshape(B * N, 1)
        h = self.embedding(x[..., 3:].reshape(B * N, F)) * node_mask
        for layer in self.layers:
            h = layer(h, edge_index, e, w) * node_mask
        h = (self.node_dec(h) * node_mask).reshape(B, N, -1).sum(1)
        if self.cfg.pool == "mean":
            h = h / m.sum(1, keepdim=True).clamp_min(1.0)
        return self.graph_dec(h)[:, 0]

    def predict(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``[B]`` float64: the property in its units (``std * forward + mean``)."""
        return self(x, mask).double() * self.std + self.mean

    def check_domain(self, domain) -> None:
        """Raise a ValueError when ``domain``'s state layout differs from the one trained on."""
        if not self.domain_config:
            return
        have = {k: domain.config[k] for k in DOMAIN_KEYS}
        diff = {k: (self.domain_config.get(k), have[k]) for k in DOMAIN_KEYS if self.domain_config.get(k) != have[k]}
        if diff:
            raise ValueError(f"the {self.prop} regressor was trained on another molecules state: (trained, given) {diff}")


def property_reward(regressor: PropertyRegressor, target: float, *, differentiable: bool = False) -> Callable:
    """``reward(x [B, N, 3 + F], mask [B, N] or None) -> [B]`` float64 ``= -|predict(x) - target|``
    (property units; higher is better, 0 at the target) for the reward-guided samplers
    (``fk_steering``, ``svdd_sde``, which call ``reward(x0, mask)`` on data predictions). The
    regressor is moved to ``x``'s device; non-finite predictions give ``-inf`` (both samplers
    treat that as zero weight). Without ``differentiable`` it runs under ``torch.no_grad``."""
    target = float(target)
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target}")
    regressor.eval()

    def reward(x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = torch.as_tensor(x)
        if next(regressor.parameters()).device != x.device:
            regressor.to(x.device)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            r = -(regressor.predict(x, mask) - target).abs()
        return torch.where(torch.isfinite(r), r, torch.full_like(r, -math.inf))

    reward.target, reward.prop, reward.unit = target, regressor.prop, regressor.unit
    return reward


def save_regressor(path: PathArg, regressor: PropertyRegressor, meta: Optional[dict] = None) -> Path:
    """Weights (with the ``mean`` / ``std`` buffers) as safetensors, atomically; the header holds
    the property, its unit, the config, the domain settings and ``meta``."""
    head = {"kind": "molecules_property_regressor", "prop": regressor.prop, "unit": regressor.unit,
            "config": regressor.config(), "domain": regressor.domain_config, **(meta or {})}
    return save_weights(path, regressor, head)


def load_regressor(path: PathArg, *, device="cpu") -> PropertyRegressor:
    """A :class:`PropertyRegressor` from :func:`save_regressor` / :func:`train_regressor`'s file
    (eval mode); its metadata is ``regressor.meta``. A file that is not a regressor raises
    :class:`~workbench.checkpoint.CheckpointError`."""
    state, meta = load_weights(path, device=device)
    if meta.get("kind") != "molecules_property_regressor":
        raise CheckpointError(f"{path} is not a molecules property regressor (header kind {meta.get('kind')!r})")
    reg = PropertyRegressor(meta["prop"], domain_config=meta.get("domain"), **meta["config"])
    load_state_into(reg, state, path)
    reg.meta = meta
    return reg.to(device).eval()


# -- training -----------------------------------------------------------------------------------
def _encoded(domain, split) -> tuple[Tensor, Tensor]:
    p = split.padded(max_atoms=MAX_ATOMS[bool(domain.config["remove_h"])])
    mask = p["mask"].float()
    return domain.encode(p["positions"].float(), p["atom_types"], mask), mask


@torch.no_grad()
def evaluate(regressor: PropertyRegressor, x: Tensor, mask: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """MAE (property units) of ``regressor.predict`` on ``x [M, N, 3 + F]``, ``mask``, ``y [M]``."""
    was = regressor.training
    regressor.eval()
    err = 0.0
    for i in range(0, len(x), batch_size):
        err += float((regressor.predict(x[i:i + batch_size], mask[i:i + batch_size]) - y[i:i + batch_size].double()).abs().sum())
    regressor.train(was)
    return err / max(len(x), 1)


def state_path_for(out_path: PathArg) -> Path:
    """The training state beside ``out_path``: ``NAME.state.pt`` (``NAME`` without ``.safetensors``)."""
    out = Path(out_path)
    return out.with_name(out.name[:-len(".safetensors")] + ".state.pt" if out.name.endswith(".safetensors") else out.name + ".state.pt")


def train_regressor(domain, prop: str = "alpha", *, steps: int = 20000, batch_size: int = 64, lr: float = 5e-4,
                    out_path: Optional[PathArg] = None, seed: int = 0, resume: bool = True, train_limit: Optional[int] = None,
                    val_limit: Optional[int] = None, eval_every: int = 2000, ckpt_every: int = 500, half: str = "first",
                    net: Optional[dict] = None, grad_clip: float = 10.0, log: Optional[Callable[[str], None]] = None) -> tuple[PropertyRegressor, dict]:
    """Train a :class:`PropertyRegressor` for ``prop`` on EDM's ``half`` of the training split
    (``"first"``: the classifiers' half, see the module docstring) of ``domain``'s state, L1 on the
    standardised property, Adam at a constant ``lr``, batches drawn uniformly with replacement.

    Args:
        domain: a :class:`~domains.molecules.domain.MoleculesDomain` (its ``remove_h``,
            ``include_charges`` and feature scales define the input).
        steps: total optimiser steps (a resumed run continues up to it).
        out_path: ``.safetensors`` file of the weights (written every ``ckpt_every`` steps and at
            the end, atomically) with its training state ``NAME.state.pt`` beside it; ``None``:
            nothing written.
        resume: continue from the state file when it exists (its settings must match).
        train_limit, val_limit: the first N molecules of the half / of the validation split
            (uniform random subsets); ``None``: all.
        eval_every: validation MAE every so many steps (and at the end).
        net: :class:`RegressorConfig` options.
    Returns:
        ``(regressor (eval mode), info)``: ``info`` has ``step``, ``val_mae``, ``baseline_mae``
        (predicting the training mean), ``unit``, ``history``, ``steps_per_s`` (this call's
        optimiser steps per second, validation time excluded) and ``eval_s``.
    """
    if prop not in PROPERTIES:
        raise ValueError(f"unknown QM9 property {prop!r}; valid: {', '.join(PROPERTIES)}")
    if int(steps) < 0 or int(batch_size) < 1 or not lr > 0:
        raise ValueError("steps must be >= 0, batch_size >= 1 and lr > 0")
    say = log or (lambda s: None)
    remove_h = bool(domain.config["remove_h"])
    tr = load_qm9("train", half=half, remove_h=remove_h, limit=train_limit)
    va = load_qm9("val", remove_h=remove_h, limit=val_limit)
    x_tr, m_tr = _encoded(domain, tr)
    x_va, m_va = _encoded(domain, va)
    y_tr = torch.as_tensor(tr.properties[prop])
    y_va = torch.as_tensor(va.properties[prop])
    mean, std = float(y_tr.mean()), float(y_tr.std())
    baseline = float((y_va - mean).abs().mean())
    dom = {k: domain.config[k] for k in DOMAIN_KEYS}
    reg = PropertyRegressor(prop, mean=mean, std=std, domain_config=dom, in_features=domain.n_features, **(net or {}))
    opt = torch.optim.Adam(reg.parameters(), lr=lr)
    settings = json.loads(json.dumps({"prop": prop, "half": half, "train_limit": train_limit, "val_limit": val_limit,
                                      "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed), "domain": dom,
                                      "config": reg.config(), "grad_clip": float(grad_clip)}))
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    step, history = 0, []
    state_path = state_path_for(out_path) if out_path is not None else None
    if resume and state_path is not None and state_path.exists():
        st = load_state(state_path)
        if st.get("settings") != settings:
            diff = [k for k in settings if st.get("settings", {}).get(k) != settings[k]]
            raise ValueError(f"{state_path} was written with other settings ({', '.join(diff)}); rerun with the same "
                             f"settings or start afresh (resume=False / --fresh, or another --out)")
        reg.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        gen.set_state(st["data_rng"])
        step, history = int(st["step"]), list(st["history"])
        say(f"resuming {state_path} at step {step} of {steps}")
    val_mae = history[-1]["val_mae"] if history else None

    def checkpoint():
        if out_path is None:
            return
        save_state(state_path, {"step": step, "history": history, "settings": settings, "model": reg.state_dict(),
                                "optim": opt.state_dict(), "data_rng": gen.get_state()})
        save_regressor(out_path, reg, {"step": step, "val_mae": val_mae, "baseline_mae": baseline, "half": half,
                                       "n_train": len(tr), "n_val": len(va), "history": history[-20:]})

    reg.train()
    t0, s0, running, t_eval = time.time(), step, [], 0.0
    try:
        while step < steps:
            idx = torch.randint(0, len(x_tr), (int(batch_size),), generator=gen)
            target = ((y_tr[idx] - mean) / std).float()
            loss = (reg(x_tr[idx], m_tr[idx]) - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(reg.parameters(), grad_clip)
            opt.step()
            step += 1
            running.append(loss.item())
            if step % eval_every == 0 or step == steps:
                te = time.time()
                val_mae = evaluate(reg, x_va, m_va, y_va)
                t_eval += time.time() - te
                history.append({"step": step, "train_l1": float(np.mean(running)), "val_mae": val_mae})
                running = []
                say(f"step {step}/{steps}  train L1 (std units) {history[-1]['train_l1']:.4f}  val MAE {val_mae:.4g} "
                    f"{PROPERTIES[prop]} (mean baseline {baseline:.4g})  {(step - s0) / (time.time() - t0 - t_eval):.2f} steps/s "
                    f"(evaluation {t_eval:.1f} s so far)")
            if step % ckpt_every == 0 or step == steps:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        say(f"interrupted at step {step}; saved, rerun the same command to resume")
        raise
    if val_mae is None or not history or history[-1]["step"] != step:
        val_mae = evaluate(reg, x_va, m_va, y_va)
    reg.eval()
    reg.meta = {"prop": prop, "unit": PROPERTIES[prop], "step": step, "val_mae": val_mae, "baseline_mae": baseline}
    dt = time.time() - t0 - t_eval
    return reg, {"step": step, "val_mae": val_mae, "baseline_mae": baseline, "unit": PROPERTIES[prop], "history": history,
                 "steps_per_s": (step - s0) / dt if dt > 0 and step > s0 else None, "eval_s": t_eval, "n_train": len(tr), "n_val": len(va)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.molecules.property",
                                 description="Train a QM9 property regressor on EDM's first half of the training split "
                                             "(resumable: rerun the same command to continue).")
    ap.add_argument("--prop", default="alpha", choices=list(PROPERTIES))
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--out", required=True, help="weights file (.safetensors); the state goes to NAME.state.pt beside it")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    ap.add_argument("--train_limit", type=int, default=None)
    ap.add_argument("--val_limit", type=int, default=None, help="validation molecules (default: all 17,748)")
    ap.add_argument("--eval_every", type=int, default=2000)
    ap.add_argument("--ckpt_every", type=int, default=500)
    ap.add_argument("--remove_h", action="store_true")
    ap.add_argument("--no_charges", action="store_true")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--n_layers", type=int, default=4)
    ap.add_argument("--pool", default="sum", choices=["sum", "mean"])
    ap.add_argument("--half", default="first", choices=["first", "second"],
                    help="EDM's half of the training split (first: the classifiers' half; second: an independent evaluator)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args(argv)
    if not str(a.out).endswith(".safetensors"):
        ap.error("--out must end with .safetensors")
    if a.threads:
        torch.set_num_threads(a.threads)
    from .domain import MoleculesDomain

    domain = MoleculesDomain(remove_h=a.remove_h, include_charges=not a.no_charges)
    _, info = train_regressor(domain, a.prop, steps=a.steps, batch_size=a.batch_size, lr=a.lr, out_path=a.out, seed=a.seed,
                              resume=not a.fresh, train_limit=a.train_limit, val_limit=a.val_limit, eval_every=a.eval_every,
                              ckpt_every=a.ckpt_every, net={"hidden": a.hidden, "n_layers": a.n_layers, "pool": a.pool}, half=a.half,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in info.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
