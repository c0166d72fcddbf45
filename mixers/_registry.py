"""Named classes with plugin discovery: the one registry shape of mixerlab's extension points
(mixers here, tasks in ``mixerlab.lightning_modules.tasks``).

Built-ins register on import (:func:`mixerlab.import_public_modules` imports a package's modules, so
a new built-in is a new file); plugins register through an entry-point group, loaded on first use,
so ``pip install some-plugin`` is all it takes. Lookups fail with the list of known names, and
:meth:`Registry.check_arguments` with the list of accepted keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry(Generic[T]):
    """Classes derived from ``base``, by short name.

    ``kind`` and ``argument`` name them in messages ("mixer", "hyper-parameter"). Keyword-only
    constructor parameters are a class's arguments, except ``set_by_run`` (what the run passes
    itself). An entry point may name a module (its import registers) or a class; ``adopt``
    registers such a class under the entry point's name (None: the class must register itself).
    """

    def __init__(
        self,
        kind: str,
        base: type[T],
        entry_point_group: str,
        *,
        argument: str = "argument",
        set_by_run: tuple[str, ...] = (),
        adopt: Callable[[str, type[T]], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.base = base
        self.entry_point_group = entry_point_group
        self.argument = argument
        self.set_by_run = set_by_run
        self.adopt = adopt
        self.classes: dict[str, type[T]] = {}
        self.plugins_loaded = False

    def add(self, name: str, cls: type[T]) -> None:
        """Register ``cls`` as ``name``; the same class again (even re-imported) is harmless."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(
                f"register_{self.kind}({name!r}) needs a {self.base.__name__} subclass, got {cls!r}"
            )
        known = self.classes.get(name)
        if known is not None and known is not cls and _qualname(known) != _qualname(cls):
            raise ValueError(
                f"{self.kind} name {name!r} is already registered to {_qualname(known)}; "
                "pick another name"
            )
        self.classes[name] = cls

    def decorator(self, name: str) -> Callable[[type[T]], type[T]]:
        """A class decorator that registers its class as ``name`` and tells the class its name
        (``registry_name``, what configs and tables call it)."""

        def decorate(cls: type[T]) -> type[T]:
            self.add(name, cls)
            cls.registry_name = name
            return cls

        return decorate

    def _load_plugins(self) -> None:
        if self.plugins_loaded:
            return
        self.plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                loaded = ep.load()
            except Exception as exc:
                self.plugins_loaded = False  # retry (and raise again) on the next call, not skip
                raise ImportError(
                    f"{self.kind} plugin {ep.name!r} ({ep.value}, entry-point group "
                    f"{self.entry_point_group!r}) failed to import: {exc}; fix or uninstall the "
                    "package that provides it"
                ) from exc
            is_class = isinstance(loaded, type) and issubclass(loaded, self.base)
            if is_class and self.adopt is not None:
                self.adopt(ep.name, loaded)

    def names(self) -> list[str]:
        """Every registered name, built-in and plugins, sorted."""
        self._load_plugins()
        return sorted(self.classes)

    def get(self, name: str) -> type[T]:
        self._load_plugins()
        try:
            return self.classes[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            ) from None

    def describe(self, name: str) -> str:
        """The first line of the class docstring: the description ``mixerlab list`` shows."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def arguments(self, name: str) -> dict[str, Any]:
        """The keyword arguments a config may set for ``name``, with their defaults."""
        params = inspect.signature(self.get(name).__init__).parameters
        return {
            key: p.default
            for key, p in params.items()
            if p.kind is p.KEYWORD_ONLY and key not in self.set_by_run
        }

    def check_arguments(self, name: str, given: Mapping[str, Any]) -> None:
        """Raise a ValueError naming the unknown ones and listing the accepted ones."""
        accepted = self.arguments(name)
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} got unknown {self.argument}(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(accepted)) or '(none)'}"
            )
