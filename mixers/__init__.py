"""mixerlab's token mixers: plain PyTorch, one contract, a registry by short name.

    from mixers import build_mixer, available_mixers, SequenceModel
    mixer = build_mixer("gmlp", d_model=64, causal=True, max_len=256)

Importing this package registers the built-in mixers; plugins register through the entry-point
group ``mixerlab.mixers``.
"""

from mixers import attention, conv, gmlp, rnn, smlp  # noqa: F401  (registers the built-ins)
from mixers.base import (
    TokenMixer,
    available_mixers,
    build_mixer,
    describe_mixer,
    get_mixer_class,
    mixer_hparams,
    register_mixer,
)
from mixers.model import SequenceModel

__all__ = [
    "SequenceModel",
    "TokenMixer",
    "available_mixers",
    "build_mixer",
    "describe_mixer",
    "get_mixer_class",
    "mixer_hparams",
    "register_mixer",
]
