"""The shape of a composed training config, checked before any work starts.

Hydra composes YAML without knowing what the keys mean; a typo in an experiment file or a
``+model.d_modle=64`` override would otherwise surface minutes later as a TypeError deep inside
training, or never. :func:`validate_config` walks the composed config against the dataclasses
below (and the mixer and task registries for ``mixer`` and ``task``) and raises one
:class:`ConfigError` that lists every problem with the key, what was given and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixerlab.experiments.run.config_values import matches, shown, type_name, unknown_key
from mixerlab.experiments.run.mixer_node import (
    check_mixer_node,
    encoder_mixer_node,
    mixer_names,
)
from mixerlab.experiments.run.study import name_problem
from mixerlab.lightning_modules.tasks import available_tasks, get_task_class, task_arguments
from mixerlab.lightning_modules.tasks._base import RUN_ARGUMENTS
from mixerlab.mixers import available_mixers, get_mixer_class
from mixerlab.mixers.model import FFN_KINDS, MIXER_INITS, NORM_KINDS, POS_KINDS
from mixerlab.mixers.model.cross_mixers import CROSS_MIXERS, available_cross_mixers


class ConfigError(ValueError):
    """A mistake in the run's config: the message names each key, the problem and the fix."""


@dataclass(frozen=True)
class Allowed:
    """Allowed values of a field (``Annotated[int, Allowed(lo=1)]``): choices or a closed range."""

    choices: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None


NO_LIMITS = Allowed()


BUDGET_SOLVE_FOR = ("d_model", "ffn_mult")  # what mixerlab.experiments.run.budget may solve for


@dataclass
class BudgetConfig:
    """``model.budget``: size the model to a parameter or FLOP budget
    (mixerlab.experiments.run.budget)."""

    params: Annotated[int | None, Allowed(lo=1)]
    flops_per_token: Annotated[float | None, Allowed(lo=1)]
    solve_for: Annotated[str, Allowed(choices=BUDGET_SOLVE_FOR)]
    tolerance: Annotated[float, Allowed(lo=0, hi=1)]


@dataclass
class EncoderConfig:
    """``model.encoder`` (``model=encoder_decoder``): an encoder-decoder's encoder stack and the
    cross-mixers with which its decoder reads it (mixerlab.mixers.EncoderDecoderModel)."""

    n_layers: Annotated[int, Allowed(lo=1)]
    mixer: Any  # null (the run's mixer), a registered name or a mixer node: _check_encoder
    cross_mixer: str  # checked against the cross-mixer registry: _check_encoder
    cross_hparams: dict[str, Any]
    share_embeddings: bool


@dataclass
class ModelConfig:
    d_model: Annotated[int, Allowed(lo=1)]
    n_layers: Annotated[int, Allowed(lo=1)]
    ffn: Annotated[str, Allowed(choices=FFN_KINDS)]
    ffn_mult: Annotated[float, Allowed(lo=0)]
    ffn_hparams: dict[str, Any]
    norm: Annotated[str, Allowed(choices=NORM_KINDS)]
    pos: Annotated[str, Allowed(choices=POS_KINDS)]
    dropout: Annotated[float, Allowed(lo=0, hi=0.999)]
    tie_embeddings: bool
    mixer_init: Annotated[str, Allowed(choices=MIXER_INITS)]
    budget: BudgetConfig
    encoder: EncoderConfig | None
    prefix_lm: bool


@dataclass
class OptimConfig:
    lr: Annotated[float, Allowed(lo=1e-12)]
    weight_decay: Annotated[float, Allowed(lo=0)]
    betas: Annotated[list[float], Allowed(lo=0, hi=0.9999)]
    warmup_steps: Annotated[int, Allowed(lo=0)]
    min_lr_ratio: Annotated[float, Allowed(lo=0, hi=1)]
    grad_clip: Annotated[float | None, Allowed(lo=0)]
    optimizer: dict[str, Any]  # instantiated (a _target_ spec), called with parameter groups
    scheduler: dict[str, Any]  # instantiated (a _target_ spec), called with the optimiser


