"""Which token mixer each layer of a :class:`~mixerlab.mixers.model.SequenceModel` gets.

The model names one registered mixer and its hyper-parameters; the mixer's class says what its
layers hold (:meth:`~mixerlab.mixers.TokenMixer.layer_pattern`): itself in every layer, or, for
a hybrid, its pattern repeated over the depth. A list of layer specs (``mixer=["conv",
"attention"]``) is short for the hybrid with that pattern.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mixerlab.mixers._contract import (
    MIXERS,
    TokenMixer,
    build_mixer,
    get_mixer_class,
    mixer_hparams,
)
from mixerlab.mixers.hybrid import HYBRID, LayerSpec


def layer_plan(
    mixer: str | Sequence[LayerSpec], hparams: Mapping[str, Any] | None, n_layers: int
) -> list[tuple[str, dict[str, Any]]]:
    """(mixer name, hyper-parameters) for each of ``n_layers`` layers."""
    if isinstance(mixer, str):
        name, hparams = mixer, dict(hparams or {})
    elif hparams:
        raise ValueError(
            "mixer_hparams applies to a single mixer; in a hybrid pattern each entry carries its "
            f"own hyper-parameters (got mixer_hparams={dict(hparams)!r})"
        )
    else:
        name, hparams = HYBRID, {"pattern": mixer}
    MIXERS.check_arguments(name, hparams)
    pattern = get_mixer_class(name).layer_pattern(name, hparams)
    if not pattern or n_layers % len(pattern):
        raise ValueError(
            f"a hybrid pattern of {len(pattern)} entries must divide the depth evenly, but "
            f"n_layers is {n_layers}; use n_layers = a multiple of {len(pattern) or 1} or change "
            "the pattern"
        )
    return [(entry, dict(kw)) for entry, kw in pattern * (n_layers // len(pattern))]


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
