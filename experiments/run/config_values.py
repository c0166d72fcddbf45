"""Reading config values: whether a value matches a type hint, how a message names a value or an
unknown key (the closest known one), which keyword arguments a factory does not take, and a nested
config flattened to dotted keys. Shared by the schema (:mod:`.schema`), the mixer node's checks
(:mod:`.mixer_node`), the run folder's identity and the comparison's config differences."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import reprlib
import types
from collections.abc import Iterator, Mapping
from typing import Any, Union, get_args, get_origin


def matches(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # NaN and inf (`1e400` parses as inf) are no setting's meaningful value
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = get_args(tp)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, Mapping)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in this module, not the config


def _finite(number: int | float) -> bool:
    return isinstance(number, int) or math.isfinite(number)  # a huge int is finite, not a float


# Values as a message shows them: long strings, lists and mappings cut short (a message names a
# value, it need not repeat 5000 digits or a whole config node).
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist, _SHORT.maxdict = 8, 6


def shown(value: Any) -> str:
    """``repr(value)``, shortened for a message."""
    return _SHORT.repr(value)


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}[tp]


def unknown_key(key: str, allowed: list[str], where: str) -> str:
    """``key`` (dotted) is not among ``allowed`` (the names at its level, in ``where``): the
    message suggests the closest allowed key, spelled in full, and lists them all."""
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"{key} is not a known key{hint}; {where} accepts: {', '.join(sorted(allowed))}"


def unknown_arguments(factory: Any, key: str) -> list[str]:
    """The keyword arguments that ``factory`` (a partial: what a ``_partial_: true`` spec at
    ``key`` instantiates to) passes and its target does not take, one message each."""
    if not isinstance(factory, functools.partial):
        return []
    try:
        parameters = inspect.signature(factory.func).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it will say so itself
        return []
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return []
    accepted = [
        n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    target = getattr(factory.func, "__qualname__", repr(factory.func))
    return [
        unknown_key(f"{key}.{name}", accepted, f"{key} ({target})")
        for name in factory.keywords
        if name not in accepted
    ]


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested config; an empty mapping below the root is
    a leaf (its value ``{}``), so that a key set from nothing to something shows as changed."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1], node
