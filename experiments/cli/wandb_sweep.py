"""``mixerlab wandb-sweep``: a W&B sweep file made from a Hydra grid-sweep preset.

    mixerlab wandb-sweep sweep=mixers_lr experiment=mqar --out mixers_lr_mqar.yaml
    wandb sweep mixers_lr_mqar.yaml          # prints the sweep id (needs the W&B server)
    wandb agent <entity>/mixerlab/<id>       # on every machine that should run jobs

The grid is the preset's ``hydra.sweeper.params``, so a Hydra multirun and a W&B sweep of the same
preset run the same jobs. A ``glob(*)`` over a config group becomes the group's options: the mixer
sweeps follow ``conf/mixer/``, and a new mixer joins them by having its conf file. The other
overrides given here are fixed in every run, and so is the composed ``name`` (the W&B group and the
run folders' name). The agent runs ``python -m mixerlab.experiments.cli.train key=value ...`` per
grid point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException
from omegaconf import OmegaConf

from mixerlab.lightning_modules.record import write_atomic

COMMAND = "wandb-sweep"
HELP = "write a W&B sweep file for a grid-sweep preset (sweep=mixers_lr ...)"

# Each agent run is one job: what launches jobs or sweeps belongs to the agent, not the file.
NOT_FOR_AGENTS = ("sweep", "launcher", "hydra")


class SweepFileError(ValueError):
    """A preset or override that no W&B grid sweep can express; the message says what to do."""


def _key(override: Override) -> str:
    return override.key_or_group.split("/", 1)[0].split(".", 1)[0]


def _values(override: Override, group_options: Sequence[str]) -> list[str]:
    """The grid values of one sweeper parameter, as override value strings."""
    if isinstance(override.value(), Glob):
        return override.value().filter(list(group_options))
    if override.is_interval_sweep():
        raise SweepFileError(
            f"{override.input_line}: an interval has no grid; W&B sweep files here are grids "
            "(for a search over intervals use sweep=optuna)"
        )
    return list(override.sweep_string_iterator())


def _plain(value: str) -> Any:
    """``1.0e-3`` -> 0.001 and ``0`` -> 0, so W&B shows numbers as numbers; names stay strings."""
    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, (int, float, str)) else value


def grid(overrides: Sequence[str]) -> dict[str, Any]:
    """The W&B sweep file (as a dict) for ``mixerlab train -m <overrides>`` with a grid preset."""
    parser = OverridesParser.create()
    given = parser.parse_overrides(list(overrides))
    if not any(o.key_or_group == "sweep" for o in given):
        raise SweepFileError("name a sweep preset, e.g. `sweep=mixers_lr` (see conf/sweep/)")
    fixed: dict[str, Any] = {}
    for override in given:
        if override.is_sweep_override():
            raise SweepFileError(
                f"{override.input_line}: put swept values in the preset, not on this command line"
            )
        if _key(override) in NOT_FOR_AGENTS and override.key_or_group != "sweep":
            raise SweepFileError(f"{override.input_line}: W&B agents launch the runs; drop it")
        if override.key_or_group != "sweep":
            fixed[override.get_key_element()] = _plain(override.get_value_element_as_str())
    with initialize_config_module(config_module="mixerlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        if not cfg.hydra.sweeper._target_.endswith("BasicSweeper"):
            raise SweepFileError(
                f"{cfg.hydra.sweeper._target_} is not a grid sweep; W&B sweep files are made "
                "from grid presets (sweep=mixers, mixers_lr, lr_grid)"
            )
        loader = GlobalHydra.instance().config_loader()
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
        swept = {}
        for override in parser.parse_overrides([f"{k}={v}" for k, v in params.items()]):
            options = loader.get_group_options(override.key_or_group)
            swept[override.key_or_group] = [_plain(v) for v in _values(override, options)]
    fixed["name"] = cfg.name  # the preset's sweep name, which a single run would not get
    parameters = {key: {"value": value} for key, value in fixed.items()}
    parameters.update({key: {"values": values} for key, values in swept.items()})
    return {
        "program": "experiments/cli/train.py",
        "project": cfg.logger.project,
        "name": cfg.name,
        "method": "grid",
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "mixerlab.experiments.cli.train",
            "${args_no_hyphens}",
        ],
        "parameters": parameters,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mixerlab wandb-sweep",
        description="Write a W&B sweep file for a Hydra grid-sweep preset (sweep=...) and the "
        "overrides every run shares. Start it with `wandb sweep FILE`, then `wandb agent ID`.",
    )
    parser.add_argument("overrides", nargs="+", help="sweep=<preset> and fixed overrides")
    parser.add_argument("--out", type=Path, help="the file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        sweep = grid(args.overrides)
    except (SweepFileError, HydraException) as err:
        print(f"mixerlab wandb-sweep: {err}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(sweep, sort_keys=False)
    if args.out is None:
        print(text, end="")
        return 0
    write_atomic(args.out, text)
    n_runs = 1
    for values in (p["values"] for p in sweep["parameters"].values() if "values" in p):
        n_runs *= len(values)
    print(f"mixerlab wandb-sweep: {args.out} ({n_runs} runs); next: wandb sweep {args.out}")
    return 0
