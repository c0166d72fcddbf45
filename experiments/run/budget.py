"""Sizing a run's model to a budget: ``model.budget.params`` or ``model.budget.flops_per_token``.

Holding d_model equal does not hold the model equal: at one width gMLP's and sMLP's spatial
weights grow with max_len squared and an LSTM carries four gates. A budget holds the cost equal
instead, counted as the model counts it: every parameter (embeddings, head, norms, every mixer's
weights, every MoE expert; tied embeddings once), or the forward FLOPs per token at the task's
max_len (``SequenceModel.flops_per_token``; an encoder-decoder's per token read or written, at
the task's longest source and target).

The rule (``model.budget.solve_for``):

- ``d_model`` (default): the model width is solved, everything else stays as configured. Widths
  are searched as integers, and a width the mixer refuses (d_model not divisible by n_heads, odd
  with rope, sMLP's chunks) is skipped, so the search needs no list of each mixer's rules. The
  count grows with the width, so the search brackets the target (from the configured d_model,
  doubling) and bisects; it keeps the accepted width whose count is nearest the target.
  Rounding to an accepted width can miss the tolerance at small budgets (a step of 4 in d_model
  is ~10% of a 200k-parameter model at d_model 80): then the run is refused with the two nearest
  reachable counts, and ``solve_for=ffn_mult`` is the finer knob.
- ``ffn_mult``: d_model stays as configured and the channel mixer's hidden width is solved,
  integer by integer (``ffn_mult = hidden / d_model``), so any budget above the model without
  its channel mixer is reached to within one hidden unit.

The reached count must be within ``model.budget.tolerance`` (relative, default 5%) of the
target. A budget no setting reaches (gMLP's L x L weights alone exceed it, or the search runs out
of widths) is a ConfigError naming the budget, the nearest reachable values and what to change.
Every candidate is built on the meta device (no memory, no init cost), so a solve takes a
second or two; the result is memoised, as a run asks for it for its memory check, its build and
its record.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mixerlab.experiments.run.mixer_node import encoder_mixer_node, mixer_label, model_mixer
from mixerlab.experiments.run.schema import ConfigError
from mixerlab.lightning_modules.tasks import TaskDataModule
from mixerlab.mixers import EncoderDecoderModel, SequenceModel

MEASURES = ("params", "flops_per_token")
MAX_WIDTH = 1 << 16  # the search gives up beyond: ~10^11 parameters at 2 layers
MAX_GAP = 256  # widths scanned past a refused one before the mixer counts as refusing them all


@dataclass(frozen=True)
class BudgetRecord:
    """What results.json records under ``budget``: the ``target`` of ``measure``, the count the
    sized model ``reached``, and the ``value`` the solve gave ``solved_for``."""

    measure: str
    target: float
    reached: float
    solved_for: str
    value: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        return self.reached / self.target - 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_error": round(self.relative_error, 6)}

    def describe(self) -> str:
        """One phrase for the run's one-line description."""
        value = f"{self.value:g}" if self.solved_for == "ffn_mult" else f"{self.value:.0f}"
        return (
            f"sized to {self.measure} {self.target:,.0f} by {self.solved_for}={value}, "
            f"{self.relative_error:+.1%}"
        )


@dataclass(frozen=True)
class Sizing:
    """``SequenceModel`` keyword arguments of the run's model (with ``encoder`` and
    ``max_source_len`` for an encoder-decoder), and how a budget set them."""

    arguments: dict[str, Any]
    budget: BudgetRecord | None

    def build(self) -> SequenceModel | EncoderDecoderModel:
        """The model these arguments describe."""
        return model_of(self.arguments)


