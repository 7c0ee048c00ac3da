"""Synthetic (sequence, structure) pairs for the structure predictor: ideal backbones labelled
with ProteinMPNN sequences (a distillation set in the spirit of AlphaFold 2's self-distillation,
Jumper et al. 2021, Suppl. 1.3, here with designed instead of predicted pairs).

Every pair is ``(s, X)`` with ``X`` an ideal backbone from
:func:`domains.proteins.ideal.ideal_chain` (kinds :data:`DESIGNED_KINDS`, lengths uniform in
:data:`DESIGNED_LENGTHS`, torsion noise from a generator seeded by ``seed * 1_000_003 + i``)
and ``s`` one of ``per_backbone`` ProteinMPNN CA-only samples at temperature 0.1 for ``X``.
The pairs are SYNTHETIC: training on them teaches the predictor to refold ProteinMPNN
sequences of idealised helices / bundles / hairpins, which makes the designability
self-consistency test easier on such topologies; say so wherever designability numbers of a
model trained with them are reported.

    python -m domains.structure_prediction.designed --out runs/designed_pairs.pt --n 300

(deterministic: same arguments -> same file). :class:`MixtureSampler` mixes them with the real
chains during training (the domain's ``designed=PATH, designed_weight=w`` options).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from workbench.losses import Batch

DESIGNED_KINDS = ("helix", "helix_bundle", "hairpin")
DESIGNED_LENGTHS = (40, 100)
#: training backbones use seeds ``DESIGNED_SEED * 1_000_003 + i``; evaluations should use other seeds
DESIGNED_SEED = 7


def designed_backbones(n: int, *, seed: int = DESIGNED_SEED, kinds: Sequence[str] = DESIGNED_KINDS,
                       lengths: tuple[int, int] = DESIGNED_LENGTHS) -> list:
    """``n`` ideal backbones (:class:`~domains.proteins.chain.Chain`, sequence ``X``): kind
    ``kinds[i % len(kinds)]``, length uniform in ``lengths`` (inclusive), both and the torsion
    noise drawn from ``torch.Generator().manual_seed(seed * 1_000_003 + i)``."""
    from domains.proteins.ideal import IDEAL_KINDS, ideal_chain

    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    bad = [k for k in kinds if k not in IDEAL_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown backbone kind(s) {bad}; valid: {', '.join(IDEAL_KINDS)}")
    lo, hi = int(lengths[0]), int(lengths[1])
    if not 6 <= lo <= hi:
        raise ValueError(f"lengths must be (lo, hi) with 6 <= lo <= hi, got {lengths}")
    out = []
    for i in range(int(n)):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        kind = kinds[i % len(kinds)]
        L = int(torch.randint(lo, hi + 1, (1,), generator=g))
        out.append(ideal_chain(kind, L, generator=g, name=f"designed_{seed}_{i:05d}_{kind}_{L}"))
    return out


def build_designed_pairs(n: int, *, per_backbone: int = 1, seed: int = DESIGNED_SEED, temperature: float = 0.1,
                         kinds: Sequence[str] = DESIGNED_KINDS, lengths: tuple[int, int] = DESIGNED_LENGTHS,
                         inverse_folder=None, progress: bool = False) -> list:
    """``n * per_backbone`` chains: :func:`designed_backbones` coordinates with ProteinMPNN
    (CA-only, ``temperature``) sequences; deterministic (MPNN sampled with a generator seeded by
    ``seed``, backbones processed in fixed chunks of 16). Names ``<backbone>_s<j>``."""
    from domains.proteins.chain import Chain

    if int(per_backbone) < 1:
        raise ValueError(f"per_backbone must be >= 1, got {per_backbone}")
    if inverse_folder is None:
        from domains.proteins.mpnn import ProteinMPNN

        inverse_folder = ProteinMPNN(ca_only=True)
    backbones = designed_backbones(n, seed=seed, kinds=kinds, lengths=lengths)
    out, t0 = [], time.time()
    for start in range(0, len(backbones), 16):
        part = backbones[start:start + 16]
        g = torch.Generator().manual_seed(int(seed) * 7919 + start)
        seqs = inverse_folder.design(part, n_seq=int(per_backbone), temperature=float(temperature), generator=g)
        for bb, ss in zip(part, seqs):
            for j, s in enumerate(ss):
                if len(s) != len(bb):
                    raise ValueError(f"inverse folder returned {len(s)} residues for backbone {bb.name} of {len(bb)}")
                out.append(Chain(name=f"{bb.name}_s{j}", sequence=s, coords=bb.coords.copy(), source=f"designed:{bb.meta['kind']}",
                                 reconstructed=False, meta={"kind": bb.meta["kind"], "ss": bb.meta["ss"]}))
        if progress:
            print(f"designed pairs: {min(start + 16, len(backbones))}/{len(backbones)} backbones, {time.time() - t0:.0f} s", flush=True)
    return out


def save_pairs(chains: Sequence, path, *, info: Optional[dict] = None) -> Path:
    """Write chains to a ``.pt`` file (atomic): names, sequences, sources, kinds, coords."""
    from workbench.utils import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"names": [c.name for c in chains], "sequences": [c.sequence for c in chains], "sources": [c.source for c in chains],
            "kinds": [c.meta.get("kind") for c in chains], "coords": [torch.from_numpy(np.asarray(c.coords, np.float32)) for c in chains],
            "info": dict(info or {})}
    with atomic_path(p) as tmp:
        torch.save(data, tmp)
    return p


def load_pairs(path) -> list:
    """The chains of a :func:`save_pairs` file; one-line ValueError if missing or malformed."""
    from domains.proteins.chain import Chain

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"designed pairs file not found: {p} (build it with python -m domains.structure_prediction.designed --out {p})")
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
        chains = [Chain(name=n, sequence=s, coords=x.numpy().astype(np.float32), source=src, reconstructed=False, meta={"kind": k})
                  for n, s, src, k, x in zip(d["names"], d["sequences"], d["sources"], d["kinds"], d["coords"])]
    except Exception as e:  # noqa: BLE001 - report any unreadable file in one line
        raise ValueError(f"designed pairs file {p} is not readable: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not chains:
        raise ValueError(f"designed pairs file {p} holds no chains")
    return chains


class MixtureSampler:
    """Batches mixing two samplers: each of the ``B`` rows comes from ``second`` with
    probability ``weight`` (one uniform draw per row from ``generator``), else from ``first``;
    the rows of ``first`` come first. Both samplers must return :class:`Batch` with the same
    ``x [*, N, 3]`` / ``mask [*, N]`` / dict ``cond`` layout (e.g. two
    :class:`~domains.proteins.data.CropSampler` with the same ``n_max``)."""

    def __init__(self, first, second, weight: float):
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"designed_weight must be in [0, 1], got {weight}")
        self.first, self.second, self.weight = first, second, float(weight)

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        B = int(batch_size)
        if B < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        k = int((torch.rand(B, generator=generator) < self.weight).sum())
        parts = [s(m, generator) for s, m in ((self.first, B - k), (self.second, k)) if m > 0]
        if len(parts) == 1:
            return parts[0]
        a, b = parts
        cond = {key: torch.cat([a.cond[key], b.cond[key]]) for key in a.cond}
        return Batch(x=torch.cat([a.x, b.x]), mask=torch.cat([a.mask, b.mask]), cond=cond)


def evaluate_designability(checkpoint, out_dir, *, n: int = 12, seed: int = 11, lengths: tuple[int, int] = (50, 80),
                           n_seq: int = 8, fold_steps: int = 5) -> dict:
    """The designability check of the shipped checkpoint's README: ``n`` NEW ideal backbones
    (:func:`designed_backbones` with ``seed`` (training pairs use :data:`DESIGNED_SEED`) and
    ``lengths``), ``n_seq`` ProteinMPNN CA-only sequences each, refolded by the predictor at
    ``checkpoint`` with the ``fold_steps``-step ODE (the default folder); returns the pipeline's
    summary plus best (scRMSD, scTM) per backbone kind. Self-consistent with the training
    pairs by construction (see the module docstring)."""
    import json

    from domains.proteins.designability import FEW_STEP_ODE, run_designability
    from domains.proteins.mpnn import ProteinMPNN

    from .domain import StructurePredictionDomain

    dom = StructurePredictionDomain(checkpoint=str(checkpoint))
    bbs = designed_backbones(n, seed=seed, lengths=lengths)
    out = Path(out_dir)
    rep = run_designability(bbs, out, inverse_folder=ProteinMPNN(ca_only=True),
                            folder=dom.folder(steps=int(fold_steps), options=dict(FEW_STEP_ODE)), n_seq=int(n_seq), seed=0, progress=False)
    per_kind: dict = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line) if line.strip() else None
        if r and r.get("status") == "ok":
            rest = r["chain"].split("_", 3)[3]  # "<kind>_<length>"
            kind = next(k for k in sorted(DESIGNED_KINDS, key=len, reverse=True) if rest.startswith(k + "_"))
            per_kind.setdefault(kind, []).append((r["sc_rmsd"], r["sc_tm"]))
    res = {k: rep[k] for k in ("designable_fraction", "n_designable", "mean_best_sc_rmsd", "mean_best_sc_tm", "n_evaluated")}
    res["per_kind"] = per_kind
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.structure_prediction.designed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .pt file (keep it out of the repository, e.g. runs/designed_pairs.pt); "
                    "with --evaluate: the designability output folder")
    ap.add_argument("--evaluate", metavar="CHECKPOINT", help="instead: run the README's designability check of this checkpoint")
    ap.add_argument("--n", type=int, default=300, help="number of ideal backbones")
    ap.add_argument("--per-backbone", type=int, default=1, help="ProteinMPNN sequences per backbone")
    ap.add_argument("--seed", type=int, default=DESIGNED_SEED)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        import json

        print(json.dumps(evaluate_designability(args.evaluate, args.out), indent=1))
        return 0
    t0 = time.time()
    pairs = build_designed_pairs(args.n, per_backbone=args.per_backbone, seed=args.seed, temperature=args.temperature, progress=True)
    info = {"n_backbones": args.n, "per_backbone": args.per_backbone, "seed": args.seed, "temperature": args.temperature,
            "kinds": list(DESIGNED_KINDS), "lengths": list(DESIGNED_LENGTHS), "seconds": time.time() - t0,
            "inverse_folder": "ProteinMPNN CA-only v_48_020"}
    p = save_pairs(pairs, args.out, info=info)
    print(f"wrote {len(pairs)} pairs to {p} in {info['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