# ckpt_path values Trainer.fit resolves itself ("registry:<model>" too); anything else is a file.
FIT_CKPT_NAMES = ("last", "best", "hpc", "registry")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", 32, 16, 64)


@dataclass
class TrainerConfig:
    accelerator: Annotated[str, Allowed(choices=("auto", "cpu", "gpu", "cuda", "mps", "tpu"))]
    devices: int | str | list[int]
    strategy: str | dict[str, Any]  # a name, or a strategy to instantiate (its _target_)
    precision: Annotated[str | int, Allowed(choices=PRECISIONS)]
    max_steps: Annotated[int, Allowed(lo=1)]
    val_check_interval: Annotated[int, Allowed(lo=1)]
    limit_val_batches: Annotated[int | float, Allowed(lo=0)]
    log_every_n_steps: Annotated[int, Allowed(lo=1)]
    accumulate_grad_batches: Annotated[int, Allowed(lo=1)]
    num_sanity_val_steps: Annotated[int, Allowed(lo=-1)]
    deterministic: bool


@dataclass
class CheckpointConfig:
    _target_: str
    monitor: str
    save_last: bool
    save_top_k: Annotated[int, Allowed(lo=-1)]
    every_n_train_steps: Annotated[int | None, Allowed(lo=1)]


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig
    progress_bar: bool
    extra: list[dict[str, Any]]


@dataclass
class WandbConfig:
    _target_: str
    mode: Annotated[str, Allowed(choices=("auto", "offline", "online", "disabled"))]
    project: str
    entity: str | None
    group: str | None
    tags: list[str]
    job_type: str