def model_of(arguments: dict[str, Any]) -> SequenceModel | EncoderDecoderModel:
    """One stack, or with ``arguments["encoder"]`` (``model.encoder``, its mixer resolved to
    ``(name, hparams)``) an encoder-decoder: the decoder takes the run's mixer and ``n_layers``,
    the encoder ``encoder.n_layers`` of its own mixer, and both stacks share the rest."""
    arguments = dict(arguments)
    encoder = arguments.pop("encoder", None)
    max_source_len = arguments.pop("max_source_len", None)
    if encoder is None:
        return SequenceModel(**arguments)
    encoder_mixer, encoder_hparams = encoder["mixer"]
    for only_one_stack in ("causal", "num_classes", "readout", "prefix_lm"):  # fixed by the design
        arguments.pop(only_one_stack)
    vocab_size = arguments.pop("vocab_size")
    return EncoderDecoderModel(
        vocab_size,
        vocab_size,
        n_encoder_layers=encoder["n_layers"],
        n_decoder_layers=arguments.pop("n_layers"),
        encoder_mixer=encoder_mixer,
        encoder_hparams=encoder_hparams,
        decoder_mixer=arguments.pop("mixer"),
        decoder_hparams=arguments.pop("mixer_hparams"),
        cross_mixer=encoder["cross_mixer"],
        cross_hparams=encoder["cross_hparams"],
        share_embeddings=encoder["share_embeddings"],
        max_source_len=max_source_len,
        max_target_len=arguments.pop("max_len"),
        **arguments,
    )


def size_model(config: dict[str, Any], dm: TaskDataModule) -> Sizing:
    """The run's model arguments for the task ``dm`` (vocabulary, length, causality, head), its
    ``model.budget`` solved (see the module docstring); ConfigError when no setting reaches it.
    A reconstruction task's targets are all read from the last position's state (MAD's
    compression read-out); every other task reads each position's own."""
    readout = "last_state" if dm.task_type == "reconstruction" else "per_position"
    shape = (dm.vocab_size, dm.max_len, dm.causal, dm.num_classes, readout, dm.max_source_len)
    key = json.dumps([config["mixer"], config["model"], shape], sort_keys=True)
    return copy.deepcopy(_size_model(key))  # the caller may change what it is given


@functools.cache
def _size_model(key: str) -> Sizing:
    mixer_node, model_node, shape = json.loads(key)
    vocab_size, max_len, causal, num_classes, readout, max_source_len = shape
    mixer, hparams = model_mixer(mixer_node)
    budget = model_node.pop("budget", None) or {}
    arguments = {
        "vocab_size": vocab_size,
        "mixer": mixer,
        "mixer_hparams": hparams,
        "causal": causal,
        "max_len": max_len,
        "num_classes": num_classes,
        "readout": readout,
        **model_node,
    }
    encoder = arguments.pop("encoder")
    if encoder is not None:  # one stack takes SequenceModel's arguments alone
        node = encoder_mixer_node(encoder, mixer_node)
        arguments["encoder"] = {**encoder, "mixer": model_mixer(node)}
        arguments["max_source_len"] = max_source_len
    measure = next((m for m in MEASURES if budget.get(m) is not None), None)  # one: the schema
    if measure is None:
        return Sizing(arguments, None)
    target, solve_for, tolerance = budget[measure], budget["solve_for"], budget["tolerance"]
    label = mixer_label(mixer_node)
    count = _counter(arguments, measure, solve_for, label)
    if solve_for == "d_model":
        start = arguments["d_model"]
    else:
        if arguments["ffn"] == "none":
            raise ConfigError(
                "model.budget.solve_for=ffn_mult sizes the channel mixer, but model.ffn=none has "
                "none; use model.budget.solve_for=d_model or a channel mixer (model.ffn=mlp)"
            )
        start = max(1, round(arguments["ffn_mult"] * arguments["d_model"]))
    below, above = _bracket(count, target, start)
    best = min((c for c in (below, above) if c is not None), key=lambda c: abs(c[1] / target - 1))
    value = best[0] if solve_for == "d_model" else best[0] / arguments["d_model"]
    record = BudgetRecord(measure, float(target), best[1], solve_for, value, tolerance)
    if abs(record.relative_error) > tolerance:
        raise ConfigError(_unreachable(record, below, above, label, arguments))
    arguments[solve_for] = value
    return Sizing(arguments, record)


Candidate = tuple[int, float]  # (width, its count)


