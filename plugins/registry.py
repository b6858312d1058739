"""One name -> constructor registry type, so that a YAML config can name any component (as timm does).

Every family is a :class:`Registry` instance next to its ``create_<family>(name, **kwargs)`` and
``list_<family>s()`` functions: encoders (``fewlabel.plugins.encoders``), heads
(``fewlabel.plugins.heads``), augmentations (``fewlabel.plugins.augment``), methods
(``fewlabel.plugins.methods``), optimizers (``fewlabel.plugins.optim``) and the recipe's datamodules
(``fewlabel.plugins.recipes``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "closest"]


def closest(name: str, valid: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the valid name closest to ``name``, or ``""`` when none is close."""
    match = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _import(path: str, kind: str) -> Callable[..., Any]:
    """The callable at the import path ``package.module.Name``."""
    module_name, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {kind} {path!r}: {err}") from None
    if not callable(found):
        raise ValueError(f"{kind} {path!r} is a {type(found).__name__}, not a class or function")
    return found


class Registry(Generic[T]):
    """Constructors of one kind of component, by name.

    Iterating a registry yields its names in sorted order; ``len`` counts them.

    Args:
        kind: What the registry holds, for messages (``"encoder"``).

    Example:
        >>> widgets = Registry("widget")
        >>> @widgets.register("box")
        ... class Box:
        ...     def __init__(self, size: int = 1) -> None:
        ...         self.size = size
        >>> widgets.create("box", size=3).size, widgets.names(), len(widgets)
        (3, ['box'], 1)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a constructor under ``name``.

        Raises:
            ValueError: ``name`` is already taken.
        """

        def decorator(constructor: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = constructor
            return constructor

        return decorator

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered under ``name``, or the class or function a dotted import path names
        (``"my_package.module.MyEncoder"``, as a ``class_path`` does), so a config can name a user's own
        component without registering it.

        Raises:
            ValueError: unknown name (the message gives the closest name and every valid one), or an import
                path that cannot be imported or names nothing callable.
        """
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and "." in name.strip("."):
            return _import(name, self.kind)
        raise ValueError(f"unknown {self.kind} {name!r}{closest(name, self.names())}; choose one of "
                         f"{self.names()} or an import path (package.module.Name)")

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the component registered under ``name`` with ``kwargs``.

        Raises:
            ValueError: unknown name (see :meth:`get`).
        """
        return self.get(name)(**kwargs)
