"""One registry for every pluggable kind: interventions, corrupters, paraphrasers, loaders.

A :class:`Registry` maps names to objects. A name registered twice raises (no silent overwrite);
a plugin can be named lazily as ``"module:object"`` and is imported on first use, so a plugin
never has to import the module that uses it (no import cycle)::

    CORRUPTERS = Registry("corrupter")

    @CORRUPTERS.register("digits")
    def digits(trace, i, rng): ...

    CORRUPTERS.register_lazy("organism", "faithprobe.organisms.task:corrupt_organism")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from faithprobe.errors import FaithprobeError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind; see the module docstring."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:object", imported on first get

    def _claim(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise FaithprobeError(f"a {self.kind} name must be a non-empty string",
                                  field=repr(name))
        if name in self._objects or name in self._lazy:
            raise FaithprobeError(f"{self.kind} {name!r} is already registered", field=name)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""
        def wrap(obj: T) -> T:
            self.add(name, obj)
            return obj
        return wrap

    def add(self, name: str, obj: T) -> None:
        self._claim(name)
        self._objects[name] = obj

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:object"``, imported when ``name`` is first asked for."""
        self._claim(name)
        module, sep, attr = target.partition(":") if isinstance(target, str) else ("", "", "")
        if not (sep and module and attr) or ":" in attr:
            raise FaithprobeError(f"a lazy {self.kind} is named 'module:object', got {target!r}",
                                  field=name)
        self._lazy[name] = target

    def get(self, name: str) -> T:
        """The object registered as ``name`` (a lazy one is imported now, once)."""
        target = self._lazy.get(name)
        if target is not None:
            module, _, attr = target.partition(":")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                # the name stays registered (lazily): asking again says the same
                raise FaithprobeError(f"{self.kind} {name!r} cannot be loaded ({exc})",
                                      field=name) from None
            del self._lazy[name]
            self._objects[name] = obj
        try:
            return self._objects[name]
        except KeyError:
            raise FaithprobeError(f"unknown {self.kind} (known: {', '.join(self.names())})",
                                  field=name) from None

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is registered and no longer waits for its import."""
        return name in self._objects

    def names(self) -> list[str]:
        return sorted({*self._objects, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._objects or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
