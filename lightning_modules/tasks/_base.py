"""The task contract and the registry of tasks by short name.

A task is a LightningDataModule that also states what the training app needs to build a model
for it. Name, batch type and causality belong to the task, not to a run, so they are declared
once, at registration; the rest depends on the task's arguments and is set per instance::

    @register_task("mqar", task_type="lm", causal=True)
    class MQARDataModule(SyntheticTaskDataModule): ...

    dm = build_task("mqar", seed=0, cache_dir=None, vocab_size=64)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
from torch import Tensor

from mixerlab.mixers._registry import Registry

ENTRY_POINT_GROUP = "mixerlab.tasks"
# lm: per-position targets, each read from its own position's state; reconstruction: the same
# batches, every target read from the last position's state (MAD's compression); classification:
# one label per sequence; seq2seq: a source the model reads whole and a target it writes token by
# token (an encoder-decoder's task).
TASK_TYPES = ("lm", "reconstruction", "classification", "seq2seq")
# Set by the run (its top-level keys), never by a task's config.
RUN_ARGUMENTS = ("seed", "cache_dir")
# Batches are right-padded with token id 0 in every task; per-position targets are -100 where
# a position is not scored (padding included), the value the LightningModules' loss ignores.
PAD_ID = 0
IGNORE_INDEX = -100
# A seq2seq target starts after BOS_ID (the decoder's first input) and ends with EOS_ID (scored:
# a model must say where the target ends); a seq2seq task's own tokens come after them.
BOS_ID, EOS_ID = 1, 2


@dataclass(frozen=True)
class Baseline:
    """What a model that learned nothing scores on one validation set, for the chance lines of
    ``mixerlab compare``.

    "Nothing" is the best prediction that ignores the input: one fixed distribution over the
    answers, their prior. Where the generator draws answers uniformly that is a uniform guess
    over the answers it can draw (not over the whole vocabulary: telling answers from other
    tokens is already something learned); otherwise it is the answers' frequencies (ListOps'
    labels, a text's unigram). ``loss`` is its cross-entropy on the validation set in nats,
    ``acc`` the accuracy of always giving its most likely answer, ``label`` names it on plots
    and ``how`` says in words where it comes from.
    """

    label: str
    loss: float
    acc: float
    how: str

    @classmethod
    def uniform(cls, n_answers: int, answers: str) -> Baseline:
        """A uniform guess over ``n_answers`` equally likely answers (``answers`` names them)."""
        return cls("chance", math.log(n_answers), 1.0 / n_answers, f"uniform guess over {answers}")

    @classmethod
    def prior(cls, label: str, fitted: np.ndarray, scored: np.ndarray, how: str) -> Baseline:
        """The answers' frequencies in ``fitted`` (count per answer id) scored on the counts
        ``scored`` of the validation set. Add-one smoothing keeps an answer never seen in
        ``fitted`` from costing an infinite loss."""
        p = (fitted + 1.0) / (fitted.sum() + len(fitted))
        n_scored = scored.sum()
        loss = float(-(scored * np.log(p)).sum() / n_scored)
        acc = float(scored[int(np.argmax(fitted))] / n_scored)
        return cls(label, loss, acc, how)


def scored_counts(targets: Iterable[Tensor], n_ids: int) -> np.ndarray:
    """How often each of ``n_ids`` ids is a scored target (not :data:`IGNORE_INDEX`) in these
    target tensors, of any shape: the counts a :class:`Baseline` prior is fitted on or scored
    with."""
    counts = np.zeros(n_ids, dtype=np.int64)
    for target in targets:
        counts += np.bincount(target[target != IGNORE_INDEX].numpy(), minlength=n_ids)
    return counts


class TaskDataModule(pl.LightningDataModule):
    """Base class of every task: the attributes the training app reads, declared in one place.

    Set by :func:`register_task`: ``name``, ``task_type`` ("lm": per-position targets, -100
    where unscored; "reconstruction": the same targets, all read from the last position's state;
    "classification": one label per sequence) and ``causal`` (True: a decoder, position t sees
    positions <= t; False: an encoder). Set by the instance, at the latest in
    ``setup("fit")``: ``vocab_size``, ``max_len`` (the longest sequence any loader yields),
    ``num_classes`` (None but for "classification"), ``val_set_names`` (one per validation
    loader, in order), ``bytes_per_token`` (None where bytes mean nothing, e.g. synthetic
    tokens), ``fingerprint`` (JSON-serialisable values identifying the data, logged with the
    config) and, for "seq2seq" only, ``max_source_len`` (the longest source) and ``start_id``
    (the decoder's first input: :data:`BOS_ID` for the synthetic tasks).
    After ``setup``, :meth:`baselines` says what learning nothing scores on each validation set.

    Batches are dicts ``{"input": (B, L) long, "target": (B, L) or (B,) long, "mask": (B, L)
    bool, True at real tokens}``, right-padded with :data:`PAD_ID`, targets :data:`IGNORE_INDEX`
    where unscored. An "lm" batch may add ``"prefix"`` (B,) long, each sequence's prompt (a
    source and its start token) that a prefix LM reads both ways (:meth:`prefix_batches`). A
    "seq2seq" batch adds ``"source"`` (B, S) and ``"source_mask"``; its
    ``"input"`` is the target shifted right after ``start_id``, its ``"target"`` the target
    sequence, ending in an end token. The constructor takes keyword arguments only, among them
    ``seed`` and ``cache_dir``, which the run sets; its defaults are the task's
    ``conf/task/<name>.yaml``, so ``build_task(name)`` builds the data ``task=<name>`` does (a
    test compares them).
    """

    name: ClassVar[str]
    task_type: ClassVar[str]
    causal: ClassVar[bool]

    vocab_size: int | None = None
    max_len: int
    num_classes: int | None = None
    val_set_names: list[str]
    bytes_per_token: float | None = None
    fingerprint: dict[str, Any]
    max_source_len: int | None = None
    start_id: int | None = None
    # Whether a sequence is right only when all its scored tokens are (val/exact_acc is logged):
    # a written answer, as in the seq2seq tasks, in whichever layout.
    scores_sequences: ClassVar[bool] = False

    @classmethod
    def declared(cls, datamodule: Mapping[str, Any]) -> tuple[str, bool]:
        """The task type and causality of the batches this task makes with the arguments
        ``datamodule``: the registration's, unless the task lays its examples out in more than
        one way (the synthetic seq2seq tasks' ``layout``)."""
        return cls.task_type, cls.causal

    @classmethod
    def prefix_batches(cls, datamodule: Mapping[str, Any]) -> bool:
        """Whether this task's batches, made with the arguments ``datamodule``, carry
        ``"prefix"``, which a prefix LM (``model.prefix_lm``) reads both ways: none by default."""
        return False

    def baselines(self) -> dict[str, Baseline]:
        """What a model that learned nothing scores on each validation set, by the names in
        ``val_set_names``; called after ``setup``. Derived from the task's parameters or data,
        never written down, so it cannot drift from what the generator does. The default, for
        a task that cannot say, is none: its runs are compared without chance lines."""
        return {}

    def check_ready(self) -> None:
        """Raise a TypeError naming each contract attribute that ``setup`` left unset or wrong."""
        wrong = [
            f"{attribute}={getattr(self, attribute, '<unset>')!r} (needs {need})"
            for attribute, need, ok in (
                ("vocab_size", "a positive int", _positive_int(self.vocab_size)),
                ("max_len", "a positive int", _positive_int(getattr(self, "max_len", None))),
                (
                    "num_classes",
                    "a positive int for classification, else None",
                    _positive_int(self.num_classes)
                    if self.task_type == "classification"
                    else self.num_classes is None,
                ),
                (
                    "val_set_names",
                    "a non-empty list of str",
                    _names(getattr(self, "val_set_names", None)),
                ),
                ("fingerprint", "a dict", isinstance(getattr(self, "fingerprint", None), dict)),
                *(
                    (
                        key,
                        "a positive int for seq2seq, else None",
                        _positive_int(getattr(self, key))
                        if self.task_type == "seq2seq"
                        else getattr(self, key) is None,
                    )
                    for key in ("max_source_len", "start_id")
                ),
            )
            if not ok
        ]
        if wrong:
            raise TypeError(
                f"task {self.name!r} ({type(self).__name__}) breaks the task contract after "
                f"setup: {'; '.join(wrong)}; set them in __init__ or setup"
            )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


TASKS: Registry[TaskDataModule] = Registry(
    "task", TaskDataModule, ENTRY_POINT_GROUP, set_by_run=RUN_ARGUMENTS
)


def register_task(
    name: str, *, task_type: str, causal: bool
) -> Callable[[type[TaskDataModule]], type[TaskDataModule]]:
    """Class decorator: make a :class:`TaskDataModule` buildable as ``build_task(name)`` and
    selectable as ``task=<name>`` (with a ``conf/task/<name>.yaml``)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"register_task({name!r}): task_type must be one of {TASK_TYPES}")
    if not isinstance(causal, bool):
        raise ValueError(f"register_task({name!r}): causal must be True or False, got {causal!r}")

    def decorate(cls: type[TaskDataModule]) -> type[TaskDataModule]:
        TASKS.add(name, cls)
        cls.name, cls.task_type, cls.causal = name, task_type, causal
        return cls

    return decorate


def available_tasks() -> list[str]:
    """Names of all registered tasks, built-in and plugins, sorted."""
    return TASKS.names()


def get_task_class(name: str) -> type[TaskDataModule]:
    return TASKS.get(name)


def describe_task(name: str) -> str:
    """The first line of the task's docstring: the one-line description `mixerlab list` shows."""
    return TASKS.describe(name)


def task_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments a task's config may set (``task.datamodule.*``), with defaults."""
    return TASKS.arguments(name)


def build_task(
    name: str, *, seed: int, cache_dir: str | None, **datamodule_kwargs: Any
) -> TaskDataModule:
    """Build a registered task by name; unknown names and arguments get a clear error."""
    TASKS.check_arguments(name, datamodule_kwargs)
    return TASKS.get(name)(seed=seed, cache_dir=cache_dir, **datamodule_kwargs)
