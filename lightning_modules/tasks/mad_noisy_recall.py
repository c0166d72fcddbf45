"""Noisy in-context recall (MAD): in-context recall with pairs of noise tokens in the context."""

from __future__ import annotations

from functools import partialmethod

from mixerlab.lightning_modules.tasks._base import register_task
from mixerlab.lightning_modules.tasks.mad_recall import MADRecallDataModule


@register_task("mad_noisy_recall", task_type="lm", causal=True)
class MADNoisyRecallDataModule(MADRecallDataModule):
    """Noisy in-context recall (MAD) - recall a recurring key's value across pairs of noise.

    MAD: Poli et al. 2024, ``generate_noisy_in_context_recall_instance``: in-context recall
    (``mad_recall``, which says what is drawn and scored) with noise. MAD's baseline sets 16 of
    its 32 tokens aside as noise and makes each context pair noise with probability 0.2; its
    settings vary ``vocab_size`` (48, 80, 144: the 16 noise tokens included), ``seq_len``,
    ``num_train`` and ``frac_noise`` (0.4, 0.6, 0.8). Only the defaults differ from
    ``mad_recall``'s: the constructor is its own, with MAD's noisy baseline.
    """

    __init__ = partialmethod(
        MADRecallDataModule.__init__, vocab_size=32, noise_vocab_size=16, frac_noise=0.2
    )
