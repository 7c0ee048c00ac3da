"""SDTT (workbench/distill/sdtt.py): the loss is KL(student || teacher target) on masked real
positions only, the rounds hand the student to the teacher and shrink the steps, and a run on the
shared loop exports a generator sampled with MDLM's ancestral sampler."""
import math

import pytest
import torch
from torch import nn

from workbench.distill import RecipeContext, method_options, setup_method
from workbench.distill.sdtt import SDTTObjective, _Round
from workbench.losses import Batch
from workbench.processes import MaskedProcess

V, N = 4, 12
PROC = MaskedProcess(V, pad_id=0)


class Const(nn.Module):
    """Ignores its input: logits ``bias`` at every position (``[V]``)."""

    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x, t, mask=None, cond=None):
        return self.bias.expand(*x.shape, V)


def _loss(student, teacher, loss="kl_bwd", mask=None, seed=0):
    obj = SDTTObjective(PROC, start_steps=16, k=2, steps_per_round=10, rounds=1, loss=loss)
    x0 = torch.randint(0, V, (64, N), generator=torch.Generator().manual_seed(seed))
    nets = {"student": student, "teacher": teacher, "rounds": _Round()}
    return obj(nets, Batch(x=x0, mask=mask), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss", ["kl_bwd", "kl_fwd", "mse"])
def test_loss_is_zero_for_the_teachers_own_prediction_and_positive_otherwise(loss):
    a, b = [0.5, -1.0, 0.2, 0.0], [0.0, 0.0, 2.0, -1.0]
    assert torch.allclose(_loss(Const(a), Const(a), loss), torch.zeros(64), atol=1e-6)
    out = _loss(Const(b), Const(a), loss)
    assert bool((out > 0).any()) and bool((out >= -1e-6).all())
    if loss == "kl_bwd":  # closed form: every masked position has the same target and prediction
        pa, pb = torch.softmax(torch.tensor(a), 0), torch.softmax(torch.tensor(b), 0)
        kl = float((pb * (pb.log() - pa.log())).sum())
        has_mask = out > 0
        assert torch.allclose(out[has_mask], torch.full_like(out[has_mask], kl), rtol=1e-4)


def test_padding_is_never_supervised():
    mask = torch.ones(64, N)
    mask[:, 6:] = 0
    a, b = [0.5, -1.0, 0.2, 0.0], [0.0, 0.0, 2.0, -1.0]
    full, padded = _loss(Const(b), Const(a)), _loss(Const(b), Const(a), mask=mask)
    assert torch.allclose(padded[padded > 0], full[full > 0].max().expand(int((padded > 0).sum())), rtol=1e-4)


def test_rounds_hand_the_student_to_the_teacher_and_need_a_power_of_two():
    pytest.importorskip("pyrodigal", reason="the DNA data set ships with pip pyrodigal (the `sequences` extra)")
    from domains.sequences.domain import SequencesDomain

    dom = SequencesDomain(dataset="dna", seq_len=16, d_model=16, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    ctx = RecipeContext(domain=dom, teacher=dom.build_backbone().requires_grad_(False), student_steps=4)
    setup = setup_method("sdtt", ctx, {"start_steps": 16, "steps_per_round": 3})
    assert setup.info["rounds"] == 2 and setup.info["round_steps"] == [8, 4] and setup.train_defaults["steps"] == 6
    nets = setup.nets
    opt = torch.optim.SGD(nets["student"].parameters(), lr=0.5)
    data = dom.train_data()
    g = torch.Generator().manual_seed(0)
    first = {k: v.clone() for k, v in nets["teacher"].state_dict().items()}
    before: dict = {}  # the student's weights after the previous step
    for step in range(4):
        loss = setup.objective(nets, data(8, g), g).mean()
        if step == 3:  # the first call of round 1 copied the student into the teacher before its loss
            assert int(nets["rounds"].round) == 1
            assert all(torch.equal(v, nets["teacher"].state_dict()[k]) for k, v in before.items())
            assert not all(torch.equal(v, nets["teacher"].state_dict()[k]) for k, v in first.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = {k: v.clone() for k, v in nets["student"].state_dict().items()}
    with pytest.raises(ValueError, match="must be student_steps \\(4\\) times a power of 2"):
        setup_method("sdtt", ctx, {"start_steps": 24})
    with pytest.raises(ValueError, match="unknown loss 'tvd'"):
        method_options("sdtt", {"loss": "tvd"})


def test_distill_exports_an_ancestral_generator(tmp_path):
    pytest.importorskip("pyrodigal", reason="the DNA data set ships with pip pyrodigal (the `sequences` extra)")
    from discrete_helpers import tiny_dna_teacher
    from workbench.runner import distill, generate

    dom, teacher = tiny_dna_teacher(tmp_path / "t.safetensors")
    res = distill(dom, method="sdtt", student_steps=2, out_dir=tmp_path / "d", teacher=str(teacher),
                  method_options={"start_steps": 8, "steps_per_round": 2}, train={"batch_size": 4, "warmup": 0, "progress": False})
    assert res["steps"] == 4 and math.isfinite(res["final_loss"]["main"])
    m = generate(dom, steps=2, n=3, out_dir=tmp_path / "g", generator=res["generator"], progress=False)
    assert m["nfe"] == 2 and (tmp_path / "g" / "samples" / "samples.fasta").exists()
    with pytest.raises(ValueError, match="method 'sdtt' cannot distil domain 'toy': it needs a discrete process"):
        distill("toy", method="sdtt", out_dir=tmp_path / "x")


def test_loss_equals_an_independent_replay_of_the_official_target():
    """Replays the objective's random draws (same generator, same order) and rebuilds the official
    target by hand: the teacher's k = 2 ancestral steps at t and t - dt, each masked position's
    target the log p of the step that unmasked it (the last step's if still masked), and the
    reverse KL of the student's one call at t, averaged over the sample's masked positions."""
    from domains.sequences.nets import SequenceTransformer
    from workbench.processes import categorical, rand64

    torch.manual_seed(0)
    teacher, student = SequenceTransformer(V, d_model=16, n_layers=1, n_heads=2), SequenceTransformer(V, d_model=16, n_layers=1, n_heads=2)
    for net in (teacher, student):
        for b in net.blocks:
            torch.nn.init.normal_(b.ada.weight, std=0.3)  # make the networks depend on t
    x0 = torch.randint(0, V, (16, N), generator=torch.Generator().manual_seed(3))
    obj = SDTTObjective(PROC, start_steps=8, k=2, steps_per_round=10, rounds=1, loss="kl_bwd")
    got = obj({"student": student, "teacher": teacher, "rounds": _Round()}, Batch(x=x0, mask=None), torch.Generator().manual_seed(5))

    def logp(net, x, t):
        lp = torch.log_softmax(net(x, t.float()).float(), -1)
        oh = torch.nn.functional.one_hot(x.clamp(max=V - 1), V).bool()
        return torch.where((x != PROC.mask_id)[..., None], torch.where(oh, 0.0, -1e6), lp)

    g = torch.Generator().manual_seed(5)
    dt = 1.0 / 8
    t = 2 * dt + (1 - 2 * dt) * rand64((16,), g)
    x_t = PROC.add_noise(x0, t, generator=g)
    with torch.no_grad():
        x, target = x_t, None
        for i in range(2):
            ti, si = t - i * dt, t - (i + 1) * dt
            lp = logp(teacher, x, ti)
            still = (x == PROC.mask_id)[..., None]
            target = lp if target is None else torch.where(still, lp, target)
            a_t, a_s = 1 - (1 - PROC.eps) * ti, 1 - (1 - PROC.eps) * si
            u = rand64(x.shape, g)
            draw = categorical(lp.double().exp(), g)
            x = torch.where((x == PROC.mask_id) & (u < ((a_s - a_t) / (1 - a_t))[:, None]), draw, x)
        ls = logp(student, x_t, t)
        kl = (ls.exp() * (ls - target)).sum(-1)
        m = (x_t == PROC.mask_id).float()
        want = (kl * m).sum(1) / m.sum(1).clamp_min(1)
    assert torch.allclose(got.detach(), want, rtol=1e-5, atol=1e-7) and bool((want > 0).any())
