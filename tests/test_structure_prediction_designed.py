"""The synthetic (ProteinMPNN sequence, ideal backbone) pair builder and its training mixture."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from domains.structure_prediction import StructurePredictionDomain  # noqa: E402
from domains.structure_prediction.designed import (MixtureSampler, build_designed_pairs, designed_backbones,  # noqa: E402
                                                   load_pairs, save_pairs)


@pytest.fixture(scope="module")
def pairs():
    return build_designed_pairs(3, per_backbone=2, seed=3, lengths=(20, 30))


def test_pairs_deterministic_and_lengths_match(pairs):
    again = build_designed_pairs(3, per_backbone=2, seed=3, lengths=(20, 30))
    assert len(pairs) == 6
    assert [c.sequence for c in pairs] == [c.sequence for c in again]
    for c, d in zip(pairs, again):
        assert np.array_equal(c.coords, d.coords)
        assert len(c.sequence) == len(c) == c.coords.shape[0]
        assert 20 <= len(c) <= 30
        assert set(c.sequence) <= set("ACDEFGHIKLMNPQRSTVWY")
    # both sequences of one backbone share its coordinates; kinds cycle helix, helix_bundle, hairpin
    assert np.array_equal(pairs[0].coords, pairs[1].coords)
    assert [c.meta["kind"] for c in pairs[::2]] == ["helix", "helix_bundle", "hairpin"]
    # another seed gives other backbones
    other = designed_backbones(3, seed=4, lengths=(20, 30))
    assert any(len(a) != len(b) or not np.allclose(a.coords, b.coords) for a, b in zip(pairs[::2], other))


def test_save_load_and_mixture(pairs, tmp_path):
    p = save_pairs(pairs, tmp_path / "pairs.pt")
    back = load_pairs(p)
    assert [c.sequence for c in back] == [c.sequence for c in pairs]
    assert all(np.array_equal(a.coords, b.coords) for a, b in zip(back, pairs))
    with pytest.raises(ValueError, match="not found"):
        load_pairs(tmp_path / "missing.pt")

    dom = StructurePredictionDomain(designed=str(p), designed_weight=1.0, crop=16)
    sampler = dom.train_data("train")
    assert isinstance(sampler, MixtureSampler)
    b = sampler(4, torch.Generator().manual_seed(0))
    assert b.x.shape == (4, 16, 3) and b.mask.shape == (4, 16)
    # weight 1: every crop is a designed pair (its residues are all designed tokens, no unknowns)
    windows = {tuple(c.tokens[s:s + 16].tolist()) for c in pairs for s in range(len(c) - 15)}
    for i in range(4):
        assert int(b.mask[i].sum()) == 16 and tuple(b.cond["aatype"][i].tolist()) in windows
    b2 = sampler(4, torch.Generator().manual_seed(0))
    assert torch.equal(b.x, b2.x)
    # mixing: the row count is right for any weight, the eval splits ignore the designed file
    mix = StructurePredictionDomain(designed=str(p), designed_weight=0.5, crop=16).train_data("train")
    assert mix(7, torch.Generator().manual_seed(1)).x.shape == (7, 16, 3)
    assert not isinstance(dom.train_data("val"), MixtureSampler)
    with pytest.raises(ValueError, match="designed_weight"):
        StructurePredictionDomain(designed=str(p), designed_weight=1.5)
