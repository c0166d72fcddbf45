"""Stored references: a suite's results shipped with mixerlab (``baselines/<suite>.json``,
package data), so that new runs are compared with the baselines without rerunning them.

``mixerlab compare STUDY --write-reference mad`` writes one from a finished study, the same
command that compares it; ``mixerlab compare RUN_DIR... --reference mad`` puts its rows beside
the runs here in the suite's table. ``--reference`` and ``--write-reference`` also take a path
to a ``.json`` file instead of a suite's name.

A reference is small: per row (a mixer), each setting's kept grid point and its metric by seed,
which is all the suite's score needs. It carries what it was made under, in two parts:

- **the protocol**, what every row ran: the metric and its direction, the grid's keys and
  values, each task's settings, and the config every stored run shared, less the mixer, the seed,
  the grid and settings, and keys that cannot change a result (where the run was shown, logged,
  cached; ``PROTOCOL_FREE``), with each setting's own shared keys besides (a step count that
  follows the training set's size). Runs compared with a reference must hold every such key at
  its stored value, ran at most the stored settings and the same grid: a difference is refused,
  naming the keys. A config difference is certain to change the numbers and is the user's to fix
  (run with the stored settings); comparing anyway would rank protocols, not mixers. The config a
  row shared beyond the protocol is its *preset* (``mixer.*``, a paper preset's width or channel
  mixer): write a reference from two mixers or more, or one mixer's preset reads as protocol.
- **the code**, sha256 of each file of each task's generator and of each row's mixer
  (``code_version``). A file changed since marks the stored rows it concerns *stale*, naming the
  files, rather than refusing them: a hash cannot tell a refactor from a change of behaviour, and
  refusing would make every stored row unusable after one edit, until a long study is run again.
  A stored row whose preset differs from the runs here of the same name is stale too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from mixerlab.experiments.compare.code_version import ROOT, changed_files, mixer_code, task_code
from mixerlab.experiments.compare.comparison import Comparison
from mixerlab.experiments.compare.runs import Run, value_label
from mixerlab.experiments.compare.suite import (
    DATAMODULE,
    SUITES,
    Entry,
    Results,
    SettingResult,
    Suite,
    row_runs,
    run_entries,
    setting,
    setting_label,
    suite_table,
)
from mixerlab.experiments.run.config_values import flatten
from mixerlab.experiments.run.study import LAUNCH_ONLY_KEYS
from mixerlab.lightning_modules.record import write_atomic

FORMAT = 1
BASELINES = ROOT / "baselines"  # package data: baselines/<suite>.json
# Config keys (and whole nodes) that cannot change a result: how a launch shows, logs and caches
# (LAUNCH_ONLY_KEYS), the study and experiment names, checkpoint monitors, compilation, the device
# kind, logging intervals, and seeds (what a score is averaged over).
PROTOCOL_FREE = (
    *LAUNCH_ONLY_KEYS,
    "study",
    "name",
    "callbacks",
    "compile",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    f"{DATAMODULE}.num_workers",
)
SHOWN = 12  # differences named in a refusal
PARTS = ("protocol", "task_code", "rows", "written")  # what a stored reference holds


def reference_path(text: str) -> Path:
    """A suite's shipped reference (``mad``), or a ``.json`` file."""
    if text in SUITES:
        return BASELINES / f"{text}.json"
    if text.endswith(".json"):
        return Path(text)
    raise ValueError(
        f"{text!r} is neither a suite ({', '.join(SUITES)}) nor a .json file: name one of them"
    )


def _free(key: str, best_over: Sequence[str]) -> bool:
    under = (*PROTOCOL_FREE, *best_over, "mixer", "task.name")
    seed = key == "seed" or key.endswith(".seed")
    return seed or any(key == k or key.startswith(k + ".") for k in under)


def _leaves(run: Run, best_over: Sequence[str]) -> dict[str, Any]:
    """The run's config leaves that may belong to a protocol or a preset: not free, not its
    setting (that is its own key of the protocol)."""
    own = {f"{DATAMODULE}.{key}" for key in setting(run)}
    config = flatten(run.results.get("config") or {})
    return {k: v for k, v in config if k not in own and not _free(k, best_over)}


