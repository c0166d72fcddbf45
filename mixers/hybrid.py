"""Which token mixer each layer gets: one mixer in every layer, or a hybrid pattern.

A hybrid puts different mixers in different layers, as the models that mix attention with
cheaper mixers do: Zoology's BaseConv + attention (Arora et al. 2023) and Based's short
convolution + linear attention + sliding-window attention (Arora et al. 2024). A pattern is a list
of layer specs, each a registered mixer name or a mapping with ``name`` and that mixer's
hyper-parameters, repeated over the depth::

    SequenceModel(vocab, d_model, n_layers=4, mixer=["conv", {"name": "attention", "n_heads": 2}])
    # layers: conv, attention, conv, attention

The pattern must divide the depth evenly, so every entry appears equally often and a pattern
never silently loses its last entries. Everything else in a block stays the same in every layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mixerlab.mixers.base import TokenMixer, build_mixer, mixer_hparams

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


def layer_plan(
    mixer: str | Sequence[LayerSpec], hparams: Mapping[str, Any] | None, n_layers: int
) -> list[tuple[str, dict[str, Any]]]:
    """(mixer name, hyper-parameters) for each of ``n_layers`` layers."""
    if isinstance(mixer, str):
        return [(mixer, dict(hparams or {})) for _ in range(n_layers)]
    if hparams:
        raise ValueError(
            "mixer_hparams applies to a single mixer; in a hybrid pattern each entry carries its "
            f"own hyper-parameters (got mixer_hparams={dict(hparams)!r})"
        )
    specs = [_parse_spec(spec, index) for index, spec in enumerate(mixer)]
    if not specs or n_layers % len(specs):
        raise ValueError(
            f"a hybrid pattern of {len(specs)} entries must divide the depth evenly, but "
            f"n_layers is {n_layers}; use n_layers = a multiple of {len(specs) or 1} or change "
            "the pattern"
        )
    return [specs[layer % len(specs)] for layer in range(n_layers)]


def build_layers(
    mixer: str | Sequence[LayerSpec],
    hparams: Mapping[str, Any] | None,
    n_layers: int,
    d_model: int,
    *,
    causal: bool,
    max_len: int | None,
    rope: bool = False,
) -> Iterator[TokenMixer]:
    """One built mixer per layer, built lazily. ``rope`` turns on rotary positions in every
    mixer that takes a ``rope`` hyper-parameter; it is an error when none does (the model would
    get no positions)."""
    plan = layer_plan(mixer, hparams, n_layers)
    if rope:
        takes_rope = [name for name, _ in plan if "rope" in mixer_hparams(name)]
        if not takes_rope:
            names = sorted({name for name, _ in plan})
            raise ValueError(
                f"pos='rope' rotates queries and keys inside the mixer, and mixer(s) {names} "
                "have no 'rope' hyper-parameter; use pos=learned, sinusoidal or none"
            )
        plan = [
            (name, {**kw, "rope": True} if "rope" in mixer_hparams(name) else kw)
            for name, kw in plan
        ]
    # built one at a time as the caller asks, so each layer's mixer draws its init right before
    # that layer's channel mixer, in the order the model always drew them (seeded runs repeat)
    return (build_mixer(name, d_model, causal=causal, max_len=max_len, **kw) for name, kw in plan)