@dataclass
class TrainConfig:
    seed: Annotated[int, Allowed(lo=0, hi=2**32 - 1)]  # numpy's seed range
    compile: bool
    name: str
    cache_dir: str | None
    ckpt_path: str | None
    overwrite: bool  # discard the run folder's results and checkpoints (see run_folder)
    study: Any  # None or a study's name (text; digits alone arrive as an int), see _check_study
    mixer: dict[str, Any]  # checked against the registry, see _check_mixer
    model: ModelConfig
    task: dict[str, Any]  # checked against the task registry, see _check_task
    optim: OptimConfig
    trainer: TrainerConfig
    logger: dict[str, Any]  # empty or W&B's, see _check_logger
    callbacks: CallbacksConfig


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve ``cfg`` and check it; returns it as plain dicts/lists or raises ConfigError."""
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    try:  # finding the missing keys resolves interpolations too: `name=${nope}` fails here
        problems = [_missing(key) for key in sorted(OmegaConf.missing_keys(cfg))]
        if problems:
            raise _invalid(problems)
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config cannot be resolved: {err}") from None
    _check(plain, TrainConfig, "", problems)
    if not problems:
        check_mixer_node(plain["mixer"], plain["model"]["n_layers"], problems)
        _check_task(plain["task"], problems)
        _check_logger(plain["logger"], problems)
        _check_study(plain, problems)
        _check_cross(plain, problems)
        _check_encoder(plain, problems)
        _check_prefix_lm(plain, problems)
    if problems:
        raise _invalid(problems)
    return plain


def _invalid(problems: list[str]) -> ConfigError:
    listing = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(
        f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{listing}\n"
        "Fix them in the YAML or on the command line (key=value); `mixerlab train --cfg job` "
        "prints the composed config and `mixerlab list` the mixers, tasks and experiments."
    )


def _missing(key: str) -> str:
    """A mandatory value (``???``) nobody set; ``mixer=plugin`` leaves ``mixer.name`` so."""
    if key == "mixer.name":
        return (
            "mixer.name is not set: mixer=plugin trains a mixer registered by a plugin package; "
            f"name it with mixer.name=<registered name> (registered mixers: "
            f"{', '.join(available_mixers())})"
        )
    return f"{key} is not set (??? in the config); set it with {key}=<value>"


def _check(node: Any, schema: type, path: str, problems: list[str]) -> None:
    where = path.rstrip(".") or "the top level"
    if not isinstance(node, Mapping):
        problems.append(f"{where} must be a mapping, got {node!r}")
        return
    spec = [f.name for f in fields(schema)]
    hints = get_type_hints(schema, include_extras=True)
    for key in node:
        if key not in spec:
            problems.append(unknown_key(f"{path}{key}", spec, where))
    for name in spec:
        key = f"{path}{name}"
        if name not in node:
            problems.append(f"{key} is missing; {where} needs: {', '.join(spec)}")
            continue
        tp, allowed = hints[name], NO_LIMITS
        if get_origin(tp) is Annotated:
            tp, allowed = get_args(tp)
        _check_value(node[name], tp, allowed, key, problems)


def _check_value(value: Any, tp: Any, allowed: Allowed, key: str, problems: list[str]) -> None:
    if is_dataclass(tp):
        _check(value, tp, f"{key}.", problems)
        return
    node = [arg for arg in get_args(tp) if is_dataclass(arg)]  # an optional node: X | None
    if node:
        if value is not None:
            _check(value, node[0], f"{key}.", problems)
        return
    if not matches(value, tp):
        problems.append(f"{key} must be {type_name(tp)}, got {shown(value)}")
        return
    if allowed.choices and value not in allowed.choices:
        problems.append(
            f"{key}={shown(value)} is not allowed; "
            f"choose one of: {', '.join(map(str, allowed.choices))}"
        )
    lo, hi = allowed.lo, allowed.hi
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            problems.append(f"{key} must be {bounds}, got {shown(value)}")
            break


def _check_task(node: dict[str, Any], problems: list[str]) -> None:
    """``task.name`` must be registered and ``task.datamodule`` its keyword arguments; the
    registration's ``type`` and ``causal`` are filled in, so the recorded config holds them."""
    name = node.get("name")
    known = available_tasks()
    if name not in known:
        problems.append(
            f"task.name={name!r} is not a registered task; known tasks: {', '.join(known)} "
            "(select one with task=<name>)"
        )
        return
    cls = get_task_class(name)
    datamodule = node.get("datamodule")
    given = datamodule if isinstance(datamodule, Mapping) else {}
    declared = cls.declared({**task_arguments(name), **given})  # a layout may change them
    registered = dict(zip(("type", "causal"), declared, strict=True))
    for key in sorted(set(node) - {"name", "datamodule"}):
        if key not in registered:
            problems.append(unknown_key(f"task.{key}", ["name", "datamodule"], "task"))
        elif node[key] != registered[key]:
            problems.append(
                f"task.{key}={node[key]!r} contradicts task {name!r}, registered with "
                f"{key}={registered[key]!r}; remove task.{key}: the registration sets it"
            )
    if not isinstance(datamodule, Mapping):
        problems.append(f"task.datamodule must be a mapping, got {datamodule!r}")
        return
    accepted = task_arguments(name)
    for key, value in datamodule.items():
        if key in RUN_ARGUMENTS:
            problems.append(
                f"task.datamodule.{key} is set by the run (top-level {key}); "
                "remove it from the task"
            )
        elif key not in accepted:
            problems.append(
                unknown_key(f"task.datamodule.{key}", list(accepted), f"task {name!r}")
                + f" ({cls.__name__}'s keyword arguments; task.name selects the class)"
            )
        elif isinstance(accepted[key], (bool, int, float, str)) and not matches(
            value, type(accepted[key])
        ):
            problems.append(
                f"task.datamodule.{key} must be {type_name(type(accepted[key]))} like its "
                f"default {accepted[key]!r}, got {shown(value)}"
            )
    node.update(registered)


def _check_logger(node: Mapping[str, Any], problems: list[str]) -> None:
    """Empty (``logger=csv`` or ``none``: metrics.csv only) or W&B's settings."""
    if node:
        _check(node, WandbConfig, "logger.", problems)


