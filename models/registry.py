"""One registry mechanism for everything the project looks up by name (after timm's
``register_model``): backbones, hash models, 1-bit training methods, stage types and the
kinds of result records.

A :class:`Registry` maps names to entries (a builder function or a class). Entries register
as they are defined, with a decorator::

    MODELS = Registry("model")

    @MODELS.register               # under the function's (or class's) own name
    def resnet20(**kw): ...

    @MODELS.register("vgg")        # under an explicit name
    class Vgg: ...

and are found again with ``get(name)``, built with ``create(name, **kw)`` and listed with
``list(pattern)`` (fnmatch patterns, sorted). A name names one thing: registering a second,
different entry under a taken name is an error (registering the very same entry again is a
no-op, so a decorator that runs twice on one object does no harm). An unknown name raises
:class:`UnknownNameError`, whose message lists the known names.

The registries built on it, each filled as its entries' modules are imported:

==================  =====================================  ======================================
what                registry                               helpers
==================  =====================================  ======================================
backbones           ``models.backbones.registry.MODELS``   ``register_model``, ``list_models``,
                                                           ``create_model`` (records ``config``)
hash models         ``models.hashing.base.HashModel``      a subclass with a ``name`` registers
                    ``.registry``                          itself; ``models.hashing.registry``
1-bit methods       ``models.binary.methods.METHODS``      ``@register_method``;
                                                           ``models.binary.train.create_method``
stage types         ``stages.base.STAGES``                 ``@register_stage("name")``,
                                                           ``stage_types``, ``get_stage_class``
result kinds        ``stages.records.RESULT_KINDS``        a ``Result`` subclass with a ``kind``
                                                           registers itself; ``result_type``
==================  =====================================  ======================================

This module imports nothing but the standard library, so every layer may use it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name no entry is registered under.

    A ``KeyError`` for code that treats the registry as a mapping, and a ``ValueError`` for
    code that validates user input (a config file, a CLI option) and reports bad values."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names -> entries of one kind (``kind`` is used in error messages: "unknown <kind>")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, target: str | None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, target: T, *, name: str | None = None) -> T: ...

    def register(self, target: Any = None, *, name: str | None = None) -> Any:
        """Register an entry under ``name`` or its ``__name__``.

        ``@reg.register`` and ``reg.register(obj, name=...)`` register and return the entry;
        ``@reg.register("name")`` and ``@reg.register(name="name")`` return a decorator."""
        if target is None or isinstance(target, str):
            explicit = name if target is None else target
            return lambda obj: self._add(obj.__name__ if explicit is None else explicit, obj)
        return self._add(target.__name__ if name is None else name, target)

    def _add(self, name: str, obj: T) -> T:
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        old = self._entries.get(name)
        if old is not None and old is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_label(old)} and {_label(obj)})")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: "
                                   f"{', '.join(self.list()) or '(none)'}") from None

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Call the entry registered under ``name`` with ``kwargs`` (build a model, an object)."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching the fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.list()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"


def _label(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
