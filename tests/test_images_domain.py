"""The ``images`` domain plugin: conformance, backbone, metrics, writers, checkpoints, data."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

import PIL.Image as PIL

import workbench  # noqa: E402
from workbench.checkpoint import CheckpointError  # noqa: E402
from workbench.domain import check_domain, get_domain  # noqa: E402
from workbench.losses import Batch  # noqa: E402
from workbench.utils import per_sample_generators  # noqa: E402

from domains.images import DatasetUnavailable, ImagesDomain, fashion_mnist_available  # noqa: E402
from domains.images.data import NULL_LABEL, _read_idx, load_splits, quantize  # noqa: E402
from domains.images.domain import CHECKPOINT_DIR, LabelDropoutLoss  # noqa: E402

TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8)


@pytest.fixture(scope="module")
def digits():
    return ImagesDomain()


@pytest.fixture(scope="module")
def real(digits):
    return {s: digits.reference_batch(None, split=s) for s in ("train", "val", "test")}


def test_registered_and_splits(digits, real):
    assert isinstance(get_domain("images"), ImagesDomain)
    assert digits.formats == ("png", "npz") and digits.prediction == "epsilon"
    assert {k: len(v) for k, v in real.items()} == {"train": 1437, "val": 180, "test": 180}
    for b in real.values():
        assert b.x.shape[1:] == (1, 8, 8) and float(b.x.min()) == -1.0 and float(b.x.max()) == 1.0
        assert b.cond.dtype == torch.long and set(b.cond.tolist()) == set(range(10))
    # the seeded split is fixed and disjoint
    pix = {s: {tuple(x.flatten().tolist()) for x in real[s].x} for s in real}
    assert len(pix["train"] & pix["test"]) < 10  # sklearn digits has a few exact duplicates
    again = load_splits("digits")["test"]
    assert torch.equal(again.x, real["test"].x)
    # the batch sampler is pure in its generator
    f = digits.train_data("train")
    a, b = f(16, torch.Generator().manual_seed(3)), f(16, torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond)


@pytest.mark.parametrize("conditional", [True, False])
def test_check_domain(conditional):
    d = ImagesDomain(conditional=conditional)
    rep = check_domain(d)
    assert "fd_classifier" in rep["metrics"] and "precision" in rep["metrics"]
    assert ("class_accuracy" in rep["metrics"]) == conditional
    gb = d.generation_batch(12, generator=per_sample_generators(0, 12))
    expected = torch.arange(12) % 10 if conditional else torch.full((12,), NULL_LABEL)
    assert torch.equal(gb.cond, expected)
    assert gb.x_T.shape == (12, 1, 8, 8)


def test_generation_batch_labels_and_seeds(digits):
    gb = digits.generation_batch(5, generator=per_sample_generators(7, 5), cond=3)
    assert gb.cond.tolist() == [3] * 5
    gb2 = digits.generation_batch(3, generator=per_sample_generators(9, 3), cond=[0, 10, 4])
    assert gb2.cond.tolist() == [0, 10, 4]
    assert torch.allclose(gb.x_T[2], digits.generation_batch(1, generator=per_sample_generators(9, 1)).x_T[0])
    with pytest.raises(ValueError, match="labels"):
        digits.generation_batch(2, cond=[0, 11])


def test_tiny_unet_samples_with_workbench_sample(digits):
    torch.manual_seed(0)
    net = digits.build_backbone(**TINY)
    assert net.prediction == "epsilon" and net.time_map == "diffusers"
    assert sum(p.numel() for p in net.parameters()) < 100_000
    proc = digits.process()
    gb = digits.generation_batch(6, generator=per_sample_generators(0, 6))
    x = workbench.sample(net, proc, gb.x_T, sampler="euler", steps=3, prediction=net.prediction, cond=gb.cond)
    assert x.shape == (6, 1, 8, 8) and bool(torch.isfinite(x).all())
    # no cond = the null label; guidance w mixes conditional and unconditional predictions
    t = torch.full((6,), 0.5)
    with torch.no_grad():
        e_c, e_u = net(gb.x_T, t, cond=gb.cond), net(gb.x_T, t)
        assert torch.allclose(e_u, net(gb.x_T, t, cond=torch.full((6,), NULL_LABEL)))
        net.backbone.guidance = 3.0
        e_g = net(gb.x_T, t, cond=gb.cond)
    assert torch.allclose(e_g, e_u + 3.0 * (e_c - e_u), atol=1e-5)


def test_label_dropout_objective(digits):
    seen = []

    class Spy(torch.nn.Module):
        prediction = "epsilon"

        def forward(self, x, t, *, mask=None, cond=None):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    b = digits.train_data()(2000, torch.Generator().manual_seed(0))
    digits.objective()({"model": Spy()}, b, torch.Generator().manual_seed(1))
    frac = float((seen[-1] == NULL_LABEL).double().mean())
    assert 0.07 < frac < 0.13 and torch.equal(seen[-1][seen[-1] != NULL_LABEL], b.cond[seen[-1] != NULL_LABEL])
    ImagesDomain(conditional=False).objective()({"model": Spy()}, b, torch.Generator().manual_seed(1))
    assert bool((seen[-1] == NULL_LABEL).all())
    assert isinstance(digits.objective(), LabelDropoutLoss)


def test_metrics_real_vs_real_and_noise(digits, real):
    m = digits.evaluate(real["val"])  # reference: the test split
    noise = digits.evaluate(Batch(x=torch.randn(180, 1, 8, 8).clamp(-1, 1), cond=real["val"].cond))
    assert m["fd_classifier"] < 0.1 * noise["fd_classifier"]
    assert m["precision"] > 0.85 and m["recall"] > 0.85
    assert noise["precision"] < 0.5 and noise["recall"] < 0.3
    assert noise["class_accuracy"] < 0.4
    # class accuracy of real images = the classifier's accuracy (checkpoint metadata)
    from safetensors import safe_open

    with safe_open(str(CHECKPOINT_DIR / "digits_classifier.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["workbench"])
    test = digits.evaluate(real["test"], reference=real["val"])
    assert test["class_accuracy"] == pytest.approx(meta["test_accuracy"], abs=1e-6)
    assert m["class_accuracy"] == pytest.approx(meta["val_accuracy"], abs=1e-6)
    assert m["class_accuracy"] > 0.95
    # unconditional labels give no class accuracy; a few samples give NaN set metrics
    m2 = digits.evaluate(Batch(x=real["val"].x[:3], cond=torch.full((3,), NULL_LABEL)))
    assert "class_accuracy" not in m2 and np.isnan(m2["precision"])


def test_shipped_teacher_makes_digits(digits):
    net = digits.load_teacher()
    gb = digits.generation_batch(30, generator=per_sample_generators(0, 30))
    x = workbench.sample(net, digits.process(), gb.x_T, sampler="euler", steps=10, prediction=net.prediction, cond=gb.cond)
    m = digits.evaluate(Batch(x=x, cond=gb.cond))
    assert m["class_accuracy"] > 0.8, m
    assert m["precision"] > 0.5, m


def test_png_writer_round_trips(digits, tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g) * 2.4 - 1.2  # includes out-of-range values (clipped)
    s = Batch(x=x, cond=torch.tensor([0, 1, 2, 10, 4]))
    paths = digits.save_samples(s, tmp_path / "samples")
    pngs = sorted(p for p in paths if p.suffix == ".png")
    assert len(pngs) == 5
    q = quantize(x)
    for i, p in enumerate(pngs):
        img = np.asarray(PIL.open(p))
        assert img.dtype == np.uint8 and img.shape == (8, 8)
        assert np.array_equal(img, q[i, 0])
    z = np.load(tmp_path / "samples" / "samples.npz")
    assert np.array_equal(z["images"], q[:, 0]) and z["labels"].tolist() == [0, 1, 2, 10, 4]
    assert np.allclose(z["x"], x.numpy())
    assert not list((tmp_path / "samples").glob("*.tmp"))
    grid = digits.plot(s, tmp_path / "grid.png")
    im = PIL.open(grid)
    assert im.format == "PNG" and im.size[0] > 5 * 8


def test_missing_and_corrupt_checkpoints(tmp_path):
    d = ImagesDomain()
    with pytest.raises(CheckpointError, match=r"not found.*train_teachers --dataset digits"):
        d.load_teacher(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        d.load_teacher(bad)
    with pytest.raises(CheckpointError, match="corrupt"):
        ImagesDomain(classifier=str(bad)).evaluate(d.reference_batch(10))
    with pytest.raises(CheckpointError, match=r"classifier checkpoint not found"):
        ImagesDomain(classifier=str(tmp_path / "none.safetensors")).evaluate(d.reference_batch(10))
    # a checkpoint of another architecture does not fit
    from workbench.checkpoint import save_weights

    tiny = tmp_path / "tiny.safetensors"
    save_weights(tiny, ImagesDomain().build_backbone(**TINY), {"domain": "images", "config": {"dataset": "digits"}})
    with pytest.raises(CheckpointError, match="does not fit"):
        d.load_teacher(tiny)
    # ... unless the config names that architecture
    net = ImagesDomain(unet=TINY).load_teacher(tiny)
    assert net.backbone.unet.config.block_out_channels == (8, 16)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_fashion_mnist_loader_on_synthetic_idx(tmp_path):
    rng = np.random.default_rng(0)
    tr_x, te_x = rng.integers(0, 256, (200, 28, 28)), rng.integers(0, 256, (30, 28, 28))
    tr_y, te_y = np.arange(200) % 10, np.arange(30) % 10
    for name, arr in [("train-images-idx3-ubyte.gz", tr_x), ("train-labels-idx1-ubyte.gz", tr_y),
                      ("t10k-images-idx3-ubyte.gz", te_x), ("t10k-labels-idx1-ubyte.gz", te_y)]:
        _write_idx(tmp_path / name, arr)
    assert np.array_equal(_read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), te_x)
    d = ImagesDomain(dataset="fashion_mnist", data_root=str(tmp_path))
    sizes = {s: len(d.train_data(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 180, "val": 20, "test": 30}
    test = d.reference_batch(None, split="test")
    assert torch.allclose(test.x[:, 0], torch.as_tensor(te_x, dtype=torch.float32) / 127.5 - 1.0, atol=1e-6)
    assert test.cond.tolist() == te_y.tolist()
    net = d.build_backbone(block_out_channels=(8, 16, 16), norm_num_groups=4, attention_head_dim=8)
    gb = d.generation_batch(2, generator=per_sample_generators(0, 2))
    with torch.no_grad():
        assert net(gb.x_T, torch.tensor([0.3, 0.9]), cond=gb.cond).shape == (2, 1, 28, 28)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        ImagesDomain(dataset="fashion_mnist", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="valid: digits, fashion_mnist"):
        ImagesDomain(dataset="cifar")


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_package():
    d = ImagesDomain(dataset="fashion_mnist")
    assert {s: len(d.train_data(s)) for s in ("train", "val", "test")} == {"train": 55000, "val": 5000, "test": 10000}
    b = d.train_data()(4, torch.Generator().manual_seed(0))
    assert b.x.shape == (4, 1, 28, 28) and -1.0 <= float(b.x.min()) and float(b.x.max()) <= 1.0


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_check_domain_fashion_mnist():
    d = ImagesDomain(dataset="fashion_mnist")
    # no Fashion-MNIST teacher is shipped (see checkpoints/README.md): check with a fresh backbone
    shipped = (CHECKPOINT_DIR / "fashion_mnist_unet.safetensors").exists()
    rep = check_domain(d, n=4, steps=2, teacher=shipped)
    assert "class_accuracy" in rep["metrics"]
