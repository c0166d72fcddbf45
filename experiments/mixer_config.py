"""The config's ``mixer`` node: one registered mixer, or a hybrid pattern (``name: hybrid``).

``mixer=gmlp`` gives ``{name: gmlp, <hparams>}``. A hybrid gives ``{name: hybrid, pattern: [...],
label: ...}``, where each pattern entry is a mixer name or ``{name: ..., <hparams>}`` and repeats
over ``model.n_layers`` (see :mod:`mixers.hybrid`). The label names the run in tables, W&B and
folders: a preset sets it (``based``); otherwise it is the pattern's names joined by ``+``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HYBRID = "hybrid"


def pattern_entries(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mixer node as a list of ``{name, <hparams>}`` entries: one, or the hybrid's pattern."""
    if node.get("name") != HYBRID:
        return [dict(node)]
    entries = node.get("pattern") or []
    return [dict(e) if isinstance(e, Mapping) else {"name": e} for e in entries]


def mixer_names(node: Mapping[str, Any]) -> list[str]:
    """The registered mixers the node uses, in pattern order, each once."""
    return list(dict.fromkeys(entry.get("name") for entry in pattern_entries(node)))


def mixer_label(node: Mapping[str, Any]) -> str:
    """What runs are called and grouped by: the mixer's name, or a hybrid's label."""
    if node.get("name") != HYBRID:
        return str(node.get("name"))
    return node.get("label") or "+".join(mixer_names(node))


def model_mixer(node: Mapping[str, Any]) -> tuple[str | list[dict[str, Any]], dict[str, Any]]:
    """``SequenceModel``'s ``mixer`` and ``mixer_hparams`` arguments for this node."""
    if node.get("name") == HYBRID:
        return pattern_entries(node), {}
    hparams = dict(node)
    return hparams.pop("name"), hparams
