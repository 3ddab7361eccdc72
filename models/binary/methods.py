"""The registry of 1-bit training methods (a :class:`models.registry.Registry`).

Each method module registers its class under the class's ``name`` with
``@register_method``; :mod:`models.binary.train` imports every method module, so
``create_method(name)`` and ``list_methods()`` there see all of them.
"""

from __future__ import annotations

from vistream.models.registry import Registry

METHODS: Registry[type] = Registry("method")


def register_method(cls: type) -> type:
    """Class decorator: register a method class under its ``name`` attribute."""
    return METHODS.register(cls, name=cls.name)
