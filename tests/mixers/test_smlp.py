"""smlp, the sparse all-MLP token mixer: the contract at init and with perturbed weights, the
per-expert norm, its errors, and the paper's sparse block (smlp with the MoE channel mixer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.mixers import SequenceModel, build_mixer
from mixerlab.mixers.smlp import ExpertLayerNorm
from mixerlab.mixers.testing import check_mixer

D, MAX_LEN = 16, 12


@pytest.mark.parametrize("perturb", [0.0, 0.5], ids=["init", "perturbed"])
def test_variant_meets_the_contract(perturb: float) -> None:
    """At init W is near 0, so positions barely mix; perturbed weights make a leak visible."""
    atol = 1e-4 if perturb else 1e-5  # larger weights, larger rounding differences
    hparams = {"n_experts": 4}
    check_mixer("smlp", d_model=D, max_len=MAX_LEN, hparams=hparams, perturb=perturb, atol=atol)


def test_expert_norm_keeps_experts_independent():
    """Expert i's normalised input depends on chunk i alone (a shared LayerNorm would mix them)."""
    norm = ExpertLayerNorm(8, n_experts=2)
    v = torch.randn(3, 5, 8)
    changed = v.clone()
    changed[..., 4:] = 10.0 * torch.randn(3, 5, 4)
    torch.testing.assert_close(norm(changed)[..., :4], norm(v)[..., :4])
    torch.testing.assert_close(norm(v)[..., :4], F.layer_norm(v[..., :4], (4,)))


def test_bad_n_experts_raise():
    with pytest.raises(ValueError, match="n_experts"):
        build_mixer("smlp", D, max_len=MAX_LEN, n_experts=3)


def test_sequence_model_with_smlp_and_moe_sums_aux_losses():
    """The paper's sparse block: sMoE token mixer + tMoE channel mixer."""
    torch.manual_seed(0)
    model = SequenceModel(30, D, 2, mixer="smlp", max_len=MAX_LEN, ffn="moe")
    tokens = torch.randint(0, 30, (2, MAX_LEN))
    logits = model(tokens)
    assert logits.shape == (2, MAX_LEN, 30)
    moe_losses = [block.ffn.aux_loss for block in model.blocks]
    torch.testing.assert_close(model.aux_loss, torch.stack(moe_losses).sum())
