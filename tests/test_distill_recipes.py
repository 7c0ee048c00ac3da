"""The recipe registry, generator specs and the conformance check on the consistency recipe."""
import pytest
import torch

from workbench.distill import available_methods, setup_method
from workbench.distill.conformance import check_recipe
from distill_helpers import toy_ctx

ctx_for = toy_ctx

torch.set_num_threads(1)


@pytest.mark.parametrize("dataset", ["gmm", "pointset"])
def test_consistency_recipe_conformance(dataset):
    d, ctx = ctx_for(dataset)
    setup = setup_method("consistency", ctx, {"num_scales": 10})
    out = check_recipe(setup, d, decrease_steps=40)
    assert out["loss_end"] < out["loss_start"]


def test_unknown_method_and_option_errors():
    d, ctx = ctx_for("gmm")
    with pytest.raises(ValueError, match="unknown distillation method 'nope'; valid: .*consistency"):
        setup_method("nope", ctx)
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'segmentz' for method 'consistency'; valid: segments"):
        setup_method("consistency", ctx, {"segmentz": 2})
    assert "consistency" in available_methods()
