"""Name -> function registries with "did you mean" errors and kwargs checked at bind time.

Owns: the `Registry` type and `bind`. Does not own any registered function; those live beside
the code they belong to (algos, verify, tasks, ...).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from typing import Any, Callable


def did_you_mean(name: str, known) -> str:
    """A short hint naming the closest known names, for error messages."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        f"known: {', '.join(sorted(map(str, known)))}"


class RegistryError(KeyError):
    """Unknown registry name; `str()` is the one-line message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(dict):
    """A dict of named callables whose misses say what was meant."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def add(fn):
            if name in self:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self[name] = fn
            return fn
        return add

    def __missing__(self, name):
        raise RegistryError(f"unknown {self.kind} {name!r}; {did_you_mean(name, self)}")


def import_object(spec: str) -> Any:
    """Import `module:attr` (custom rewards, tasks); one-line error when it does not resolve."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{spec!r} is not of the form 'module:function'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module {module!r} for {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def check_kwargs(fn: Callable, kwargs: dict, where: str) -> None:
    """Fail at config time when `kwargs` do not fit `fn`'s keyword parameters."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for key in kwargs:
        if key not in names:
            raise ValueError(f"{where}: unknown argument {key!r}; {did_you_mean(key, names)}")


def bind(registry: Registry, name: str, kwargs: dict | None = None) -> Callable:
    """Look up `name` and bind keyword hyperparameters once, checked against the signature: an
    unknown one, or a required one left out, fails here (at config time), not at the first call."""
    fn = registry[name]
    kwargs = dict(kwargs or {})
    where = f"{registry.kind} {name!r}"
    check_kwargs(fn, kwargs, where)
    missing = [n for n, p in inspect.signature(fn).parameters.items()
               if p.kind is p.KEYWORD_ONLY and p.default is p.empty and n not in kwargs]
    if missing:
        raise ValueError(f"{where} needs {', '.join(missing)}: give it in its _kwargs, e.g. "
                         f"{{{missing[0]}: ...}}")
    return functools.partial(fn, **kwargs) if kwargs else fn
