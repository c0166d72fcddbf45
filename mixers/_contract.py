"""The token-mixer contract and the registry of mixers by short name.

A token mixer moves information across positions: it maps ``x`` of shape (B, L, d_model) to a
tensor of the same shape. Everything else in a block (norms, residuals, the channel mixer) is
fixed by :class:`mixerlab.mixers.model.Block`, so an ablation swaps exactly one thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from mixerlab.mixers._registry import Registry
from mixerlab.mixers.mixing_map import MixingMap

ENTRY_POINT_GROUP = "mixerlab.mixers"


def count_params(module: nn.Module) -> int:
    """The one parameter count of every table, log and budget: each tensor once (a tied
    embedding and head count once), trainable or not."""
    return sum(p.numel() for p in module.parameters())


class TokenMixer(nn.Module):
    """Base class of every token mixer.

    Contract (checked for every registered mixer by :mod:`mixerlab.mixers.testing`):

    - ``forward(x, mask=None)``: ``x`` is (B, L, d_model) float, ``mask`` is (B, L) bool, True at
      real tokens (right padding). Returns (B, L, d_model).
    - ``causal=True``: the output at t depends only on inputs at positions <= t.
      ``causal=False``: every position sees every real position; a local mixer (class attribute
      ``global_mixing = False``, e.g. a short convolution) sees the real positions within its
      window on both sides.
    - Outputs at real positions never depend on padded positions, their content or their count.
    - A mixer may set ``self.aux_loss`` (a scalar tensor) during ``forward``; the model sums them.
    - Causal mixers that support incremental decoding set ``supports_step = True`` and implement
      ``init_state(batch_size)`` and ``step(x_t, state) -> (y_t, state)`` with ``x_t`` (B, d_model);
      stepping through a sequence equals ``forward`` on it. ``prefill(x)`` runs a prompt x
      (B, T, d_model) and returns forward's outputs and the state after it, equal to
      ``init_state`` and T steps; the default steps, built-ins override it with one parallel pass.
    - ``flops_per_token(seq_len)`` gives the analytic forward FLOPs per token (a multiply-add
      counts 2) so that runs can be compared iso-FLOP.
    - ``state_size(seq_len)`` gives the floats a decoder carries per sequence after ``seq_len``
      tokens (every float tensor of the ``step`` state, per batch row): attention's KV cache grows
      with the length, a recurrence's state does not. None means "not reported".
    - A causal mixer that sets ``supports_prefix = True`` (attention) also takes ``prefix``, a
      (B,) integer tensor, in ``forward`` and ``prefill``: positions below ``prefix[b]`` read one
      another both ways (a prefix LM's bidirectional prefix: a prompt, a source), the rest stay
      causal and read the whole prefix. ``prefix=None`` is plainly causal; stepping after a
      prefilled prefix equals ``forward`` with it.
    - A decoder-only mixer sets ``supports_encoder = False``: building it with ``causal=False``
      raises, and the contract checks skip the encoder mode.
    - ``no_weight_decay`` names parameters (globs over ``named_parameters()`` names, relative to
      the mixer, e.g. ``("A_log", "D")``) that the optimiser must not decay; matrices otherwise
      are decayed.
    - ``max_lr`` caps the learning rate of named parameters (``{glob: cap}``, globs as for
      ``no_weight_decay``): the optimiser trains them at min(cap, lr), under the same schedule,
      as S4D's reference code does for its A and dt (s4d.py: min(1e-3, lr)).
    - ``layer_pattern`` says which mixers a model's layers get when the model names this one:
      by default this mixer in every layer; a hybrid spreads its pattern over the depth.
    """

    supports_step: bool = False
    supports_encoder: bool = True
    supports_prefix: bool = False
    requires_max_len: bool = False
    global_mixing: bool = True
    no_weight_decay: tuple[str, ...] = ()
    max_lr: Mapping[str, float] = MappingProxyType({})

    def __init__(self, d_model: int, *, causal: bool = True, max_len: int | None = None) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        if not causal and not self.supports_encoder:
            raise ValueError(
                f"{self._display_name()} is decoder-only (supports_encoder = False) and cannot be "
                "built with causal=False: encoder tasks (classification) need a mixer that sees "
                "the whole sequence; train it on a causal task or pick another mixer"
            )
        if self.requires_max_len and (max_len is None or max_len <= 0):
            raise ValueError(
                f"{type(self).__name__} learns position-to-position weights and needs a positive "
                f"max_len, got {max_len!r}; pass max_len=<longest sequence length>"
            )
        self.d_model = d_model
        self.causal = causal
        self.max_len = max_len
        self.aux_loss: Tensor | None = None

    @classmethod
    def layer_pattern(cls, name: str, hparams: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The (registered name, hyper-parameters) of the mixer each layer of a model gets when
        the model names this mixer as ``name`` with ``hparams``, a pattern the model repeats over
        its depth: this mixer in every layer. A mixer that puts different mixers in different
        layers (:class:`mixerlab.mixers.hybrid.HybridMixer`) returns its pattern instead."""
        return [(name, hparams)]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def check_input(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Raise a ValueError naming the problem when ``x``/``mask`` break the contract."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (batch, length, {self.d_model}), "
                f"got {tuple(x.shape)}"
            )
        length = x.shape[1]
        if self.max_len is not None and length > self.max_len:
            raise ValueError(
                f"sequence length {length} is longer than {type(self).__name__}'s max_len "
                f"{self.max_len}; build the mixer with max_len >= {length} or shorten the input"
            )
        if mask is not None and (mask.shape != x.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def check_prefix(self, x: Tensor, prefix: Tensor | None) -> None:
        """Raise unless ``prefix`` is None or one integer length per row of ``x`` for a causal
        mixer that reads a bidirectional prefix (``supports_prefix``)."""
        if prefix is None:
            return
        if not (self.causal and self.supports_prefix):
            raise ValueError(
                f"{type(self).__name__}(causal={self.causal}) cannot read a bidirectional "
                "prefix (supports_prefix is False or it is an encoder); pass prefix=None, or "
                "use a mixer that takes one (attention)"
            )
        if prefix.shape != x.shape[:1] or prefix.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"prefix must be an integer tensor of shape ({x.shape[0]},), one prefix length "
                f"per sequence, got {prefix.dtype} {tuple(prefix.shape)}"
            )

    def init_state(self, batch_size: int) -> Any:
        """State for incremental decoding before the first token."""
        raise NotImplementedError(f"{type(self).__name__} does not support step-by-step decoding")

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One decoding step: ``x_t`` (B, d_model) -> ``y_t`` (B, d_model) and the next state."""
        raise NotImplementedError(f"{type(self).__name__} does not support step-by-step decoding")

    def prefill(self, x: Tensor) -> tuple[Tensor, Any]:
        """Outputs (B, T, d_model) of a prompt x (B, T, d_model) and the decoding state after it.

        This default steps through the prompt, so any mixer with ``step`` can prefill; a mixer
        whose algorithm yields its state from one parallel pass (a KV cache, a scan's last
        state) overrides it, which is what makes a long prompt cheap to decode from.
        """
        self.check_prefill(x)
        state = self.init_state(x.shape[0])
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    def check_prefill(self, x: Tensor) -> None:
        """Raise unless x is a prompt of at least one token that this mixer can decode from."""
        self.check_input(x)
        if x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}.prefill needs a prompt of at least 1 token")
        self.check_step(x.shape[1] - 1)

    def check_step(self, position: int) -> None:
        """Raise before stepping past max_len or stepping a mixer that cannot step."""
        if not (self.causal and self.supports_step):
            raise ValueError(
                f"{type(self).__name__}(causal={self.causal}) cannot decode step by step; "
                "incremental decoding needs a causal mixer with supports_step"
            )
        if self.max_len is not None and position >= self.max_len:
            raise ValueError(
                f"decoding position {position + 1} exceeds {type(self).__name__}'s max_len "
                f"{self.max_len}"
            )

    def flops_per_token(self, seq_len: int) -> float:
        """Analytic forward FLOPs per token at ``seq_len`` (multiply-add = 2 FLOPs)."""
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int | None:
        """Floats of decoding state per sequence after ``seq_len`` tokens; None: not reported."""
        return None

    def mixing_map(self, x: Tensor, mask: Tensor | None = None) -> MixingMap | None:
        """The exact token-to-token map at ``x`` (B, L, d_model), for a mixer that weights values
        by position: a :class:`~mixerlab.mixers.mixing_map.MixingMap` whose ``output()`` equals
        ``forward(x, mask)`` at the real positions (in eval mode). None (the default): no exact
        map; ``mixing_map.gradient_map`` gives every mixer one."""
        return None

    def output_projections(self) -> list[nn.Linear]:
        """The Linear layers whose output is the mixer's output, i.e. what writes into the
        residual stream. ``SequenceModel`` gives them the depth-scaled init of the channel
        mixers' last layers (``mixer_init="depth_scaled"``); none (the default, e.g. an LSTM
        whose hidden state is its output) leaves the mixer's own init in place."""
        return []

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """The parameters ``no_weight_decay`` names; a pattern that names none is an error (a
        typo would otherwise decay what it meant to protect)."""
        chosen: dict[str, nn.Parameter] = {}
        for pattern in self.no_weight_decay:
            chosen.update(self._parameters_named_by(pattern, "no_weight_decay"))
        return list(chosen.values())

    def max_lr_parameters(self) -> list[tuple[nn.Parameter, float]]:
        """(parameter, cap) for each parameter ``max_lr`` names, the smallest cap where two
        patterns name one; a pattern that names none is an error, as for ``no_weight_decay``."""
        caps: dict[str, tuple[nn.Parameter, float]] = {}
        for pattern, cap in self.max_lr.items():
            if not cap > 0:
                raise ValueError(f"max_lr of {self._display_name()} must be positive, got {cap}")
            for name, p in self._parameters_named_by(pattern, "max_lr").items():
                caps[name] = (p, min(cap, caps[name][1]) if name in caps else cap)
        return list(caps.values())

    def _parameters_named_by(self, pattern: str, attribute: str) -> dict[str, nn.Parameter]:
        named = dict(self.named_parameters())
        matches = {name: p for name, p in named.items() if fnmatchcase(name, pattern)}
        if not matches:
            raise ValueError(
                f"{attribute} pattern {pattern!r} of {self._display_name()} matches no "
                f"parameter; its parameters are: {', '.join(named) or '(none)'}"
            )
        return matches

    def _display_name(self) -> str:
        """The registered name when there is one (what a config says), else the class name."""
        name = type(self).__dict__.get("registry_name")
        return f"mixer {name!r}" if name else type(self).__name__

    def num_params(self) -> int:
        return count_params(self)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, causal={self.causal}, max_len={self.max_len}"


