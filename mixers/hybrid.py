"""Hybrid: different mixers in different layers, a pattern of registered mixers repeated over
the depth.

The models that mix attention with cheaper mixers do this: Zoology's BaseConv + attention
(Arora et al. 2023) and Based's short convolution + linear attention + sliding-window attention
(Arora et al. 2024). The ``pattern`` hyper-parameter lists layer specs, each a registered mixer
name or a mapping with ``name`` and that mixer's hyper-parameters::

    SequenceModel(vocab, d_model, n_layers=4, mixer="hybrid",
                  mixer_hparams={"pattern": ["conv", {"name": "attention", "n_heads": 2}]})
    # layers: conv, attention, conv, attention (mixer=[...] is short for the same)

In a model each entry gets a block of its own (:meth:`HybridMixer.layer_pattern`), and the
pattern must divide the depth evenly, so every entry appears equally often and a pattern never
silently loses its last entries. Everything else in a block stays the same in every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mixerlab.mixers._contract import TokenMixer, build_mixer, register_mixer

HYBRID = "hybrid"
DEFAULT_PATTERN = ("conv", "attention")

LayerSpec = str | Mapping[str, Any]


def _parse_spec(spec: LayerSpec, index: int) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        hparams = dict(spec)
        return hparams.pop("name"), hparams
    raise ValueError(
        f"pattern entry {index} is {spec!r}: each entry is a mixer name or a mapping with a "
        "'name' and that mixer's hyper-parameters, e.g. [conv, {name: attention, n_heads: 2}]"
    )


@register_mixer(HYBRID)
class HybridMixer(TokenMixer):
    """Different mixers in different layers: a pattern of registered mixers repeated over depth.

    A model asks :meth:`layer_pattern` and builds each entry in a block of its own, as if the
    model had named that mixer. Built on its own (``build_mixer``, the contract suite) a hybrid
    is its pattern once, each entry in a pre-norm residual as a block holds it (without the
    channel mixer): ``x = x + mixer(norm(x))`` entry by entry, so the contract checks the
    entries together, decoding through each one's own state included. Auxiliary losses stay on
    the entries, where a model collects them.
    """

    supports_step = True

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        max_len: int | None = None,
        pattern: Sequence[LayerSpec] = DEFAULT_PATTERN,
    ) -> None:
        super().__init__(d_model, causal=causal, max_len=max_len)
        entries = self.layer_pattern(HYBRID, {"pattern": pattern})
        if not entries:
            raise ValueError(
                "a hybrid needs at least one mixer in its pattern, e.g. [conv, attention]"
            )
        self.layers = nn.ModuleList(
            build_mixer(name, d_model, causal=causal, max_len=max_len, **hparams)
            for name, hparams in entries
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in self.layers)
        self.supports_step = all(layer.supports_step for layer in self.layers)
        self.global_mixing = any(layer.global_mixing for layer in self.layers)
        self.no_weight_decay = tuple(
            f"layers.{index}.{pattern}"
            for index, layer in enumerate(self.layers)
            for pattern in layer.no_weight_decay
        )

    @classmethod
    def layer_pattern(cls, name: str, hparams: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The pattern's entries, each (registered name, hyper-parameters)."""
        pattern = hparams.get("pattern", DEFAULT_PATTERN)
        if isinstance(pattern, str):
            raise ValueError(
                f"a hybrid's pattern is a list of layer specs, e.g. [conv, attention], got the "
                f"string {pattern!r}"
            )
        return [_parse_spec(spec, index) for index, spec in enumerate(pattern)]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x, mask)
        for norm, layer in zip(self.norms, self.layers, strict=True):
            x = x + layer(norm(x), mask)
        return x

    def init_state(self, batch_size: int) -> list[Any]:
        return [layer.init_state(batch_size) for layer in self.layers]

    def prefill(self, x: Tensor) -> tuple[Tensor, list[Any]]:
        """Each entry's parallel prefill in turn; the state is theirs, in pattern order."""
        self.check_prefill(x)
        states = []
        for norm, layer in zip(self.norms, self.layers, strict=True):
            y, layer_state = layer.prefill(norm(x))
            x = x + y
            states.append(layer_state)
        return x, states

    def step(self, x_t: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        """Each entry steps from its own state (and checks the position itself)."""
        states = []
        for norm, layer, layer_state in zip(self.norms, self.layers, state, strict=True):
            y_t, layer_state = layer.step(norm(x_t), layer_state)
            x_t = x_t + y_t
            states.append(layer_state)
        return x_t, states

    def flops_per_token(self, seq_len: int) -> float:
        return float(sum(layer.flops_per_token(seq_len) for layer in self.layers))

    def state_size(self, seq_len: int) -> int | None:
        sizes = [layer.state_size(seq_len) for layer in self.layers]
        return None if None in sizes else sum(sizes)
