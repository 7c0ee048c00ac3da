"""The analytic toy domain: Gaussian-mixture data with an exact denoiser.

Two datasets (config key ``dataset``):

* ``gmm``: a fixed 2-D Gaussian mixture, 8 modes on a ring of radius 2 with alternating
  standard deviations 0.2 / 0.3 and weights 2 : 1 (:data:`GMM_SPEC`); states ``[B, 2]``.
* ``pointset``: variable-size 3-D point sets (ordered helical chains of 4..12 points,
  :class:`workbench.analytic.PointSetMixture` with :data:`POINTSET_SPEC`) with zero centre
  of mass, states ``[B, 12, 3]`` with ``mask`` ``[B, 12]``; sizes follow the fixed
  histogram :data:`SIZE_HISTOGRAM`.

The process is diffusers' DDPM schedule (linear betas 1e-4..0.02, 1000 steps, epsilon
prediction) as a :class:`~workbench.processes.VPDiscrete`, so diffusers schedulers are valid
peers in benchmarks; the point-set process is the same schedule with ``zero_com=True``.

Teachers (config key ``teacher``): ``mlp`` is the shipped trained network
(``checkpoints/{dataset}_mlp.safetensors``, epsilon prediction); ``exact`` is the
closed-form posterior mean (x0 prediction), i.e. a perfect teacher.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from workbench.analytic import GaussianMixture, PointSetMixture
from workbench.checkpoint import CheckpointError
from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch
from workbench.model import Denoiser
from workbench.processes import VPDiscrete, from_diffusers

from .nets import ResidualMLP, SetTransformer

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: diffusers DDPM scheduler config of the toy process
SCHEDULER_CONFIG = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000,
                    "prediction_type": "epsilon"}

#: the 2-D mixture: 8 modes on a ring of radius 2, stds 0.2 / 0.3 alternating, weights 2 : 1
GMM_SPEC = {"modes": 8, "radius": 2.0, "stds": (0.2, 0.3), "weights": (2.0, 1.0)}

#: the point-set mixture: three helices in 3-D (radius, std, weight, rise per point)
POINTSET_SPEC = {"dim": 3, "radii": (1.0, 1.4, 1.2), "stds": (0.2, 0.25, 0.15), "weights": (0.5, 0.3, 0.2),
                 "rises": (0.3, 0.45, 0.6)}

#: relative frequency of each set size (4..12 points); N_max = 12
SIZE_HISTOGRAM = {4: 1.0, 5: 1.0, 6: 2.0, 7: 2.0, 8: 3.0, 9: 3.0, 10: 2.0, 11: 2.0, 12: 1.0}
N_MAX = max(SIZE_HISTOGRAM)

DATASETS = ("gmm", "pointset")
TEACHERS = ("mlp", "exact")
SPLITS = {"train": 0, "val": 1, "test": 2}
#: reference samples and log-likelihood tables (fixed seeds, shared by all instances)
_CACHE: dict = {}
#: number of fresh true samples the metrics compare against (fixed seed)
N_REFERENCE = {"gmm": 10000, "pointset": 4000}
REFERENCE_SEED = 12345
#: exact samples (per set size for point sets) behind ``loglik_true``
N_LOGLIK = {"gmm": 20000, "pointset": 2000}


def make_gmm() -> GaussianMixture:
    """The fixed 2-D mixture of :data:`GMM_SPEC`."""
    k = GMM_SPEC["modes"]
    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    means = GMM_SPEC["radius"] * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    stds = torch.tensor([GMM_SPEC["stds"][i % 2] for i in range(k)], dtype=torch.float64)
    weights = torch.tensor([GMM_SPEC["weights"][i % 2] for i in range(k)], dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


def make_pointset() -> PointSetMixture:
    """The fixed point-set mixture of :data:`POINTSET_SPEC`."""
    s = POINTSET_SPEC
    return PointSetMixture(s["radii"], s["stds"], s["weights"], dim=s["dim"], rises=s["rises"])


def _size_probs() -> tuple[Tensor, Tensor]:
    sizes = torch.tensor(sorted(SIZE_HISTOGRAM), dtype=torch.long)
    w = torch.tensor([SIZE_HISTOGRAM[int(n)] for n in sizes], dtype=torch.float64)
    return sizes, w / w.sum()


def draw_sizes(n: int, generator=None) -> Tensor:
    """``n`` set sizes ``[n]`` from :data:`SIZE_HISTOGRAM`. ``generator``: None, one generator,
    or ``n`` per-sample generators (size ``i`` then depends only on ``generator[i]``)."""
    sizes, p = _size_probs()
    if generator is None or isinstance(generator, torch.Generator):
        return sizes[torch.multinomial(p, n, replacement=True, generator=generator)]
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
    return sizes[torch.cat([torch.multinomial(p, 1, generator=g) for g in gens])]


def mask_of_sizes(sizes: Tensor, n_max: int = N_MAX) -> Tensor:
    """``[B]`` sizes -> float mask ``[B, n_max]`` (real points first)."""
    return (torch.arange(n_max)[None, :] < torch.as_tensor(sizes)[:, None]).float()


class ExactTeacher(nn.Module):
    """The closed-form denoiser as a module: ``forward(x, t, mask=None, cond=None)`` returns the
    exact posterior mean ``E[x_0 | x_t]`` (``prediction = "x0"``), computed in float64 and
    returned in ``x.dtype``. It has no parameters."""

    def __init__(self, fn, process, masked: bool):
        super().__init__()
        self.fn = fn
        self.process = process
        self.masked = masked
        self.prediction = "x0"

    def forward(self, x: Tensor, t: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.fn(x, t, mask=mask) if self.masked else self.fn(x, t)


@dataclass
class ToyConfig:
    """Options of the toy domain (``domain.<key>=`` on the command line)."""

    dataset: str = field(default="gmm", metadata={"help": "gmm (2-D mixture) or pointset (masked, zero-CoM variable-size point sets)"})
    teacher: str = field(default="mlp", metadata={"help": "mlp (shipped trained network) or exact (closed-form denoiser)"})


#: width of the toy backbones (``ResidualMLP`` / ``SetTransformer`` ``hidden``)
HIDDEN = {"gmm": 128, "pointset": 64}


class ToyDomain(Domain):
    """Analytic toy domain (see the module docstring). Config (:class:`ToyConfig`):
    ``dataset`` in ``{"gmm", "pointset"}``, ``teacher`` in ``{"mlp", "exact"}``."""

    name = "toy"
    description = "Gaussian mixtures with an exact denoiser: 2-D GMM or masked zero-CoM 3-D point sets"
    Config = ToyConfig
    formats = ("csv", "npz")
    has_exact_model = True
    prediction = "epsilon"
    primary_metric = "sw"
    metric_info = {
        "sw": ("lower", "sliced Wasserstein distance of the samples to exact samples of the data distribution"),
        "sw_shape": ("lower", "sliced Wasserstein distance of the point sets' shape features (pointset)"),
        "mmd": ("lower", "RBF-kernel MMD of the point sets' shape features to exact ones (pointset)"),
    }
    #: ``workbench demo`` runs both datasets with the shipped MLP teachers
    demo_configs = {"gmm": {"dataset": "gmm", "teacher": "mlp"}, "pointset": {"dataset": "pointset", "teacher": "mlp"}}
    demo_n = 1000
    teacher_sampler = ("dpm_solver_pp_2m", 50)

    def __init__(self, **config):
        super().__init__(**config)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown toy dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.config["teacher"] not in TEACHERS:
            raise ValueError(f"unknown toy teacher {self.config['teacher']!r}; valid: {', '.join(TEACHERS)}")
        base = from_diffusers(SCHEDULER_CONFIG)
        if self.dataset == "pointset":
            n = base.num_train_timesteps
            knots = torch.arange(1, n + 1, dtype=torch.float64) / n  # t = (i + 1) / N
            self._process = VPDiscrete(base.alpha(knots) ** 2, prediction=base.prediction, zero_com=True)
            self.mixture = make_pointset()
        else:
            self._process = base
            self.mixture = make_gmm()

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def train_defaults(self) -> dict:  # type: ignore[override]
        """Teacher training hyper-parameters: gmm 8000 steps (about 2 min on one CPU core),
        pointset 4000 steps (about 3 min)."""
        if self.dataset == "pointset":
            return {"steps": 4000, "batch_size": 128, "lr": 2e-3, "warmup": 200, "schedule": "cosine", "ema_decay": 0.999,
                    "ckpt_every": 1000, "grad_clip": 1.0}
        return {"steps": 8000, "batch_size": 512, "lr": 2e-3, "warmup": 200, "schedule": "cosine", "ema_decay": 0.999,
                "ckpt_every": 2000, "grad_clip": 1.0}

    # -- modelling ---------------------------------------------------------------------------
    def process(self) -> VPDiscrete:
        return self._process

    def build_backbone(self, two_time: bool = False, **kwargs):
        """gmm: :class:`~domains.toy.nets.ResidualMLP`; pointset:
        :class:`~domains.toy.nets.SetTransformer`; both wrapped in a
        :class:`~workbench.model.Denoiser` (epsilon prediction, diffusers timestep input).

        ``two_time=True``: the same net with a second (zero-initialised) time embedding of
        ``t - r`` wrapped in a :class:`~workbench.model.TwoTimeDenoiser`, an average-velocity
        student ``u(z, r, t, mask=, cond=)`` in the linear view of the process (MeanFlow,
        SplitMeanFlow) whose parameter names match the teacher's; the keywords
        ``prediction`` (default epsilon), ``time_scale`` (default ``None``: the teacher's
        timestep input) and ``gap_scale`` (default 1000) go to the ``TwoTimeDenoiser``."""
        wrap = {k: kwargs.pop(k) for k in ("prediction", "time_scale", "gap_scale") if k in kwargs}
        if wrap and not two_time:
            raise ValueError(f"{', '.join(sorted(wrap))} only apply to two-time students (two_time=True)")
        kwargs.setdefault("hidden", HIDDEN[self.dataset])
        if self.dataset == "pointset":
            net = SetTransformer(dim=POINTSET_SPEC["dim"], n_max=N_MAX, two_time=two_time, **kwargs)
        else:
            net = ResidualMLP(dim=2, two_time=two_time, **kwargs)
        if two_time:
            from workbench.model import TwoTimeDenoiser

            wrap["prediction"] = wrap.get("prediction") or self.prediction
            return TwoTimeDenoiser(net, self._process, time_map="diffusers", **wrap)
        return Denoiser(net, self._process, self.prediction, time_map="diffusers")

    def build_two_time_backbone(self, **kwargs):
        """``build_backbone(two_time=True, **kwargs)``: the teacher's net with a second
        (zero-initialised) embedding of ``t - r`` in a :class:`~workbench.model.TwoTimeDenoiser`."""
        return self.build_backbone(two_time=True, **kwargs)

    def slim_backbone_kwargs(self, factor: float) -> dict:
        """``{"hidden": width // factor}`` of the dataset's backbone (:data:`HIDDEN`)."""
        return {"hidden": max(1, int(HIDDEN[self.dataset] // factor))}

    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / f"{self.dataset}_mlp.safetensors"

    def shipped_students(self) -> tuple:
        """The MeanFlow student of the shipped GMM teacher (``checkpoints/README.md``), at 1 and 2 steps."""
        from workbench.domain import ShippedStudent

        if self.dataset != "gmm" or self.config["teacher"] != "mlp":
            return ()
        path = CHECKPOINT_DIR / "gmm_meanflow_student.safetensors"
        return tuple(ShippedStudent(f"meanflow_{k}step", path, k, description=f"MeanFlow student, {k} step{'s' * (k > 1)}") for k in (1, 2))

    def teacher_regenerate_command(self) -> str:
        return "python -m domains.toy.train_teachers"

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """The checkpoint must be a toy network of this ``dataset``."""
        super().check_checkpoint(meta, path)
        ds = (meta.get("config") or {}).get("dataset")
        if ds is not None and ds != self.dataset:
            raise CheckpointError(f"checkpoint {path} was trained for toy dataset {ds!r}, not {self.dataset!r}")

    def exact_model(self):
        """The exact denoiser ``model(x, t, mask=None) -> E[x_0 | x_t]`` (x0 prediction)."""
        return self.mixture.denoiser(self._process, "x0")

    def load_teacher(self, path: Optional[str] = None, *, device="cpu") -> nn.Module:
        """``teacher=exact`` (and no ``path``): :class:`ExactTeacher`. Otherwise
        :meth:`Domain.load_teacher` (``path`` or the shipped ``checkpoints/{dataset}_mlp.safetensors``)."""
        if path is None and self.config["teacher"] == "exact":
            return ExactTeacher(self.exact_model(), self._process, masked=self.dataset == "pointset").eval()
        return super().load_teacher(path, device=device)

    # -- data --------------------------------------------------------------------------------
    def sample_true(self, n: int, generator=None) -> Batch:
        """``n`` exact samples of the data distribution (float32); pointsets padded to
        ``N_max`` with sizes from :data:`SIZE_HISTOGRAM`."""
        if self.dataset == "pointset":
            sizes = draw_sizes(n, generator)
            x, mask = self.mixture.sample(sizes, generator, dtype=torch.float32)
            pad = N_MAX - x.shape[1]
            if pad:
                x = torch.cat([x, x.new_zeros(n, pad, x.shape[2])], dim=1)
                mask = torch.cat([mask, mask.new_zeros(n, pad)], dim=1)
            return Batch(x=x, mask=mask)
        return Batch(x=self.mixture.sample(n, generator, dtype=torch.float32))

    def train_data(self, split: str = "train"):
        """A pure batch sampler ``f(batch_size, generator) -> Batch`` of fresh exact samples.
        The split only offsets the seed of a child generator drawn from ``generator``, so
        the splits are disjoint streams and ``f`` is a deterministic function of the
        generator state."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        offset = SPLITS[split]

        def data(batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            child = torch.Generator().manual_seed((seed + offset * 0x9E3779B97F4A7C15) % 2**63)
            return self.sample_true(int(batch_size), child)

        return data

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Prior noise ``x_T`` ``[n, 2]`` (gmm) or ``[n, 12, 3]`` with ``mask`` ``[n, 12]``
        (pointset: sizes drawn from :data:`SIZE_HISTOGRAM`, with per-sample generators both
        the size and the noise of sample ``i`` come from ``generator[i]``)."""
        if cond is not None:
            raise ValueError("the toy domain is unconditional; cond must be None")
        if self.dataset == "pointset":
            sizes = draw_sizes(n, generator)
            mask = mask_of_sizes(sizes)
            x = self._process.prior((n, N_MAX, POINTSET_SPEC["dim"]), generator=generator, mask=mask)
            return GenerationBatch(x_T=x, mask=mask, info={"sizes": sizes})
        return GenerationBatch(x_T=self._process.prior((n, 2), generator=generator))

    # -- evaluation ----------------------------------------------------------------------------
    def reference_samples(self) -> Batch:
        """Fresh exact samples for the metrics (fixed seed, cached)."""
        key = ("reference", self.dataset)
        if key not in _CACHE:
            g = torch.Generator().manual_seed(REFERENCE_SEED)
            _CACHE[key] = self.sample_true(N_REFERENCE[self.dataset], g)
        return _CACHE[key]

    def log_prob(self, samples: Batch) -> Tensor:
        """Exact log-density ``[B]`` of ``samples`` under the true mixture (pointsets: on the
        zero-CoM subspace of each size)."""
        if self.dataset == "pointset":
            return self.mixture.log_prob(samples.x.double(), samples.mask)
        return self.mixture.log_prob(samples.x.double())

    def reward(self, samples: Batch) -> Tensor:
        """The exact log-density of the true mixture (:meth:`log_prob`), differentiable in
        ``samples.x``, as a ``[B]`` reward in ``samples.x``'s dtype."""
        return self.log_prob(samples).to(samples.x.dtype)

    def true_loglik(self, sizes: Optional[Tensor] = None) -> float:
        """``E_p[log p]`` (minus the differential entropy of the data; cached).

        Computed as ``sum_k w_k E_{N_k}[log w_k N_k] + E_p[H(r(x))]``: the first term is
        closed form (``log w_k - d/2 (log(2 pi s_k^2) + 1)``), the second (the entropy of the
        responsibilities ``r_k(x)``, which is ~0 for well-separated components) is estimated
        with :data:`N_LOGLIK` exact samples, so the Monte Carlo error is tiny (< 1e-3).
        This uses ``log p = log w_k N_k(x) - log r_k(x)`` for every ``k`` and
        ``r_k(x) p(x) = w_k N_k(x)``. For point sets the expectation is size-matched: the
        mean over ``sizes`` ``[B]`` of ``E_p[log p | n]`` (``None``: the histogram average)."""
        key = ("loglik", self.dataset)
        if key not in _CACHE:
            g = torch.Generator().manual_seed(REFERENCE_SEED + 1)
            if self.dataset == "pointset":
                mix = self.mixture
                table = {}
                for n in sorted(SIZE_HISTOGRAM):
                    x, mask = mix.sample(torch.full((N_LOGLIK["pointset"],), n), g)
                    d = (n - 1) * mix.dim
                    closed = float((mix.weights * (torch.log(mix.weights) - 0.5 * d * (torch.log(2 * math.pi * mix.stds**2) + 1))).sum())
                    table[n] = closed + float(_responsibility_entropy(self._component_logp(x, mask)).mean())
                _CACHE[key] = table
            else:
                mix = self.mixture
                x = mix.sample(N_LOGLIK["gmm"], g)
                per = (torch.log(2 * math.pi * mix.stds**2) + 1).flatten(1).sum(1)  # [K]
                closed = float((mix.weights * (torch.log(mix.weights) - 0.5 * per)).sum())
                _CACHE[key] = {0: closed + float(_responsibility_entropy(self._component_logp(x)).mean())}
        table = _CACHE[key]
        if self.dataset != "pointset":
            return table[0]
        if sizes is None:
            sz, p = _size_probs()
            return float(sum(float(pi) * table[int(n)] for n, pi in zip(sz, p)))
        return float(np.mean([table[int(n)] for n in torch.as_tensor(sizes).flatten().tolist()]))

    def _component_logp(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``log w_k N_k(x)`` ``[B, K]`` of the true mixture's components (point sets: on the
        zero-CoM subspace, ``(n - 1) D`` dimensions)."""
        mix = self.mixture
        x = x.double()
        if self.dataset == "pointset":
            m = mask.double()
            mu = mix.templates(m)  # [B, K, N, D]
            sq = ((x[:, None] - mu) ** 2 * m[:, None, :, None]).sum(dim=(2, 3))
            d = mix.dof(m, mix.dim)[:, None]
            s2 = mix.stds[None, :] ** 2
            return torch.log(mix.weights)[None] - 0.5 * d * torch.log(2 * math.pi * s2) - 0.5 * sq / s2
        var = mix.stds**2  # [K, *E]
        diff = x[:, None] - mix.means[None]
        return torch.log(mix.weights)[None] - 0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).flatten(2).sum(2)

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """Metrics against fresh exact samples (fixed seed) as floats:

        * ``sw``: sliced 2-Wasserstein distance (256 projections) of the samples (gmm) or of
          the pooled real points (pointset) to the reference;
        * ``mmd``: unbiased RBF MMD^2 (median heuristic, up to 2000 samples each);
        * ``loglik``: mean exact log-likelihood under the true mixture; ``loglik_true`` its
          expectation under the true distribution (minus the differential entropy; for point
          sets matched to the sizes of ``samples``, whose log-densities live in ``(n - 1) D``
          dimensions) and ``loglik_gap = loglik_true - loglik`` (about 0 for exact samples,
          negative for over-concentrated ones, positive for too diffuse ones);
        * pointset only: ``sw_shape`` (SW of per-set radius of gyration, end-to-end distance
          and mean bond length), ``com_max`` (max ``|CoM|``) and ``pad_max`` (max ``|x|``
          on padding);
        * with ``reference`` (a :class:`Batch`): ``sw_reference`` to those samples.
        """
        from workbench import metrics as M

        x = samples.x.detach().cpu().float()
        mask = None if samples.mask is None else samples.mask.detach().cpu().float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("samples contain NaN/Inf")
        ref = self.reference_samples()
        out: dict[str, float] = {}
        sub = torch.Generator().manual_seed(0)
        if self.dataset == "pointset":
            if mask is None:
                raise ValueError("pointset samples need a mask [B, N]")
            s = Batch(x=x, mask=mask)
            pts, ref_pts = _real_points(x, mask), _real_points(ref.x, ref.mask)
            out["sw"] = M.sliced_wasserstein(pts, ref_pts)
            fa, fr = _shape_features(x, mask), _shape_features(ref.x, ref.mask)
            out["sw_shape"] = M.sliced_wasserstein(fa, fr)
            out["mmd"] = M.mmd_rbf(_subsample(fa, 2000, sub), _subsample(fr, 2000, sub)) if len(fa) >= 2 else float("nan")
            lp = self.log_prob(s)
            m = mask[..., None]
            com = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
            out["com_max"] = float(com.norm(dim=-1).max())
            out["pad_max"] = float((x * (1 - m)).abs().max())
        else:
            out["sw"] = M.sliced_wasserstein(x, ref.x)
            out["mmd"] = M.mmd_rbf(_subsample(x, 2000, sub), _subsample(ref.x, 2000, sub)) if len(x) >= 2 else float("nan")
            lp = self.log_prob(Batch(x=x))
        out["loglik"] = float(lp.mean())
        out["loglik_true"] = self.true_loglik(None if mask is None else mask.sum(1).round().long())
        out["loglik_gap"] = out["loglik_true"] - out["loglik"]
        if reference is not None:
            rx = reference.x.detach().cpu().float()
            if self.dataset == "pointset":
                out["sw_reference"] = M.sliced_wasserstein(_real_points(x, mask), _real_points(rx, reference.mask.cpu().float()))
            else:
                out["sw_reference"] = M.sliced_wasserstein(x, rx)
        return out

    # -- I/O -----------------------------------------------------------------------------------
    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """``samples.csv`` (one point per row: ``sample,x,y`` for gmm, ``sample,index,x,y,z``
        for point sets, real points only) and ``samples.npz`` (``x``, and ``mask`` for point
        sets), written atomically."""
        from workbench.utils import atomic_path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        x = samples.x.detach().cpu().float().numpy()
        csv, npz = out / "samples.csv", out / "samples.npz"
        if self.dataset == "pointset":
            mask = samples.mask.detach().cpu().float().numpy()
            b, j = np.nonzero(mask > 0.5)
            cols = ["x", "y", "z"][: x.shape[-1]]
            header = "sample,index," + ",".join(cols)
            rows = np.column_stack([b, j, x[b, j]])
            fmt = ["%d", "%d"] + ["%.7g"] * x.shape[-1]
            arrays = {"x": x, "mask": mask}
        else:
            header = "sample,x,y"
            rows = np.column_stack([np.arange(len(x)), x.reshape(len(x), -1)])
            fmt = ["%d"] + ["%.7g"] * x.reshape(len(x), -1).shape[1]
            arrays = {"x": x}
        with atomic_path(csv) as tmp:
            np.savetxt(tmp, rows, fmt=fmt, delimiter=",", header=header, comments="")
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return [csv, npz]

    def plot(self, samples: Batch, path: Path) -> Path:
        """gmm: samples over the true log-density contours; pointset: the first 8 sets
        (x-y projection, chain order drawn as lines, colour = chain index)."""
        from workbench.utils import new_figure

        from workbench.utils import save_figure

        x = samples.x.detach().cpu().float()
        if self.dataset == "pointset":
            mask = samples.mask.detach().cpu().float()
            k = min(8, len(x))
            cols = min(4, max(1, k))
            rows = max(1, math.ceil(k / cols))
            fig, axes = new_figure(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
            for i, ax in enumerate(axes.flat):
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= k:
                    ax.axis("off")
                    continue
                p = x[i][mask[i] > 0.5].numpy()
                ax.plot(p[:, 0], p[:, 1], "-", color="0.6", lw=1, zorder=1)
                ax.scatter(p[:, 0], p[:, 1], c=np.arange(len(p)), cmap="viridis", s=25, zorder=2)
                ax.set_aspect("equal", adjustable="datalim")
                ax.set_title(f"n = {len(p)}", fontsize=8)
            fig.suptitle("toy point sets (x-y projection)", fontsize=9)
        else:
            fig, ax = new_figure(figsize=(4.5, 4.5))
            lim = 3.2
            g = torch.linspace(-lim, lim, 200, dtype=torch.float64)
            gx, gy = torch.meshgrid(g, g, indexing="xy")
            lp = self.mixture.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(gx.shape)
            ax.contour(gx.numpy(), gy.numpy(), lp.exp().numpy(), levels=8, cmap="Greys", linewidths=0.8)
            p = x[:5000].reshape(min(len(x), 5000), -1).numpy()
            ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.5, color="C0")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(f"toy gmm: {len(x)} samples over the true density", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)


def _real_points(x: Tensor, mask: Tensor) -> Tensor:
    """All real points of a batch of sets, pooled: ``[sum n_i, D]``."""
    return x.float()[mask > 0.5]


def _shape_features(x: Tensor, mask: Tensor) -> Tensor:
    """Per-set ``[radius of gyration, end-to-end distance, mean consecutive distance]`` ``[B, 3]``
    (the real points of each row taken in order)."""
    x = x.double()
    m = mask.double()
    n = m.sum(1).clamp_min(1.0)
    com = (x * m[..., None]).sum(1) / n[:, None]
    rg = torch.sqrt((((x - com[:, None]) ** 2).sum(-1) * m).sum(1) / n)
    idx_last = (n - 1).long()
    e2e = (x[torch.arange(len(x)), idx_last] - x[:, 0]).norm(dim=-1)
    bonds = (x[:, 1:] - x[:, :-1]).norm(dim=-1) * (m[:, 1:] * m[:, :-1])
    mb = bonds.sum(1) / (n - 1).clamp_min(1.0)
    return torch.stack([rg, e2e, mb], dim=1)


def _responsibility_entropy(logp: Tensor) -> Tensor:
    """Entropy ``-sum_k r_k log r_k`` ``[B]`` of the responsibilities ``r = softmax(logp)``."""
    logr = torch.log_softmax(logp, dim=1)
    return -(logr.exp() * logr).sum(1)


def _subsample(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    if len(x) <= k:
        return x
    return x[torch.randperm(len(x), generator=g)[:k]]