def _shared(leaves: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The leaves every mapping holds with one value."""
    first, *rest = leaves
    return {k: v for k, v in first.items() if all(k in m and m[k] == v for m in rest)}


def _cells(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by ``task: setting``."""
    cells: dict[str, list[Run]] = {}
    for run in runs:
        cells.setdefault(f"{run.results['task']}: {setting_label(run)}", []).append(run)
    return cells


def _protocol(comparison: Comparison, runs: Sequence[Run]) -> dict[str, Any]:
    """What every run of a reference ran (the module docstring)."""
    best_over = comparison.best_over
    config = _shared([_leaves(run, best_over) for run in runs])
    per_setting = {
        cell: _shared([_leaves(run, best_over) for run in members])
        for cell, members in sorted(_cells(runs).items())
    }
    settings: dict[str, set[str]] = {}
    for run in runs:
        settings.setdefault(str(run.results["task"]), set()).add(setting_label(run))
    return {
        "metric": comparison.metric,
        "mode": comparison.mode,
        "best_over": list(best_over),
        "grid": {key: _values(runs, key) for key in best_over},
        "settings": {task: sorted(labels) for task, labels in sorted(settings.items())},
        "config": config,
        "setting_config": {
            cell: extra
            for cell, shared in per_setting.items()
            if (extra := {k: v for k, v in shared.items() if k not in config})
        },
    }


def _values(runs: Sequence[Run], key: str) -> list[str]:
    """The distinct values of ``key`` over ``runs``, as labels, sorted."""
    config = [dict(flatten(run.results.get("config") or {})) for run in runs]
    return sorted({value_label(c.get(key)) for c in config})


def _preset(
    runs: Sequence[Run], protocol: Mapping[str, Any], best_over: Sequence[str]
) -> dict[str, Any]:
    """What a row's runs shared beyond the protocol and their task: its mixer config, and what
    a paper preset set for that mixer alone (a width, a channel mixer)."""

    def own(key: str) -> bool:
        beyond = key not in protocol["config"] and not key.startswith("task.")
        return key.startswith("mixer.") or (beyond and not _free(key, best_over))

    shared = _shared([dict(flatten(run.results.get("config") or {})) for run in runs])
    return {key: value for key, value in shared.items() if own(key)}


def _mixer_node(preset: Mapping[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("mixer."): v for k, v in preset.items() if k.startswith("mixer.")}


def write_reference(path: Path, comparison: Comparison, runs: Sequence[Run], suite: Suite) -> str:
    """Store the suite's rows of ``comparison`` at ``path``; returns what was written, in words.
    Refused unless every run finished and every row ran every setting of the table."""
    table = comparison.suite
    assert table is not None, "write_reference needs the suite's table (suite.add_suite)"
    if left := [*comparison.unfinished, *comparison.unreadable]:
        listed = ", ".join(run.name for run in left[:5])
        raise ValueError(
            f"--write-reference: {len(left)} runs have not finished ({listed}): a reference is "
            "written from a finished study; finish or remove them"
        )
    if gaps := [f"{row.name} lacks {', '.join(row.missing)}" for row in table.rows if row.missing]:
        raise ValueError(
            f"--write-reference: every row must run every setting of the table: {'; '.join(gaps)}"
        )
    rows = row_runs(comparison, runs, suite)
    suite_runs = [run for members in rows.values() for run in members]
    protocol = _protocol(comparison, suite_runs)
    stored = {}
    for entry in run_entries(comparison, runs, suite):
        preset = _preset(rows[entry.name], protocol, comparison.best_over)
        code = mixer_code(_mixer_node(preset))
        if not code:
            raise ValueError(
                f"--write-reference: no built-in mixer's code found for row {entry.name} (mixer "
                f"config {_mixer_node(preset) or 'differs between its runs'}): only built-in "
                "mixers, one per row, can be stored"
            )
        stored[entry.name] = {"preset": preset, "mixer_code": code, "results": _dump(entry.results)}
    reference = {
        "format": FORMAT,
        "suite": suite.name,
        "written": date.today().isoformat(),
        "protocol": protocol,
        "task_code": {task: task_code(task) for task in table.tasks},
        "rows": stored,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(reference, indent=1, sort_keys=True) + "\n")
    except OSError as err:
        raise ValueError(f"--write-reference: cannot write {path}: {err.strerror or err}") from err
    return f"{len(stored)} rows, {len(table.tasks)} tasks, {len(suite_runs)} runs"


def _dump(results: Results) -> dict[str, Any]:
    return {
        task: {
            label: {"point": list(r.point), "seeds": dict(r.seeds)} for label, r in settings.items()
        }
        for task, settings in results.items()
    }


def _load(results: Mapping[str, Any]) -> Results:
    return {
        task: {
            label: SettingResult(tuple(r["point"]), dict(r["seeds"]))
            for label, r in settings.items()
        }
        for task, settings in results.items()
    }


def read_reference(path: Path, suite: Suite) -> dict[str, Any]:
    """The stored reference at ``path``, checked to be one of ``suite``."""
    if not path.is_file():
        shipped = path.parent == BASELINES
        raise ValueError(
            f"no stored reference at {path}"
            + (
                ": this mixerlab ships none yet. Write one from a finished study with "
                f"`mixerlab compare studies/<study> --write-reference {suite.name}`"
                if shipped
                else ": pass a file written by `mixerlab compare ... --write-reference FILE`"
            )
        )
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as a stored reference: {err}") from err
    if not isinstance(reference, dict) or reference.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a stored reference of format {FORMAT} (format "
            f"{reference.get('format') if isinstance(reference, dict) else '-'}): write it again "
            "with `mixerlab compare ... --write-reference`"
        )
    if lacking := [key for key in PARTS if key not in reference]:
        raise ValueError(f"{path} is not a whole stored reference: it lacks {', '.join(lacking)}")
    if reference.get("suite") != suite.name:
        raise ValueError(
            f"{path} stores suite {reference.get('suite')!r}, the runs are of {suite.name!r}"
        )
    return reference


def _said(value: Any) -> str:
    """A protocol's value in a message: a list's items joined, else its label."""
    return ", ".join(map(str, value)) if isinstance(value, list) else value_label(value)


def _config_differences(
    stored: Mapping[str, Any], runs: Sequence[Run], best_over: Sequence[str]
) -> list[str]:
    """``key (stored X; here Y)`` for each stored key a run holds at another value."""
    leaves = [_leaves(run, best_over) for run in runs]
    missing = "(absent)"
    differences = []
    for key, value in sorted(stored.items()):
        here = sorted({value_label(leaf[key]) if key in leaf else missing for leaf in leaves})
        if here != [value_label(value)]:
            differences.append(f"{key} (stored {value_label(value)}; here {_said(here)})")
    return differences


def protocol_differences(
    protocol: Mapping[str, Any], comparison: Comparison, runs: Sequence[Run]
) -> list[str]:
    """How ``runs`` (a suite's finished runs) depart from a stored protocol, key by key."""
    here = _protocol(comparison, runs)
    differences = [
        f"{key} (stored {_said(protocol[key])}; here {_said(here[key])})"
        for key in ("metric", "mode", "best_over")
        if protocol[key] != here[key]
    ]
    differences += [
        f"grid {key} (stored {_said(values)}; here {_said(here['grid'].get(key, []))})"
        for key, values in protocol["grid"].items()
        if here["grid"].get(key) != values
    ]
    for task, labels in here["settings"].items():
        if extra := [label for label in labels if label not in protocol["settings"].get(task, [])]:
            differences.append(f"settings of {task} not stored: {'; '.join(extra)}")
    differences += _config_differences(protocol["config"], runs, comparison.best_over)
    for cell, members in _cells(runs).items():
        for said in _config_differences(
            protocol["setting_config"].get(cell, {}), members, comparison.best_over
        ):
            differences.append(f"{cell}: {said}")
    return differences


def _stale(
    name: str, row: Mapping[str, Any], reference: Mapping[str, Any], here: Mapping[str, list[Run]]
) -> tuple[str, ...]:
    """Why a stored row may no longer hold: its tasks' or mixer's code changed since it was
    written, or the runs here of its name ran another preset."""
    reasons = [
        change
        for task, files in reference["task_code"].items()
        for change in changed_files(files, task_code(task))
    ]
    reasons += changed_files(row["mixer_code"], mixer_code(_mixer_node(row["preset"])))
    if name in here:
        best_over = reference["protocol"]["best_over"]
        now = _preset(here[name], reference["protocol"], best_over)
        keys = sorted({*row["preset"], *now})
        differ = [
            f"{k} (stored {value_label(row['preset'].get(k))}; here {value_label(now.get(k))})"
            for k in keys
            if row["preset"].get(k) != now.get(k)
        ]
        if differ:
            reasons.append(f"preset differs from the runs here: {', '.join(differ[:SHOWN])}")
    return tuple(dict.fromkeys(reasons))


def add_reference(
    comparison: Comparison, runs: Sequence[Run], suite: Suite, path: Path
) -> Comparison:
    """``comparison`` with the stored rows at ``path`` beside the runs here in the suite's
    table; refused when the runs here depart from the stored protocol."""
    reference = read_reference(path, suite)
    here = row_runs(comparison, runs, suite)
    suite_runs = [run for members in here.values() for run in members]
    try:
        differences = protocol_differences(reference["protocol"], comparison, suite_runs)
        stored = [
            Entry(name, _load(row["results"]), True, _stale(name, row, reference, here))
            for name, row in sorted(reference["rows"].items())
        ]
    except (KeyError, TypeError, AttributeError) as err:  # a hand-edited file
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {err}): write it again with "
            "`mixerlab compare ... --write-reference`"
        ) from err
    if differences:
        shown = "; ".join(differences[:SHOWN])
        more = f" (and {len(differences) - SHOWN} more)" if len(differences) > SHOWN else ""
        raise ValueError(
            f"the runs here depart from the protocol stored in {path}: {shown}{more}. Run them "
            "with the stored protocol's settings, or compare without --reference"
        )
    entries = [*run_entries(comparison, runs, suite), *stored]
    label = f"{path} (written {reference['written']})"
    return replace(comparison, suite=suite_table(comparison, suite, entries, label))
