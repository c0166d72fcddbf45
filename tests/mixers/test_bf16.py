"""Every shipped mixer preset under bf16 autocast on the CPU (``trainer.precision=bf16-mixed``
takes this path), in both modes: the logits agree with float32's within ``TOLERANCE`` of their
largest magnitude, padding still changes nothing at real positions, and the gradients are finite;
and each preset's mixer passes the whole contract under bf16 autocast at ``BF16_TOLERANCE``
(atol 1e-3 + rtol 2e-2 of the reference's largest magnitude).

bf16 keeps 8 bits of mantissa (a relative rounding of 0.4% per value); over the two blocks here
the presets measured 0.3% to 2.9% (Hyena's filters, GLA's gates the most). In the contract, where
paths that should agree (forward against prefill and steps, padded against alone) round at
different places, a 1% relative tolerance passed every preset but GLA's prefill-then-step (1.3% of
the output's scale, two bf16 steps at that size); 0.5% failed five presets by one bf16 step. The
check that asks only for "any change" (``sees_future``) runs in fp32: a weak dependence (gMLP's
near-zero init, an LSTM's 23-step chain) rounds away in bf16. What must stay in float32 does:
scans, FFTs and the LSTM run with autocast off (``mixers/kernels``, ``mixers/rnn``).
"""

from __future__ import annotations

import pytest
import torch
from configs import conf_options, run_config

from mixerlab.experiments.run.mixer_node import model_mixer
from mixerlab.mixers import SequenceModel
from mixerlab.mixers.testing import BF16_TOLERANCE, check_mixer

TOLERANCE = 0.05  # of the float32 logits' largest magnitude
PADDING_TOLERANCE = 0.01  # the same, for a change of the padded tokens' values
VOCAB, LENGTH = 50, 24
PRESETS = [option for option in conf_options("mixer") if option != "plugin"]  # a template
MODES = [pytest.param(True, id="causal"), pytest.param(False, id="encoder")]


def preset_mixer(preset: str) -> tuple[str, dict, int]:
    """The preset's registered mixer, its hyper-parameters and a depth its pattern divides."""
    depth = 3 if preset == "based_sliding" else 2
    name, hparams = model_mixer(run_config(f"mixer={preset}", f"model.n_layers={depth}")["mixer"])
    return name, hparams, depth


def preset_model(preset: str, causal: bool) -> SequenceModel:
    name, hparams, depth = preset_mixer(preset)
    torch.manual_seed(0)
    return SequenceModel(
        VOCAB, 32, depth, mixer=name, mixer_hparams=hparams, causal=causal, max_len=LENGTH
    )


@pytest.mark.parametrize("causal", MODES)
@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_agrees_with_float32(preset: str, causal: bool) -> None:
    model = preset_model(preset, causal)
    torch.manual_seed(1)
    tokens = torch.randint(1, VOCAB, (3, LENGTH))
    mask = torch.ones(3, LENGTH, dtype=torch.bool)
    mask[1, 18:] = False
    padded = tokens.clone()
    padded[1, 18:] = torch.randint(1, VOCAB, (LENGTH - 18,))
    reference = model(tokens, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens, mask)
        other_padding = model(padded, mask)
        logits.float().logsumexp(-1)[mask].mean().backward()
    assert logits.dtype == torch.bfloat16  # autocast did run: the head is a bf16 matmul
    scale = reference[mask].abs().max()
    error = (logits.float() - reference)[mask].abs().max()
    assert error <= TOLERANCE * scale, f"{preset}: {error / scale:.4f} of the logits' scale"
    # padding still inert, up to bf16's rounding of sums that include the padded zeros
    moved = (logits.float() - other_padding.float())[mask].abs().max()
    assert moved <= PADDING_TOLERANCE * scale, f"{preset}: padding moved {moved / scale:.4f}"
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_contract_under_bf16_autocast(preset: str) -> None:
    name, hparams, _ = preset_mixer(preset)
    report = check_mixer(name, hparams=hparams, autocast=torch.bfloat16, **BF16_TOLERANCE)
    skipped = {
        o.check for o in report.outcomes if o.outcome == "skipped" and "autocast" in o.detail
    }
    assert skipped <= {"sees_future"}
