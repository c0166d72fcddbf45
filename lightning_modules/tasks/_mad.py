"""What MAD's six synthetic tasks share: MAD's token ids, its protocol's sizes, its split rule.

MAD: Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"; the generators
are ``mad/data/instances.py`` of github.com/athms/mad-lab, the baseline settings
``configs/tasks/*.yml``, the protocol ``mad/configs.py``. The ``mad_*`` tasks draw what those
generators draw, with our own vectorised code seeded from the run (MAD's token-by-token draws
give other sequences for the same seed, from the same distribution).

MAD numbers its tokens from 0 and reserves none for padding; here id 0 pads every task, so MAD's
token t is our id t + 1 and a task's vocabulary is MAD's ``vocab_size`` plus one. Arguments are
MAD's (``vocab_size`` is MAD's count), so a MAD setting is written as MAD writes it, and the
defaults are MAD's baseline: 12,800 training and 1,280 test examples (``num_train``, ``num_val``:
MAD's ``num_train_examples`` and ``num_test_examples``), batch 128.

MAD's recall tasks make training and test examples differently (its ``is_training``): training
targets are the next token everywhere, as in language modelling, test targets only the recalled
values. A task declares that with ``takes_is_training``; its training part then passes
``is_training=True`` to ``generate`` and its validation part ``False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from mixerlab.lightning_modules.tasks._base import IGNORE_INDEX, Baseline
from mixerlab.lightning_modules.tasks._synthetic import Part, SyntheticTaskDataModule

MAD_NUM_TRAIN = 12_800
MAD_NUM_TEST = 1_280
MAD_BATCH_SIZE = 128
FIRST_ID = 1  # our id of MAD's token 0: id 0 is the padding every task reserves


def to_ids(inputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAD's tokens as our ids (one up, past the padding id); unscored targets stay -100."""
    return inputs + FIRST_ID, np.where(targets == IGNORE_INDEX, IGNORE_INDEX, targets + FIRST_ID)


def next_token_example(
    sequences: np.ndarray, answers: np.ndarray, is_training: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A MAD recall example from whole (n, L + 1) sequences of MAD tokens: the input is all but
    the last token and the target at each position the next one. In training every next token
    is scored; in test only where ``answers`` (aligned with ``sequences``) is not -100."""
    targets = sequences if is_training else answers
    return to_ids(sequences[:, :-1], targets[:, 1:])


def first_occurrences(codes: np.ndarray) -> np.ndarray:
    """(n, m) bool: True where a row's value occurs for the first time in that row."""
    order = np.argsort(codes, axis=1, kind="stable")
    ranked = np.take_along_axis(codes, order, axis=1)
    starts = np.ones(codes.shape, dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(starts)
    np.put_along_axis(first, order, starts, axis=1)
    return first


class MADTaskDataModule(SyntheticTaskDataModule):
    """A MAD task: MAD's vocabulary one id up, one training and one validation set of
    ``settings``, and a uniform chance level over the answers its generator draws."""

    takes_is_training: ClassVar[bool] = False

    def __init__(
        self,
        *,
        vocab_size: int,
        params: Mapping[str, Any],
        settings: Mapping[str, int],
        max_len: int,
        num_train: int,
        num_val: int,
        batch_size: int,
        seed: int,
        num_workers: int,
        cache_dir: str | None,
    ) -> None:
        train, val = dict(settings), dict(settings)
        if self.takes_is_training:
            train["is_training"], val["is_training"] = True, False
        super().__init__(
            params={"vocab_size": vocab_size, **params},
            train_parts=[Part("train", num_train, train)],
            val_parts=[Part("val", num_val, val)],
            vocab_size=vocab_size + FIRST_ID,
            max_len=max_len,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            cache_dir=cache_dir,
        )

    def uniform_chance(self, n_answers: int, answers: str) -> dict[str, Baseline]:
        """A uniform guess over the ``n_answers`` answers the generator draws uniformly."""
        guess = Baseline.uniform(n_answers, f"the {n_answers} {answers}")
        return dict.fromkeys(self.val_set_names, guess)
