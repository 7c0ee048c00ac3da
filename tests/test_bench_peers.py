"""`workbench bench peers`: the benchmark against diffusers and k-diffusion on an exact mixture.

Ground truths: diffusers' DDIM (eta 0, 'trailing', set_alpha_to_one) IS the workbench's euler
on the same time-uniform grid; diffusers' EulerDiscrete and k-diffusion's ``sample_euler`` are
the same Euler method in ``sigma~`` on the same sigmas; k-diffusion's Euler on a single
Gaussian has a closed form (written out below).
"""
from __future__ import annotations

import math

import pytest
import torch

from workbench import bench_peers as bp


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    res = bp.bench_peers(out_dir=out, dim=2, components=3, nfes=(3, 5), n=16, samplers=["euler", "dpm_solver_pp_2m", "heun"],
                         extra_grids=["uniform_t"], overhead=False, progress=False)
    return out, res


def test_tiny_run_writes_the_tables(tiny):
    out, res = tiny
    for f in ("peers.csv", "peers_summary.csv", "peers.md", "peers.json"):
        assert (out / f).stat().st_size > 0
    md = (out / "peers.md").read_text()
    assert "### vp_linear: best workbench sampler at default settings vs the best peer" in md
    assert "### edm: best workbench sampler at default settings vs the best peer" in md
    assert {(r["schedule"], r["nfe"]) for r in res["summary"]} == {(s, k) for s in ("vp_linear", "edm") for k in (3, 5)}
    srcs = {r["source"] for r in res["rows"]}
    assert {"workbench", "diffusers"} <= srcs
    # heun spends 2 steps - 1 NFE: a cell at 3 and 5, and every row spent exactly its NFE
    assert {r["nfe"] for r in res["rows"] if r["method"] == "heun" and r["source"] == "workbench"} == {3, 5}
    # the summary's best workbench entry is a default-settings row (not an extra-grid one)
    assert all("@" not in s["workbench"] for s in res["summary"])


def test_workbench_euler_equals_ddim_trailing_on_the_same_grid(tiny):
    _, res = tiny
    # NFE 5 (and 4 below): 1000 / steps is an integer, so DDIM's 'trailing' timesteps are exactly
    # the uniform grid (at 3 steps diffusers rounds them to 999, 666, 332)
    for k in (5,):
        e = next(r["error"] for r in res["rows"] if r["schedule"] == "vp_linear" and r["method"] == "euler@uniform_t" and r["nfe"] == k)
        d = next(r["error"] for r in res["rows"] if r["schedule"] == "vp_linear" and r["method"] == "ddim" and r["nfe"] == k)
        assert abs(e - d) < 1e-5
    gmm = bp.make_problem(2, 3)
    proc = bp.make_process("vp_linear")
    model = gmm.denoiser(proc, "epsilon")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, _ = bp.run_workbench("euler", model, proc, x_T, 4, "uniform_t")
    b, nfe = bp.run_diffusers_peer("ddim", model, proc, x_T, 4)
    assert nfe == 4 and float((a - b).abs().max()) < 1e-5


def test_edm_euler_equals_workbench_euler_on_the_edm_grid():
    """EDMEulerScheduler and the workbench's euler on VE's default (EDM, rho 7) grid: the same
    Euler steps in sigma (the EDM preconditioning is undone exactly)."""
    gmm = bp.make_problem(2, 3)
    proc = bp.make_process("edm")
    model = gmm.denoiser(proc, "epsilon")
    x_T = 80.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, _ = bp.run_workbench("euler", model, proc, x_T, 5)
    b, nfe = bp.run_diffusers_peer("edm_euler", model, proc, x_T, 5)
    assert nfe == 5 and float((a - b).abs().max() / b.abs().max()) < 1e-5


def _kd():
    kd = bp.load_kdiffusion()
    if kd is None:
        pytest.skip("k-diffusion not installed (`make install` adds k-diffusion==0.1.1.post1 with --no-deps)")
    return kd