def _check_study(cfg: dict[str, Any], problems: list[str]) -> None:
    """``study``: null or a name by the rule of ``mixerlab.experiments.run.study``, kept as text."""
    study = cfg["study"]
    if study is None:
        return
    problem = name_problem(study)
    if problem:
        problems.append(problem)
    else:
        cfg["study"] = str(study)


def _check_cross(cfg: Mapping[str, Any], problems: list[str]) -> None:
    """Constraints between keys that no single key's type can express."""
    if len(cfg["optim"]["betas"]) != 2:
        betas = cfg["optim"]["betas"]
        problems.append(f"optim.betas must be two numbers [beta1, beta2], got {betas}")
    monitor = cfg["callbacks"]["checkpoint"]["monitor"]
    if not monitor.startswith(("val/", "train/")):
        problems.append(
            f"callbacks.checkpoint.monitor={monitor!r} is not a logged metric; use val/loss, "
            "val/acc, val/bpb (text), val/acc@<val set> or train/loss"
        )
    if cfg["trainer"]["limit_val_batches"] == 0:
        problems.append(
            "trainer.limit_val_batches=0 turns validation off: the run would end with no val "
            "metric for results.json, best.ckpt or `mixerlab compare`; validate on a few batches "
            "instead (e.g. trainer.limit_val_batches=1) and rarely (trainer.val_check_interval)"
        )
    budget = cfg["model"]["budget"]
    if budget["params"] is not None and budget["flops_per_token"] is not None:
        problems.append(
            "model.budget sets both params and flops_per_token; a model is sized to one "
            "budget: set the other to null"
        )
    ckpt_path = cfg["ckpt_path"]
    local = ckpt_path is not None and "://" not in ckpt_path  # not a remote (fsspec) URL
    if local and ckpt_path.split(":")[0] not in FIT_CKPT_NAMES and not Path(ckpt_path).is_file():
        problems.append(
            f"ckpt_path={ckpt_path!r}: no such checkpoint file; give the path of a .ckpt file "
            "(e.g. <run dir>/checkpoints/last.ckpt), or resume=<run dir> to continue a run"
        )
    _check_processes(cfg["trainer"], problems)
    for i, extra in enumerate(cfg["callbacks"]["extra"]):
        if not isinstance(extra.get("_target_"), str):
            problems.append(f"callbacks.extra[{i}] needs _target_: <callback class path>")
    for key in ("optimizer", "scheduler"):
        if not isinstance(cfg["optim"][key].get("_target_"), str):
            problems.append(f"optim.{key} needs _target_: <{key} class or function path>")
    task = cfg["task"]
    encoder_task = task.get("causal") is False  # filled in from the registration, when known
    for mixer in mixer_names(cfg["mixer"]) if encoder_task else []:
        if mixer not in available_mixers() or get_mixer_class(mixer).supports_encoder:
            continue
        problems.append(
            f"mixer {mixer!r} is decoder-only (supports_encoder = False) but task "
            f"{task['name']!r} is an encoder task (causal=False); pick a causal task or a "
            "mixer that supports encoders"
        )


