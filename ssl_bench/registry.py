"""The method registry: one name per method, used for the file, the YAML, METHOD= and the W&B group."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, List, Type

import ssl_bench.methods
from ssl_bench.utils.errors import ExplainedError

_METHODS: Dict[str, type] = {}


class UnknownMethodError(ExplainedError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])
_discovered = False


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("mean_teacher")``. A name can be registered only once."""
    def decorator(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method '{name}' is already registered by {_METHODS[name].__module__}."
                             f"{_METHODS[name].__qualname__}")
        cls.method_name = name
        _METHODS[name] = cls
        return cls
    return decorator


def _discover() -> None:
    """Import every module of ssl_bench.methods once, so that adding a method is adding one file."""
    global _discovered
    if _discovered:
        return
    pkg = ssl_bench.methods
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _discovered = True


def get_method(name: str) -> Type:
    _discover()
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method '{name}'; registered methods: {', '.join(method_names())}")
    return _METHODS[name]


def method_names() -> List[str]:
    _discover()
    return sorted(_METHODS)
