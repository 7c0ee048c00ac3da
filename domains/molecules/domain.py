"""The ``molecules`` domain: unconditional 3D molecule generation on QM9 with an E(3)-equivariant
teacher, after EDM (Hoogeboom, Satorras, Vignac and Welling 2022, "Equivariant Diffusion for
Molecule Generation in 3D", ICML; official code ehoogeboom/e3_diffusion_for_molecules).

**State** (EDM's ``[x, h]``, one padded tensor ``x [B, N, 3 + F]`` with ``mask [B, N]``):

* channels ``0:3``: positions in Angstrom, zero centre of mass over the real atoms;
* channels ``3:3 + T``: the atom-type one-hot (H, C, N, O, F; C, N, O, F with ``remove_h``)
  times ``type_scale`` (EDM's ``norm_values[1] = 4``: one-hot / 4 = 0.25);
* with ``include_charges``, one channel: the atomic number times ``charge_scale`` (EDM's
  ``norm_values[2] = 10``: Z / 10).

Atom types are **continuous** (EDM's choice), not a discrete process: the state then is a
product of an E(3) zero-CoM Gaussian on the positions and a plain Gaussian on the features under
one schedule, which is one :class:`~workbench.processes.GaussianProcess` whose CoM constraint
acts on the first 3 channels (``com_dims=3``). Every continuous sampler and distiller of the core
(ODE/SDE solvers, DMD2, SiD, ...) then runs on molecules unchanged; a discrete type state would
rule out the continuous distillers the issue asks for. Decoding: the type of an atom is the argmax
of its type channels (EDM's ``argmax`` of ``h_cat``).

**Process**: EDM's ``polynomial_2`` noise schedule (``alpha^2(t) = (1 - t^2)^2`` on a 1000-step
grid, clipped and shifted by the precision ``s = 1e-5``, ``en_diffusion.py``
``polynomial_schedule``), as a :class:`~workbench.processes.VPDiscrete` with epsilon prediction.

**Sizes**: the number of atoms of each generated molecule is drawn from the training histogram
(EDM's ``DistributionNodes``).

Config keys (``domain.*``): ``remove_h`` (False), ``include_charges`` (True), ``backbone``
(``egnn`` or ``e3nn``, :mod:`domains.molecules.nets`), ``net`` (backbone kwargs),
``train_limit`` (use the first N training molecules; ``None`` all 100,000), ``novelty`` (True:
novelty against the training SMILES).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch
from workbench.model import Denoiser
from workbench.processes import VPDiscrete

from .data import ATOM_TYPES, ATOMIC_NUMBERS, MAX_ATOMS, SPLITS

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: the domain's default backbone sizes (CPU-sized; EDM's QM9 model: EGNN 256 x 9 layers). EGNN's
#: ``normalization_factor = 1``: EDM's ``main_qm9.py`` default, which its QM9 command keeps
DEFAULT_NETS = {"egnn": {"hidden": 64, "n_layers": 4, "normalization_factor": 1.0}, "e3nn": {}}


def polynomial_alphas_cumprod(steps: int = 1000, power: float = 2.0, s: float = 1e-5) -> Tensor:
    """EDM's ``polynomial_schedule`` (``en_diffusion.py``): ``alpha^2`` on ``steps + 1`` knots
    ``t = 0, 1/steps, ..., 1``: ``(1 - t^power)^2``, clipped so consecutive ratios stay >= 0.001
    (``clip_noise_schedule``), then ``(1 - 2 s) alpha^2 + s``. Returns float64 ``[steps]``: the
    values at ``t = 1/steps .. 1`` (the cumulative products a :class:`VPDiscrete` takes)."""
    x = np.linspace(0, steps, steps + 1) / steps
    a2 = (1 - np.power(x, power)) ** 2
    a2 = np.concatenate([np.ones(1), a2])
    step = np.clip(a2[1:] / a2[:-1], 0.001, 1.0)
    a2 = np.cumprod(step)
    a2 = (1 - 2 * s) * a2 + s
    return torch.tensor(a2[1:], dtype=torch.float64)


@dataclass
class MoleculesConfig:
    #: drop the hydrogens (EDM's ``remove_h``; stability is only meaningful with them)
    remove_h: bool = False
    #: the atomic-number channel (EDM's ``include_charges``)
    include_charges: bool = True
    #: ``egnn`` (EDM's EGNN) or ``e3nn`` (a tensor-product network), :mod:`domains.molecules.nets`
    backbone: str = "egnn"
    #: backbone kwargs (sizes), over :data:`DEFAULT_NETS`
    net: dict = field(default_factory=dict)
    #: train on the first N training molecules only (``None``: all 100,000)
    train_limit: Optional[int] = None
    #: report novelty against the training SMILES
    novelty: bool = True
    #: FCD (ChemNet), QED / SA / logP and their W1 distances, PoseBusters-style geometry checks
    #: (:mod:`domains.molecules.chem_metrics`) in :meth:`MoleculesDomain.evaluate`
    chemistry: bool = True
    #: the reference set of FCD and the property distances: the first N molecules of the test split
    chemistry_reference: int = 10000
    #: EDM's feature scales: one-hot / 4, atomic number / 10
    type_scale: float = 0.25
    charge_scale: float = 0.1


class MoleculesDomain(Domain):
    """3D molecules (QM9) with EDM's state and protocol. Config: :class:`MoleculesConfig`."""

    name = "molecules"
    description = "3D molecules of QM9 (positions + atom types + charges, EDM's state) with an E(3)-equivariant teacher"
    Config = MoleculesConfig
    formats = ("sdf", "smi")
    prediction = "epsilon"
    primary_metric = "mol_stable"
    metric_info = {
        "mol_stable": ("higher", "molecules whose every atom has its valence (EDM's bond tables; QM9 itself 95.2%)"),
        "atom_stable": ("higher", "atoms with their allowed valence (QM9 itself 99.0%)"),
        "validity": ("higher", "RDKit-sanitisable molecules (QM9 itself 97.7%)"),
        "valid_unique": ("higher", "validity x uniqueness"),
        "novelty": ("higher", "unique valid SMILES not in the training set"),
    }
    #: EDM samples with 1000 ancestral steps; the first-order reverse SDE (eta = 1) at 1000 steps is its continuous-time form
    teacher_sampler = ("sde", 1000)
    #: the teacher's 1000-step row alone takes about 3 minutes for 64 molecules on one core, more
    #: than the demo's whole budget
    demo_skip_reason = ("the teacher's 1000-step row would take more than the demo's time; the teacher and its 4-step DMD2 / SiD "
                        "students are compared in docs/benchmarks.md (python -m domains.molecules.bench_teacher) and "
                        "notebooks/05_molecules.ipynb")
    #: CPU-sized teacher training, resumable in chunks (``workbench train domain=molecules``): EDM
    #: trains 256 x 9 EGNNs with batch 64, lr 1e-4 and EMA 0.9999 for 3000 epochs on a GPU
    train_defaults = {"steps": 20000, "batch_size": 32, "lr": 3e-4, "warmup": 500, "schedule": "constant", "ema_decay": 0.999,
                      "ckpt_every": 250, "grad_clip": 1.0, "log_every": 25}
    default_sampler = "dpm_solver_pp_2m"

    def shipped_students(self) -> tuple:
        """The 4-step DMD2 and SiD students distilled from the shipped teacher
        (``checkpoints/README.md``); only for the configuration they were distilled in."""
        from workbench.domain import ShippedStudent

        c = self.config
        if c["remove_h"] or not c["include_charges"] or c["backbone"] != "egnn" or c.get("net"):
            return ()
        return tuple(ShippedStudent(f"{m}_4step", CHECKPOINT_DIR / f"{m}_student_4step.safetensors", 4,
                                    description=f"{label} student, 4 steps") for m, label in (("dmd2", "DMD2"), ("sid", "SiD")))

    def __init__(self, **config):
        super().__init__(**config)
        from .nets import BACKBONES

        if self.config["backbone"] not in BACKBONES:
            raise ValueError(f"unknown molecules backbone {self.config['backbone']!r}; valid: {', '.join(BACKBONES)}")
        lim = self.config.get("train_limit")
        if lim is not None and (not isinstance(lim, int) or isinstance(lim, bool) or lim < 1):
            raise ValueError(f"train_limit must be a positive integer or None, got {lim!r}")
        self.types = tuple(t for t in ATOM_TYPES if not (self.config["remove_h"] and t == "H"))
        self.n_max = MAX_ATOMS[bool(self.config["remove_h"])]
        self._process = VPDiscrete(polynomial_alphas_cumprod(), prediction="epsilon", zero_com=True, com_dims=3)
        self._splits: dict = {}
        self._hist = None
        self._reference = None

    # -- state layout --------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """``F``: type channels (+ 1 charge channel)."""
        return len(self.types) + int(bool(self.config["include_charges"]))

    @property
    def dim(self) -> int:
        return 3 + self.n_features

    def encode(self, positions: Tensor, atom_types: Tensor, mask: Tensor) -> Tensor:
        """``positions [B, N, 3]`` (A), ``atom_types [B, N]`` (indices into :data:`ATOM_TYPES`),
        ``mask [B, N]`` -> the state ``[B, N, 3 + F]`` (projected: zero CoM, zero padding)."""
        idx = torch.as_tensor(atom_types).long()
        if self.config["remove_h"]:
            if bool(((idx == 0) & (mask > 0)).any()):
                raise ValueError("remove_h=True but the molecules hold hydrogens")
            idx = (idx - 1).clamp_min(0)
        onehot = torch.nn.functional.one_hot(idx, len(self.types)).to(positions.dtype) * self.config["type_scale"]
        parts = [positions, onehot]
        if self.config["include_charges"]:
            z = torch.tensor([ATOMIC_NUMBERS[ATOM_TYPES.index(t)] for t in self.types], dtype=positions.dtype)
            parts.append((z[idx] * self.config["charge_scale"])[..., None])
        return self._process.project(torch.cat(parts, -1), mask.to(positions.dtype))

    def decode(self, samples: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """State -> ``(positions [B, N, 3] float64, atom_types [B, N] long (indices into
        :data:`ATOM_TYPES`), mask [B, N] bool)``; types by argmax of the type channels."""
        x = torch.as_tensor(samples.x).detach().cpu().double()
        mask = torch.as_tensor(samples.mask).detach().cpu() > 0.5 if samples.mask is not None else torch.ones(x.shape[:2], dtype=torch.bool)
        idx = x[..., 3:3 + len(self.types)].argmax(-1)
        if self.config["remove_h"]:
            idx = idx + 1
        return x[..., :3], torch.where(mask, idx, torch.zeros_like(idx)), mask

    # -- modelling -----------------------------------------------------------------------------
    def process(self) -> VPDiscrete:
        return self._process

    def build_backbone(self, **kwargs) -> nn.Module:
        """The configured backbone (:func:`domains.molecules.nets.build_backbone`) in a
        :class:`~workbench.model.Denoiser` (epsilon prediction; the network sees ``t`` in
        ``[0, 1]``)."""
        from .nets import build_backbone

        name = self.config["backbone"]
        net = build_backbone(name, in_features=self.n_features, **{**DEFAULT_NETS[name], **self.config["net"], **kwargs})
        return Denoiser(net, self._process, "epsilon", time_map="identity")

    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / f"teacher_{self.config['backbone']}{'_noh' if self.config['remove_h'] else ''}.safetensors"

    def teacher_regenerate_command(self) -> str:
        return "workbench train domain=molecules"

    # -- data ----------------------------------------------------------------------------------
    def split(self, split: str = "train"):
        """The :class:`~domains.molecules.data.QM9Split` of ``split`` (memoised; the training
        split cut to ``train_limit``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split not in self._splits:
            from .data import load_qm9

            limit = self.config.get("train_limit") if split == "train" else None
            self._splits[split] = load_qm9(split, remove_h=bool(self.config["remove_h"]), limit=limit)
        return self._splits[split]

    def _padded(self, split: str) -> dict:
        key = f"_pad_{split}"
        if key not in self._splits:
            p = self.split(split).padded(max_atoms=self.n_max)
            p["x"] = self.encode(p["positions"].float(), p["atom_types"], p["mask"].float())
            self._splits[key] = p
        return self._splits[key]

    def train_data(self, split: str = "train"):
        """A batch sampler ``f(batch_size, generator) -> Batch(x [B, n_max, 3 + F], mask)`` of
        molecules of ``split`` drawn uniformly with replacement. No augmentation: both backbones
        are E(3)-equivariant (EDM trains without it)."""
        p = self._padded(split)

        def data(batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
            idx = torch.randint(0, p["x"].shape[0], (int(batch_size),), generator=generator)
            return Batch(x=p["x"][idx], mask=p["mask"][idx].float())

        return data

    def size_histogram(self) -> tuple[Tensor, Tensor]:
        """``(sizes [K] long, probabilities [K] float64)`` of the training molecules' atom counts."""
        if self._hist is None:
            n = torch.as_tensor(self.split("train").n_atoms)
            sizes, counts = torch.unique(n, return_counts=True)
            self._hist = (sizes.long(), counts.double() / counts.sum())
        return self._hist

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Prior noise ``x_T [n, n_max, 3 + F]`` (positions zero-CoM, padding zero) and ``mask``;
        each molecule's size is drawn from the training histogram first, then its noise, from its
        own generator when ``generator`` is a list."""
        if cond is not None:
            raise ValueError("molecules generation is unconditional here; cond must be None")
        sizes, probs = self.size_histogram()
        if generator is None or isinstance(generator, torch.Generator):
            k = sizes[torch.multinomial(probs, int(n), replacement=True, generator=generator)]
        else:
            gens = list(generator)
            if len(gens) != int(n):
                raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
            k = sizes[torch.cat([torch.multinomial(probs, 1, generator=g) for g in gens])]
        mask = (torch.arange(self.n_max)[None, :] < k[:, None]).float()
        x = self._process.prior((int(n), self.n_max, self.dim), generator=generator, mask=mask)
        return GenerationBatch(x_T=x, mask=mask, info={"sizes": [int(v) for v in k]})

    # -- reward (guidance) ----------------------------------------------------------------------
    def reward(self, samples: Batch) -> Tensor:
        """``[B]`` float64: the QED drug-likeness (Bickerton et al. 2012, RDKit ``QED.qed``) of each
        decoded molecule's largest fragment when it is valid (RDKit sanitises it, EDM's rule), 0
        otherwise (an invalid or non-finite molecule). For the reward-guided samplers
        (``svdd_sde``, ``fk_steering``), which evaluate it on data predictions; report stability
        and validity beside it (a reward can be gamed)."""
        from rdkit import Chem
        from rdkit.Chem import QED

        from .metrics import _rdkit, build_molecule

        _, quiet = _rdkit()
        pos, types, mask = self.decode(samples)
        out = torch.zeros(pos.shape[0], dtype=torch.float64)
        for i in range(pos.shape[0]):
            m = mask[i]
            p = pos[i][m]
            if len(p) == 0 or not bool(torch.isfinite(p).all()):
                continue
            with quiet():
                mol = build_molecule(p.numpy(), types[i][m].numpy())
                try:
                    Chem.SanitizeMol(mol)
                    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
                    out[i] = float(QED.qed(max(frags, key=lambda f: f.GetNumAtoms())))
                except Exception:  # noqa: BLE001 - RDKit raises several types for invalid molecules
                    out[i] = 0.0
        return out

    # -- evaluation and I/O --------------------------------------------------------------------
    def reference_smiles(self) -> frozenset:
        """Canonical SMILES of the training molecules (novelty reference, memoised)."""
        if self._reference is None:
            from .metrics import canonical_reference

            self._reference = canonical_reference(self.split("train").smiles)
        return self._reference

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """EDM's protocol: ``atom_stable``, ``mol_stable`` (bond tables; needs hydrogens),
        RDKit ``validity``, ``uniqueness``, ``valid_unique`` and ``novelty`` (against the training
        SMILES, or the molecules of ``reference``); with ``chemistry``, FCD, QED / SA / logP means
        and W1 distances to the first ``chemistry_reference`` test molecules, and the
        PoseBusters-style geometry checks (``geom_*``; :func:`~domains.molecules.chem_metrics.chemistry_metrics`).
        Non-finite samples count as failures."""
        from .metrics import rdkit_metrics, reference_smiles, stability

        pos, types, mask = self.decode(samples)
        finite = torch.isfinite(pos.flatten(1)).all(1)
        out: dict = {"n": int(pos.shape[0]), "nonfinite_fraction": float(1.0 - finite.double().mean())}
        pos = torch.where(finite[:, None, None], pos, torch.zeros_like(pos))
        mask = mask & finite[:, None]
        if not self.config["remove_h"]:
            st = stability(pos.numpy(), types.numpy(), mask.numpy())
            out["atom_stable"] = float(st["atom_stable"])
            out["mol_stable"] = float(st["mol_stable"])
        ref = None
        if reference is not None:
            rp, rt, rm = self.decode(reference)
            ref = reference_smiles(rp.numpy(), rt.numpy(), rm.numpy())
        elif self.config["novelty"]:
            ref = self.reference_smiles()
        m = rdkit_metrics(pos.numpy(), types.numpy(), mask.numpy(), reference=ref)
        for k in ("validity", "uniqueness", "valid_unique"):
            out[k] = float(m[k])
        if m["novelty"] is not None:
            out["novelty"] = float(m["novelty"])
        out["mean_atoms"] = float(mask.sum(1).double().mean())
        if self.config["chemistry"]:
            from .chem_metrics import chemistry_metrics

            k = int(self.config["chemistry_reference"])
            ref_smiles = list(self.split("test").smiles[:k]) if k > 0 else None
            chem = chemistry_metrics(pos.numpy(), types.numpy(), mask.numpy(), reference_smiles=ref_smiles)
            out.update({key: float(v) for key, v in chem.items() if key not in ("n_molecules", "n_valid", "validity")})
        return out

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """``samples.sdf`` (3D, bonds inferred with EDM's tables, one record per molecule,
        invalid ones included), ``samples.smi`` (the valid ones' SMILES with their record
        names) and ``samples.npz`` (the raw state, Angstrom)."""
        from workbench.utils import atomic_path

        from .io import write_sdf, write_smiles
        from .metrics import molecule_smiles

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pos, types, mask = self.decode(samples)
        names = [f"sample_{i:05d}" for i in range(pos.shape[0])]
        paths = [write_sdf(out_dir / "samples.sdf", pos.numpy(), types.numpy(), mask.numpy(), names=names)]
        smi, smi_names = [], []
        for i in range(pos.shape[0]):
            m = mask[i]
            if not bool(torch.isfinite(pos[i][m]).all()):
                continue
            s = molecule_smiles(pos[i][m].numpy(), types[i][m].numpy())
            if s:
                smi.append(s)
                smi_names.append(names[i])
        paths.append(write_smiles(out_dir / "samples.smi", smi, names=smi_names))
        npz = out_dir / "samples.npz"
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, x=torch.as_tensor(samples.x).detach().cpu().float().numpy(),
                                    mask=mask.numpy().astype(np.float32), atom_types=np.array(ATOM_TYPES), units=np.array("angstrom"))
        paths.append(npz)
        return paths

    def plot(self, samples: Batch, path: Path, *, max_samples: int = 8) -> Path:
        """A PNG of the first ``max_samples`` molecules: atoms projected on their two principal
        axes, coloured by element, bonds from EDM's tables."""
        from workbench.utils import atomic_path, new_figure

        from .metrics import bond_orders

        pos, types, mask = self.decode(samples)
        k = max(1, min(max_samples, pos.shape[0]))
        colours = {"H": "0.75", "C": "0.2", "N": "tab:blue", "O": "tab:red", "F": "tab:green"}
        fig, axes = new_figure(1, k, figsize=(2.2 * k, 2.4), squeeze=False)
        bo = bond_orders(pos[:k].numpy(), types[:k].numpy(), mask[:k].numpy()) if pos.shape[0] else None
        for j in range(k):
            ax = axes[0, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= pos.shape[0]:
                continue
            m = mask[j].numpy()
            p = pos[j].numpy()[m]
            if not np.isfinite(p).all() or len(p) == 0:
                ax.set_title("non-finite", fontsize=7)
                continue
            c = p - p.mean(0)
            _, _, vt = np.linalg.svd(c, full_matrices=False)
            q = c @ vt[:2].T if vt.shape[0] >= 2 else np.c_[c[:, 0], np.zeros(len(c))]
            b = bo[j][np.ix_(m, m)]
            for a1, a2 in zip(*np.nonzero(np.triu(b))):
                ax.plot(q[[a1, a2], 0], q[[a1, a2], 1], "-", color="0.5", lw=0.6 * b[a1, a2])
            el = [ATOM_TYPES[t] for t in types[j].numpy()[m]]
            ax.scatter(q[:, 0], q[:, 1], c=[colours[e] for e in el], s=[12 if e == "H" else 30 for e in el], zorder=3)
            ax.set_aspect("equal")
            ax.set_title(f"{len(p)} atoms", fontsize=7)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        return path

    def __repr__(self) -> str:
        return f"MoleculesDomain(backbone={self.config['backbone']!r}, remove_h={self.config['remove_h']})"