def _counter(
    arguments: dict[str, Any], measure: str, solve_for: str, label: str
) -> Callable[[int], float | None]:
    """The count of the model at one integer setting (a d_model, or a channel-mixer hidden
    width), built on the meta device; None for a setting the model refuses. Memoised."""

    @functools.cache
    def count(width: int) -> float | None:
        sized = dict(arguments)
        if solve_for == "d_model":
            sized["d_model"] = width
        else:
            sized["ffn_mult"] = width / arguments["d_model"]
        try:
            with torch.device("meta"):
                model = model_of(sized)
        except ValueError:
            return None
        except (NotImplementedError, RuntimeError) as err:
            raise ConfigError(
                f"model.budget counts candidate models built on the meta device, and mixer "
                f"{label!r} cannot be built there ({err}); set model.d_model instead"
            ) from None
        if measure == "params":
            return float(model.num_params())
        try:
            return float(model.flops_per_token(model.max_len))
        except NotImplementedError:
            raise ConfigError(
                f"mixer {label!r} does not count its FLOPs (flops_per_token), so "
                "model.budget.flops_per_token cannot size it; use model.budget.params"
            ) from None

    return count


def _accepted(
    count: Callable[[int], float | None], start: int, stop: int, step: int = 1
) -> Candidate | None:
    """The first setting of ``range(start, stop, step)`` (at most :data:`MAX_GAP` of them,
    within 1..:data:`MAX_WIDTH`) that the model accepts; None if there is none."""
    for candidate in range(start, stop, step)[:MAX_GAP]:
        if not 1 <= candidate <= MAX_WIDTH:
            return None
        if (value := count(candidate)) is not None:
            return candidate, value
    return None


def _bracket(
    count: Callable[[int], float | None], target: float, start: int
) -> tuple[Candidate | None, Candidate | None]:
    """The accepted settings around ``target``: the largest whose count is under it and the
    smallest whose count reaches it (None where no setting is). Counts grow with the setting, so
    this doubles from ``start`` until the target is passed, then bisects."""
    lowest = _accepted(count, 1, MAX_GAP + 1)
    if lowest is None:
        raise ConfigError(
            f"no setting from 1 to {MAX_GAP} builds this model; check the mixer's "
            "hyper-parameters (e.g. n_heads) with model.budget unset"
        )
    if lowest[1] >= target:
        return None, lowest
    here = _accepted(count, max(start, lowest[0]), MAX_WIDTH + 1) or lowest
    below, above = (here, None) if here[1] < target else (lowest, here)
    while above is None:
        grown = _accepted(count, 2 * below[0], MAX_WIDTH + 1)
        if grown is None:
            return below, None
        below, above = (grown, None) if grown[1] < target else (below, grown)
    while True:  # below[1] < target <= above[1]; look for an accepted setting between them
        mid = (below[0] + above[0]) // 2
        inner = _accepted(count, max(mid, below[0] + 1), above[0])
        inner = inner or _accepted(count, mid - 1, below[0], -1)
        if inner is None:
            return below, above
        below, above = (inner, above) if inner[1] < target else (below, inner)


def _unreachable(
    record: BudgetRecord,
    below: Candidate | None,
    above: Candidate | None,
    label: str,
    arguments: dict[str, Any],
) -> str:
    """Why no setting reaches the budget, the nearest reachable counts and what to change."""
    knob = "d_model" if record.solved_for == "d_model" else "channel-mixer hidden width"
    other = "ffn_mult" if record.solved_for == "d_model" else "d_model"
    unit = record.measure.replace("_", " ")
    if below is None:
        why = (
            f"at the smallest {knob} ({above[0]}) the model already has {above[1]:,.0f} {unit}, "
            f"from what does not shrink with {record.solved_for}: model.n_layers="
            f"{arguments['n_layers']}, the vocabulary ({arguments['vocab_size']}), the task's "
            f"max_len ({arguments['max_len']}; gMLP and sMLP hold max_len x max_len weights)"
        )
        fix = f"raise the budget to at least {above[1]:,.0f} or make those smaller"
        if record.solved_for == "ffn_mult":
            fix += ", or size d_model instead (model.budget.solve_for=d_model)"
    elif above is None:
        why = f"the largest {knob} tried ({below[0]}) gives only {below[1]:,.0f} {unit}"
        fix = "lower the budget or raise model.n_layers"
    else:
        why = (
            f"the nearest reachable are {below[1]:,.0f} ({knob} {below[0]}) and "
            f"{above[1]:,.0f} ({knob} {above[0]})"
        )
        fix = (
            "pick a budget near one of them, widen model.budget.tolerance, or size the finer "
            f"knob (model.budget.solve_for={other})"
        )
    return (
        f"model.budget.{record.measure}={record.target:,.0f} cannot be reached within "
        f"{record.tolerance * 100:g}% for mixer {label!r}: {why}; {fix}"
    )
