"""UniPC: unified predictor-corrector (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models", NeurIPS; Alg. 1-3, UniP-p eq. 7 and UniC-p
eq. 8 in the data-prediction form with ``B(h) = h`` ("bh1") or ``B(h) = expm1(h)`` ("bh2")).

Data-prediction (``x0``) form in the log-SNR ``lambda``; ``h = lambda_t - lambda_s0 > 0``,
``hh = -h``, history nodes ``r_k = (lambda_{s_k} - lambda_s0) / h`` and differences
``D_k = (m_k - m_0) / r_k``:

    UniP-p:  x_t = (sigma_t / sigma_s0) x - alpha_t expm1(hh) m_0 - alpha_t B(hh) sum_k a_k D_k
    UniC-p:  x_t^c = (sigma_t / sigma_s0) x - alpha_t expm1(hh) m_0
                     - alpha_t B(hh) (sum_k a^c_k D_k + a^c_p (m_t - m_0))

with ``a`` solving ``R a = b``, ``R_ik = r_k^(i-1)``, ``b_i = i! h phi_{i+1}(hh) / B(hh)``; as
in the authors' code and diffusers, UniP-2 uses ``a = 1/2`` and UniC-1 ``a^c = 1/2``. The
corrector reuses the model evaluation ``m_t`` at the predicted state (no extra NFE); the
model output stored for later steps is the one at the *uncorrected* state, and the
corrected state is the base of the next predictor -- exactly diffusers'
``UniPCMultistepScheduler`` (``predict_x0=True``), which this reproduces step for step.
There is no corrector after the last step (no model call there).

Orders: UniP order ``min(p, steps so far)``, lowered by ``lower_order_final`` to
``min(p, steps left)`` (diffusers' rule, for any number of steps) and by history points with
``lambda = -inf``. A step from ``lambda_s0 = -inf`` (``t = 1`` of flows) has ``h = inf``:
the predictor is DDIM and the corrector uses the exact ``h -> inf`` limit of UniC-1
(``B(hh) a^c -> -1``: ``x_t^c = (sigma_t / sigma_s0) x + alpha_t m_t``). The step into
``t = 0`` returns the data prediction of the last model call.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._multistep import finite_tail, phi
from .base import ModelFn, is_clean, register


def _b_and_bh(h: float, order: int, variant: str) -> tuple[list[float], float]:
    """``(b_1..b_order, B(hh))`` for ``hh = -h`` (data-prediction form)."""
    hh = -h
    bh = hh if variant == "bh1" else math.expm1(hh)
    return [math.factorial(i) * hh * phi(i + 1, hh) / bh for i in range(1, order + 1)], bh


def _solve(r: list[float], b: list[float]) -> list[float]:
    """Solve ``sum_k r_k^(i-1) a_k = b_i`` (a small Vandermonde system) in float64."""
    R = torch.tensor([[rk ** i for rk in r] for i in range(len(r))], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def _base(x: Tensor, m0: Tensor, sig_ratio: float, alpha_t: float, h: float) -> Tensor:
    return sig_ratio * x - (alpha_t * math.expm1(-h)) * m0


def unip(x: Tensor, ms: list[Tensor], lams: list[float], lam_t: float, sig_ratio: float, alpha_t: float, order: int,
         variant: str) -> Tensor:
    """UniP-``order`` step from the last entry of ``ms``/``lams`` (data predictions ``[B, ...]``
    and their log-SNRs, oldest first) to ``lam_t``."""
    h = lam_t - lams[-1]
    out = _base(x, ms[-1], sig_ratio, alpha_t, h)
    if order == 1:
        return out
    r = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)]
    d = [(ms[-1 - k] - ms[-1]) / r[k - 1] for k in range(1, order)]
    b, bh = _b_and_bh(h, order, variant)
    a = [0.5] if order == 2 else _solve(r, b[:-1])
    for ak, dk in zip(a, d):
        out = out - (alpha_t * bh * ak) * dk
    return out


def unic(x: Tensor, ms: list[Tensor], lams: list[float], m_t: Tensor, lam_t: float, sig_ratio: float, alpha_t: float,
         order: int, variant: str) -> Tensor:
    """UniC-``order`` correction of the step ``lams[-1] -> lam_t`` taken from state ``x``,
    given the model's data prediction ``m_t`` at the predicted state."""
    h = lam_t - lams[-1]
    out = _base(x, ms[-1], sig_ratio, alpha_t, h)
    d_t = m_t - ms[-1]
    if not math.isfinite(h):  # lambda_s0 = -inf: exact limit of UniC-1, B(hh) a^c -> -1
        return out + alpha_t * d_t
    b, bh = _b_and_bh(h, order, variant)
    if order == 1:
        return out - (alpha_t * bh * 0.5) * d_t
    r = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)] + [1.0]
    a = _solve(r, b)
    for k in range(1, order):
        out = out - (alpha_t * bh * a[k - 1]) * ((ms[-1 - k] - ms[-1]) / r[k - 1])
    return out - (alpha_t * bh * a[-1]) * d_t


