"""What ``mixerlab train`` says when a config is wrong, in place of Hydra's own messages.

Left to itself, Hydra answers a mistyped key with advice to add it (``+model.d_modle=64``), a
mistyped group option with a list and no suggestion, and creates the run folder before anything
looks at the config. Here :class:`CheckConfigBeforeRun` validates a run's config before Hydra
creates its folder (``conf/hydra/default.yaml`` registers it), and
:func:`composition_error_message` turns Hydra's composition errors into one line naming the
closest key or option.
"""

from __future__ import annotations

import difflib
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.errors import MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from mixerlab.experiments.run.config_values import unknown_key
from mixerlab.experiments.run.run_folder import check_run_dir
from mixerlab.experiments.run.schema import ConfigError, validate_config
from mixerlab.mixers import available_mixers

PREFIX = "mixerlab train: "
SEE_ALSO = (
    "`mixerlab train --help` lists the config groups and `mixerlab list` the mixers, tasks and "
    "experiments"
)


class CheckConfigBeforeRun(Callback):
    """Validates a single run's config before Hydra creates the run folder, so a bad command
    line leaves no folder behind; Hydra names the folder after ``mixer.name``, so without this
    ``mixer=plugin`` and no ``mixer.name`` fails inside Hydra with a long traceback. (Each job
    of a sweep is validated as it starts: the jobs' configs differ.) An existing run folder that
    holds a run of another config is refused here too, before Hydra rewrites its ``.hydra/``
    (which ``resume=<dir>`` reads the run's overrides from)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            validate_config(job)
            # a run folder of another config is refused before Hydra rewrites its .hydra/
            check_run_dir(job, Path(str(config.hydra.run.dir)).resolve())
        except ConfigError as err:  # Hydra would turn an exception into a warning and go on
            report_config_error(err)
            raise SystemExit(2) from None


def report_config_error(err: ConfigError, job: str | None = None) -> None:
    """The message alone (a config error needs no traceback), naming the sweep's job if any."""
    print(f"{PREFIX}{f'job {job}: ' if job else ''}{err}", file=sys.stderr)


def composition_error_message(err: Exception) -> str:
    """One message for a command line Hydra cannot compose, with the closest names."""
    if isinstance(err, MissingConfigException) and err.options and "/" in err.missing_cfg_file:
        return PREFIX + _unknown_option(err.missing_cfg_file, err.options)
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        parent = cause.parent_node
        if isinstance(parent, DictConfig):
            return PREFIX + _unknown_key(cause.full_key, [str(key) for key in parent])
    detail = f"\n{cause}" if cause is not None else ""
    return f"{err}{detail}\n{PREFIX}the config could not be composed; {SEE_ALSO}"


def _unknown_key(key: str, names: list[str]) -> str:
    """A key that is not in the config (Hydra's struct mode refuses to add it)."""
    parent = key.rpartition(".")[0]
    if not parent:  # a top-level name may also be meant as a config group: mixr=gmlp
        groups = [entry.name for entry in files("mixerlab.conf").iterdir() if entry.is_dir()]
        if key in groups:  # debug={...}: a group no option of which is selected has no keys
            return (
                f"{key} is a config group with no option selected, so it has no keys to set; "
                f"select one with {key}=<option> (`mixerlab train --help` lists them)"
            )
        names = sorted(set(names) | {g for g in groups if not g.startswith("_")})
    message = unknown_key(key, names, parent or "the top level")
    if parent == "mixer":  # a hyper-parameter the mixer's conf file does not list
        message += f"\n(a keyword argument its conf file does not list: +{key}=<value>)"
    return message


def _unknown_option(missing: str, options: list[str]) -> str:
    """``group=option`` where the group has no such option (no ``conf/<group>/<option>.yaml``)."""
    group, _, option = missing.rpartition("/")
    close = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    message = (
        f"{group}={option}: the config group {group} has no option {option!r}{hint}; "
        f"its options: {', '.join(options)}"
    )
    if group == "mixer" and option in available_mixers():
        message += (
            f"\n{option} is a registered mixer without a conf file: "
            f"train it with mixer=plugin mixer.name={option}"
        )
    return message
