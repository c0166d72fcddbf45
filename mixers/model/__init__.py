"""The model around the token mixers: ``embed -> [Block(token mixer, channel mixer)] x N ->
norm -> head``.

``sequence_model.py`` is the model, read top to bottom; ``layer_plan.py`` which registered mixer
each layer gets; ``blocks.py`` the pre-norm residual block, the channel mixers and norms;
``moe.py`` the mixture-of-experts channel mixer; ``positions.py`` the position tables and rotary
positions; ``readout.py`` the last-state read-out (MAD's compression decoder);
``cross_mixers.py`` the layers with which an encoder-decoder's decoder reads the encoder (their
own contract and registry: they read a second sequence); ``encoder_decoder.py`` the
encoder-decoder, two SequenceModels joined by them.
"""

from mixerlab.mixers.model.blocks import FFN_KINDS, NORM_KINDS, Block
from mixerlab.mixers.model.encoder_decoder import EncoderDecoderModel
from mixerlab.mixers.model.sequence_model import MIXER_INITS, POS_KINDS, SequenceModel

__all__ = [
    "FFN_KINDS",
    "MIXER_INITS",
    "NORM_KINDS",
    "POS_KINDS",
    "Block",
    "EncoderDecoderModel",
    "SequenceModel",
]
