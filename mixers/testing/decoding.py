"""The decoding part of the contract: ``step`` equals ``forward``, ``prefill`` equals ``forward``
and hands ``step`` the state it would have reached, ``state_size`` counts what that state holds,
a bidirectional prefix (``supports_prefix``) is read both ways and decodes on, and an encoder
refuses to decode. Registered in ``CHECKS`` after
:mod:`mixerlab.mixers.testing.checks`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mixerlab.mixers._contract import TokenMixer
from mixerlab.mixers.testing.case import MixerCase, contract_check

DECODERS = {
    "condition": lambda cls, causal: causal and cls.supports_step,
    "when": "for causal=True mixers with supports_step",
}


def state_floats(state: object) -> int:
    """Every float tensor's element count in a (nested dict/list/tuple) decoding state."""
    if isinstance(state, Tensor):
        return state.numel() if state.is_floating_point() else 0
    if isinstance(state, dict):
        return sum(state_floats(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_floats(value) for value in state)
    return 0


def _check_held(case: MixerCase, mixer: TokenMixer, state: object, tokens: int, how: str) -> None:
    """Fail unless a batch-of-2 state after ``tokens`` holds state_size(tokens) floats a row."""
    declared = mixer.state_size(tokens)
    held = state_floats(state) / 2
    if declared is not None and held != declared:
        raise case.fail(
            f"state_size({tokens}) says {declared} floats per sequence, but the state {how} "
            f"holds {held:g} per batch row after {tokens} tokens"
        )


def _step_on(case: MixerCase, mixer: TokenMixer, x: Tensor, y: Tensor, state: object, start: int):
    """Step positions start.. of x (2, max_len, d) from ``state``, each equal to forward's y."""
    for t in range(start, x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        if not isinstance(y_t, Tensor) or y_t.shape != (2, case.d_model):
            got = tuple(y_t.shape) if isinstance(y_t, Tensor) else type(y_t).__name__
            raise case.fail(f"step must return y_t of shape (2, {case.d_model}), got {got}")
        after = f" after a prefill of {start}" if start else ""
        case.assert_close(
            y_t, y[:, t], f"step output at position {t}{after} differs from forward by {{diff}}"
        )
    return state


def _refuses(case: MixerCase, attempt: Callable[[], object], problem: str) -> None:
    """Fail with ``problem`` unless ``attempt`` raises ValueError."""
    try:
        with torch.no_grad():
            attempt()
    except ValueError:
        return
    raise case.fail(problem)


@contract_check("step", **DECODERS)
def check_step(case: MixerCase) -> None:
    """Stepping position by position equals forward (eval), and stepping past max_len raises."""
    mixer = case.build()
    x = case.randn(2, case.max_len, case.d_model)
    with torch.no_grad():
        state = _step_on(case, mixer, x, case.run(mixer, x), mixer.init_state(2), 0)
    _refuses(
        case,
        lambda: mixer.step(x[:, 0], state),
        f"stepping to position {case.max_len + 1} with max_len={case.max_len} did not raise "
        "ValueError; call self.check_step(position) first in step",
    )


@contract_check("prefill", **DECODERS)
def check_prefill(case: MixerCase) -> None:
    """prefill of the first T positions (T = 1, a middle length, max_len) gives forward's outputs
    and a state of state_size(T) floats from which stepping on equals forward; a prompt longer
    than max_len raises."""
    mixer = case.build()
    x = case.randn(2, case.max_len, case.d_model)
    with torch.no_grad():
        y = case.run(mixer, x)
        for split in (1, case.max_len // 2, case.max_len):
            y_prompt, state = mixer.prefill(x[:, :split])
            if not isinstance(y_prompt, Tensor) or y_prompt.shape != (2, split, case.d_model):
                got = tuple(y_prompt.shape) if isinstance(y_prompt, Tensor) else y_prompt
                raise case.fail(f"prefill must return y of shape (2, {split}, d_model), got {got}")
            case.assert_close(
                y_prompt,
                y[:, :split],
                f"prefill of {split} positions differs from forward by {{diff}}",
            )
            _check_held(case, mixer, state, split, "prefill returns")
            _step_on(case, mixer, x, y, state, split)
    _refuses(
        case,
        lambda: mixer.prefill(case.randn(1, case.max_len + 1, case.d_model)),
        f"prefill of {case.max_len + 1} positions with max_len={case.max_len} did not raise "
        "ValueError; call self.check_prefill(x) first in prefill",
    )


@contract_check(
    "prefix",
    condition=lambda cls, causal: causal and cls.supports_prefix,
    when="for causal=True mixers with supports_prefix",
)
def check_prefix(case: MixerCase) -> None:
    """A bidirectional prefix of p: prefix 0 is plainly causal; position j changes the outputs
    before it only when j < p (then it reaches every earlier one); padding stays invisible;
    prefill of a prompt holding the prefix, then stepping, equals forward; a prefix that is not
    one integer per row raises."""
    mixer = case.build()
    length = case.max_len // 2
    x = case.randn(2, length, case.d_model)
    prefix = torch.tensor([length // 2, 1])
    with torch.no_grad():
        y = case.run(mixer, x, prefix=prefix)
        case.assert_close(
            case.run(mixer, x, prefix=torch.zeros(2, dtype=torch.long)),
            case.run(mixer, x),
            "prefix 0 differs from the plainly causal output by {diff}",
        )
        for j in range(1, length):
            changed = x.clone()
            changed[:, j] = case.randn(2, case.d_model, scale=3.0)
            diff = (case.run(mixer, changed, prefix=prefix) - y)[:, :j].abs().amax(dim=-1)
            for row, p in enumerate(prefix.tolist()):
                if j >= p and float(diff[row].max()) > case.tolerance(y):
                    raise case.fail(
                        f"row {row} (prefix {p}): outputs before position {j} changed by "
                        f"{float(diff[row].max()):.3g} when it changed: a position past the "
                        "prefix leaks backwards"
                    )
                if j < p and float(diff[row].min()) == 0.0:
                    raise case.fail(
                        f"row {row} (prefix {p}): an output before position {j} did not change "
                        "when it changed: the prefix is not read both ways"
                    )
        lengths = [length, length - 2]
        padded = case.run(mixer, x, case.mask(lengths, length), prefix)
        for row, n in enumerate(lengths):
            case.assert_close(
                padded[row, :n],
                case.run(mixer, x[row : row + 1, :n], prefix=prefix[row : row + 1])[0],
                f"row {row} with a prefix and padding differs from it run alone by {{diff}}",
            )
        for split in (length // 2, length) if mixer.supports_step else ():
            y_prompt, state = mixer.prefill(x[:, :split], prefix)
            case.assert_close(
                y_prompt, y[:, :split], f"prefill of {split} with a prefix differs by {{diff}}"
            )
            _step_on(case, mixer, x, y, state, split)
    _refuses(
        case,
        lambda: mixer(x, None, prefix=torch.zeros(3, dtype=torch.long)),
        "a prefix of 3 lengths for a batch of 2 did not raise ValueError; call "
        "self.check_prefix(x, prefix) first in forward",
    )


@contract_check("state_size", **DECODERS)
def check_state_size(case: MixerCase) -> None:
    """state_size(t), when reported, equals the floats the step state holds per row after t
    tokens, for t = 1, a middle length and max_len."""
    mixer = case.build()
    if mixer.state_size(1) is None:
        return
    checkpoints = {1, case.max_len // 2, case.max_len}
    x = case.randn(2, case.max_len, case.d_model)
    with torch.no_grad():
        state = mixer.init_state(2)
        for t in range(case.max_len):
            _, state = mixer.step(x[:, t], state)
            if t + 1 in checkpoints:
                _check_held(case, mixer, state, t + 1, "step returns")


@contract_check(
    "encoder_step",
    condition=lambda cls, causal: not causal and cls.supports_step,
    when="for causal=False mixers with supports_step",
)
def check_encoder_step(case: MixerCase) -> None:
    """An encoder refuses to step or prefill: those see only the past, not what it computes."""
    mixer = case.build()
    for what, decode in (
        ("step", lambda: mixer.step(case.randn(1, case.d_model), mixer.init_state(1))),
        ("prefill", lambda: mixer.prefill(case.randn(1, 2, case.d_model))),
    ):
        _refuses(
            case,
            decode,
            f"{what} did not raise ValueError in encoder mode (causal=False); call "
            f"self.check_{what}(...) first in {what}",
        )