def test_kdiffusion_loader_reproduces_euler_closed_form():
    """Data N(0, s^2 I): the denoiser is D(x, sigma) = s^2 / (s^2 + sigma^2) x, so one Euler
    step of dx/dsigma = (x - D) / sigma multiplies x by 1 + sigma / (s^2 + sigma^2) (sigma' - sigma)."""
    kd = _kd()
    s2 = 0.3**2
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    out = kd.sample_euler(lambda y, sig: s2 / (s2 + sig.reshape(-1, 1) ** 2) * y, x, sigmas, disable=True)
    f = math.prod(1.0 + float(a) / (s2 + float(a) ** 2) * (float(b) - float(a)) for a, b in zip(sigmas[:-1], sigmas[1:]))
    assert torch.allclose(out, x * f, rtol=1e-12, atol=0)


def test_kdiffusion_euler_equals_diffusers_euler_discrete_on_vp():
    """k-diffusion's sample_euler on diffusers' EulerDiscrete sigmas = EulerDiscreteScheduler:
    checks the VP mapping (sigma~ -> t, x~ = x / alpha) of both peer wrappers."""
    kd = _kd()
    gmm = bp.make_problem(2, 3)
    proc = bp.make_process("vp_linear")
    model = gmm.denoiser(proc, "epsilon")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, n1 = bp.run_kdiffusion(kd, "euler", model, proc, x_T, bp.kdiffusion_sigmas(proc, 5, "diffusers"))
    b, n2 = bp.run_diffusers_peer("euler", model, proc, x_T, 5)
    assert n1 == n2 == 5 and float((a - b).abs().max() / b.abs().max()) < 1e-5


def test_summary_picks_the_best_of_each_library():
    rows = [{"schedule": "edm", "source": "workbench", "method": "a", "grid": "edm", "nfe": 4, "error": 0.2},
            {"schedule": "edm", "source": "workbench", "method": "b", "grid": "edm", "nfe": 4, "error": 0.1},
            {"schedule": "edm", "source": "workbench", "method": "c@x", "grid": "x", "nfe": 4, "error": 0.01},
            {"schedule": "edm", "source": "diffusers", "method": "d", "grid": "diffusers", "nfe": 4, "error": 0.05},
            {"schedule": "edm", "source": "k-diffusion", "method": "k", "grid": "karras", "nfe": 4, "error": 0.4}]
    (s,) = bp.summary(rows, [4], ["edm"])
    assert s["workbench"] == "b" and s["diffusers"] == "d" and s["kdiffusion"] == "k (karras)"
    assert s["ratio_diffusers"] == pytest.approx(2.0) and s["ratio_kdiffusion"] == pytest.approx(0.25) and s["holds"] is False


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule 'vp'; valid: vp_linear, edm"):
        bp.make_process("vp")
    with pytest.raises(ValueError, match="unknown time grid 'nope'; valid: "):
        bp.bench_peers(out_dir="unused", extra_grids=["nope"])
    with pytest.raises(ValueError, match="unknown diffusers EDM peer 'ddim'; valid: "):
        bp.diffusers_peer("ddim", bp.make_process("edm"))


def test_cli_bench_peers(tmp_path, capsys):
    from workbench.cli import main

    code = main(["bench", "peers", f"out={tmp_path}", "bench_peers.nfes=[3]", "bench_peers.dim=2", "bench_peers.components=2",
                 "bench_peers.n=8", "bench_peers.overhead=false", "bench_peers.schedules=[edm]", "bench_peers.samplers=[euler]"])
    assert code == 0 and (tmp_path / "peers.md").exists()
    assert "[bench peers] edm: reference solved" in capsys.readouterr().err  # progress lines while it runs
    assert main(["bench", "peers", "bench_peers.schedules=[vp]"]) == 2
    assert "unknown schedule 'vp'; valid: vp_linear, edm" in capsys.readouterr().err