def unipc(model: ModelFn, x: Tensor, ts: Tensor, *, solver_order: int = 2, variant: str = "bh2", use_corrector: bool = True,
          lower_order_final: bool = True) -> Tensor:
    """UniPC sampler (UniP-p predictor + UniC-p corrector), one model call per step.

    Args:
        model: the wrapped model.
        x: ``[B, ...]`` state at ``ts[0]``.
        ts: ``[n + 1]`` decreasing float64 grid.
        solver_order: ``p`` (1-3 registered; up to 4 accepted). UniPC-p with the corrector is
            of order ``p + 1``.
        variant: ``"bh2"`` (``B(h) = expm1(h)``, diffusers' default) or ``"bh1"`` (``B(h) = h``).
        use_corrector: apply UniC after every step but the last (``False``: UniP only).
        lower_order_final: predictor order at most ``steps left`` (diffusers' default).
    Returns:
        ``[B, ...]`` sample at ``ts[-1]`` (the data prediction if ``ts[-1] = 0``).
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if int(solver_order) != solver_order or not 1 <= solver_order <= 4:
        raise ValueError(f"solver_order must be 1, 2, 3 or 4, got {solver_order!r}")
    p = int(solver_order)
    n = len(ts) - 1
    lams: list[float] = []
    ms: list[Tensor] = []
    last = None  # (state the previous predictor started from, its sigma_t / sigma_s, its order)
    for i in range(n):
        s, t = float(ts[i]), float(ts[i + 1])
        pred = model(x, s)
        if is_clean(t):
            return model.project(pred.x0)
        lam_s = model.lam(s)
        if use_corrector and last is not None:
            x_prev, sig_ratio_prev, order_prev = last
            a_s = model.coef(s)[0]
            x = model.project(unic(x_prev, ms, lams, pred.x0, lam_s, sig_ratio_prev, a_s, order_prev, variant))
        lams = (lams + [lam_s])[-p:]
        ms = (ms + [pred.x0])[-p:]
        order = min(p, n - i) if lower_order_final else p
        order = max(1, min(order, finite_tail(lams)))
        a_t, s_t = model.coef(t)
        sig_ratio = s_t / model.coef(s)[1]
        last = (x, sig_ratio, order)
        x = model.project(unip(x, ms, lams, model.lam(t), sig_ratio, a_t, order, variant))
    return x


for _k in (1, 2, 3):
    register(f"unipc_{_k}", nfe=lambda n: n, order=_k + 1, solver_order=_k,
             reference=f"Zhao et al. 2023 (UniPC), UniP-{_k} + UniC-{_k}, B(h) bh2/bh1; diffusers UniPCMultistepScheduler")(unipc)
del _k