def register_mixer(name: str) -> Callable[[type[TokenMixer]], type[TokenMixer]]:
    """Class decorator: make a :class:`TokenMixer` subclass buildable as ``build_mixer(name)``."""
    return MIXERS.decorator(name)


MIXERS: Registry[TokenMixer] = Registry(
    "mixer",
    TokenMixer,
    ENTRY_POINT_GROUP,
    argument="hyper-parameter",
    set_by_run=("causal", "max_len"),
    adopt=lambda name, cls: register_mixer(name)(cls),
)


def available_mixers() -> list[str]:
    """Names of all registered mixers, built-in and plugins, sorted."""
    return MIXERS.names()


def get_mixer_class(name: str) -> type[TokenMixer]:
    return MIXERS.get(name)


def describe_mixer(name: str) -> str:
    """The first line of the mixer's docstring: the one-line description `mixerlab list` shows."""
    return MIXERS.describe(name)


def mixer_hparams(name: str) -> dict[str, Any]:
    """The keyword hyper-parameters a mixer accepts, with their defaults."""
    return MIXERS.arguments(name)


def build_mixer(
    name: str, d_model: int, *, causal: bool = True, max_len: int | None = None, **hparams: Any
) -> TokenMixer:
    """Build a registered mixer by name; unknown names and hyper-parameters get a clear error."""
    MIXERS.check_arguments(name, hparams)
    return MIXERS.get(name)(d_model, causal=causal, max_len=max_len, **hparams)
