"""mixerlab's token mixers: plain PyTorch, one contract, a registry by short name.

    from mixerlab.mixers import build_mixer, available_mixers, SequenceModel
    mixer = build_mixer("gmlp", d_model=64, causal=True, max_len=256)

Each public module here is one registered mixer, named like its ``conf/mixer/<name>.yaml``
(``hybrid`` puts different mixers in different layers). The rest has its own place:
``_contract.py`` the ``TokenMixer`` contract and the mixer registry, ``_registry.py`` the registry
shape every extension point uses, ``model/`` the ``SequenceModel`` with its blocks, channel
mixers and positions, ``kernels/`` the algorithms behind some mixers (FFT convolution, selective
scan, chunked linear attention), ``testing/`` the contract suite (``check_mixer``).

Importing this package imports every public module in it, so a built-in mixer is one file whose
``@register_mixer`` runs on import (plus its ``conf/mixer/<name>.yaml``), and no list of built-ins
is written anywhere; plugins register through the entry-point group ``mixerlab.mixers``.
"""

from mixerlab import import_public_modules
from mixerlab.mixers._contract import (
    TokenMixer,
    available_mixers,
    build_mixer,
    count_params,
    describe_mixer,
    get_mixer_class,
    mixer_hparams,
    register_mixer,
)
from mixerlab.mixers.model import EncoderDecoderModel, SequenceModel

import_public_modules(__name__, __path__)

__all__ = [
    "EncoderDecoderModel",
    "SequenceModel",
    "TokenMixer",
    "available_mixers",
    "build_mixer",
    "count_params",
    "describe_mixer",
    "get_mixer_class",
    "mixer_hparams",
    "register_mixer",
]