def _check_processes(trainer: Mapping[str, Any], problems: list[str]) -> None:
    """A strategy given as a mapping is instantiated: it names its class; CPU processes (DDP on
    the CPU, ``trainer=ddp_cpu``) get a core each, or they only slow each other down."""
    strategy = trainer["strategy"]
    if isinstance(strategy, Mapping) and not isinstance(strategy.get("_target_"), str):
        problems.append(
            "trainer.strategy, given as a mapping, needs _target_: <strategy class path> (e.g. "
            "pytorch_lightning.strategies.DDPStrategy), or give a name (ddp, auto)"
        )
    devices, cores = trainer["devices"], available_cores()
    processes = devices if isinstance(devices, int) and not isinstance(devices, bool) else None
    if trainer["accelerator"] == "cpu" and processes is not None and processes > cores:
        problems.append(
            f"trainer.devices={processes} asks for {processes} CPU processes and this machine "
            f"has {cores} cores: they would share cores and run slower than fewer; give "
            f"trainer.devices<={cores}"
        )


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_prefix_lm(cfg: Mapping[str, Any], problems: list[str]) -> None:
    """A prefix LM is one stack that reads the prefixes its task's batches mark, through mixers
    that read one both ways."""
    if not cfg["model"]["prefix_lm"]:
        return
    task = cfg["task"]
    datamodule = task.get("datamodule")
    if cfg["model"]["encoder"] is not None:
        problems.append(
            "model.prefix_lm=true reads the source as one stack's bidirectional prefix, and "
            "model.encoder (model=encoder_decoder) reads it with an encoder: keep one of them "
            "(design=prefix_lm or design=encoder_decoder)"
        )
    elif task.get("name") in available_tasks() and isinstance(datamodule, Mapping):
        name = task["name"]
        if not get_task_class(name).prefix_batches({**task_arguments(name), **datamodule}):
            problems.append(
                f"model.prefix_lm=true reads a prefix that the task's batches mark, and task "
                f"{name!r} marks none; pick a seq2seq task in its prefix layout "
                "(design=prefix_lm sets it), or model.prefix_lm=false"
            )
    for mixer in mixer_names(cfg["mixer"]):
        if mixer in available_mixers() and not get_mixer_class(mixer).supports_prefix:
            problems.append(
                f"mixer {mixer!r} reads only causally (supports_prefix = False), and "
                "model.prefix_lm=true needs a bidirectional prefix, which attention takes; use "
                "mixer=attention, or design=decoder_only to read the source causally"
            )


def _check_encoder(cfg: Mapping[str, Any], problems: list[str]) -> None:
    """A seq2seq task needs an encoder-decoder and an encoder-decoder a seq2seq task; the
    encoder's mixer must encode and the cross-mixer be registered, with its own arguments."""
    task, encoder = cfg["task"], cfg["model"]["encoder"]
    seq2seq = task.get("type") == "seq2seq"  # filled in from the registration, when known
    if "type" in task and seq2seq != (encoder is not None):
        if seq2seq:
            problems.append(
                f"task {task['name']!r} is a seq2seq task (a source to read, a target to write): "
                "it needs an encoder-decoder; add model=encoder_decoder"
            )
        else:
            seq2seq_tasks = [
                n for n in available_tasks() if get_task_class(n).task_type == "seq2seq"
            ]
            problems.append(
                f"model.encoder is set (model=encoder_decoder) but task {task['name']!r} is a "
                f"{task['type']} task with no source to encode; pick a seq2seq task "
                f"({', '.join(seq2seq_tasks)}), or model=default (a seq2seq task's prefix and "
                "tagging layouts: design=decoder_only or design=encoder_only)"
            )
    if encoder is None:
        return
    given = encoder["mixer"]
    if not isinstance(given, (str, Mapping, type(None))):
        problems.append(
            f"model.encoder.mixer must be null (the run's mixer), a mixer's name or a mixer "
            f"node (+mixer@model.encoder.mixer=<name>), got {shown(given)}"
        )
    else:
        node = encoder_mixer_node(encoder, cfg["mixer"])
        if given is not None:  # the run's own mixer is checked as the run's
            check_mixer_node(
                node, encoder["n_layers"], problems, "model.encoder.mixer", "model.encoder.n_layers"
            )
        for name in mixer_names(node):
            if name in available_mixers() and not get_mixer_class(name).supports_encoder:
                problems.append(
                    f"mixer {name!r} is decoder-only (supports_encoder = False) and cannot be "
                    "the encoder; give the encoder a mixer that encodes "
                    "(model.encoder.mixer=<name>)"
                )
    cross = encoder["cross_mixer"]
    if cross not in available_cross_mixers():
        problems.append(
            f"model.encoder.cross_mixer={cross!r} is not a registered cross-mixer; known "
            f"cross-mixers: {', '.join(available_cross_mixers())}"
        )
        return
    accepted = CROSS_MIXERS.arguments(cross)
    for key in encoder["cross_hparams"]:
        if key not in accepted:
            problems.append(
                unknown_key(f"model.encoder.cross_hparams.{key}", list(accepted), f"{cross!r}")
            )
