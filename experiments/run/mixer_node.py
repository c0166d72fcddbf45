"""The config's ``mixer`` node: a registered mixer's name and its hyper-parameters.

``mixer=gmlp`` gives ``{name: gmlp, <hparams>}``. The registered mixer ``hybrid`` gives
``{name: hybrid, pattern: [...], label: ...}``, where each pattern entry is a mixer name or
``{name: ..., <hparams>}`` and repeats over ``model.n_layers`` (see :mod:`mixerlab.mixers.hybrid`),
so its entries are checked here like mixer nodes of their own. Either may carry a ``label``, which
names the run in tables, W&B and folders: a preset sets it (``baseconv``, ``based``); otherwise it
is the mixer's name, or a hybrid's names joined by ``+``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, get_type_hints

from mixerlab.experiments.run.config_values import matches, shown, type_name, unknown_key
from mixerlab.mixers import available_mixers, get_mixer_class, mixer_hparams
from mixerlab.mixers.hybrid import HYBRID


def pattern_entries(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mixer node as a list of ``{name, <hparams>}`` entries: one, or the hybrid's pattern."""
    if node.get("name") != HYBRID:
        return [{key: value for key, value in node.items() if key != "label"}]
    entries = node.get("pattern") or []
    return [dict(e) if isinstance(e, Mapping) else {"name": e} for e in entries]


def mixer_names(node: Mapping[str, Any]) -> list[str]:
    """The registered mixers the node uses, in pattern order, each once."""
    return list(dict.fromkeys(entry.get("name") for entry in pattern_entries(node)))


def mixer_label(node: Mapping[str, Any]) -> str:
    """What runs are called and grouped by: the label a preset gives (``baseconv``: ``conv``
    with other settings), else the mixer's name, or a hybrid's names joined by ``+``."""
    if node.get("label"):
        return str(node["label"])
    return "+".join(mixer_names(node)) if node.get("name") == HYBRID else str(node.get("name"))


def model_mixer(node: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``SequenceModel``'s ``mixer`` and ``mixer_hparams`` arguments for this node: the
    registered name (a hybrid's too) and its hyper-parameters."""
    hparams = {key: value for key, value in node.items() if key not in ("name", "label")}
    return node["name"], hparams


def encoder_mixer_node(
    encoder: Mapping[str, Any], run_mixer: Mapping[str, Any]
) -> Mapping[str, Any]:
    """``model.encoder.mixer`` as a mixer node: null is the run's own mixer (``run_mixer``), a
    registered name that mixer with its class defaults, a node (a preset) itself."""
    node = encoder["mixer"]
    if node is None:
        return run_mixer
    return {"name": node} if isinstance(node, str) else node


def check_mixer_node(
    node: Mapping[str, Any],
    n_layers: int,
    problems: list[str],
    where: str = "mixer",
    layers_key: str = "model.n_layers",
) -> None:
    """One mixer's node, or a hybrid's pattern entry by entry (dividing the depth evenly);
    ``where`` and ``layers_key`` are the keys of the node and its depth (an encoder's:
    ``model.encoder.mixer`` and ``model.encoder.n_layers``)."""
    if not isinstance(node.get("label"), (str, type(None))):
        problems.append(f"{where}.label must be a string, got {node['label']!r}")
    hybrid = node.get("name") == HYBRID
    if hybrid:
        extra = sorted(set(node) - {"name", "pattern", "label"})
        problems += [
            unknown_key(f"{where}.{k}", ["label", "name", "pattern"], "a hybrid") for k in extra
        ]
        pattern = node.get("pattern")
        if not isinstance(pattern, list) or not pattern:
            problems.append(
                f"{where}.pattern must be a non-empty list: '{where}.pattern=[conv,attention]'"
            )
            return
        if n_layers % len(pattern):
            problems.append(
                f"{layers_key}={n_layers} is not a multiple of the hybrid pattern's "
                f"{len(pattern)} entries; the pattern repeats over the depth, so set "
                f"{layers_key} to a multiple"
            )
    for i, entry in enumerate(pattern_entries(node)):
        _check_entry(entry, f"{where}.pattern[{i}]" if hybrid else where, problems)


def _check_entry(node: Mapping[str, Any], where: str, problems: list[str]) -> None:
    """``name`` must be registered (plugins too) and the rest its keyword hparams."""
    name = node.get("name")
    known = available_mixers()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(
            f"{where}.name={name!r} is not a registered mixer{hint}; known mixers: "
            f"{', '.join(known)} "
            "(select one with mixer=<name>, or mixer=plugin mixer.name=<name> for a plugin mixer "
            "without a conf file)"
        )
        return
    accepted = mixer_hparams(name)
    for key, value in node.items():
        if key == "name":
            continue
        if key not in accepted:
            problems.append(
                unknown_key(f"{where}.{key}", list(accepted), f"mixer {name!r}")
                + f" ({get_mixer_class(name).__name__}'s keyword hyper-parameters; a mixer "
                f"without a conf file starts from none: mixer=plugin mixer.name={name})"
            )
            continue
        expected = _declared_type(get_mixer_class(name), key, accepted[key])
        if expected is not None and not matches(value, expected):
            problems.append(
                f"{where}.{key} must be {type_name(expected)} like its default "
                f"{accepted[key]!r}, got {shown(value)}"
            )


def _declared_type(cls: type, key: str, default: Any) -> Any:
    """The hyper-parameter's annotation (``dt_rank: int | str``) when the checks can read it,
    else its default's type; None when neither says (an object default, no annotation)."""
    try:
        hint = get_type_hints(cls.__init__).get(key)
        if hint is not None:
            matches(default, hint)  # raises TypeError for a hint the checks cannot read
            return hint
    except (NameError, TypeError):
        pass
    return type(default) if isinstance(default, (bool, int, float, str)) else None
