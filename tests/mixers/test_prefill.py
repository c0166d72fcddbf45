"""Parallel prefill: every built-in builds its decoding state from one pass over the prompt.

The contract check ``prefill`` (run over every registered mixer by test_every_mixer.py at the
default hyper-parameters) is run here on the variants whose state comes from another code path:
S4D's Vandermonde state, linear attention's decayed chunk states, the global convolution's full
window, aMLP's KV cache, a window shorter than the prompt, stacked and GRU recurrences.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from mixerlab.mixers import SequenceModel, TokenMixer, available_mixers, get_mixer_class
from mixerlab.mixers.testing import CHECKS, ContractError

BUILT_IN = [
    n for n in available_mixers() if get_mixer_class(n).__module__.startswith("mixerlab.mixers.")
]

VARIANTS = [
    ("ssm", {"selective": False, "init": "lin", "d_state": 4}),
    ("ssm", {"selective": False, "init": "real", "d_state": 4}),
    ("ssm", {"d_state": 4, "chunk_size": 5, "conv_kernel": 1}),
    ("linear_attention", {"decay": "fixed", "chunk_size": 5}),
    ("linear_attention", {"decay": "gated", "chunk_size": 16, "normalize": "rms"}),
    ("linear_attention", {"feature_map": "taylor", "feature_dim": 4, "chunk_size": 7}),
    ("conv", {"kernel_size": -1, "gate": "linear"}),
    ("conv", {"kernel_size": 3, "dilation": 3}),
    ("gmlp", {"attn_dim": 8, "heads": 2}),
    ("sliding_window", {"window": 5, "rope": True}),
    ("attention", {"rope": True, "n_heads": 2}),
    ("rnn", {"cell": "gru", "n_layers": 2}),
    ("hyena", {"order": 3}),
]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_prefills_in_parallel_rather_than_by_the_default_loop(name: str) -> None:
    assert get_mixer_class(name).prefill is not TokenMixer.prefill, name


@pytest.mark.parametrize(
    ("name", "hparams"),
    VARIANTS,
    ids=[f"{n}-{'-'.join(map(str, h.values()))}" for n, h in VARIANTS],
)
def test_prefill_then_step_equals_forward(name: str, hparams: dict[str, Any]) -> None:
    CHECKS["prefill"](name, causal=True, d_model=16, max_len=17, hparams=hparams, perturb=0.05)


class StepOnly(TokenMixer):
    """A plugin with step but no prefill: a causal running sum of the input."""

    supports_step = True

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x.cumsum(1)

    def init_state(self, batch_size: int) -> dict[str, Any]:
        return {"sum": torch.zeros(batch_size, self.d_model), "position": 0}

    def step(self, x_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        self.check_step(state["position"])
        total = state["sum"] + x_t
        return total, {"sum": total, "position": state["position"] + 1}

    def flops_per_token(self, seq_len: int) -> float:
        return float(self.d_model)


def test_the_default_prefill_steps_so_a_plugin_with_only_step_prefills() -> None:
    CHECKS["prefill"](StepOnly, causal=True, d_model=4, max_len=8)
    with pytest.raises(ValueError, match="at least 1 token"):
        StepOnly(4).prefill(torch.zeros(1, 0, 4))


class WrongPrefill(StepOnly):
    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        self.check_prefill(x)
        state = {"sum": x.sum(1) * 2, "position": x.shape[1]}  # a state that steps on wrongly
        return self(x), state


def test_the_check_catches_a_state_that_does_not_step_on_like_forward() -> None:
    with pytest.raises(ContractError, match="after a prefill of 1 differs from forward"):
        CHECKS["prefill"](WrongPrefill, causal=True, d_model=4, max_len=8)


def test_model_prefill_gives_forward_logits_and_a_state_that_steps_on() -> None:
    torch.manual_seed(0)
    pattern = ["conv", "attention", "ssm", "linear_attention"]
    model = SequenceModel(20, 16, 4, mixer=pattern, max_len=12, ffn="glu").eval()
    tokens = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        logits = model(tokens)
        prompt_logits, state = model.prefill(tokens[:, :7])
        torch.testing.assert_close(prompt_logits, logits[:, :7], atol=1e-5, rtol=0)
        assert state["position"] == 7
        for t in range(7, 12):
            step_logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="causal language model"):
        SequenceModel(20, 16, 1, causal=False, max_len=12).prefill(tokens)


def test_generate_prefills_the_prompt_and_steps_only_the_new_tokens(monkeypatch) -> None:
    torch.manual_seed(0)
    model = SequenceModel(20, 16, 2, mixer="rnn", max_len=32).eval()
    mixer_steps = []
    original = type(model.blocks[0].mixer).step

    def counting(self, x_t, state):
        mixer_steps.append(state["position"])
        return original(self, x_t, state)

    monkeypatch.setattr(type(model.blocks[0].mixer), "step", counting)
    out = model.generate(torch.randint(0, 20, (1, 20)), max_new_tokens=4, temperature=0)
    assert out.shape == (1, 24)
    assert mixer_steps == [20, 20, 21, 21, 22, 22]  # two layers, the last token is not stepped
